# amaranth: UnusedElaboratable=no
"""PipelinedMultiplier: two-cycle products in simulation, MULT18X18D on ECP5."""

import re

import numpy as np
import pytest
from amaranth import signed, unsigned
from amaranth.back import rtlil

from flow.devices import DEVICES
from rtl.multiplier import PipelinedMultiplier, targets_ecp5
from sim.amaranth_sim import run_simulation

# The array's pair (s8 × s8), a small unsigned pair, and the requantisers'
# operands (s16 unsplit, u17 low half, × u16 multipliers).
SHAPES = [
    (signed(8), signed(8)),
    (unsigned(4), unsigned(4)),
    (signed(16), unsigned(16)),
    (unsigned(17), unsigned(16)),
]


def _range(shape) -> tuple[int, int]:
    """The smallest and largest value of `shape`."""
    if shape.signed:
        return -(1 << shape.width - 1), (1 << shape.width - 1) - 1
    return 0, (1 << shape.width) - 1


@pytest.mark.parametrize(("a_shape", "b_shape"), SHAPES, ids=lambda s: str(s))
def test_product_two_cycles_later(a_shape, b_shape):
    mul = PipelinedMultiplier(a_shape, b_shape)
    assert mul.product_shape.width >= a_shape.width + b_shape.width - 1
    rng = np.random.default_rng(a_shape.width * 100 + b_shape.width)
    (a_lo, a_hi), (b_lo, b_hi) = _range(a_shape), _range(b_shape)
    pairs = [(a, b) for a in (a_lo, 0, a_hi) for b in (b_lo, 0, b_hi)]
    pairs += [
        (int(a), int(b))
        for a, b in zip(
            rng.integers(a_lo, a_hi + 1, 60), rng.integers(b_lo, b_hi + 1, 60), strict=True
        )
    ]

    async def bench(ctx):
        # Pair i is taken by clock edge i; its product is on `p` after edge i + LATENCY − 1.
        lag = PipelinedMultiplier.LATENCY - 1
        for i, (a, b) in enumerate(pairs + [(0, 0)] * lag):
            ctx.set(mul.a, a)
            ctx.set(mul.b, b)
            await ctx.tick()
            if i >= lag:
                pa, pb = pairs[i - lag]
                assert ctx.get(mul.p) == pa * pb, (pa, pb)

    run_simulation(mul, [bench])


def test_enable_gates_each_stage():
    """A pair presented with `en` low is not taken: `p` keeps the last enabled product."""
    mul = PipelinedMultiplier(signed(8), signed(8))

    async def bench(ctx):
        ctx.set(mul.a, -7)
        ctx.set(mul.b, 9)
        await ctx.tick()
        ctx.set(mul.en, 0)
        ctx.set(mul.a, 100)
        ctx.set(mul.b, 100)
        for _ in range(4):
            await ctx.tick()
            if _ >= 1:
                assert ctx.get(mul.p) == -63
        ctx.set(mul.en, 1)
        ctx.set(mul.a, -128)
        ctx.set(mul.b, -128)
        await ctx.tick()
        ctx.set(mul.en, 0)
        await ctx.tick()
        assert ctx.get(mul.p) == 16384

    run_simulation(mul, [bench])


def _ecp5_rtlil(a_shape, b_shape) -> str:
    mul = PipelinedMultiplier(a_shape, b_shape)
    return rtlil.convert(mul, name="mul", platform=DEVICES["ecp5-85f"])


def test_ecp5_maps_onto_one_registered_mult18x18d():
    text = _ecp5_rtlil(signed(16), unsigned(16))
    assert len(re.findall(r"cell \\MULT18X18D ", text)) == 1
    for param in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_OUTPUT_CLK"):
        assert re.search(rf'parameter \\{param} "CLK0"', text), param
    assert re.search(r'parameter \\REG_PIPELINE_CLK "NONE"', text)
    # The two stages live in the DSP: no fabric flip-flop is left.
    assert "$dff" not in text
    generic = rtlil.convert(PipelinedMultiplier(signed(16), unsigned(16)), name="mul")
    assert "MULT18X18D" not in generic and "$dff" in generic


def test_only_ecp5_platforms_get_the_primitive():
    assert targets_ecp5(DEVICES["ecp5-85f"])
    assert not targets_ecp5(DEVICES["ice40-up5k"])
    assert not targets_ecp5(None)


@pytest.mark.parametrize(("a_shape", "name"), [(signed(19), "a"), (unsigned(18), "a")])
def test_ecp5_rejects_operands_wider_than_the_dsp(a_shape, name):
    with pytest.raises(ValueError, match=rf"operand {name} .* does not fit a signed 18-bit"):
        _ecp5_rtlil(a_shape, signed(8))
    # Wider than a DSP is fine where no DSP is targeted.
    assert "$mul" in rtlil.convert(PipelinedMultiplier(a_shape, signed(8)), name="mul")
