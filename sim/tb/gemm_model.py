"""Golden model and stream schedules for `rtl.gemm_engine.GemmEngine` tests and benchmarks.

The numbers come only from `pymodel` (`gemm.matmul_int`, `numerics.requantize`,
`apply_lut`, `gated_multiply`); this module adds what the engine's streams
look like: the command, parameter/LUT writes, weight and activation beats in
the engine's loop order, and the expected output beats. Anything feeding the
engine follows `tile_schedule`: these testbenches, and in the accelerator the
weight image `rtl.layout.weight_stream` lays out for the layer sequencer.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pymodel.config import AccelConfig, ConfigError
from pymodel.gemm import matmul_int
from pymodel.numerics import apply_lut, gated_multiply, requantize
from rtl.postproc import SHIFT_BITS, Mode

__all__ = [
    "GemmCase",
    "Tile",
    "activation_beats",
    "command",
    "lut_writes",
    "output_beats",
    "param_row_writes",
    "param_writes",
    "random_case",
    "reference_output",
    "tile_schedule",
    "weight_beats",
]


@dataclass(frozen=True)
class GemmCase:
    """One engine command with all its operands (int arrays, golden-model dtypes)."""

    x: np.ndarray  # [M, K] activations
    w_a: np.ndarray  # [K, N] W (or W1 for SwiGLU)
    mode: Mode
    mult_a: np.ndarray  # [N] per-channel multipliers for w_a's outputs
    shift_a: np.ndarray  # [N]
    w_b: np.ndarray | None = None  # [K, N] W3 for SwiGLU
    mult_b: np.ndarray | None = None
    shift_b: np.ndarray | None = None
    lut: np.ndarray | None = None  # [2^act_bits] act_bits-bit values, for REQUANT_LUT and SWIGLU
    gate_mult: int = 0
    gate_shift: int = 0
    param_a: int = 0  # parameter-memory row of N-tile 0
    param_b: int = 0

    @property
    def m(self) -> int:
        return self.x.shape[0]

    @property
    def k(self) -> int:
        return self.x.shape[1]

    @property
    def n(self) -> int:
        return self.w_a.shape[1]

    @property
    def passes(self) -> int:
        return 2 if self.mode == Mode.SWIGLU else 1

    def weights(self, second_pass: bool) -> np.ndarray:
        if second_pass:
            if self.w_b is None:
                raise ConfigError("SwiGLU case without W3 (w_b)")
            return self.w_b
        return self.w_a


@dataclass(frozen=True)
class Tile:
    """One weight tile of the engine's loop nest (see `rtl.tile_sequencer`)."""

    m0: int
    rows: int
    n0: int
    second_pass: bool
    k0: int


def tile_schedule(
    m: int, k: int, n: int, passes: int, cfg: AccelConfig, m_block: int
) -> Iterator[Tile]:
    """The engine's tile order: for M-block, N-tile, pass, K-tile."""
    for m0 in range(0, m, m_block):
        for n0 in range(0, n, cfg.cols):
            for p in range(passes):
                for k0 in range(0, k, cfg.rows):
                    yield Tile(m0, min(m_block, m - m0), n0, bool(p), k0)


def reference_output(case: GemmCase, cfg: AccelConfig) -> np.ndarray:
    """The golden `Y[M, N]` for `case`, composed from `pymodel` only."""
    bits = cfg.act_bits
    q_a = requantize(matmul_int(case.x, case.w_a, cfg), case.mult_a, case.shift_a, bits)
    if case.mode == Mode.REQUANT:
        return q_a
    if case.lut is None:
        raise ConfigError(f"mode {case.mode.name} needs a LUT")
    act = apply_lut(case.lut, q_a, bits)
    if case.mode == Mode.REQUANT_LUT:
        return act
    q_b = requantize(matmul_int(case.x, case.weights(True), cfg), case.mult_b, case.shift_b, bits)
    return gated_multiply(act, q_b, case.gate_mult, case.gate_shift, bits)


