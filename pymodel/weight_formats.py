"""Compressed expert weight formats: 2:4 structured sparsity along K and int4 weights.

Why one module: the pruning rule, the compressed and packed forms and the
group-wise scale arithmetic are facts the quantiser, the golden layer, the
GEMM engine's weight streams, the cycle model and the driver all follow; they
are written here once and imported everywhere (docs/numerics.md §3.1).

* 2:4 along K, per output channel n: in each group k = 4g..4g+3 the two
  entries of largest |w| of the *float* weight survive, ties to the lower k;
  the kept pair is stored in ascending k order as `values[K/2, N]` with their
  positions `idx[K/2, N]` ∈ 0..3 (`idx[2g, n] < idx[2g+1, n]`).
* int4: symmetric, q ∈ [-7, 7], two per byte, the lower K index in the low
  nibble (two's-complement nibbles).
* Group-wise int4 scales (a scale per (K group, n)) scale each group's exact
  partial sum by its Q0.`GROUP_SCALE_FRAC_BITS` ratio to the channel's
  largest group scale, then round once (`grouped_matmul`): golden model only;
  the hardware applies one scale per output channel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .config import AccelConfig, ConfigError
from .gemm import matmul_int
from .numerics import (
    NumericsError,
    check_finite,
    check_int_array,
    qmax,
    quantize,
    round_half_away,
    rshift_round,
    scale_for,
)

__all__ = [
    "GROUP_SCALE_FRAC_BITS",
    "GROUP_SIZES",
    "QuantizedWeights",
    "WeightFormat",
    "check_supported",
    "compress_2_4",
    "decompress_2_4",
    "grouped_matmul",
    "idx_mask",
    "pack_int4",
    "prune_2_4_mask",
    "quantize_weights",
    "unpack_int4",
]

GROUP_SIZES: tuple[int, ...] = (32, 64, 128)
"""The K group sizes group-wise int4 scales may use."""

GROUP_SCALE_FRAC_BITS = 16
"""Fraction bits of a group scale's ratio to its channel's largest group scale (Q0.16)."""

WEIGHT_CHOICES: tuple[str, ...] = ("int8", "int4")
"""The CLI's `--weights` values."""

SPARSITY_CHOICES: tuple[str, ...] = ("dense", "2:4")
"""The CLI's `--sparsity` values."""


@dataclass(frozen=True)
class WeightFormat:
    """How a layer's expert weights are stored and computed: bit width, 2:4 or dense, groups.

    A field of the quantised layer (per layer, not a global switch).
    `group_size` (int4 only) gives a scale per `group_size` K positions and
    output channel; None is one scale per output channel.
    """

    bits: int = 8
    sparse: bool = False
    group_size: int | None = None

    DENSE_INT8: ClassVar[WeightFormat]

    def __post_init__(self) -> None:
        if self.bits not in (8, 4) or isinstance(self.bits, bool):
            raise ConfigError(f"WeightFormat.bits must be 8 or 4, got {self.bits!r}")
        if not isinstance(self.sparse, bool):
            raise ConfigError(f"WeightFormat.sparse must be a bool, got {self.sparse!r}")
        if self.group_size is not None:
            if self.bits != 4:
                raise ConfigError(
                    "WeightFormat.group_size applies to int4 weights only "
                    f"(int8 weights have one scale per output channel), got bits = {self.bits}"
                )
            if self.group_size not in GROUP_SIZES:
                raise ConfigError(
                    f"WeightFormat.group_size = {self.group_size!r} is not one of "
                    f"{list(GROUP_SIZES)}"
                )

    @classmethod
    def parse(
        cls, weights: str = "int8", sparsity: str = "dense", group_size: int | None = None
    ) -> WeightFormat:
        """The format of the CLI strings `int8|int4` and `dense|2:4` (and an int4 group size)."""
        if weights not in WEIGHT_CHOICES:
            raise ConfigError(f"weights must be one of {list(WEIGHT_CHOICES)}, got {weights!r}")
        if sparsity not in SPARSITY_CHOICES:
            raise ConfigError(f"sparsity must be one of {list(SPARSITY_CHOICES)}, got {sparsity!r}")
        return cls(
            bits=8 if weights == "int8" else 4, sparse=sparsity == "2:4", group_size=group_size
        )

    @property
    def weights(self) -> str:
        """The `--weights` string: `int8` or `int4`."""
        return f"int{self.bits}"

    @property
    def sparsity(self) -> str:
        """The `--sparsity` string: `dense` or `2:4`."""
        return "2:4" if self.sparse else "dense"

    @property
    def name(self) -> str:
        """Short human name, e.g. `int8 dense`, `int4 2:4 g128`."""
        group = f" g{self.group_size}" if self.group_size is not None else ""
        return f"{self.weights} {self.sparsity}{group}"

    @property
    def qmax(self) -> int:
        """Largest weight magnitude the format produces (127 or 7)."""
        return qmax(self.bits)

    @property
    def compressed(self) -> bool:
        """True for every format other than today's dense int8."""
        return self != WeightFormat.DENSE_INT8

    def check_k(self, k: int, what: str = "weight") -> None:
        """Raise unless a reduction length `k` suits the format (2:4 groups, scale groups)."""
        if self.sparse and k % 4:
            raise ConfigError(
                f"2:4 sparsity prunes groups of 4 along K: {what} K = {k} is not a multiple of 4"
            )
        if self.group_size is not None and k % self.group_size:
            raise ConfigError(f"int4 group size {self.group_size} does not divide {what} K = {k}")

    def to_json(self) -> str:
        """A compact string form (`from_json` inverts it), for pickle-free arrays."""
        group = self.group_size if self.group_size is not None else 0
        return f"{self.bits}:{int(self.sparse)}:{group}"

    @classmethod
    def from_json(cls, text: str) -> WeightFormat:
        """Inverse of `to_json`."""
        try:
            bits, sparse, group = (int(part) for part in str(text).split(":"))
        except ValueError as exc:
            raise ConfigError(f"not a WeightFormat string: {text!r}") from exc
        if sparse not in (0, 1):
            raise ConfigError(f"not a WeightFormat string: {text!r}")
        return cls(bits=bits, sparse=bool(sparse), group_size=group or None)


