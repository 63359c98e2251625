"""Cycle model of one MoE layer on `rtl.top.MoEAccel`: per-phase cycles, bytes and MACs.

Predicts the hardware's own counters (`contract.regs.COUNTER_BLOCK`: CYCLES_TOTAL,
CYCLES_ROUTE, CYCLES_DISPATCH, CYCLES_EXPERTS, CYCLES_SHARED, CYCLES_COMBINE,
MAC_CYCLES, BYTES_READ, BYTES_WRITTEN, USEFUL_MACS) from an `AccelConfig`, a
`MoESpec`, the token count and the routing (kept pairs per expert), by walking
the layer FSM of `rtl.layer_sequencer` state by state:

- every DMA read the FSM waits for costs a fixed command round trip
  (`READ_TURNAROUND` + the memory's `read_latency`) plus its beats, or the
  items its resizer hands out one a cycle when those are more;
- every GEMM command (`rtl.tile_sequencer.TileSequencer`) costs the fetch of its
  first weight beat (the engine's command intake hides under it), the tile
  walk — each tile's load (`weight_rows_per_beat` rows a cycle) and its M rows
  one a cycle, double-buffered in two banks, simulated tile by tile over the
  repeating K-run pattern — and the drain through the array, the
  accumulators and post-processing;
- the gate and the dispatcher cost what `contract.timing.gate_cycles` and
  `contract.timing.dispatch_cycles` say (the units' own documented timing);
- the combine walks every token's slots (a read per kept slot), the shared
  row, and feeds `k (+1)` terms per output chunk.

Expert weight formats (`pymodel.weight_formats`, a layer's `weight_format`;
the router GEMM is always int8 dense) change the GEMM commands' tile walk as
the engine does (`gemm_cycles`): a compressed tile covers 2R K positions
(the array takes 2R activations a row; 2:4: each PE selects the one its
kept weight meets; int4 dense: each PE multiplies two, its byte's two
nibbles), so a K run has half the tiles; a tile's load is its stream rows
(`pymodel.gemm_engine.tile_stream_rows`: value rows, then index rows) at L
rows a beat, where an int4 2:4 value row of C bytes carries two weight rows
(the weight port takes 2L weight rows a beat) and index rows load at the
byte-row rate. Token rows still enter one a cycle per tile. An int4 build's
array is `contract.timing.PAIR_STAGES` cycles deeper, and the array of any build
with a compressed path `OPERAND_STAGES` more (`systolic_latency`), for every
command's drain.

Everything is NumPy over a batch of layer points (same config and spec,
different token counts and routings), so thousands of points evaluate in
milliseconds. The constants below are register counts read off the RTL (each
names the pipeline it stands for) and are checked against the Verilator
counters by `bench/calibrate.py`; the memory timing is a parameter
(`MemoryTiming`), with the defaults of `sw_driver.device.VerilatorDevice`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np

from contract import layout
from contract.regs import SharedExpert
from contract.timing import (
    COMBINE_LATENCY,
    DMA_MAX_OUTSTANDING,
    burst_beats,
    default_m_block,
    dispatch_cycles,
    gate_cycles,
    gemm_drain,
    shared_weight_cycles,
)

from .config import AccelConfig, ConfigError, MoESpec, _check_int
from .gemm_engine import tile_k, tile_stream_rows
from .layer import LayerResult
from .weight_formats import WeightFormat, check_supported

__all__ = [
    "COUNTERS",
    "CycleEstimate",
    "MemoryTiming",
    "expert_weight_bytes",
    "gemm_cycles",
    "golden_cycles",
    "layer_cycles",
]

COUNTERS: tuple[str, ...] = (
    "cycles_total",
    "cycles_route",
    "cycles_dispatch",
    "cycles_experts",
    "cycles_shared",
    "cycles_combine",
    "mac_cycles",
    "bytes_read",
    "bytes_written",
    "useful_macs",
)
"""The modelled counters, named as `contract.regs.COUNTER_BLOCK`'s registers (lower case)."""

