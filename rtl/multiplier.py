"""Two-stage pipelined multiplier: operands registered, product registered.

`p` holds `a · b` two cycles after `a`/`b` were presented (`LATENCY`). Every
DSP multiply of the accelerator goes through this one unit, so the same
pipeline is simulated everywhere and, on ECP5, maps onto one MULT18X18D whose
own input and output registers hold the two stages.

Why the DSP's registers: yosys maps a multiply onto MULT18X18D as a
combinational block and leaves the registers around it in the fabric, so a
register → DSP → register path carries the DSP's ~3.9 ns plus routing into
and out of the block; at 8 × 8 the array's products were the critical paths
(14.6–18.1 ns, `docs/fpga.md`). nextpnr times a MULT18X18D whose inputs and
output are registered as register to register, leaving only the routing to
the block's input pins and from its output pins.

When `elaborate` gets a platform whose `family` is `"ecp5"` (`flow.runs`
passes its `FpgaDevice`; Amaranth's Lattice platforms have the same
attribute) it instantiates MULT18X18D with `REG_INPUTA_CLK`,
`REG_INPUTB_CLK` and `REG_OUTPUT_CLK` on `CLK0` (the pipeline register
bypassed), both operands sign- or zero-extended to signed 18 bits. Any other
platform (simulation, Verilog export) gets the same two stages as plain
registers.

`en` exists for software models: the operand registers load only while it is
set, and the product register only the cycle after, so an idle multiplier costs
a simulator nothing. The product of a cycle without `en` is unspecified (the
DSP block runs free, its clock enables tied high, saving a fan-out net), and
users consume `p` only for enabled inputs. The registers have no reset, like
the DSP's (their `RST` pins tied low): a product is never read before its
operands were loaded.
"""

from __future__ import annotations

from amaranth import ClockSignal, Const, Instance, Module, Mux, Shape, Signal, Value, signed
from amaranth.hdl import ShapeCastable
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from contract.timing import MULTIPLIER_LATENCY

__all__ = [
    "DSP_OPERAND_BITS",
    "PipelinedMultiplier",
    "int4_halves",
    "targets_ecp5",
]

DSP_OPERAND_BITS = 18
"""MULT18X18D operand width: a signed operand may have 18 bits, an unsigned one 17."""


def int4_halves(a: Value, w: Value) -> tuple[Value, Value]:
    """Two partial sums whose sum is `a · w` (signed `a`, 4-bit two's-complement `w`).

    `w = −8·w₃ + 4·w₂ + 2·w₁ + w₀`: the first half is the copies of `a` that
    w₀ and w₁ select, the second the four-fold copy w₂ selects minus the
    eight-fold one w₃ selects. Registering the halves splits the product's
    adder chain over two cycles (the int4 PE's logic product, `rtl.systolic`).
    Why not `a * w`: synthesis maps every `*` onto a DSP multiplier (yosys'
    `mul2dsp` takes operands from 2 bits on), and that product must not cost
    a DSP. Exact for every `a` and every `w` in [−8, 7]
    (tests/rtl/test_systolic_pair.py checks all 256 × 16 int8 pairs).
    """
    w = w.as_unsigned()
    width = len(a) + 4
    a = a.as_signed()
    low = Mux(w[0], a, 0) + Mux(w[1], a << 1, 0)
    high = Mux(w[2], a << 2, 0) - Mux(w[3], a << 3, 0)
    return low.as_signed()[:width].as_signed(), high.as_signed()[:width].as_signed()


def targets_ecp5(platform) -> bool:
    """Whether `platform` (from `elaborate`) asks for ECP5 primitives."""
    return getattr(platform, "family", None) == "ecp5"


class PipelinedMultiplier(wiring.Component):
    """`p` = `a · b` `LATENCY` cycles later (see the module docstring).

    `a_shape` and `b_shape` are Amaranth shapes; the product has the shape
    Amaranth gives `a * b`. On ECP5 each operand must fit a signed 18-bit
    DSP input (signed ≤ 18 bits, unsigned ≤ 17).
    """

    LATENCY = MULTIPLIER_LATENCY
    """Cycles from an operand pair on `a`/`b` (with `en`) to its product on `p`."""

    def __init__(self, a_shape: ShapeCastable, b_shape: ShapeCastable) -> None:
        a_shape, b_shape = Shape.cast(a_shape), Shape.cast(b_shape)
        self.product_shape = (Signal(a_shape) * Signal(b_shape)).shape()
        super().__init__(
            {"a": In(a_shape), "b": In(b_shape), "en": In(1, init=1), "p": Out(self.product_shape)}
        )

    @staticmethod
    def fits_dsp(shape: Shape) -> bool:
        """Whether an operand of `shape` fits one signed 18-bit MULT18X18D input."""
        return shape.width + (0 if shape.signed else 1) <= DSP_OPERAND_BITS

    def elaborate(self, platform):
        if targets_ecp5(platform):
            return self._ecp5_dsp()
        m = Module()
        a = Signal.like(self.a, reset_less=True, name="a_reg")
        b = Signal.like(self.b, reset_less=True, name="b_reg")
        product = Signal(self.product_shape, reset_less=True, name="product")
        loaded = Signal(reset_less=True)
        m.d.sync += loaded.eq(self.en)
        with m.If(self.en):
            m.d.sync += [a.eq(self.a), b.eq(self.b)]
        with m.If(loaded):
            m.d.sync += product.eq(a * b)
        m.d.comb += self.p.eq(product)
        return m

    def _ecp5_dsp(self) -> Module:
        for name, port in (("a", self.a), ("b", self.b)):
            shape = port.shape()
            if not self.fits_dsp(shape):
                raise ValueError(
                    f"PipelinedMultiplier operand {name} ({shape}) does not fit a signed "
                    f"{DSP_OPERAND_BITS}-bit MULT18X18D input"
                )
        m = Module()
        a = Signal(signed(DSP_OPERAND_BITS), name="dsp_a")
        b = Signal(signed(DSP_OPERAND_BITS), name="dsp_b")
        p = Signal(signed(2 * DSP_OPERAND_BITS), name="dsp_p")
        m.d.comb += [a.eq(self.a), b.eq(self.b), self.p.eq(p)]
        ports = {f"i_A{i}": a[i] for i in range(DSP_OPERAND_BITS)}
        ports |= {f"i_B{i}": b[i] for i in range(DSP_OPERAND_BITS)}
        ports |= {f"i_C{i}": Const(0) for i in range(DSP_OPERAND_BITS)}
        ports |= {f"o_P{i}": p[i] for i in range(2 * DSP_OPERAND_BITS)}
        m.submodules.dsp = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK="CLK0",
            p_REG_INPUTB_CLK="CLK0",
            p_REG_PIPELINE_CLK="NONE",
            p_REG_OUTPUT_CLK="CLK0",
            p_GSR="DISABLED",
            i_SIGNEDA=Const(1),
            i_SIGNEDB=Const(1),
            i_SOURCEA=Const(0),
            i_SOURCEB=Const(0),
            i_CLK0=ClockSignal("sync"),
            i_CE0=Const(1),
            i_RST0=Const(0),
            **ports,
        )
        return m
