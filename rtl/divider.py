"""Pipelined unsigned divider: one quotient per cycle, one quotient bit per stage, saturating.

The gate's softmax and sigmoid weights are exact rounded quotients
(`div_round(n, d) = (n·2^F + d//2) // d` in the golden model); the caller
forms the rounded numerator and this unit computes `floor(num / den)`. It is
a restoring divider unrolled into `quo_width` stages (one subtractor of the
denominator's width each), so a pass over E experts costs E cycles plus the
pipeline depth instead of E divisions back to back. A `tag` travels with each
division so the caller needs no bookkeeping of what is in flight, and one
enable stalls the whole pipeline under output backpressure.

A quotient that does not fit `quo_width` bits (or a zero denominator)
saturates to all ones, and `overflow` says so.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Shape, ShapeCastable, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PipelinedDivider"]


class PipelinedDivider(wiring.Component):
    """`quotient = min(floor(num / den), 2^quo_width − 1)` for one operand pair a cycle.

    Parameters
    ----------
    num_width, den_width, quo_width : int
        Operand and quotient widths (each ≥ 1).
    tag_shape : shape
        Side data carried alongside each division (e.g. its index).

    Ports
    -----
    en : In(1)
        Advance the pipeline this cycle (low: every stage holds).
    i_valid, i_num, i_den, i_tag : In
        An operand pair, taken when `en`.
    o_valid, o_quotient, o_overflow, o_tag : Out
        The result `LATENCY` advancing cycles later; `o_overflow` when the true
        quotient did not fit (or `den` was 0) and `o_quotient` is all ones.
        Meaningful only while `o_valid` (they hold the last result otherwise).
    """

    def __init__(
        self, num_width: int, den_width: int, quo_width: int, tag_shape: ShapeCastable
    ) -> None:
        for name, value in (
            ("num_width", num_width),
            ("den_width", den_width),
            ("quo_width", quo_width),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PipelinedDivider.{name} must be an int >= 1, got {value!r}")
        self.num_width = num_width
        self.den_width = den_width
        self.quo_width = quo_width
        self.tag_shape = tag_shape
        super().__init__(
            {
                "en": In(1),
                "i_valid": In(1),
                "i_num": In(num_width),
                "i_den": In(den_width),
                "i_tag": In(tag_shape),
                "o_valid": Out(1),
                "o_quotient": Out(quo_width),
                "o_overflow": Out(1),
                "o_tag": Out(tag_shape),
            }
        )

    @property
    def latency(self) -> int:
        """Advancing cycles from an input to its result on the outputs."""
        return self.quo_width + 1

    def elaborate(self, platform):
        m = Module()
        qw = self.quo_width
        tag_width = Shape.cast(self.tag_shape).width

        # A stage's data fields, which always load together, are two registers rather
        # than six: a software model (Verilator) pays per variable, not per bit, and
        # each half stays within 64 bits for the gate's divider. Same flip-flops.
        carried = data.StructLayout(
            {"rem": self.den_width + 1, "den": self.den_width, "ovf": 1, "tag": tag_width}
        )
        shifted = data.StructLayout({"low": qw, "quo": qw})

        def stage(n: int) -> dict[str, Value]:
            keep = Signal(carried, name=f"s{n}_keep")
            bits = Signal(shifted, name=f"s{n}_bits")
            return {
                "valid": Signal(name=f"s{n}_valid"),
                "rem": keep.rem,
                "low": bits.low,
                "den": keep.den,
                "quo": bits.quo,
                "ovf": keep.ovf,
                "tag": keep.tag,
            }

        # Stage 0 registers the operands; the bits of `num` above the quotient's
        # weight start the remainder and must be < den for the quotient to fit.
        # Each stage's data registers load only with a valid division: an idle
        # pipeline then holds still, which is what simulators (Verilator runs the
        # whole accelerator every cycle) evaluate cheaply; only `valid` shifts.
        first = stage(0)
        high = self.i_num >> qw
        with m.If(self.en):
            m.d.sync += first["valid"].eq(self.i_valid)
        with m.If(self.en & self.i_valid):
            m.d.sync += [
                first["rem"].eq(high),
                first["low"].eq(self.i_num),
                first["den"].eq(self.i_den),
                first["quo"].eq(0),
                first["ovf"].eq((self.i_den == 0) | (high >= self.i_den)),
                first["tag"].eq(self.i_tag),
            ]
        prev = first
        for n in range(1, qw + 1):
            cur = stage(n)
            trial = Cat(prev["low"][qw - 1], prev["rem"])  # (rem << 1) | next bit
            fits = trial >= prev["den"]
            with m.If(self.en):
                m.d.sync += cur["valid"].eq(prev["valid"])
            with m.If(self.en & prev["valid"]):
                m.d.sync += [
                    cur["rem"].eq(Mux(fits, trial - prev["den"], trial)),
                    cur["low"].eq(prev["low"] << 1),
                    cur["den"].eq(prev["den"]),
                    cur["quo"].eq(Cat(fits, prev["quo"][:-1])),
                    cur["ovf"].eq(prev["ovf"]),
                    cur["tag"].eq(prev["tag"]),
                ]
            prev = cur
        m.d.comb += [
            self.o_valid.eq(prev["valid"]),
            self.o_quotient.eq(Mux(prev["ovf"], (1 << qw) - 1, prev["quo"])),
            self.o_overflow.eq(prev["ovf"]),
            self.o_tag.eq(prev["tag"]),
        ]
        return m
