"""The integer arithmetic every unit shares: quantise, requantise, lookup tables.

These functions *define* the numeric contract (`docs/numerics.md`); the RTL
post-processing lanes and the golden model both follow them bit for bit.
One rounding rule is used everywhere: round half away from zero.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .config import AccelConfig, ConfigError


class NumericsError(ValueError):
    """Bad numeric input: NaN/Inf, wrong dtype, out-of-range parameters."""


def qmax(bits: int) -> int:
    """Largest magnitude of a symmetric signed `bits`-bit value (127 for int8)."""
    return 2 ** (bits - 1) - 1


def check_finite(name: str, x: np.ndarray) -> None:
    """Raise if `x` holds NaN or Inf, naming the tensor."""
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
        raise NumericsError(f"{name} holds {bad} NaN/Inf value(s)")


def check_int_array(name: str, x: np.ndarray, bits: int) -> None:
    """Raise unless `x` is an integer array whose values fit signed `bits` bits."""
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.integer):
        dtype = getattr(x, "dtype", type(x).__name__)
        raise NumericsError(f"{name} must be an integer numpy array, got {dtype}")
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if x.size and (x.min() < lo or x.max() > hi):
        raise NumericsError(f"{name} has values outside the signed {bits}-bit range [{lo}, {hi}]")


ROUND_LIMIT = 2**62
"""`round_half_away` clamps to ±this: beyond int64 a float's cast is undefined (NumPy gives
int64's minimum for +1e30), and every caller saturates to at most 32 bits afterwards."""


def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """Round floats to the nearest integer, halves away from zero (int64, clamped to ±2^62)."""
    x = np.clip(np.asarray(x, dtype=np.float64), -ROUND_LIMIT, ROUND_LIMIT)
    return (np.sign(x) * np.floor(np.abs(x) + 0.5)).astype(np.int64)


def rshift_round(p: np.ndarray, shift: np.ndarray | int) -> np.ndarray:
    """`p / 2**shift` rounded half away from zero, on int64, exactly.

    Hardware form: `(p + 2**(shift-1) - (p < 0)) >>> shift` (arithmetic shift),
    and `p` unchanged when `shift == 0`.
    """
    p = np.asarray(p, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(np.int64(1), np.maximum(shift - 1, 0)), 0)
    neg = (p < 0).astype(np.int64)
    rounded = np.right_shift(p + half - np.where(shift > 0, neg, 0), shift)
    return rounded.astype(np.int64)


def saturate(x: np.ndarray, bits: int) -> np.ndarray:
    """Clamp to the symmetric signed range [-qmax, qmax] of `bits` bits."""
    q = qmax(bits)
    return np.clip(np.asarray(x, dtype=np.int64), -q, q)


def quantize_multiplier(real: float, mult_bits: int = 16, max_shift: int = 63) -> tuple[int, int]:
    """Encode a positive real scale factor as `m / 2**shift` with `m` of `mult_bits` bits.

    `m` is normalised into [2^(mult_bits-1), 2^mult_bits) when the shift range
    allows, so the relative error is below 2^-mult_bits. A factor too small
    to represent gives (0, 0): the output is then exactly zero.
    """
    if not math.isfinite(real) or real <= 0:
        raise NumericsError(f"requantisation factor must be finite and > 0, got {real}")
    top = 2**mult_bits
    exp = math.floor(math.log2(real))
    shift = mult_bits - 1 - exp
    if shift < 0:
        raise NumericsError(
            f"requantisation factor {real:g} too large for a {mult_bits}-bit multiplier"
        )
    if shift > max_shift:
        m = round(real * 2**max_shift)
        return (m, max_shift) if m > 0 else (0, 0)
    m = round(real * 2**shift)
    if m >= top:
        m //= 2
        shift -= 1
    return int(m), int(shift)


def requantize(
    acc: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int, bits: int = 8
) -> np.ndarray:
    """int accumulator → signed `bits`-bit: `sat(round_half_away(acc · mult / 2**shift))`.

    `mult`/`shift` broadcast against `acc` (per output channel along the last
    axis, or per tensor). The product is exact in int64 (acc ≤ 40 bits,
    mult ≤ 24 bits).
    """
    acc = np.asarray(acc, dtype=np.int64)
    p = acc * np.asarray(mult, dtype=np.int64)
    return saturate(rshift_round(p, shift), bits)


def quantize(x: np.ndarray, scale: float | np.ndarray, bits: int = 8) -> np.ndarray:
    """float → symmetric int: `sat(round_half_away(x / scale))`, rejecting NaN/Inf."""
    x = np.asarray(x, dtype=np.float64)
    check_finite("tensor to quantise", x)
    scale = np.asarray(scale, dtype=np.float64)
    if np.any(~np.isfinite(scale)) or np.any(scale <= 0):
        raise NumericsError("quantisation scale must be finite and > 0")
    return saturate(round_half_away(x / scale), bits)


def scale_for(absmax: float | np.ndarray, bits: int = 8) -> np.ndarray:
    """Symmetric scale mapping `absmax` to qmax; an all-zero tensor gets scale 1."""
    absmax = np.asarray(absmax, dtype=np.float64)
    check_finite("absmax", absmax)
    return np.where(absmax > 0, absmax / qmax(bits), 1.0)


