"""Fixed-point exponential of a non-positive logit difference: `pymodel.gate.exp_fx` in gates.

`n = -round_half_away(z · LOG2E_FX / 2^15)` is `-z·log2(e)` in the logit's
fixed point; its fraction `f` (the low `logit_frac_bits`) indexes a ROM of
`2^-f` (the golden `exp_lut`) and its integer part `i` becomes a rounding
right shift (clamped at `gate_frac_bits + 2`, past which the result is 0).
A two-stage pipeline with no stall: the multiply, rounding and ROM address
in the first cycle, the ROM read and the rounding shift in the second.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from pymodel.config import AccelConfig
from pymodel.gate import LOG2E_FRAC_BITS, LOG2E_FX, exp_lut

__all__ = ["ExpFx"]


class ExpFx(wiring.Component):
    """`e = exp_fx(z)` for `z ≤ 0` (signed `logit_bits + 1`), unsigned Q0.gate_frac_bits.

    Ports
    -----
    z : In(signed(logit_bits + 1))
    z_valid : In(1)
    e : Out(unsigned(gate_frac_bits + 1))
        Valid `LATENCY` cycles after `z`, while `e_valid` is high.
    e_valid : Out(1)
    """

    LATENCY = 2

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        super().__init__(
            {
                "z": In(signed(cfg.logit_bits + 1)),
                "z_valid": In(1),
                "e": Out(unsigned(cfg.gate_frac_bits + 1)),
                "e_valid": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        lf, g = cfg.logit_frac_bits, cfg.gate_frac_bits
        lut = [int(v) for v in exp_lut(cfg)]
        m.submodules.rom = rom = Memory(shape=unsigned(g + 1), depth=len(lut), init=lut)
        rd = rom.read_port()

        p = Signal(signed(len(self.z) + LOG2E_FX.bit_length() + 1))
        m.d.comb += p.eq(self.z * LOG2E_FX)
        # round_half_away(p / 2^15) = (p + 2^14 - (p < 0)) >> 15, then negated (n >= 0).
        rounded = (p + (1 << (LOG2E_FRAC_BITS - 1)) - p[-1]) >> LOG2E_FRAC_BITS
        n = Signal(unsigned(len(p)))
        m.d.comb += n.eq(-rounded)
        whole = n >> lf
        shift = Signal(range(g + 3))
        m.d.comb += rd.addr.eq(n[:lf] if lf else 0)
        m.d.sync += shift.eq(Mux(whole > g + 2, g + 2, whole))
        valid1 = Signal()
        m.d.sync += valid1.eq(self.z_valid)
        half = (Const(1, 1) << shift) >> 1
        m.d.sync += [self.e.eq((rd.data + half) >> shift), self.e_valid.eq(valid1)]
        return m
