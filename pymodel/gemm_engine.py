"""Golden model of the grouped-GEMM engine (`rtl.gemm_engine.GemmEngine`) and its streams.

Why in `pymodel`: the engine's loop order is a rule the memory layout
(`contract.layout` re-exports `weight_stream`), the layer compiler and the
engine's testbenches all follow; it is written here once. The numbers come
from `gemm.matmul_int` and `numerics.postprocess`; this module adds the
engine's order (`tile_schedule`, `weight_stream`) and what its streams look
like: the command, parameter/LUT writes, weight and activation beats and the
expected output beats (the RTL tests and benchmarks drive the engine with them).

Weight formats (`pymodel.weight_formats`): a command's weights are int8 dense
(today's stream) or compressed — int8 2:4, int4 dense, int4 2:4 — in engines
built with `AccelConfig.sparse_2_4` / `int4_weights`. A compressed tile is
always whole (K zero-padded to whole tiles, then compressed: a padded group
keeps positions 0 and 1 with zero values) and holds, each part padded to
whole beats of L = `weight_rows_per_beat` rows:

- its value rows: int8 2:4 the R compressed rows `values[k0/2 …]` (2R K
  positions); int4 `pack_int4` of the tile's rows — dense: 2R K positions
  in R byte rows, byte row r holding K positions 2r (low nibble) and
  2r + 1, the pair PE row r multiplies; 2:4: the R compressed rows (2R K
  positions) in R/2 byte rows;
- then, for 2:4, R/4 index rows: byte c of index row j holds the 2-bit
  positions of tile rows 4j … 4j+3 of column c at bits 0-1, 2-3, 4-5, 6-7.

The arithmetic is unchanged: the GEMM of the dense int weights (zeros where
pruned), so `reference_output` is today's.
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
from .weight_formats import (
    WeightFormat,
    check_supported,
    compress_2_4,
    idx_mask,
    pack_int4,
    prune_2_4_mask,
)

__all__ = [
    "GemmCase",
    "Tile",
    "activation_beats",
    "activation_lanes",
    "command",
    "lut_writes",
    "output_beats",
    "padded_k",
    "param_row_writes",
    "param_writes",
    "random_case",
    "reference_output",
    "tile_k",
    "tile_schedule",
    "tile_stream_rows",
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
    fmt: WeightFormat = WeightFormat.DENSE_INT8  # how the weights are streamed
    idx_a: np.ndarray | None = None  # [K/2, N] 2:4 positions of w_a's kept entries
    idx_b: np.ndarray | None = None  # [K/2, N] of w_b's (SwiGLU)

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

    def indices(self, second_pass: bool) -> np.ndarray | None:
        """The 2:4 positions of `weights(second_pass)` (None for a dense format)."""
        if not self.fmt.sparse:
            return None
        idx = self.idx_b if second_pass else self.idx_a
        if idx is None:
            raise ConfigError(f"{self.fmt.name} case without its 2:4 positions (idx_a/idx_b)")
        return idx


@dataclass(frozen=True)
class Tile:
    """One weight tile of the engine's loop nest (see `rtl.tile_sequencer`)."""

    m0: int
    rows: int
    n0: int
    second_pass: bool
    k0: int


def tile_k(cfg: AccelConfig, fmt: WeightFormat = WeightFormat.DENSE_INT8) -> int:
    """K positions one weight tile covers: 2R compressed (2:4: R kept rows; int4: each PE
    row two K positions, or two kept rows a byte for int4 2:4), R for int8 dense."""
    return 2 * cfg.rows if fmt.compressed else cfg.rows


def activation_lanes(cfg: AccelConfig) -> int:
    """int8 lanes of an `act` beat: a compressed build's array takes a tile's 2R K positions."""
    return 2 * cfg.rows if cfg.sparse_2_4 or cfg.int4_weights else cfg.rows


def tile_schedule(
    m: int,
    k: int,
    n: int,
    passes: int,
    cfg: AccelConfig,
    m_block: int,
    fmt: WeightFormat = WeightFormat.DENSE_INT8,
) -> Iterator[Tile]:
    """The engine's tile order: for M-block, N-tile, pass, K-tile (`tile_k` positions each)."""
    for m0 in range(0, m, m_block):
        for n0 in range(0, n, cfg.cols):
            for p in range(passes):
                for k0 in range(0, k, tile_k(cfg, fmt)):
                    yield Tile(m0, min(m_block, m - m0), n0, bool(p), k0)


