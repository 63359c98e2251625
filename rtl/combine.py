"""Combiner: weighted sum of a token's expert outputs, then the output requantisation.

The hardware twin of `pymodel.combine.combine`. For every token and every
chunk of `lanes` output channels, the producer (the expert-output gather)
sends the token's terms back to back: each routed pair's gate weight with its
expert-output chunk `ye[row]`, and, with a shared expert, the shared weight
with `ysh[t]` (the gate unit gives `2^gate_frac_bits` for an ungated shared
expert). `last` marks a (token, chunk)'s final term. A pair dropped by
capacity is sent with weight 0 (its values are ignored), so a token whose
every pair was dropped still produces its (all-zero) output row.

Per lane: `acc = Σ w·v` exactly (signed `combine_acc_bits(max_top_k + 1)`),
then `y = sat(round_half_away(acc · out_mult / 2^out_shift))` to
`act_bits`, as `pymodel.numerics.requantize`. Outputs leave in input order,
i.e. token order.

The pipeline is four registered stages (product, accumulate, requantisation
product, round/saturate) under one stall enable, so it takes one term per
cycle and a chunk's output appears 4 cycles after its last term.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from contract.timing import COMBINE_LATENCY, SHIFT_BITS
from pymodel.combine import combine_acc_bits
from pymodel.config import AccelConfig, ConfigError

from .checks import sent_stream_invariants

__all__ = ["LATENCY", "CombineShapes", "Combiner", "combine_cycles"]

LATENCY = COMBINE_LATENCY
"""Cycles from a chunk's last term being accepted to its output being valid."""


class CombineShapes:
    """Widths and stream layouts of a combiner generated for one `AccelConfig`."""

    def __init__(self, cfg: AccelConfig, lanes: int) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"CombineShapes needs an AccelConfig, got {type(cfg).__name__}")
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ConfigError(f"Combiner lanes = {lanes!r} must be an int >= 1")
        self.lanes = lanes
        self.act_bits = cfg.act_bits
        self.weight = unsigned(cfg.gate_weight_bits)
        self.value = signed(cfg.act_bits)
        self.acc = signed(combine_acc_bits(cfg.max_top_k + 1, cfg))
        self.mult = unsigned(cfg.mult_bits)
        self.term = data.StructLayout(
            {
                "weight": self.weight,
                "values": data.ArrayLayout(self.value, lanes),
                "last": 1,
            }
        )
        self.out = data.ArrayLayout(self.value, lanes)


class Combiner(wiring.Component):
    """Σ weight·values per (token, chunk), requantised to `act_bits`.

    Parameters
    ----------
    cfg : AccelConfig
        Supplies `gate_weight_bits`, `act_bits`, `mult_bits` and `max_top_k`
        (the accumulator holds up to `max_top_k + 1` terms exactly).
    lanes : int
        Output channels per beat (default `cfg.cols`, the GEMM engine's width).

    Ports
    -----
    terms : In(stream)
        {weight, values[lanes], last}; `last` closes a (token, chunk).
    out_mult, out_shift : In
        The output requantisation multiplier and shift, held stable in a run.
    out : Out(stream)
        One beat of `lanes` int values per (token, chunk), in input order.
    """

    def __init__(self, cfg: AccelConfig, lanes: int | None = None) -> None:
        self.shapes = s = CombineShapes(cfg, cfg.cols if lanes is None else lanes)
        super().__init__(
            {
                "terms": In(stream.Signature(s.term)),
                "out_mult": In(s.mult),
                "out_shift": In(SHIFT_BITS),
                "out": Out(stream.Signature(s.out)),
            }
        )

    def elaborate(self, platform):
        s = self.shapes
        m = Module()
        sent_stream_invariants(m, self)
        qmax = 2 ** (s.act_bits - 1) - 1
        en = Signal()
        m.d.comb += [en.eq(~self.out.valid | self.out.ready), self.terms.ready.eq(en)]

        v1, last1 = Signal(), Signal()
        v2 = Signal()
        v3 = Signal()
        first = Signal(init=1)  # the next product starts a new (token, chunk)
        prod_w = s.weight.width + s.act_bits + 1
        req_w = s.acc.width + s.mult.width + 1
        # |scaled| <= 2^(req_w - 1), so every shift past req_w + 1 rounds to 0 exactly as
        # req_w + 1 does (the golden int64 arithmetic agrees): clamping the shift keeps
        # the rounding exact and every intermediate within 64 bits (a fast Verilated model).
        max_shift = min(req_w + 1, 2**SHIFT_BITS - 1)
        shift = Signal(range(max_shift + 1))
        m.d.comb += shift.eq(Mux(self.out_shift > max_shift, max_shift, self.out_shift))
        shift_down = Signal(range(max_shift + 1))
        m.d.comb += shift_down.eq(max_shift - shift)
        half = Signal(max_shift)  # 2^(shift-1), 0 for shift 0
        m.d.comb += half.eq(Const(1 << (max_shift - 1), max_shift) >> shift_down)

        with m.If(en):
            m.d.sync += [
                v1.eq(self.terms.valid),
                last1.eq(self.terms.payload.last),
                v3.eq(v2),
                self.out.valid.eq(v3),
            ]
            with m.If(v1):
                m.d.sync += [first.eq(last1), v2.eq(last1)]
            with m.Else():
                m.d.sync += v2.eq(0)

        for lane in range(s.lanes):
            prod = Signal(signed(prod_w), name=f"prod{lane}")
            acc = Signal(s.acc, name=f"acc{lane}")
            total = Signal(s.acc, name=f"total{lane}")
            scaled = Signal(signed(req_w), name=f"scaled{lane}")
            rounded = Signal(signed(req_w + 4), name=f"rounded{lane}")
            value = self.terms.payload.values[lane]
            # Each stage's data registers load only when a beat is there to use them
            # (the valids say which: the term, v1, v2, v3), so an idle combiner holds
            # still; the values that reach `out` while it is valid are unchanged.
            with m.If(en & self.terms.valid):
                # Zero-extend the unsigned weight so the product is a signed one.
                m.d.sync += prod.eq(Cat(self.terms.payload.weight, 0).as_signed() * value)
            with m.If(en & v1):
                running = Mux(first, 0, acc) + prod
                m.d.sync += [acc.eq(running), total.eq(running)]
            with m.If(en & v2):
                m.d.sync += scaled.eq(total * self.out_mult)
            m.d.comb += rounded.eq((scaled + half - (shift.bool() & scaled[-1])) >> shift)
            with m.If(en & v3):
                m.d.sync += self.out.payload[lane].eq(
                    Mux(rounded > qmax, qmax, Mux(rounded < -qmax, -qmax, rounded))
                )
        return m


def combine_cycles(n_terms: int) -> int:
    """Cycles from the first term accepted to the last output accepted, without gaps.

    One term per cycle, then `LATENCY` to the final output; `docs/units.md`
    tabulates it and the RTL tests check it against the simulation.
    """
    return n_terms + LATENCY
