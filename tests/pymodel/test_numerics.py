"""The shared integer arithmetic against exact rational arithmetic (fractions.Fraction)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymodel.config import AccelConfig, ConfigError
from pymodel.numerics import (
    NumericsError,
    PostMode,
    apply_lut,
    check_finite,
    check_int_array,
    div_round,
    gated_multiply,
    make_lut,
    postprocess,
    quantize,
    quantize_multiplier,
    requantize,
    round_half_away,
    rshift_round,
    saturate,
    scale_for,
)

PROPS = settings(max_examples=200, deadline=None)


def exact_round(q: Fraction) -> int:
    """Round half away from zero, exactly."""
    mag = math.floor(abs(q) + Fraction(1, 2))
    return mag if q >= 0 else -mag


def sat(v: int, bits: int = 8) -> int:
    top = 2 ** (bits - 1) - 1
    return max(-top, min(top, v))


@PROPS
@given(
    acc=st.integers(-(2**31), 2**31 - 1),
    mult=st.integers(0, 2**16 - 1),
    shift=st.integers(0, 48),
    bits=st.sampled_from([8, 16]),
)
def test_requantize_matches_exact_rational(acc: int, mult: int, shift: int, bits: int) -> None:
    got = int(requantize(np.array([acc]), mult, shift, bits)[0])
    assert got == sat(exact_round(Fraction(acc * mult, 2**shift)), bits)


@PROPS
@given(p=st.integers(-(2**46), 2**46), shift=st.integers(0, 40))
def test_rshift_round_matches_exact_rational(p: int, shift: int) -> None:
    assert int(rshift_round(np.array([p]), shift)[0]) == exact_round(Fraction(p, 2**shift))


@PROPS
@given(odd=st.integers(-(2**20), 2**20).map(lambda v: 2 * v + 1), shift=st.integers(1, 20))
def test_ties_round_away_from_zero(odd: int, shift: int) -> None:
    # odd · 2^(shift-1) / 2^shift = odd / 2 is exactly halfway between two integers.
    got = int(rshift_round(np.array([odd << (shift - 1)]), shift)[0])
    assert abs(got) == (abs(odd) + 1) // 2
    assert (got > 0) == (odd > 0)


def test_ties_examples() -> None:
    assert requantize(np.array([3, -3, 1, -1, 5, -5]), 1, 1).tolist() == [2, -2, 1, -1, 3, -3]
    assert round_half_away(np.array([0.5, -0.5, 1.5, -2.5, 0.49])).tolist() == [1, -1, 2, -3, 0]


def test_rounding_far_beyond_int64_keeps_its_sign() -> None:
    """A LUT built at a vanishing scale asks for ±1e30: it must saturate, not wrap to −2^63."""
    huge = np.array([1e30, -1e30, np.float64(2**63)])
    assert (np.sign(round_half_away(huge)) == [1, -1, 1]).all()
    assert quantize(np.array([1.0, -1.0]), 1e-21).tolist() == [127, -127]


def test_requantize_saturates_symmetrically() -> None:
    assert requantize(np.array([10**6, -(10**6)]), 1, 0).tolist() == [127, -127]
    assert saturate(np.array([-128, 128]), 8).tolist() == [-127, 127]


@PROPS
@given(
    real=st.floats(1e-9, 100.0, allow_nan=False, allow_infinity=False),
    mult_bits=st.integers(8, 24),
)
def test_quantize_multiplier_precision(real: float, mult_bits: int) -> None:
    m, shift = quantize_multiplier(real, mult_bits)
    assert 2 ** (mult_bits - 1) <= m < 2**mult_bits
    assert abs(Fraction(m, 2**shift) / Fraction(real) - 1) <= Fraction(1, 2**mult_bits)


def test_quantize_multiplier_rejects_bad_factors() -> None:
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(NumericsError, match="factor"):
            quantize_multiplier(bad)
    with pytest.raises(NumericsError, match="too large"):
        quantize_multiplier(2.0**20, 16)
    assert quantize_multiplier(1e-30, 16) == (0, 0)


@PROPS
@given(
    g=st.integers(-127, 127),
    u=st.integers(-127, 127),
    mult=st.integers(1, 2**16 - 1),
    shift=st.integers(0, 40),
)
def test_gated_multiply_exact(g: int, u: int, mult: int, shift: int) -> None:
    got = int(gated_multiply(np.array([g]), np.array([u]), mult, shift)[0])
    assert got == sat(exact_round(Fraction(g * u * mult, 2**shift)))


@PROPS
@given(n=st.integers(0, 2**22), d=st.integers(1, 2**24), frac=st.integers(0, 24))
def test_div_round_is_exact_rounding(n: int, d: int, frac: int) -> None:
    got = int(div_round(np.array([n]), np.array([d]), frac)[0])
    assert got == exact_round(Fraction(n * 2**frac, d))
    assert abs(Fraction(got) - Fraction(n * 2**frac, d)) <= Fraction(1, 2)


def test_div_round_rejects_bad_operands() -> None:
    with pytest.raises(NumericsError, match="denominators"):
        div_round(np.array([1]), np.array([0]), 4)
    with pytest.raises(NumericsError, match="numerators"):
        div_round(np.array([-1]), np.array([3]), 4)


@PROPS
@given(
    x=st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=16),
    scale=st.floats(1e-3, 1.0),
)
def test_quantize_rounds_and_saturates(x: list[float], scale: float) -> None:
    got = quantize(np.array(x), scale)
    want = [sat(exact_round(Fraction(v) / Fraction(scale))) for v in x]
    assert got.tolist() == want


def test_scale_for_zero_tensor_and_absmax() -> None:
    assert scale_for(0.0).item() == 1.0
    assert scale_for(np.array([127.0, 2.54])).tolist() == pytest.approx([1.0, 0.02])


def test_lut_is_indexed_by_twos_complement() -> None:
    lut = make_lut(lambda v: v, 1.0, 1.0)
    assert lut.shape == (256,)
    q = np.arange(-128, 128)
    assert apply_lut(lut, q).tolist() == saturate(q, 8).tolist()
    assert lut[255] == -1 and lut[128] == -127 and lut[127] == 127
    relu = make_lut(lambda v: np.maximum(v, 0), 0.1, 0.05)
    assert apply_lut(relu, np.array([-3, 0, 3])).tolist() == [0, 0, 6]


def test_lut_with_fewer_bits() -> None:
    lut = make_lut(lambda v: 2 * v, 1.0, 1.0, bits=4)
    assert apply_lut(lut, np.array([-8, -1, 3, 7]), bits=4).tolist() == [-7, -2, 6, 7]
    with pytest.raises(ConfigError, match="LUT"):
        apply_lut(lut, np.array([0]), bits=8)


def test_checks_name_the_tensor() -> None:
    with pytest.raises(NumericsError, match="foo holds 2 NaN/Inf"):
        check_finite("foo", np.array([1.0, np.nan, np.inf]))
    with pytest.raises(NumericsError, match="bar must be an integer"):
        check_int_array("bar", np.zeros(3), 8)
    with pytest.raises(NumericsError, match="baz has values outside"):
        check_int_array("baz", np.array([128]), 8)
    with pytest.raises(NumericsError, match="scale"):
        quantize(np.ones(2), 0.0)
    with pytest.raises(NumericsError, match="NaN"):
        quantize(np.array([np.nan]), 1.0)


def test_postprocess_modes_and_their_missing_operands():
    cfg = AccelConfig()
    acc = np.array([[1000, -70000, 5]])
    wide = postprocess(PostMode.WIDE, cfg, acc, 1, 4)
    np.testing.assert_array_equal(wide.y, requantize(acc, 1, 4, cfg.logit_bits))
    assert postprocess(PostMode.REQUANT, cfg, acc, 1, 4).g is None
    with pytest.raises(ConfigError, match="needs a LUT"):
        postprocess(PostMode.REQUANT_LUT, cfg, acc, 1, 4)
    lut = np.arange(256, dtype=np.int64) - 128
    with pytest.raises(ConfigError, match="acc_b"):
        postprocess(PostMode.SWIGLU, cfg, acc, 1, 4, lut=lut)