def make_lut(
    fn: Callable[[np.ndarray], np.ndarray], in_scale: float, out_scale: float, bits: int = 8
) -> np.ndarray:
    """Lookup table of an element-wise function of a `bits`-bit input.

    Entry `i` (the input's two's-complement code, 0 … 2^bits−1) holds
    `quantize(fn(q · in_scale), out_scale)` where `q` is the signed value of `i`.
    """
    n = 2**bits
    codes = np.arange(n, dtype=np.int64)
    q = np.where(codes >= n // 2, codes - n, codes)
    return quantize(fn(q.astype(np.float64) * in_scale), out_scale, bits)


def apply_lut(lut: np.ndarray, q: np.ndarray, bits: int = 8) -> np.ndarray:
    """Look up signed `bits`-bit values `q` in `lut` (indexed by two's-complement code)."""
    n = 2**bits
    if lut.shape != (n,):
        raise ConfigError(f"LUT must have {n} entries, got shape {lut.shape}")
    return lut[np.asarray(q, dtype=np.int64) & (n - 1)]


def gated_multiply(
    g: np.ndarray, u: np.ndarray, mult: np.ndarray | int, shift: np.ndarray | int, bits: int = 8
) -> np.ndarray:
    """SwiGLU's element-wise gate: `requantize(g · u)`, the product exact before rounding."""
    return requantize(
        np.asarray(g, dtype=np.int64) * np.asarray(u, dtype=np.int64), mult, shift, bits
    )


class PostMode(enum.IntEnum):
    """What a post-processing lane computes from its accumulators (the GEMM command's `mode`).

    The RTL's `rtl.postproc.Mode` is generated from this enum; `postprocess`
    gives each mode's meaning.
    """

    REQUANT = 0
    """`requantize(acc_a)` to act_bits."""
    REQUANT_LUT = 1
    """`LUT(requantize(acc_a))`: GELU / ReLU experts."""
    SWIGLU = 2
    """`requantize(LUT(requantize(acc_a)) · requantize(acc_b))`: SwiGLU's gated product."""
    WIDE = 3
    """`requantize(acc_a)` to logit_bits: the router's logits."""


@dataclass(frozen=True)
class PostProcessed:
    """A post-processing chain's result `y` and its intermediates (int64 arrays).

    `a` is `requantize(acc_a)`, `g` the activated `LUT(a)` (None without a
    LUT), `u` the requantised second accumulator (SwiGLU only).
    """

    a: np.ndarray
    y: np.ndarray
    g: np.ndarray | None = None
    u: np.ndarray | None = None


def postprocess(
    mode: PostMode,
    cfg: AccelConfig,
    acc_a: np.ndarray,
    mult_a: np.ndarray | int,
    shift_a: np.ndarray | int,
    *,
    lut: np.ndarray | None = None,
    acc_b: np.ndarray | None = None,
    mult_b: np.ndarray | int = 0,
    shift_b: np.ndarray | int = 0,
    gate_mult: np.ndarray | int = 0,
    gate_shift: np.ndarray | int = 0,
) -> PostProcessed:
    """The post-processing chain requantise → LUT → gated multiply, as `mode` selects.

    The one definition the golden expert FFN, the router and the GEMM
    engine's model share (the RTL lanes of `rtl.postproc.PostProc` match it).
    """
    mode = PostMode(mode)
    if mode == PostMode.WIDE:
        wide = requantize(acc_a, mult_a, shift_a, cfg.logit_bits)
        return PostProcessed(a=wide, y=wide)
    bits = cfg.act_bits
    a = requantize(acc_a, mult_a, shift_a, bits)
    if mode == PostMode.REQUANT:
        return PostProcessed(a=a, y=a)
    if lut is None:
        raise ConfigError(f"post-processing mode {mode.name} needs a LUT")
    g = apply_lut(lut, a, bits)
    if mode == PostMode.REQUANT_LUT:
        return PostProcessed(a=a, y=g, g=g)
    if acc_b is None:
        raise ConfigError("post-processing mode SWIGLU needs the second accumulator acc_b")
    u = requantize(acc_b, mult_b, shift_b, bits)
    return PostProcessed(a=a, y=gated_multiply(g, u, gate_mult, gate_shift, bits), g=g, u=u)


def div_round(n: np.ndarray, d: np.ndarray, frac_bits: int) -> np.ndarray:
    """`n / d` as unsigned fixed point with `frac_bits` fraction bits, rounded exactly.

    `(n·2^frac_bits + d//2) // d` for n >= 0, d > 0: round half up, which for
    these non-negative operands is the contract's round half away from zero.
    Exact integer division (the RTL uses a sequential divider).
    """
    n = np.asarray(n, dtype=np.int64)
    d = np.asarray(d, dtype=np.int64)
    if np.any(n < 0) or np.any(d <= 0):
        raise NumericsError("div_round needs numerators >= 0 and denominators > 0")
    return ((n << frac_bits) + (d >> 1)) // d