def tile_stream_rows(cfg: AccelConfig, fmt: WeightFormat, k_tile: int) -> tuple[int, int]:
    """(value rows, index rows) of C bytes a tile of `k_tile` K positions takes in the stream.

    Each part is padded to whole beats of L rows (the engine never starts a
    part mid-beat). int8 dense: the tile's `k_tile` rows; a compressed tile
    is always whole (see the module docstring): R rows (int8 2:4; int4
    dense, 2R K positions two a byte) or R/2 (int4 2:4), then R/4 index rows
    for 2:4.
    """
    beat = cfg.weight_rows_per_beat
    if not fmt.compressed:
        return _ceil_to(k_tile, beat), 0
    values = cfg.rows // 2 if fmt.bits == 4 and fmt.sparse else cfg.rows
    index = _ceil_to(cfg.rows // 4, beat) if fmt.sparse else 0
    return _ceil_to(values, beat), index


def padded_k(cfg: AccelConfig, k: int, fmt: WeightFormat = WeightFormat.DENSE_INT8) -> int:
    """Weight rows one (N-tile, pass) run of K positions occupies in the engine's stream.

    The engine takes `L = cfg.weight_rows_per_beat` rows a beat and a K-tile's
    rows never share a beat with the next tile's, so each K-tile is
    zero-padded to whole beats: int8 dense K rounded up to a multiple of L
    when L divides R (always in the top); a compressed format's tiles are
    whole (`tile_stream_rows`). The pad rows are read like any other.
    """
    if fmt.compressed:
        return -(-k // tile_k(cfg, fmt)) * sum(tile_stream_rows(cfg, fmt, tile_k(cfg, fmt)))
    full, rest = divmod(k, cfg.rows)
    beat = cfg.weight_rows_per_beat
    return full * _ceil_to(cfg.rows, beat) + _ceil_to(rest, beat)


def _ceil_to(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def weight_stream_rows(
    cfg: AccelConfig, k: int, n: int, passes: int, fmt: WeightFormat = WeightFormat.DENSE_INT8
) -> int:
    """Rows (of C bytes) the engine takes for one GEMM command: ⌈N/C⌉ · passes · `padded_k`."""
    return -(-n // cfg.cols) * passes * padded_k(cfg, k, fmt)


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


def weight_stream(
    cfg: AccelConfig,
    mats: list[np.ndarray],
    fmt: WeightFormat = WeightFormat.DENSE_INT8,
    idx: list[np.ndarray] | None = None,
) -> np.ndarray:
    """The engine's weight order for one M-block of `mats` ([K, N] each; W1, W3 for SwiGLU).

    For each N-tile, for each matrix (pass), for each K-tile: the tile's rows
    of C bytes, lanes beyond N zero — the order of `tile_schedule`;
    consecutive groups of `weight_rows_per_beat` rows are exactly the
    engine's `weight` beats. int8 dense: each K row's C weights (`padded_k`);
    compressed formats: the tile layout of the module docstring, from the
    dense int weights (zeros where pruned) and, for 2:4, their positions
    `idx` ([K/2, N] per matrix). Returns int8 [rows, C] (one byte each,
    whatever `weight_bits`; packed nibbles and index bytes as their bit pattern).
    """
    return _stream(cfg, mats, fmt, idx)[0]


def _stream(
    cfg: AccelConfig,
    mats: list[np.ndarray],
    fmt: WeightFormat,
    idx: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """`weight_stream` and a bool mask of its real bytes (not beat padding, not lanes ≥ N)."""
    k, n = mats[0].shape
    c = cfg.cols
    nt = -(-n // c)
    for w in mats:
        if w.shape != (k, n):
            raise ConfigError(f"weight stream matrices differ in shape: {w.shape} vs {(k, n)}")
    if not fmt.compressed:
        padded = []
        for w in mats:
            p = np.zeros((k, nt * c), dtype=np.int8)
            p[:, :n] = w
            padded.append(_padded_run(cfg, p))
        real = _padded_run(cfg, np.ones((k, nt * c), dtype=bool))
        real[:, n:] = False
        runs = [(p, real) for p in padded]
    else:
        runs = [_compressed_run(cfg, w, fmt, n, nt * c, i, idx) for i, w in enumerate(mats)]
    parts = [
        (p[:, j * c : (j + 1) * c], r[:, j * c : (j + 1) * c]) for j in range(nt) for p, r in runs
    ]
    if not parts:
        return np.zeros((0, c), np.int8), np.zeros((0, c), bool)
    return np.concatenate([v for v, _ in parts]), np.concatenate([r for _, r in parts])


def _compressed_run(
    cfg: AccelConfig,
    w: np.ndarray,
    fmt: WeightFormat,
    n: int,
    width: int,
    which: int,
    idx: list[np.ndarray] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One matrix's K run in a compressed format: [padded_k, width] bytes and their real mask."""
    k = w.shape[0]
    fmt.check_k(k, f"matrix {which}")
    step = tile_k(cfg, fmt)
    kp = -(-k // step) * step
    dense = np.zeros((kp, width), dtype=np.int64)
    dense[:k, :n] = w
    if fmt.sparse:
        if idx is None or len(idx) <= which:
            raise ConfigError(f"{fmt.name} weight stream needs the 2:4 positions of matrix {which}")
        given = np.asarray(idx[which])
        if given.shape != (k // 2, n):
            raise ConfigError(
                f"2:4 positions of matrix {which} have shape {given.shape}, expected {(k // 2, n)}"
            )
        mask = np.zeros((kp, width), dtype=bool)
        mask[:k, :n] = idx_mask(given)
        # The padding (zeros) keeps what the pruning rule keeps of zeros: positions 0 and 1.
        pad_mask = prune_2_4_mask(np.zeros((kp, width)))
        mask[k:, :] = pad_mask[k:, :]
        mask[:, n:] = pad_mask[:, n:]
        if np.any(dense[~mask] != 0):
            raise ConfigError(
                f"matrix {which} has nonzero weights at positions its 2:4 indices prune"
            )
        values, positions = compress_2_4(dense, mask)
    else:
        values, positions = dense, None
    stored = values if fmt.bits == 8 else pack_int4(values).view(np.int8)
    value_rows, index_rows = tile_stream_rows(cfg, fmt, step)
    per_tile = len(stored) // (kp // step)
    tiles, reals = [], []
    for t in range(kp // step):
        block = np.zeros((value_rows + index_rows, width), dtype=np.int8)
        real = np.zeros(block.shape, dtype=bool)
        block[:per_tile] = stored[t * per_tile : (t + 1) * per_tile]
        real[:per_tile, :n] = True
        if positions is not None:
            quads = positions[t * cfg.rows : (t + 1) * cfg.rows].reshape(-1, 4, width)
            codes = sum(quads[:, j].astype(np.uint8) << (2 * j) for j in range(4))
            block[value_rows : value_rows + len(codes)] = codes.astype(np.uint8).view(np.int8)
            real[value_rows : value_rows + len(codes), :n] = True
        tiles.append(block)
        reals.append(real)
    return np.concatenate(tiles), np.concatenate(reals)


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


def command(case: GemmCase, cfg: AccelConfig) -> dict:
    """The `cmd` beat for `case` (fields of `rtl.tile_sequencer.gemm_command_layout`).

    A build with a compressed weight path (`cfg.sparse_2_4` or `int4_weights`)
    takes the format in the command; a format the build lacks is refused here.
    """
    check_supported(case.fmt, cfg)
    fields = {}
    if cfg.sparse_2_4 or cfg.int4_weights:
        fields["fmt"] = {"sparse": int(case.fmt.sparse), "int4": int(case.fmt.bits == 4)}
    return {
        **fields,
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

    The pad rows of a tile's last beat and the lanes past N are don't-care:
    with `rng` they hold random values, else zeros.
    """
    mats = [case.weights(p == 1) for p in range(case.passes)]
    idx = [case.indices(p == 1) for p in range(case.passes)] if case.fmt.sparse else None
    stream, real = _stream(cfg, mats, case.fmt, idx)
    if rng is not None:
        lo, hi = -(2 ** (cfg.weight_bits - 1)), 2 ** (cfg.weight_bits - 1) - 1
        stream = stream.copy()
        for r, c in zip(*np.nonzero(~real), strict=True):
            stream[r, c] = rng.randint(lo, hi)
    beats = stream.reshape(-1, cfg.weight_rows_per_beat, cfg.cols).tolist()
    return beats * -(-case.m // m_block)


def activation_beats(
    case: GemmCase, cfg: AccelConfig, m_block: int, rng: random.Random | None = None
) -> list[list[int]]:
    """`act` beats in engine order; with `rng`, don't-care lanes hold random values.

    A beat is the row's `tile_k` K positions of the tile, in `activation_lanes` lanes.
    """
    beats = []
    step = tile_k(cfg, case.fmt)
    for t in tile_schedule(case.m, case.k, case.n, case.passes, cfg, m_block, case.fmt):
        for i in range(t.rows):
            row = case.x[t.m0 + i, t.k0 : t.k0 + step]
            beats.append(_pad(row, activation_lanes(cfg), rng, cfg.act_bits))
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
    fmt: WeightFormat = WeightFormat.DENSE_INT8,
) -> GemmCase:
    """A random case; `extreme` fills X and W with only their widths' extremes (saturating).

    With `fmt`, the weights are `fmt.bits` wide (int4: the whole nibble range,
    −8 included) and, for 2:4, pruned by a random 2:4 pattern (the case
    carries its positions).
    """
    if k > cfg.max_k:
        raise ConfigError(f"K = {k} exceeds AccelConfig.max_k = {cfg.max_k}")
    fmt.check_k(k)
    lo, hi = -(2 ** (cfg.act_bits - 1)), 2 ** (cfg.act_bits - 1) - 1
    w_bits = 4 if fmt.bits == 4 else cfg.weight_bits

    def operand(shape: tuple[int, int], bits: int) -> np.ndarray:
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if extreme:
            return rng.choice(np.array([low, high, high], dtype=np.int64), size=shape)
        return rng.integers(low, high + 1, size=shape, dtype=np.int64)

    def weights() -> tuple[np.ndarray, np.ndarray | None]:
        w = operand((k, n), w_bits)
        if not fmt.sparse:
            return w, None
        mask = prune_2_4_mask(rng.random((k, n)))
        w = np.where(mask, w, 0)
        return w, compress_2_4(w, mask)[1]

    # Typical |x|·|w| of a product, over the products a sum holds (kept ones with 2:4).
    w_typical = 60.0 if fmt.bits == 8 else 3.75
    k_kept = k // 2 if fmt.sparse else k

    def params() -> tuple[np.ndarray, np.ndarray]:
        top = 2**cfg.mult_bits
        mult = rng.integers(top // 2, top, size=n, dtype=np.int64)
        typical = math.sqrt(k_kept) * 60.0 * w_typical
        shift = np.array(
            [_shift_for(typical, int(mu)) + int(rng.integers(-3, 4)) for mu in mult],
            dtype=np.int64,
        )
        corners = rng.random(n)
        shift[corners < 0.05] = 0
        shift[(corners >= 0.05) & (corners < 0.1)] = 2**SHIFT_BITS - 1
        mult[rng.random(n) < 0.05] = 0
        return mult, np.clip(shift, 0, 2**SHIFT_BITS - 1)

    x = operand((m, k), cfg.act_bits)
    w_a, idx_a = weights()
    mult_a, shift_a = params()
    fields: dict = {}
    if mode != PostMode.REQUANT:
        fields["lut"] = rng.integers(lo, hi + 1, size=2**cfg.act_bits, dtype=np.int64)
    if mode == PostMode.SWIGLU:
        mult_b, shift_b = params()
        gate_mult = int(rng.integers(2 ** (cfg.mult_bits - 1), 2**cfg.mult_bits))
        w_b, idx_b = weights()
        fields.update(
            w_b=w_b,
            idx_b=idx_b,
            mult_b=mult_b,
            shift_b=shift_b,
            gate_mult=gate_mult,
            gate_shift=_shift_for(60.0 * 60.0, gate_mult) + int(rng.integers(-2, 3)),
            param_b=param_a + math.ceil(n / cfg.cols) if param_b is None else param_b,
        )
    return GemmCase(
        x=x,
        w_a=w_a,
        mode=mode,
        mult_a=mult_a,
        shift_a=shift_a,
        param_a=param_a,
        fmt=fmt,
        idx_a=idx_a,
        **fields,
    )