def command(case: GemmCase) -> dict:
    """The `cmd` beat for `case` (fields of `rtl.tile_sequencer.gemm_command_layout`)."""
    return {
        "m": case.m,
        "k": case.k,
        "n": case.n,
        "mode": case.mode.value,
        "param_a": case.param_a,
        "param_b": case.param_b,
        "gate_mult": case.gate_mult,
        "gate_shift": case.gate_shift,
    }


def param_row_writes(
    cfg: AccelConfig, row0: int, mult: np.ndarray, shift: np.ndarray
) -> list[dict]:
    """`param_w` beats loading channels 0… of (mult, shift) from parameter row `row0` on.

    W = `cfg.param_words_per_beat` channels a beat; channels past the end of
    a group that the arrays do not cover get (0, 0) (don't-care lanes).
    """
    words = cfg.param_words_per_beat
    n = len(mult)
    beats = []
    for first in range(0, n, words):
        ch = [first + j for j in range(words)]
        beats.append(
            {
                "row": row0 + first // cfg.cols,
                "group": (first % cfg.cols) // words,
                "words": [
                    {"mult": int(mult[i]), "shift": int(shift[i])}
                    if i < n
                    else {"mult": 0, "shift": 0}
                    for i in ch
                ],
            }
        )
    return beats


def param_writes(case: GemmCase, cfg: AccelConfig) -> list[dict]:
    """`param_w` beats loading the per-channel (m, s) of `case` at its parameter rows."""
    sets = [(case.param_a, case.mult_a, case.shift_a)]
    if case.mode == Mode.SWIGLU:
        sets.append((case.param_b, case.mult_b, case.shift_b))
    beats = []
    for base, mult, shift in sets:
        beats += param_row_writes(cfg, base, mult[: case.n], shift[: case.n])
    return beats