READ_TURNAROUND = 4
"""FSM read() → command register → DMA accept → AR register → first beat, beyond latency."""
CMD_INTAKE = 3
"""Engine command register, range check and decision registers before it is busy."""
FSM_STEP = 1
"""One cycle in each FSM state that only issues a command or advances a counter."""
GATE_FILL = 3
"""GATE → serialiser run register → logit memory read → logit register, before the gate's busy."""
WRITE_DRAIN = 2
"""The DMA's W register and its registered `wr_done` after the memory's B response."""


@dataclass(frozen=True)
class MemoryTiming:
    """The external memory the accelerator sees (the C++ harness of `sim.fast`).

    `read_latency`: cycles from an accepted AR to its first R beat;
    `write_latency`: cycles from a burst's last W beat to its B response;
    `bytes_per_cycle`: read (and, separately, write) bandwidth, default the bus width.
    Defaults are `sw_driver.device.VerilatorDevice`'s.
    """

    read_latency: int = 8
    write_latency: int = 4
    bytes_per_cycle: int | None = None

    def __post_init__(self) -> None:
        for name in ("read_latency", "write_latency"):
            _check_int("MemoryTiming", name, getattr(self, name), 0)
        if self.bytes_per_cycle is not None:
            _check_int("MemoryTiming", "bytes_per_cycle", self.bytes_per_cycle, 1)


