"""Post-processing lanes: requantise, LUT activation, SwiGLU gated multiply.

One lane per array column turns an int32 accumulator into an int8 output,
bit-exact with `pymodel.numerics`:

- `requantize(acc, m, s)`: `sat(round_half_away(acc·m / 2^s))` with a
  per-output-channel unsigned `mult_bits` multiplier `m` and shift `s`,
  hardware form `(p + 2^(s−1) − (p<0)) >>> s` (`s = 0` passes `p`),
  saturating to the symmetric range [−127, 127];
- `apply_lut(lut, q)`: a 256-entry int8 table indexed by the two's-complement
  code of `q` (the driver fills it from the scales, `numerics.make_lut`);
- `gated_multiply(a, u, m_g, s_g)`: the exact int8×int8 product requantised
  with a per-tensor (m_g, s_g) — SwiGLU's `act(x·W1) ⊙ (x·W3)`.

`Mode` selects `requant(acc_a)`, `lut(requant(acc_a))`,
`gated_multiply(lut(requant(acc_a)), requant(acc_b))` or (WIDE, the router
GEMM) `requantize(acc_a, m, s, logit_bits)` on the `wide` output lanes. Per-channel (m, s)
pairs live in a parameter memory of `param_rows` rows × C lanes; an input beat
names the rows for its `acc_a` and `acc_b` (e.g. W1's and W3's parameters
for the same N-tile), so several GEMMs' parameters can stay resident.

Pipeline: 3 stages (parameter read, LUT read, output register) with one
global advance, `out.valid` never waits on `out.ready`.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from pymodel.config import AccelConfig, ConfigError

__all__ = [
    "SHIFT_BITS",
    "Mode",
    "PostProc",
    "Requantizer",
    "lut_write_layout",
    "output_layout",
    "param_layout",
    "param_write_layout",
    "postproc_input_layout",
    "wide_bits",
]

SHIFT_BITS = 6
"""Requantisation shifts are 0…63, as `numerics.quantize_multiplier` produces."""


class Mode(enum.Enum, shape=3):
    """What a post-processing lane outputs (see the module docstring)."""

    REQUANT = 0
    REQUANT_LUT = 1
    SWIGLU = 2
    WIDE = 3
    """`requantize(acc_a)` to `logit_bits` on the `wide` lanes (the router's logits)."""


class Requantizer(wiring.Component):
    """Combinational `numerics.requantize(value, mult, shift, out_bits)`.

    Shifts ≥ `in_bits + mult_bits` give 0 (as the golden model does), so the
    barrel shifter only spans that range.
    """

    def __init__(self, in_bits: int, mult_bits: int, out_bits: int) -> None:
        self.in_bits, self.mult_bits, self.out_bits = in_bits, mult_bits, out_bits
        super().__init__(
            {
                "value": In(signed(in_bits)),
                "mult": In(unsigned(mult_bits)),
                "shift": In(unsigned(SHIFT_BITS)),
                "result": Out(signed(out_bits)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        prod_bits = self.in_bits + self.mult_bits + 1
        max_shift = min(self.in_bits + self.mult_bits, 2**SHIFT_BITS - 1)
        product = Signal(signed(prod_bits))
        m.d.comb += product.eq(self.value * self.mult)
        shift = Signal(range(max_shift + 1))
        m.d.comb += shift.eq(Mux(self.shift > max_shift, max_shift, self.shift))
        # 2^(s-1), 0 for s = 0, as a right shift: a variable left shift would widen
        # the value by 2^6 - 1 bits, past 64, and slow the Verilated model down.
        shift_down = Signal(range(max_shift + 1))
        m.d.comb += shift_down.eq(max_shift - shift)
        half = Signal(unsigned(max_shift))
        m.d.comb += half.eq(Const(1 << (max_shift - 1), max_shift) >> shift_down)
        biased = Signal(signed(max(prod_bits, max_shift + 1) + 1))
        m.d.comb += biased.eq(product + half - Mux(shift == 0, 0, product[-1]))
        rounded = Signal(signed(len(biased)))
        m.d.comb += rounded.eq(biased >> shift)
        qmax = 2 ** (self.out_bits - 1) - 1
        m.d.comb += self.result.eq(Mux(rounded > qmax, qmax, Mux(rounded < -qmax, -qmax, rounded)))
        return m


def param_layout(cfg: AccelConfig) -> data.StructLayout:
    """One output channel's requantisation parameters."""
    return data.StructLayout({"mult": unsigned(cfg.mult_bits), "shift": unsigned(SHIFT_BITS)})


def param_write_layout(cfg: AccelConfig, param_rows: int) -> data.StructLayout:
    """Write of one channel's (m, s): channel `row·C + lane` of the parameter memory."""
    return data.StructLayout(
        {
            "row": unsigned(ceil_log2(param_rows) or 1),
            "lane": unsigned(ceil_log2(cfg.cols) or 1),
            "mult": unsigned(cfg.mult_bits),
            "shift": unsigned(SHIFT_BITS),
        }
    )


def lut_write_layout(cfg: AccelConfig) -> data.StructLayout:
    """Write of one LUT entry; `index` is the two's-complement code of the input."""
    return data.StructLayout({"index": unsigned(cfg.act_bits), "value": signed(cfg.act_bits)})


def postproc_input_layout(cfg: AccelConfig, param_rows: int) -> data.StructLayout:
    """One row of C accumulators (two for SwiGLU) with what the lanes need to finish it."""
    acc_row = data.ArrayLayout(signed(cfg.acc_bits), cfg.cols)
    row_bits = ceil_log2(param_rows) or 1
    return data.StructLayout(
        {
            "acc_a": acc_row,
            "acc_b": acc_row,
            "param_a": unsigned(row_bits),
            "param_b": unsigned(row_bits),
            "n_valid": unsigned(ceil_log2(cfg.cols + 1)),
            "mode": Mode,
            "gate_mult": unsigned(cfg.mult_bits),
            "gate_shift": unsigned(SHIFT_BITS),
            "last": 1,
        }
    )


def wide_bits(cfg: AccelConfig) -> int:
    """Width of the `wide` output lanes: WIDE mode's `logit_bits` (never below act_bits)."""
    return max(cfg.act_bits, cfg.logit_bits)


def output_layout(cfg: AccelConfig) -> data.StructLayout:
    """One output row: C int8 lanes (lanes ≥ the valid channel count are 0), C `wide`
    lanes (WIDE mode's result; don't-care otherwise) and `last`."""
    return data.StructLayout(
        {
            "data": data.ArrayLayout(signed(cfg.act_bits), cfg.cols),
            "wide": data.ArrayLayout(signed(wide_bits(cfg)), cfg.cols),
            "last": 1,
        }
    )


class PostProc(wiring.Component):
    """C post-processing lanes with their parameter memory and per-lane LUT copies.

    `param_w` and `lut_w` are always ready; write them between commands (a
    write while rows using that entry are in flight is not ordered with them).
    """

    def __init__(self, cfg: AccelConfig, param_rows: int) -> None:
        if not isinstance(param_rows, int) or param_rows < 1:
            raise ConfigError(f"PostProc.param_rows must be an int >= 1, got {param_rows!r}")
        self.cfg = cfg
        self.param_rows = param_rows
        super().__init__(
            {
                "inp": In(stream.Signature(postproc_input_layout(cfg, param_rows))),
                "out": Out(stream.Signature(output_layout(cfg))),
                "param_w": In(stream.Signature(param_write_layout(cfg, param_rows))),
                "lut_w": In(stream.Signature(lut_write_layout(cfg))),
                "busy": Out(1),
            }
        )

    @property
    def latency(self) -> int:
        """Cycles from an accepted input beat to its output beat (no backpressure)."""
        return 3

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        lanes, bits = cfg.cols, cfg.act_bits

        params = Memory(
            shape=data.ArrayLayout(param_layout(cfg), lanes), depth=self.param_rows, init=[]
        )
        m.submodules.params = params
        p_wr = params.write_port(granularity=1)
        p_rd_a = params.read_port()
        p_rd_b = params.read_port()
        m.d.comb += [
            self.param_w.ready.eq(1),
            p_wr.addr.eq(self.param_w.payload.row),
            p_wr.en.eq(Mux(self.param_w.valid, 1 << self.param_w.payload.lane, 0)),
        ]
        for c in range(lanes):
            m.d.comb += [
                p_wr.data[c].mult.eq(self.param_w.payload.mult),
                p_wr.data[c].shift.eq(self.param_w.payload.shift),
            ]

        luts = []
        for c in range(lanes):
            lut = Memory(shape=signed(bits), depth=2**bits, init=[])
            m.submodules[f"lut_{c}"] = lut
            wr = lut.write_port()
            m.d.comb += [
                wr.addr.eq(self.lut_w.payload.index),
                wr.data.eq(self.lut_w.payload.value),
                wr.en.eq(self.lut_w.valid),
            ]
            luts.append(lut.read_port())
        m.d.comb += self.lut_w.ready.eq(1)

        s1_valid, s2_valid = Signal(), Signal()
        advance = Signal()
        m.d.comb += [
            advance.eq(~self.out.valid | self.out.ready),
            self.inp.ready.eq(advance),
            self.busy.eq(s1_valid | s2_valid | self.out.valid),
            p_rd_a.addr.eq(self.inp.payload.param_a),
            p_rd_b.addr.eq(self.inp.payload.param_b),
            p_rd_a.en.eq(advance),
            p_rd_b.en.eq(advance),
        ]

        # Stage 1: accumulators beside their parameters; requantise both.
        s1 = Signal(postproc_input_layout(cfg, self.param_rows))
        with m.If(advance):
            m.d.sync += [s1_valid.eq(self.inp.valid), s1.eq(self.inp.payload)]

        # Stage 2: LUT output beside the requantised W3 value; gated multiply.
        wbits = wide_bits(cfg)
        qmax = 2 ** (bits - 1) - 1
        s2_qa = Signal(data.ArrayLayout(signed(bits), lanes))
        s2_wide = Signal(data.ArrayLayout(signed(wbits), lanes))
        s2_qb = Signal(data.ArrayLayout(signed(bits), lanes))
        s2_mode = Signal(Mode)
        s2_gate = Signal(param_layout(cfg))
        s2_n_valid = Signal.like(s1.n_valid)
        s2_last = Signal()
        with m.If(advance):
            m.d.sync += [
                s2_valid.eq(s1_valid),
                s2_mode.eq(s1.mode),
                s2_gate.mult.eq(s1.gate_mult),
                s2_gate.shift.eq(s1.gate_shift),
                s2_n_valid.eq(s1.n_valid),
                s2_last.eq(s1.last),
            ]

        for c in range(lanes):
            req_a = Requantizer(cfg.acc_bits, cfg.mult_bits, wbits)
            req_b = Requantizer(cfg.acc_bits, cfg.mult_bits, bits)
            gate = Requantizer(2 * bits, cfg.mult_bits, bits)
            m.submodules[f"req_a_{c}"] = req_a
            m.submodules[f"req_b_{c}"] = req_b
            m.submodules[f"gate_{c}"] = gate
            m.d.comb += [
                req_a.value.eq(s1.acc_a[c]),
                req_a.mult.eq(p_rd_a.data[c].mult),
                req_a.shift.eq(p_rd_a.data[c].shift),
                req_b.value.eq(s1.acc_b[c]),
                req_b.mult.eq(p_rd_b.data[c].mult),
                req_b.shift.eq(p_rd_b.data[c].shift),
                luts[c].en.eq(advance),
            ]
            # Saturating the wide result again to act_bits equals saturating directly.
            narrow = Signal(signed(bits), name=f"narrow_{c}")
            wide = req_a.result
            m.d.comb += [
                narrow.eq(Mux(wide > qmax, qmax, Mux(wide < -qmax, -qmax, wide))),
                luts[c].addr.eq(narrow.as_unsigned()),
            ]
            with m.If(advance):
                m.d.sync += [
                    s2_qa[c].eq(narrow),
                    s2_wide[c].eq(wide),
                    s2_qb[c].eq(req_b.result),
                ]

            activated = Signal(signed(bits), name=f"activated_{c}")
            m.d.comb += activated.eq(Mux(s2_mode == Mode.REQUANT, s2_qa[c], luts[c].data))
            m.d.comb += [
                gate.value.eq(activated * s2_qb[c]),
                gate.mult.eq(s2_gate.mult),
                gate.shift.eq(s2_gate.shift),
            ]
            result = Mux(s2_mode == Mode.SWIGLU, gate.result, activated)
            with m.If(advance):
                m.d.sync += [
                    self.out.payload.data[c].eq(Mux(c < s2_n_valid, result, 0)),
                    self.out.payload.wide[c].eq(Mux(c < s2_n_valid, s2_wide[c], 0)),
                ]

        # Stage 3: the output register.
        with m.If(advance):
            m.d.sync += [self.out.valid.eq(s2_valid), self.out.payload.last.eq(s2_last)]
        return m