WeightFormat.DENSE_INT8 = WeightFormat()


def _check_matrix(name: str, w: np.ndarray) -> None:
    if not isinstance(w, np.ndarray) or w.ndim != 2:
        raise ConfigError(f"{name} must be a 2-D [K, N] numpy array, got {getattr(w, 'shape', w)}")


def prune_2_4_mask(w_float: np.ndarray) -> np.ndarray:
    """bool[K, N]: the two largest |w| of each group of 4 along K survive, ties to the lower k."""
    _check_matrix("w_float", w_float)
    check_finite("w_float", w_float)
    WeightFormat(sparse=True).check_k(w_float.shape[0])
    k, n = w_float.shape
    groups = np.abs(np.asarray(w_float, dtype=np.float64)).reshape(k // 4, 4, n)
    # A stable sort of −|w| keeps the lower k first among equal magnitudes.
    order = np.argsort(-groups, axis=1, kind="stable")[:, :2, :]
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(k, n)


def _check_mask(mask: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.shape != shape:
        raise ConfigError(
            f"2:4 mask must be a bool array of shape {shape}, got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}"
        )
    WeightFormat(sparse=True).check_k(shape[0])
    counts = mask.reshape(shape[0] // 4, 4, shape[1]).sum(axis=1)
    if np.any(counts != 2):
        g, n = np.argwhere(counts != 2)[0]
        raise ConfigError(
            f"2:4 mask keeps {counts[g, n]} entries of group {g} (k = {4 * g}..{4 * g + 3}) "
            f"in column {n}, not 2"
        )


def compress_2_4(w_int: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values[K/2, N], idx[K/2, N]): the kept entries of each group of 4, ascending k.

    `values[2g+j, n] = w_int[4g + idx[2g+j, n], n]`; `idx` is uint8 in 0..3.
    """
    _check_matrix("w_int", w_int)
    if not np.issubdtype(w_int.dtype, np.integer):
        raise NumericsError(f"w_int must be an integer array, got {w_int.dtype}")
    _check_mask(mask, w_int.shape)
    k, n = w_int.shape
    pos = np.nonzero(mask.reshape(k // 4, 4, n).transpose(0, 2, 1))
    # nonzero walks (group, column, position) in order: per (g, n) the two kept k ascending.
    idx = pos[2].reshape(k // 4, n, 2).transpose(0, 2, 1).reshape(k // 2, n)
    rows = 4 * (np.arange(k // 2) // 2)[:, None] + idx
    values = np.take_along_axis(w_int, rows, axis=0)
    return values, idx.astype(np.uint8)


def idx_mask(idx: np.ndarray) -> np.ndarray:
    """bool[K, N] mask of the positions `idx[K/2, N]` selects (the inverse of compress's idx)."""
    if not isinstance(idx, np.ndarray) or idx.ndim != 2 or idx.shape[0] % 2:
        raise ConfigError(
            "idx must be a 2-D [K/2, N] array with an even row count, "
            f"got {getattr(idx, 'shape', idx)}"
        )
    if not np.issubdtype(idx.dtype, np.integer) or (idx.size and (idx.min() < 0 or idx.max() > 3)):
        raise NumericsError("2:4 positions idx must be integers in 0..3")
    pairs = idx.reshape(idx.shape[0] // 2, 2, idx.shape[1]).astype(np.int64)
    if np.any(pairs[:, 0, :] >= pairs[:, 1, :]):
        g, n = np.argwhere(pairs[:, 0, :] >= pairs[:, 1, :])[0]
        raise NumericsError(
            f"2:4 positions of group {g}, column {n} are {pairs[g, 0, n]}, {pairs[g, 1, n]}: "
            "a kept pair must be two distinct positions in ascending order"
        )
    k = 2 * idx.shape[0]
    mask = np.zeros((k // 4, 4, idx.shape[1]), dtype=bool)
    np.put_along_axis(mask, pairs, True, axis=1)
    return mask.reshape(k, idx.shape[1])


def decompress_2_4(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Dense int [K, N] from `compress_2_4`'s output: kept values in place, zeros elsewhere."""
    _check_matrix("values", values)
    if not np.issubdtype(values.dtype, np.integer):
        raise NumericsError(f"values must be an integer array, got {values.dtype}")
    if not isinstance(idx, np.ndarray) or idx.shape != values.shape:
        raise ConfigError(
            f"idx shape {getattr(idx, 'shape', idx)} differs from values shape {values.shape}"
        )
    mask = idx_mask(idx)
    k, n = mask.shape
    dense = np.zeros((k, n), dtype=values.dtype)
    rows = 4 * (np.arange(k // 2) // 2)[:, None] + idx.astype(np.int64)
    np.put_along_axis(dense, rows, values, axis=0)
    return dense


def pack_int4(q: np.ndarray) -> np.ndarray:
    """uint8[ceil(K/2), N]: byte[j, n] = (q[2j, n] & 0xF) | ((q[2j+1, n] & 0xF) << 4).

    An odd K packs a zero high nibble into the last row. Values must fit the
    signed 4-bit range [-8, 7] (the quantiser itself never produces −8).
    """
    _check_matrix("q", q)
    check_int_array("int4 weights", q, 4)
    k, n = q.shape
    codes = np.zeros((k + k % 2, n), dtype=np.uint8)
    codes[:k] = q.astype(np.int64) & 0xF
    return (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)


def unpack_int4(packed: np.ndarray, k: int | None = None) -> np.ndarray:
    """int8[K, N] from `pack_int4`'s bytes (K defaults to twice the byte rows)."""
    _check_matrix("packed", packed)
    if packed.dtype != np.uint8:
        raise NumericsError(f"packed int4 weights must be uint8, got {packed.dtype}")
    rows = packed.shape[0]
    k = 2 * rows if k is None else k
    if k not in (2 * rows, 2 * rows - 1) or k < 0:
        raise ConfigError(f"{rows} packed byte rows hold K = {2 * rows - 1} or {2 * rows}, not {k}")
    nibbles = np.empty((2 * rows, packed.shape[1]), dtype=np.int64)
    nibbles[0::2] = packed & 0xF
    nibbles[1::2] = packed >> 4
    signed = np.where(nibbles >= 8, nibbles - 16, nibbles)
    return signed[:k].astype(np.int8)


@dataclass(frozen=True)
class QuantizedWeights:
    """One weight matrix in a format: what the golden GEMM multiplies and how to rescale it.

    `q` [K, N] holds the integer weights in dense form (zeros where 2:4 pruned).
    `scale` [N] is the per-output-channel scale the requantiser uses (with
    group-wise scales: each channel's largest group scale). `idx` [K/2, N]
    are the 2:4 positions (None when dense); `group_mult` [K/G, N] the
    Q0.`GROUP_SCALE_FRAC_BITS` ratios of each group's scale to `scale` (None
    with per-channel scales).
    """

    q: np.ndarray
    scale: np.ndarray
    idx: np.ndarray | None = None
    group_mult: np.ndarray | None = None


def quantize_weights(w: np.ndarray, fmt: WeightFormat, bits: int | None = None) -> QuantizedWeights:
    """Prune (2:4, on the float weights) then quantise a float [K, N] matrix per `fmt`.

    Scales are computed over the kept weights only: per output channel
    `absmax / qmax`; group-wise, each group's absmax / 7, encoded as a
    Q0.16 ratio to the channel's largest group scale (at least 1 LSB), and
    the weights quantised against the encoded scale the arithmetic uses.
    `bits` overrides the format's width (a build whose `weight_bits` is
    narrower than 8 stores its "int8" weights in that many bits).
    """
    _check_matrix("weights", w)
    check_finite("weights", w)
    k, n = w.shape
    fmt.check_k(k)
    bits = fmt.bits if bits is None else bits
    w64 = np.asarray(w, dtype=np.float64)
    idx = None
    if fmt.sparse:
        mask = prune_2_4_mask(w64)
        w64 = np.where(mask, w64, 0.0)
    if fmt.group_size is None:
        scale = scale_for(np.max(np.abs(w64), axis=0), bits)
        q = quantize(w64, scale[None, :], bits).astype(np.int8)
        group_mult = None
    else:
        groups = k // fmt.group_size
        g_absmax = np.max(np.abs(w64).reshape(groups, fmt.group_size, n), axis=1)
        scale = scale_for(np.max(g_absmax, axis=0), bits)
        one = 2**GROUP_SCALE_FRAC_BITS
        ratio = g_absmax / qmax(bits) / scale[None, :]
        group_mult = np.clip(round_half_away(ratio * one), 1, one)
        enc = scale[None, :] * group_mult / one
        q = quantize(w64, np.repeat(enc, fmt.group_size, axis=0), bits).astype(np.int8)
    if fmt.sparse:
        _, idx = compress_2_4(q, mask)
    return QuantizedWeights(q=q, scale=scale, idx=idx, group_mult=group_mult)


def grouped_matmul(
    x: np.ndarray, q: np.ndarray, group_mult: np.ndarray, cfg: AccelConfig
) -> np.ndarray:
    """Group-wise int4 GEMM: `round(Σ_g (x_g @ q_g) · group_mult[g] / 2^16)` per (m, n), exact.

    Each K group's partial sum is exact (int); it is multiplied by its
    group's Q0.16 ratio, the products summed exactly, and the sum rounded
    once (half away from zero) back to the channel's scale. Since every
    ratio is ≤ 1 the result is no larger than the sum of |partial sums|,
    so it fits the accumulator like a dense GEMM's.
    """
    check_int_array("group ratios", group_mult, GROUP_SCALE_FRAC_BITS + 2)
    k, n = q.shape
    groups = group_mult.shape[0]
    if group_mult.ndim != 2 or group_mult.shape[1] != n or groups == 0 or k % groups:
        raise ConfigError(f"group ratios of shape {group_mult.shape} do not fit weights {q.shape}")
    if np.any(group_mult < 1) or np.any(group_mult > 2**GROUP_SCALE_FRAC_BITS):
        raise NumericsError(f"group ratios must lie in 1..2^{GROUP_SCALE_FRAC_BITS}")
    size = k // groups
    total = np.zeros((x.shape[0], n), dtype=np.int64)
    for g in range(groups):
        part = matmul_int(x[:, g * size : (g + 1) * size], q[g * size : (g + 1) * size], cfg)
        total += part * group_mult[g].astype(np.int64)[None, :]
    return rshift_round(total, GROUP_SCALE_FRAC_BITS)


def check_supported(fmt: WeightFormat, cfg: AccelConfig) -> None:
    """Raise unless hardware built as `cfg` computes `fmt` (checked before anything is built)."""
    if not isinstance(fmt, WeightFormat):
        raise ConfigError(f"expected a WeightFormat, got {type(fmt).__name__}")
    if fmt.group_size is not None:
        raise ConfigError(
            f"{fmt.name}: group-wise int4 scales: this accelerator's accumulation path applies "
            "one scale per output channel (golden model only)"
        )
    if fmt.sparse and not cfg.sparse_2_4:
        raise ConfigError(
            f"{fmt.name}: 2:4 sparse weights need a build with AccelConfig.sparse_2_4 = True"
        )
    if fmt.bits == 4 and not cfg.int4_weights:
        raise ConfigError(
            f"{fmt.name}: int4 weights need a build with AccelConfig.int4_weights = True"
        )