def lut_writes(lut: np.ndarray, cfg: AccelConfig) -> list[dict]:
    """`lut_w` beats for a whole table (entry i = two's-complement code i)."""
    per_row = cfg.lut_entries_per_beat
    return [
        {"row": r, "values": [int(v) for v in lut[r * per_row : (r + 1) * per_row]]}
        for r in range(len(lut) // per_row)
    ]


def _pad(values: np.ndarray, width: int, rng: random.Random | None, bits: int) -> list[int]:
    """Pad a short slice to `width` lanes with garbage (rng) or zeros: don't-care lanes."""
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    pad = [rng.randint(lo, hi) if rng else 0 for _ in range(width - len(values))]
    return [int(v) for v in values] + pad


def weight_beats(
    case: GemmCase, cfg: AccelConfig, m_block: int, rng: random.Random | None = None
) -> list[list[list[int]]]:
    """`weight` beats in engine order, `cfg.weight_rows_per_beat` rows of C lanes each.

    A tile of `min(R, K−k0)` rows takes ⌈rows/L⌉ beats; the rows of its last
    beat past the tile and lanes past N are don't-care: with `rng` they hold
    random values, else zeros.
    """
    lanes, cols, bits = cfg.weight_rows_per_beat, cfg.cols, cfg.weight_bits
    beats = []
    for t in tile_schedule(case.m, case.k, case.n, case.passes, cfg, m_block):
        w = case.weights(t.second_pass)
        end = min(t.k0 + cfg.rows, case.k)
        for r0 in range(t.k0, end, lanes):
            beats.append(
                [
                    _pad(w[r, t.n0 : t.n0 + cols] if r < end else w[0, :0], cols, rng, bits)
                    for r in range(r0, r0 + lanes)
                ]
            )
    return beats


def activation_beats(
    case: GemmCase, cfg: AccelConfig, m_block: int, rng: random.Random | None = None
) -> list[list[int]]:
    """`act` beats in engine order; with `rng`, don't-care lanes hold random values."""
    beats = []
    for t in tile_schedule(case.m, case.k, case.n, case.passes, cfg, m_block):
        for i in range(t.rows):
            row = case.x[t.m0 + i, t.k0 : t.k0 + cfg.rows]
            beats.append(_pad(row, cfg.rows, rng, cfg.act_bits))
    return beats


def output_beats(y: np.ndarray, cfg: AccelConfig, m_block: int) -> list[dict]:
    """Expected `out` beats for the golden `y`: for M-block, N-tile, row; unused lanes 0."""
    m, n = y.shape
    beats = []
    for m0 in range(0, m, m_block):
        for n0 in range(0, n, cfg.cols):
            for i in range(m0, min(m0 + m_block, m)):
                lanes = _pad(y[i, n0 : n0 + cfg.cols], cfg.cols, None, cfg.act_bits)
                beats.append({"data": lanes, "last": 0})
    beats[-1]["last"] = 1
    return beats


def _shift_for(typical: float, mult: int, target: float = 64.0) -> int:
    """A shift that maps a typical |value|·mult to about `target` (outputs rarely all 0/sat)."""
    if typical <= 0:
        return 0
    return max(0, min(2**SHIFT_BITS - 1, round(math.log2(typical * mult / target))))


def random_case(
    rng: np.random.Generator,
    cfg: AccelConfig,
    m: int,
    k: int,
    n: int,
    mode: Mode,
    *,
    extreme: bool = False,
    param_a: int = 0,
    param_b: int | None = None,
) -> GemmCase:
    """A random case; `extreme` fills X and W with only their widths' extremes (saturating)."""
    if k > cfg.max_k:
        raise ConfigError(f"K = {k} exceeds AccelConfig.max_k = {cfg.max_k}")
    lo, hi = -(2 ** (cfg.act_bits - 1)), 2 ** (cfg.act_bits - 1) - 1

    def operand(shape: tuple[int, int], bits: int) -> np.ndarray:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if extreme:
            return rng.choice(np.array([low, high, high], dtype=np.int64), size=shape)
        return rng.integers(low, high + 1, size=shape, dtype=np.int64)

    def params() -> tuple[np.ndarray, np.ndarray]:
        top = 2**cfg.mult_bits
        mult = rng.integers(top // 2, top, size=n, dtype=np.int64)
        typical = math.sqrt(k) * 60.0 * 60.0
        shift = np.array(
            [_shift_for(typical, int(mu)) + int(rng.integers(-3, 4)) for mu in mult],
            dtype=np.int64,
        )
        corners = rng.random(n)
        shift[corners < 0.05] = 0
        shift[(corners >= 0.05) & (corners < 0.1)] = 2**SHIFT_BITS - 1
        mult[rng.random(n) < 0.05] = 0
        return mult, np.clip(shift, 0, 2**SHIFT_BITS - 1)

    x, w_a = operand((m, k), cfg.act_bits), operand((k, n), cfg.weight_bits)
    mult_a, shift_a = params()
    fields: dict = {}
    if mode != Mode.REQUANT:
        fields["lut"] = rng.integers(lo, hi + 1, size=2**cfg.act_bits, dtype=np.int64)
    if mode == Mode.SWIGLU:
        mult_b, shift_b = params()
        gate_mult = int(rng.integers(2 ** (cfg.mult_bits - 1), 2**cfg.mult_bits))
        fields.update(
            w_b=operand((k, n), cfg.weight_bits),
            mult_b=mult_b,
            shift_b=shift_b,
            gate_mult=gate_mult,
            gate_shift=_shift_for(60.0 * 60.0, gate_mult) + int(rng.integers(-2, 3)),
            param_b=param_a + math.ceil(n / cfg.cols) if param_b is None else param_b,
        )
    return GemmCase(
        x=x, w_a=w_a, mode=mode, mult_a=mult_a, shift_a=shift_a, param_a=param_a, **fields
    )