@dataclass(frozen=True)
class CycleEstimate:
    """Predicted counters, one array entry per layer point (int64 arrays of equal shape)."""

    cycles_total: np.ndarray
    cycles_route: np.ndarray
    cycles_dispatch: np.ndarray
    cycles_experts: np.ndarray
    cycles_shared: np.ndarray
    cycles_combine: np.ndarray
    mac_cycles: np.ndarray
    bytes_read: np.ndarray
    bytes_written: np.ndarray
    useful_macs: np.ndarray

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in COUNTERS:
            raise KeyError(f"{name!r} is not a modelled counter; allowed: {list(COUNTERS)}")
        return getattr(self, name)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _cdiv(a, b):
    """Ceiling division of (arrays of) non-negative ints."""
    return -(-np.asarray(a) // b)


class _Model:
    """The per-config quantities of the walk (scalars) and its cost functions (arrays)."""

    def __init__(
        self, cfg: AccelConfig, spec: MoESpec | None, memory: MemoryTiming, max_tokens: int
    ) -> None:
        self.cfg, self.spec, self.mem = cfg, spec, memory
        self.R, self.C, self.B = cfg.rows, cfg.cols, cfg.mem_bytes_per_cycle
        self.L = cfg.weight_rows_per_beat
        bpc = self.B if memory.bytes_per_cycle is None else memory.bytes_per_cycle
        # Cycles per bus beat: the memory model's bandwidth credit (never faster than a beat).
        self.beat_cycles = max(1.0, self.B / bpc)
        # Engine weight beat = L rows of C bytes; narrower buses gather C/B beats per row.
        self.w_beat_cycles = max(1.0, self.L * self.C / self.B) * self.beat_cycles
        # Accumulator rows per M-block; past the RTL's `max_tokens`, buffers grown to the batch.
        self.m_block = default_m_block(cfg.replace(max_tokens=max(cfg.max_tokens, max_tokens)))
        # Last injected row → engine done: array skew, accumulators, post-processing, credit.
        self.drain = gemm_drain(cfg)
        self.ys = layout.row_bytes(cfg, spec.d_model) if spec is not None else 0

    # -- DMA ------------------------------------------------------------------------
    def read(self, nbytes, items=0):
        """Cycles from the FSM's read() to its rd_done: round trip, then beats or items."""
        beats = _cdiv(nbytes, self.B)
        stream = np.maximum(beats * self.beat_cycles, items)
        return READ_TURNAROUND + self.mem.read_latency + stream

    def aligned(self, nbytes):
        return _cdiv(nbytes, self.B) * self.B

    # -- GEMM engine ----------------------------------------------------------------
    def tile_loads(self, k: int, fmt: WeightFormat) -> np.ndarray:
        """Load cycles of each tile of one K run: its stream rows at L rows a weight beat.

        int8 dense: R rows a tile, the last tile the K rest (rows padded to whole
        beats). Compressed formats: every tile whole (`tile_stream_rows`: value rows,
        then 2:4 index rows, each part in whole beats), `tile_k` K positions each.
        """
        if not fmt.compressed:
            kt = int(_cdiv(k, self.R))
            k_last = k - (kt - 1) * self.R
            load_full = _cdiv(self.R, self.L) * self.w_beat_cycles  # a tile of R weight rows
            load_last = _cdiv(k_last, self.L) * self.w_beat_cycles  # the K run's last tile
            return np.array([load_full] * (kt - 1) + [load_last], dtype=np.float64)
        tk = tile_k(self.cfg, fmt)
        value_rows, index_rows = tile_stream_rows(self.cfg, fmt, tk)
        load = _cdiv(value_rows + index_rows, self.L) * self.w_beat_cycles
        return np.full(int(_cdiv(k, tk)), load, dtype=np.float64)

    def walk(self, mm, k: int, n: int, passes: int, fmt: WeightFormat, blocks: int = 1):
        """First weight beat → last row injected, plus the drain to the last result.

        `blocks` M-blocks of `mm` rows each, walked one after the other in one command
        (the engine's loop nest: M-block, N-tile, pass, K-tile).
        """
        run = self.tile_loads(k, fmt)
        runs = int(_cdiv(n, self.C)) * passes * blocks
        return _tile_walk(np.asarray(mm), run, runs) + self.drain

    def gemm(self, mm, k: int, n: int, passes: int, fmt: WeightFormat = WeightFormat.DENSE_INT8):
        """Cycles of one engine command of `mm` rows (array) × K × N, FSM issue to done."""
        mm = np.asarray(mm)
        first_fetch = READ_TURNAROUND + self.mem.read_latency  # weight DMA issued with the cmd
        cost = max(CMD_INTAKE, first_fetch) + self.walk(mm, k, n, passes, fmt) + FSM_STEP
        return np.where(mm > 0, cost, 0)

    def gemm_rows(
        self, mm, k: int, n: int, passes: int, fmt: WeightFormat = WeightFormat.DENSE_INT8
    ):
        """Rows injected (MAC cycles) and useful MACs (the K × N work, padding excluded)."""
        mm = np.asarray(mm)
        tiles = _cdiv(n, self.C) * passes * _cdiv(k, tile_k(self.cfg, fmt))
        return mm * tiles, mm * k * n * passes

    def weight_rows(
        self, k: int, n: int, passes: int, fmt: WeightFormat = WeightFormat.DENSE_INT8
    ) -> int:
        return layout.weight_stream_rows(self.cfg, k, n, passes, fmt)

    def ffn_weight_bytes(self, rows, ff: int, passes1: int, fmt: WeightFormat):
        """Weight bytes an expert's blocks of `rows` read: both commands' streams per M-block."""
        d = self.spec.d_model
        full, b1, b2 = _blocks(rows, self.m_block)
        cmds = full + (b1 > 0) + (b2 > 0)
        per_block = self.aligned(self.weight_rows(d, ff, passes1, fmt) * self.C) + self.aligned(
            self.weight_rows(ff, d, 1, fmt) * self.C
        )
        return cmds * per_block


SIM_RUNS = 6
"""K-runs of a command simulated tile by tile; later runs repeat the last two's increment."""


def _tile_walk(mm, run: np.ndarray, runs: int):
    """Cycles from the first weight beat to the last row of a command's tile walk.

    The tiles are `runs` repetitions of one K-run whose loads are `run` (cycles per
    tile), double-buffered in two banks (`TileSequencer`): tile j loads after tile
    j−1's load, and not before tile j−2's bank is free (its last row, then the one
    cooldown cycle); its rows go in after its load and after tile j−1's rows, one
    a cycle. Evaluated once per distinct `mm`. The recurrence only takes maxima and
    sums, so once two tiles' increments repeat (periodic in the bank parity) the
    rest of a run's equal full tiles repeat them: those are added, not walked (a
    real layer's K-runs have thousands of tiles). Past `SIM_RUNS` runs the steady
    state of whole runs (the increment of the last two) repeats the same way.
    """
    mm = np.asarray(mm)
    values, inverse = np.unique(mm, return_inverse=True)
    m = values.astype(np.float64)
    done = min(runs, SIM_RUNS)
    kt = len(run)
    inj_prev2 = inj_prev = load_end = inj = np.zeros_like(m)
    marks = {}
    j = 0
    for r in range(done):
        p = 0
        history: list[np.ndarray] = []
        while p < kt:
            start = load_end + 1 if j else np.zeros_like(m)
            if j >= 2:
                start = np.maximum(start, inj_prev2 + m + 1)  # bank of tile j-2 free + cooldown
            load_end = start + run[p] - 1
            inj = load_end + 1 if j == 0 else np.maximum(load_end + 1, inj_prev + m)
            inj_prev2, inj_prev = inj_prev, inj
            p += 1
            j += 1
            if p >= kt - 1:
                continue
            history.append(np.stack([inj_prev2, inj_prev, load_end]))
            if len(history) < 5:
                continue
            step = history[-1] - history[-3]
            if np.array_equal(step, history[-3] - history[-5]):
                pairs = (kt - 1 - p) // 2
                inj_prev2, inj_prev, load_end = history[-1] + pairs * step
                p += 2 * pairs
                j += 2 * pairs
                history = []
        marks[r + 1] = inj + m
    total = marks[done]
    if runs > done:
        total = total + (runs - done) * (marks[done] - marks[done - 2]) / 2
    return total[inverse].reshape(mm.shape)


def _record_stalls(tokens, k: int, beat: int):
    """Gate cycles lost to the routing-record write path (8-byte records gathered to beats).

    The gather resizer takes no record in the cycle after it completes a beat; the gate
    then holds its next pair one cycle, which costs time only inside a token's run of
    pairs after its first (the first pair is followed by a gap in the gate's weight pass;
    observed on the calibration set: 1 cycle a token at k = 4, 16-byte bus; ½ at k = 3).
    """
    ratio = beat // layout.ROUTING_RECORD_BYTES
    tokens = np.asarray(tokens)
    stalls = np.zeros_like(tokens)
    if ratio <= 1:
        return stalls
    for j in range(1, k - 1):
        for u in range(ratio):
            if (u * k + j + 1) % ratio == 0:
                stalls = stalls + np.maximum(0, (tokens - u + ratio - 1) // ratio)
    return stalls


@functools.lru_cache(maxsize=256)
def _output_stalls(n_terms: int, chunks: int, cols: int, beat: int) -> int:
    """Combiner stalls per token when its C-byte outputs are gathered into wider bus beats.

    The gather resizer (`rtl.resize.Resizer`, C → B bytes) takes `beat / cols` chunks,
    then refuses one in the cycle it hands the beat over; the combiner's
    `COMBINE_LATENCY` stages share one stall enable, so a refusal holds the term feed.
    Simulated cycle by cycle for one token (rows are whole beats, so every token starts
    on an empty gather). Only a token fed one term per chunk (k = 1, no shared expert)
    can outrun the gather.
    """
    ratio = beat // cols
    if n_terms > 1 or ratio <= 1:
        return 0
    stages = [False] * COMBINE_LATENCY  # a chunk in each stage; the last is the output
    full, count, fed, cycle = False, 0, 0, 0
    while True:
        take = stages[-1] and not full
        if take:
            count += 1
        stall = stages[-1] and not take
        full = take and count % ratio == 0  # full for one cycle, then handed over
        if not stall:
            stages = [fed < chunks, *stages[:-1]]
            fed += stages[0]
            if fed == chunks:
                return cycle + 1 - chunks
        cycle += 1


def _last_block(rows, mb: int):
    """Rows of the last M-block of a group of `rows` (see `_blocks`)."""
    _, first, second = _blocks(rows, mb)
    return np.where(second > 0, second, first)


def _blocks(rows, mb: int):
    """The M-blocks the FSM splits `rows` into: full blocks, then one or two halves."""
    rows = np.asarray(rows, dtype=np.int64)
    # MB-row blocks while 2·MB or more remain; the rest (≤ MB, or split in halves).
    full = np.maximum(0, _cdiv(rows - 2 * mb + 1, mb))
    rest = rows - full * mb
    split = rest > mb
    first = np.where(split, (rest + 1) // 2, rest)
    second = np.where(split, rest // 2, 0)
    return full, first, second


def _check_inputs(cfg, spec, tokens, counts, memory):
    _check_types(cfg, spec)
    if not isinstance(memory, MemoryTiming):
        raise ConfigError(f"memory must be a MemoryTiming, got {type(memory).__name__}")
    layout.check_top_config(cfg)
    if cfg.weight_buffers != 2:
        raise ConfigError("the cycle model covers the double-buffered engine (weight_buffers = 2)")
    burst = burst_beats(cfg)
    if memory.read_latency + READ_TURNAROUND > DMA_MAX_OUTSTANDING * burst:
        raise ConfigError(
            f"read_latency = {memory.read_latency} exceeds what {DMA_MAX_OUTSTANDING} outstanding "
            f"{burst}-beat bursts hide; the model assumes streaming reads"
        )
    return _check_routing(cfg, spec, tokens, counts)


def _check_types(cfg, spec) -> None:
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"layer_cycles needs an AccelConfig, got {type(cfg).__name__}")
    if not isinstance(spec, MoESpec):
        raise ConfigError(f"layer_cycles needs a MoESpec, got {type(spec).__name__}")


def _check_routing(cfg, spec, tokens, counts):
    """Token counts and kept pairs per expert, as [points] and [points, E] int64 arrays."""
    _check_types(cfg, spec)
    t = np.asarray(tokens)
    if not np.issubdtype(t.dtype, np.integer) or t.ndim > 1:
        raise ConfigError(f"tokens must be an int or a 1-D int array, got {t.dtype} {t.shape}")
    if t.size == 0 or np.any(t < 1):
        raise ConfigError("tokens must be >= 1")
    c = np.asarray(counts)
    if not np.issubdtype(c.dtype, np.integer):
        raise ConfigError(f"tokens_per_expert must be integers, got {c.dtype}")
    if c.ndim not in (1, 2) or c.shape[-1] != spec.n_experts:
        raise ConfigError(
            f"tokens_per_expert must be [{spec.n_experts}] or [points, {spec.n_experts}] "
            f"kept counts, got shape {c.shape}"
        )
    if np.any(c < 0):
        raise ConfigError("tokens_per_expert has negative counts")
    if c.ndim == 2 and t.ndim == 1 and t.shape[0] != c.shape[0]:
        raise ConfigError(f"{t.shape[0]} token counts for {c.shape[0]} routings")
    if c.ndim == 1 and t.ndim == 1 and t.shape[0] != 1:
        raise ConfigError(f"{t.shape[0]} token counts for one routing")
    c2 = c.reshape(-1, spec.n_experts).astype(np.int64)
    t1 = np.broadcast_to(t, (c2.shape[0],)).astype(np.int64)
    kept = c2.sum(axis=1)
    pairs = t1 * spec.top_k
    if spec.capacity is None:
        bad = kept != pairs
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ConfigError(
                f"tokens_per_expert sums to {kept[i]}, but T·k = {pairs[i]} pairs are routed "
                "and no capacity drops any"
            )
    else:
        over = (kept > pairs) | np.any(c2 > spec.capacity, axis=1)
        short = kept < np.minimum(pairs, spec.capacity)
        if np.any(over | short):
            i = int(np.argmax(over | short))
            raise ConfigError(
                f"tokens_per_expert (sum {kept[i]}) is not T·k = {pairs[i]} pairs minus "
                f"capacity drops (capacity {spec.capacity} per expert)"
            )
    for tok in np.unique(t1):
        cfg.check_model_fits(spec, int(tok))
    return t1, c2


def gemm_cycles(
    cfg: AccelConfig,
    m: int,
    k: int,
    n: int,
    passes: int = 1,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
    *,
    memory: MemoryTiming | None = None,
) -> int:
    """Engine cycles of one GEMM command (M × K × N, `passes` 2 for SwiGLU) from its first
    weight beat to its last result, with weights and activations streaming without a gap.

    The tile walk (loads double-buffered under the previous tile's rows, M rows a
    tile one a cycle) and the drain (array, accumulators, post-processing); M
    within one M-block of the engine (`contract.timing.default_m_block(cfg)`) or
    whole M-blocks. The
    RTL engine's own `busy` counter of such a command matches it
    (`tests/pymodel/test_cycles.py`, against `bench/gemm_formats.json`).
    """
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"gemm_cycles needs an AccelConfig, got {type(cfg).__name__}")
    check_supported(weight_format, cfg)
    for name, value in (("m", m), ("k", k), ("n", n)):
        _check_int("gemm_cycles", name, value, 1)
    if passes not in (1, 2):
        raise ConfigError(f"gemm_cycles: passes must be 1 or 2, got {passes!r}")
    weight_format.check_k(k)
    model = _Model(cfg, None, MemoryTiming() if memory is None else memory, cfg.max_tokens)
    mb = model.m_block
    if m > mb and m % mb:
        raise ConfigError(
            f"gemm_cycles: m = {m} is more than one M-block of {mb} rows but not whole M-blocks"
        )
    blocks = max(1, m // mb)
    return int(np.rint(model.walk(min(m, mb), k, n, passes, weight_format, blocks)))


def layer_cycles(
    cfg: AccelConfig,
    spec: MoESpec,
    tokens: int | np.ndarray,
    tokens_per_expert: np.ndarray,
    *,
    memory: MemoryTiming | None = None,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
) -> CycleEstimate:
    """Predicted counters of one layer per point.

    `tokens`: T (an int, or one per point); `tokens_per_expert`: the kept
    (token, slot) pairs of each expert after capacity drops, `[E]` for one
    point or `[points, E]`. Returns arrays of shape `[points]` (`[1]` for one).
    Shapes are checked with `AccelConfig.check_model_fits`, not against the RTL's
    buffer limits (`max_tokens`, `max_d_model`, …): the model extrapolates the
    generated hardware's timing to real layer sizes. `weight_format` is the
    routed and shared experts' (the build must have it, `check_supported`);
    `useful_macs` counts the layer's K × N work whatever the format.
    """
    memory = MemoryTiming() if memory is None else memory
    t, counts = _check_inputs(cfg, spec, tokens, tokens_per_expert, memory)
    check_supported(weight_format, cfg)
    fmt = weight_format
    for k_in in {spec.d_model, spec.d_ff, spec.shared_d_ff} - {0}:
        fmt.check_k(k_in, "expert")
    m = _Model(cfg, spec, memory, int(t.max()))
    d, f, fs, e, k = spec.d_model, spec.d_ff, spec.shared_d_ff, spec.n_experts, spec.top_k
    B, C = m.B, m.C
    ys = m.ys
    ncol = e + (1 if spec.shared_gate else 0)
    pw = cfg.param_words_per_beat
    swiglu = spec.ffn == "swiglu"
    passes1 = 2 if swiglu else 1
    kept = counts.sum(axis=1)

    # ---------------- route ----------------
    route = FSM_STEP + m.read(4 * ncol, _cdiv(ncol, pw))  # router (m, s) words, PW a cycle
    read_b = np.full(t.shape, m.aligned(4 * ncol))
    if spec.correction_bias:
        route = route + m.read(4 * e, e)  # correction bias, one word a cycle into the gate
        read_b = read_b + m.aligned(4 * e)
    route = route + FSM_STEP + m.read(t * ys)  # all T token rows into the X buffer
    read_b = read_b + t * ys
    # The router GEMM in plain M-blocks of m_block rows (ROUTE), weights re-read per block.
    full, rest = t // m.m_block, t % m.m_block
    router_rows = layout.weight_stream_rows(cfg, d, ncol, 1)
    route_gemms = full * m.gemm(m.m_block, d, ncol, 1) + m.gemm(rest, d, ncol, 1)
    n_route_cmds = full + (rest > 0)
    route = route + route_gemms
    read_b = read_b + n_route_cmds * m.aligned(router_rows * C)
    mac, useful = m.gemm_rows(t, d, ncol, 1)
    shared_mode = SharedExpert.of(spec)
    gate = gate_cycles(
        cfg,
        n_tokens=t,
        n_experts=e,
        top_k=k,
        sigmoid=spec.scoring == "sigmoid",
        renormalize=spec.renormalize,
        grouped=spec.n_group > 1,
        shared=shared_mode,
    )
    # The gate's busy run (logits serialised from the logit buffer, one a cycle), up to the
    # last pair: the shared weight and the token's closing cycle follow it.
    gate_tail = 1 + shared_weight_cycles(cfg, shared_mode)
    # GATE, the serialiser's fill, the gate's busy run, GATE_RUN seeing the last pair's count.
    route = route + GATE_FILL + 2 * FSM_STEP + gate - gate_tail + _record_stalls(t, k, B)
    routing_bytes = m.aligned(t * k * layout.ROUTING_RECORD_BYTES)
    written = routing_bytes

    # ---------------- dispatch ----------------
    pairs = t * k
    nonempty = counts > 0
    last = np.where(nonempty.any(axis=1), e - 1 - np.argmax(nonempty[:, ::-1], axis=1), -1)
    n_rows = (_cdiv(counts, cfg.m_tile) * cfg.m_tile).sum(axis=1)
    # The dispatcher has ingested every pair as the gate emitted it; scan, scatter, walk remain.
    dispatch = dispatch_cycles(pairs, e, last, n_rows) - pairs + 2 * FSM_STEP

    # ---------------- experts ----------------
    param_words = layout.align(f, C) * passes1 + layout.align(d, C)
    lut = layout.lut_bytes(cfg)
    desc = layout.desc_bytes(cfg)
    # Per expert with tokens: descriptor, parameters (PW words a cycle), LUT (4 entries a cycle),
    # each read issued from its own FSM state (DESC, PARAMS; the LUT's on the params' done).
    per_expert = (
        2 * FSM_STEP
        + m.read(desc, len(layout.DESC_FIELDS))
        + m.read(4 * param_words, _cdiv(param_words, pw))
        + m.read(lut, _cdiv(2**cfg.act_bits, cfg.lut_entries_per_beat))
    )
    per_expert_bytes = desc + m.aligned(4 * param_words) + lut

    def expert_cost(rows, ff: int, p1: int):
        """Cycles, MAC cycles, useful MACs and weight bytes of one expert's blocks."""
        full, b1, b2 = _blocks(rows, m.m_block)
        cyc = 0
        macs = 0
        use = 0
        for count, mm in ((full, m.m_block), (1, b1), (1, b2)):
            block = m.gemm(mm, d, ff, p1, fmt) + m.gemm(mm, ff, d, 1, fmt) + 2 * FSM_STEP
            cyc = cyc + count * np.where(np.asarray(mm) > 0, block, 0)
            a, u = m.gemm_rows(mm, d, ff, p1, fmt)
            a2, u2 = m.gemm_rows(mm, ff, d, 1, fmt)
            macs = macs + count * (a + a2)
            use = use + count * (u + u2)
        return cyc, macs, use, m.ffn_weight_bytes(rows, ff, p1, fmt)

    cyc_e, mac_e, use_e, wb_e = expert_cost(counts, f, passes1)
    experts = (
        2 * FSM_STEP * e  # E_NEXT / E_CHECK for every expert
        + (cyc_e + per_expert * nonempty).sum(axis=1)
        + FSM_STEP
    )
    mac = mac + mac_e.sum(axis=1)
    useful = useful + use_e.sum(axis=1)
    read_b = read_b + (wb_e + per_expert_bytes * nonempty).sum(axis=1)
    written = written + kept * ys

    shared = np.zeros_like(t)
    if spec.has_shared:
        s_words = layout.align(fs, C) * 2 + layout.align(d, C)
        cyc_s, mac_s, use_s, wb_s = expert_cost(t, fs, 2)
        shared = (
            2 * FSM_STEP
            + m.read(desc, len(layout.DESC_FIELDS))
            + m.read(4 * s_words, _cdiv(s_words, pw))
            + m.read(lut, _cdiv(2**cfg.act_bits, cfg.lut_entries_per_beat))
            + cyc_s
        )
        mac = mac + mac_s
        useful = useful + use_s
        read_b = read_b + wb_s + desc + m.aligned(4 * s_words) + lut
        written = written + t * ys
    # COMBINE waits for the last expert-output block's write-back (its beats, then the B
    # response); trailing empty experts' E_NEXT/E_CHECK steps run beside it.
    if spec.has_shared:
        last_rows = _last_block(t, m.m_block)
        overlap = 0
    else:
        last_count = np.take_along_axis(counts, np.maximum(last, 0)[:, None], axis=1)[:, 0]
        last_rows = _last_block(last_count, m.m_block)
        overlap = 2 * FSM_STEP * (e - 1 - last)
    final_wb = last_rows * (ys // B) * m.beat_cycles + memory.write_latency
    final_stall = np.maximum(0, final_wb - overlap)
    if spec.has_shared:
        shared = shared + final_stall
    experts = experts + shared + np.where(spec.has_shared, 0, final_stall)

    # ---------------- combine ----------------
    n_terms = k + (1 if spec.has_shared else 0)
    chunks = ys // C
    term_read = m.read(ys, ys // min(B, C))  # one expert-output row into the term buffer
    per_token = (
        3 * FSM_STEP * k  # CombinePhase SLOT, GOT, STEP per slot
        + (term_read if spec.has_shared else 0)
        + 2 * FSM_STEP  # CombinePhase FEED, the loop back
        + n_terms * chunks  # one term a cycle into the combiner
        + FSM_STEP  # the term register empties before the next token's slots
        + _output_stalls(n_terms, chunks, C, B)
    )
    # The last output chunk leaves the combiner's pipeline, then its write is acknowledged.
    combine = (
        t * per_token
        + kept * term_read
        + 2 * FSM_STEP
        + COMBINE_LATENCY
        + memory.write_latency
        + WRITE_DRAIN
    )
    read_b = read_b + kept * ys + (t * ys if spec.has_shared else 0)
    written = written + t * ys

    n = counts.shape[0]

    def whole(v) -> np.ndarray:
        return np.broadcast_to(np.rint(np.asarray(v, dtype=np.float64)), (n,)).astype(np.int64)

    phases = {
        name: whole(v)
        for name, v in (
            ("route", route),
            ("dispatch", dispatch),
            ("experts", experts),
            ("combine", combine),
        )
    }
    return CycleEstimate(
        # The phase counters partition the busy cycles: the total is their sum.
        cycles_total=sum(phases.values()),
        cycles_route=phases["route"],
        cycles_dispatch=phases["dispatch"],
        cycles_experts=phases["experts"],
        cycles_shared=whole(shared),
        cycles_combine=phases["combine"],
        mac_cycles=whole(mac),
        bytes_read=whole(read_b),
        bytes_written=whole(written),
        useful_macs=whole(useful),
    )


def expert_weight_bytes(
    cfg: AccelConfig,
    spec: MoESpec,
    tokens: int | np.ndarray,
    tokens_per_expert: np.ndarray,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
) -> np.ndarray:
    """Bytes of routed and shared expert weights one layer reads, per point.

    Every expert with tokens streams W1 (and W3) and W2 once per M-block of its
    rows, in `weight_format`'s tile layout padded to whole beats (part of
    `layer_cycles`' `bytes_read`). Group-wise int4 is counted like per-channel
    int4: its group scales are parameters, not weight-stream bytes.
    """
    fmt = weight_format
    if not isinstance(fmt, WeightFormat):
        raise ConfigError(f"expected a WeightFormat, got {type(fmt).__name__}")
    stream_fmt = WeightFormat(fmt.bits, fmt.sparse)
    t, counts = _check_routing(cfg, spec, tokens, tokens_per_expert)
    m = _Model(cfg, spec, MemoryTiming(), int(t.max()))
    passes1 = 2 if spec.ffn == "swiglu" else 1
    total = m.ffn_weight_bytes(counts, spec.d_ff, passes1, stream_fmt).sum(axis=1)
    if spec.has_shared:
        total = total + m.ffn_weight_bytes(t, spec.shared_d_ff, 2, stream_fmt)
    return np.asarray(total, dtype=np.int64)


def golden_cycles(
    cfg: AccelConfig, result: LayerResult, *, memory: MemoryTiming | None = None
) -> CycleEstimate:
    """`layer_cycles` for a golden layer's own routing and weight format."""
    if not isinstance(result, LayerResult):
        raise ConfigError(f"golden_cycles needs a LayerResult, got {type(result).__name__}")
    tokens = int(result.x_q.shape[0])
    ql = result.ql
    return layer_cycles(
        cfg,
        ql.spec,
        tokens,
        result.dispatch.counts,
        memory=memory,
        weight_format=ql.weight_format,
    )
