"""Golden model of the grouped-GEMM engine (`rtl.gemm_engine.GemmEngine`) and its streams.

Why in `pymodel`: the engine's loop order is a rule the memory layout
(`contract.layout` re-exports `weight_stream`), the layer compiler and the
engine's testbenches all follow; it is written here once. The numbers come
from `gemm.matmul_int` and `numerics.postprocess`; this module adds the
engine's order (`tile_schedule`, `weight_stream`) and what its streams look
like: the command, parameter/LUT writes, weight and activation beats and the
expected output beats (the RTL tests and benchmarks drive the engine with them).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from contract.timing import SHIFT_BITS

from .config import AccelConfig, ConfigError
from .gemm import matmul_int
from .numerics import PostMode, postprocess

__all__ = [
    "GemmCase",
    "Tile",
    "activation_beats",
    "command",
    "lut_writes",
    "output_beats",
    "padded_k",
    "param_row_writes",
    "param_writes",
    "random_case",
    "reference_output",
    "tile_schedule",
    "weight_beats",
    "weight_stream",
    "weight_stream_rows",
]


@dataclass(frozen=True)
class GemmCase:
    """One engine command with all its operands (int arrays, golden-model dtypes)."""

    x: np.ndarray  # [M, K] activations
    w_a: np.ndarray  # [K, N] W (or W1 for SwiGLU)
    mode: PostMode
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
        return 2 if self.mode == PostMode.SWIGLU else 1

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


def padded_k(cfg: AccelConfig, k: int) -> int:
    """Weight rows one (N-tile, pass) run of K rows occupies in the engine's stream.

    The engine takes `L = cfg.weight_rows_per_beat` rows a beat and a K-tile's
    (R rows) never share a beat with the next tile's, so each K-tile is
    zero-padded to whole beats: K rounded up to a multiple of L when L divides
    R (always in the top). The pad rows are read like any other.
    """
    full, rest = divmod(k, cfg.rows)
    beat = cfg.weight_rows_per_beat
    return full * _ceil_to(cfg.rows, beat) + _ceil_to(rest, beat)


def _ceil_to(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def weight_stream_rows(cfg: AccelConfig, k: int, n: int, passes: int) -> int:
    """Rows (of C bytes) the engine takes for one GEMM command: ⌈N/C⌉ · passes · `padded_k`."""
    return -(-n // cfg.cols) * passes * padded_k(cfg, k)


def _padded_run(cfg: AccelConfig, w: np.ndarray) -> np.ndarray:
    """`w` [K, X] with each K-tile of R rows zero-padded to whole beats: [padded_k, X]."""
    k, r = w.shape[0], cfg.rows
    full, rest = divmod(k, r)
    tile = _ceil_to(r, cfg.weight_rows_per_beat)
    out = np.zeros((padded_k(cfg, k), w.shape[1]), dtype=w.dtype)
    width = w.shape[1]
    out[: full * tile].reshape(full, tile, width)[:, :r] = w[: full * r].reshape(full, r, width)
    out[full * tile : full * tile + rest] = w[full * r :]
    return out


def weight_stream(cfg: AccelConfig, mats: list[np.ndarray]) -> np.ndarray:
    """The engine's weight order for one M-block of `mats` ([K, N] each; W1, W3 for SwiGLU).

    For each N-tile, for each matrix (pass), for each K row (`padded_k`): the
    row's C output channels of that tile, lanes beyond N zero — the order of
    `tile_schedule`; consecutive groups of `weight_rows_per_beat` rows are
    exactly the engine's `weight` beats. Returns int8 [rows, C] (weights are
    stored one byte each, whatever `weight_bits`).
    """
    k, n = mats[0].shape
    c = cfg.cols
    nt = -(-n // c)
    padded = []
    for w in mats:
        if w.shape != (k, n):
            raise ConfigError(f"weight stream matrices differ in shape: {w.shape} vs {(k, n)}")
        p = np.zeros((k, nt * c), dtype=np.int8)
        p[:, :n] = w
        padded.append(_padded_run(cfg, p))
    tiles = [np.stack([p[:, j * c : (j + 1) * c] for p in padded]) for j in range(nt)]
    return np.concatenate([t.reshape(-1, c) for t in tiles]) if tiles else np.zeros((0, c), np.int8)


def reference_output(case: GemmCase, cfg: AccelConfig) -> np.ndarray:
    """The golden `Y[M, N]` for `case`: the GEMM(s), then `numerics.postprocess`."""
    second = case.mode == PostMode.SWIGLU
    return postprocess(
        case.mode,
        cfg,
        matmul_int(case.x, case.w_a, cfg),
        case.mult_a,
        case.shift_a,
        lut=case.lut,
        acc_b=matmul_int(case.x, case.weights(True), cfg) if second else None,
        mult_b=case.mult_b if second else 0,
        shift_b=case.shift_b if second else 0,
        gate_mult=case.gate_mult,
        gate_shift=case.gate_shift,
    ).y


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
    if case.mode == PostMode.SWIGLU:
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
    """`weight` beats in engine order: `weight_stream` once per M-block, L rows a beat.

    The pad rows of a K-tile's last beat and the lanes past N are don't-care:
    with `rng` they hold random values, else zeros.
    """
    mats = [case.weights(p == 1) for p in range(case.passes)]
    stream = weight_stream(cfg, mats)
    if rng is not None:
        real = weight_stream(cfg, [np.ones(w.shape, dtype=np.int8) for w in mats]) != 0
        lo, hi = -(2 ** (cfg.weight_bits - 1)), 2 ** (cfg.weight_bits - 1) - 1
        stream = stream.copy()
        for r, c in zip(*np.nonzero(~real), strict=True):
            stream[r, c] = rng.randint(lo, hi)
    beats = stream.reshape(-1, cfg.weight_rows_per_beat, cfg.cols).tolist()
    return beats * -(-case.m // m_block)


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
    mode: PostMode,
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
    if mode != PostMode.REQUANT:
        fields["lut"] = rng.integers(lo, hi + 1, size=2**cfg.act_bits, dtype=np.int64)
    if mode == PostMode.SWIGLU:
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
