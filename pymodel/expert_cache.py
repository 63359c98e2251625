"""An expert cache in device memory, per MoE layer, and what it costs a decode stream.

Each MoE layer keeps `slots` experts' weights in device memory; an expert a
token needs that is not there is a miss and its weights come over the host
link (`HostLink`: bytes a cycle and a latency per expert fetch). The same
decisions drive the simulated hardware's cache (`sw_driver.offload.CachedDevice`,
with prefetch on the RTL's copy engine), measured against this model by
`bench/offload_bench.py`.

Policies (`POLICIES`):
- `lru`: a miss evicts the least recently used expert;
- `lfu`: a miss evicts the least often used one so far (ties: least recent);
- `pinned`: the `slots` experts the trace uses most in that layer stay, the
  others are fetched for each use and dropped (an oracle: the popularity is
  read from the trace itself, the best a static choice can do).

`prefetch` gives, for each step and layer, the experts predicted before the
layer runs (e.g. by pre-gating); predicted experts are fetched into the cache
ahead of time (`LayerCache.prefetch`), their transfer overlapping the previous
layer's compute. `prefetch_pair_cycles` prices a layer with the copies beside
it as the RTL runs them (the bench's prediction); `decode_cost` turns the
cache's misses into cycles per token at full model size beside two bounds:
every expert already in device memory, and every expert over the link.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from contract import layout
from contract.timing import DMA_MAX_OUTSTANDING, burst_beats, default_m_block

from .config import AccelConfig, ConfigError, MoESpec, _check_int
from .cycles import MemoryTiming, layer_cycles
from .expert_traces import RoutingTrace

__all__ = [
    "POLICIES",
    "CacheResult",
    "DecodeCost",
    "HostLink",
    "LayerCache",
    "copy_cycles",
    "copy_stall_cycles",
    "decode_cost",
    "host_layer_cycles",
    "link_read_cycles",
    "prefetch_pair_cycles",
    "simulate_cache",
]

POLICIES = ("lru", "lfu", "pinned")


@dataclass(frozen=True)
class HostLink:
    """The slow tier: host memory behind a link of `bytes_per_cycle`, `latency` cycles a request.

    One definition for the model and the simulated system: `sim.fast.FastSim.set_host_tier`
    serves host bursts with these numbers (`latency` before a burst's first beat, then
    `bytes_per_cycle`, resolved to 1/1000 byte), and the cycle model charges the same.
    """

    bytes_per_cycle: float
    latency: int = 1000

    def __post_init__(self) -> None:
        if (
            isinstance(self.bytes_per_cycle, bool)
            or not isinstance(self.bytes_per_cycle, int | float)
            or not 0 < self.bytes_per_cycle <= 4096
        ):
            raise ConfigError(f"HostLink.bytes_per_cycle = {self.bytes_per_cycle} not in (0, 4096]")
        if abs(self.bytes_per_cycle * 1000 - round(self.bytes_per_cycle * 1000)) > 1e-9:
            raise ConfigError(
                f"HostLink.bytes_per_cycle = {self.bytes_per_cycle} is finer than 1/1000 byte"
            )
        _check_int("HostLink", "latency", self.latency, 0)

    @property
    def millibytes_per_cycle(self) -> int:
        """The bandwidth in the harness's unit (1/1000 byte a cycle)."""
        return round(self.bytes_per_cycle * 1000)

    def fetch_cycles(self, nbytes: float) -> float:
        return self.latency + nbytes / self.bytes_per_cycle


def link_read_cycles(cfg: AccelConfig, link: HostLink, nbytes: int) -> float:
    """Cycles from a DMA read command's first AR to its last beat, `nbytes` over `link`.

    The DMA splits the read into bursts of `burst_beats(cfg)` beats and keeps
    `DMA_MAX_OUTSTANDING` in flight; each burst waits `link.latency` for its first
    beat and the link moves `bytes_per_cycle`. So the stream is bandwidth-bound
    (`nbytes / bytes_per_cycle` after one latency) unless the outstanding bursts
    cannot cover the latency, when each window of them costs a latency plus a burst.
    """
    burst = burst_beats(cfg) * cfg.mem_bytes_per_cycle
    n_bursts = -(-nbytes // burst)
    t_burst = min(burst, nbytes) / link.bytes_per_cycle
    windows = (n_bursts - 1) * (link.latency + t_burst) / DMA_MAX_OUTSTANDING + t_burst
    return link.latency + max(nbytes / link.bytes_per_cycle, windows)


def host_layer_cycles(
    cfg: AccelConfig,
    spec: MoESpec,
    tokens: int,
    tokens_per_expert: np.ndarray,
    link: HostLink,
    host_experts: set[int] | frozenset[int] | tuple[int, ...],
    *,
    memory: MemoryTiming | None = None,
) -> float:
    """Cycles of one layer whose `host_experts` are read from host memory over `link`.

    Derived from `layer_cycles` (every expert in device memory): each read command
    of a host expert with tokens (its parameter words, then per M-block its two
    weight streams) stalls for what its link time exceeds its device time
    (`read_latency` plus its beats): the engine consumes weights as they arrive,
    so a slower stream lengthens the command by the difference.
    """
    memory = MemoryTiming() if memory is None else memory
    counts = np.asarray(tokens_per_expert, dtype=np.int64)
    base = float(layer_cycles(cfg, spec, tokens, counts, memory=memory).cycles_total[0])
    b, c = cfg.mem_bytes_per_cycle, cfg.cols
    beat_cycles = max(1.0, b / (memory.bytes_per_cycle or b))
    passes = 2 if spec.ffn == "swiglu" else 1
    d, f = spec.d_model, spec.d_ff
    w1 = layout.align(layout.weight_stream_rows(cfg, d, f, passes) * c, b)
    w2 = layout.align(layout.weight_stream_rows(cfg, f, d, 1) * c, b)
    words = layout.align(f, c) * passes + layout.align(d, c)
    params = layout.align(4 * words, b)
    m_block = default_m_block(cfg)

    def extra(nbytes: int) -> float:
        device = memory.read_latency + nbytes / b * beat_cycles
        return max(0.0, link_read_cycles(cfg, link, nbytes) - device)

    total = base
    for e in sorted(set(host_experts)):
        rows = int(counts[e])
        if rows:
            total += extra(params) + -(-rows // m_block) * (extra(w1) + extra(w2))
    return total


def copy_cycles(cfg: AccelConfig, link: HostLink, nbytes: int) -> float:
    """One copy of `nbytes` from host memory into a device slot, alone on the copy engine:
    a DMA read over the link (the writes to device memory follow one burst behind)."""
    return link_read_cycles(cfg, link, nbytes)


def copy_stall_cycles(
    cfg: AccelConfig, link: HostLink, layer: float, copies: int, copy_bytes: int
) -> float:
    """Cycles the copies queued at a layer's start can take from it: their bus beats.

    The copy engine writes a burst only once its data has crossed the link, so its W
    beats run back to back and a layer write behind them in AXI4's W order waits for
    beats, never for the link (`rtl.copy_engine`). What the copies can take is the W
    cycles of the bytes that arrive while the layer runs: `(layer - latency)` cycles of
    link bandwidth, at most all their bytes, one bus beat each `mem_bytes_per_cycle`.
    A bound from the bus sharing (the layer loses those cycles only when it writes then).
    """
    arrived = min(copies * copy_bytes, max(0.0, layer - link.latency) * link.bytes_per_cycle)
    return arrived / cfg.mem_bytes_per_cycle


def prefetch_pair_cycles(
    cfg: AccelConfig,
    link: HostLink,
    layer: float,
    copies: int,
    copy_bytes: int,
    demand_bytes: int = 0,
) -> float:
    """Cycles from a layer's start until it and the `copies` queued beside it are done.

    `layer` is the layer's own cycles (e.g. `host_layer_cycles`), `demand_bytes` what
    it reads over the link itself. The copies run one after another from the layer's
    start; they stall the layer by their bus beats (`copy_stall_cycles`), and the link
    carries the layer's demand reads too. What the copies take beyond the layer is the
    exposed prefetch cost: the next layer waits for it.
    """
    _check_int("prefetch_pair_cycles", "copies", copies, 0)
    if not copies:
        return layer
    beside = layer + copy_stall_cycles(cfg, link, layer, copies, copy_bytes)
    copying = copies * copy_cycles(cfg, link, copy_bytes) + demand_bytes / link.bytes_per_cycle
    return max(beside, copying)


@dataclass
class CacheResult:
    """Per layer: hits, misses (fetched on demand), prefetched experts, and which were used."""

    hits: np.ndarray
    misses: np.ndarray
    prefetched: np.ndarray
    prefetch_used: np.ndarray
    miss_mask: np.ndarray = field(repr=False)
    """`[steps, layers, top_k]` True where the pick was a demand miss."""
    prefetch_counts: np.ndarray = field(repr=False)
    """`[steps, layers]` experts fetched ahead of the layer at that step."""

    @property
    def hit_rate(self) -> float:
        total = self.hits.sum() + self.misses.sum()
        return float(self.hits.sum() / total) if total else 1.0


class LayerCache:
    """One layer's expert cache under a policy: the one implementation of the policies.

    Why public: the model (`simulate_cache`) and the driver's cache of the
    simulated hardware (`sw_driver.offload.CachedDevice`) take every decision
    here, so a measured and a predicted run can only differ in cycles.
    `popularity[e]` (uses of expert e, e.g. from a recorded trace) chooses the
    `pinned` policy's experts: the `slots` most used.
    """

    def __init__(self, policy: str, slots: int, popularity: np.ndarray) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown cache policy {policy!r}; allowed: {list(POLICIES)}")
        self.policy, self.slots = policy, slots
        self.cache: set[int] = set()
        self.last_use: dict[int, int] = {}
        self.uses: dict[int, int] = {}
        self.clock = 0
        top = np.argsort(-np.asarray(popularity), kind="stable")[:slots]
        self.pinned = set(top.tolist()) if policy == "pinned" else set()

    def present(self, expert: int) -> bool:
        return expert in (self.pinned if self.policy == "pinned" else self.cache)

    @property
    def contents(self) -> set[int]:
        """The experts in device memory now."""
        return set(self.pinned if self.policy == "pinned" else self.cache)

    def admit(self, expert: int, keep: frozenset[int] = frozenset()) -> int | None:
        """Bring `expert` in (pinned: nothing moves), evicting by the policy when full;
        returns the evicted expert (its slot is the one `expert` takes), else None.

        `keep` (the experts the same layer call uses) are never evicted: a call's
        experts are all read from where they were when it started. With every slot
        kept, `expert` is not admitted.
        """
        if self.policy == "pinned" or self.slots == 0 or expert in self.cache:
            return None
        victim = None
        if len(self.cache) >= self.slots:
            candidates = self.cache - keep
            if not candidates:
                return None
            if self.policy == "lru":
                victim = min(candidates, key=lambda e: self.last_use.get(e, -1))
            else:
                victim = min(
                    candidates, key=lambda e: (self.uses.get(e, 0), self.last_use.get(e, -1))
                )
            self.cache.discard(victim)
        self.cache.add(expert)
        return victim

    def use(self, expert: int) -> None:
        self.clock += 1
        self.last_use[expert] = self.clock
        self.uses[expert] = self.uses.get(expert, 0) + 1

    def prefetch(self, predicted: Iterable[int]) -> list[tuple[int, int | None]]:
        """Bring the `predicted` experts (-1 pads) in ahead of a call, as the copy engine does.

        A prediction never evicts another prediction of the same call; one that finds
        no slot (pinned, or every slot kept) is not fetched. Returns (expert, victim)
        for each expert brought in, in order: the copies to make.
        """
        wanted = [int(e) for e in dict.fromkeys(predicted) if e >= 0]
        keep = frozenset(wanted)
        fetched = []
        for e in wanted:
            if self.present(e):
                continue
            victim = self.admit(e, keep=keep)
            if self.present(e):
                fetched.append((e, victim))
        return fetched

    def call(self, picks: Iterable[int]) -> tuple[list[bool], list[tuple[int, int | None]]]:
        """One layer call using `picks`: which were hits (in device memory when it started),
        and (expert, victim) for each miss then admitted (read-through: the demand read over
        the link fills the slot). Every pick counts as a use."""
        call = [int(e) for e in picks]
        hit = [self.present(e) for e in call]
        keep = frozenset(call)
        admitted = []
        for e, was_hit in zip(call, hit, strict=True):
            if not was_hit:
                victim = self.admit(e, keep=keep)
                if self.present(e):
                    admitted.append((e, victim))
            self.use(e)
        return hit, admitted


def simulate_cache(
    trace: RoutingTrace,
    slots: int,
    policy: str,
    *,
    prefetch: np.ndarray | None = None,
) -> CacheResult:
    """Replay `trace` through a per-layer cache of `slots` experts under `policy`.

    `prefetch[step, layer]` lists predicted experts (any count, -1 pads) that are
    brought in before the layer runs at that step (`LayerCache.prefetch`: evicting by the
    policy, never another prediction; pinned caches fetch nothing ahead).
    """
    if policy not in POLICIES:
        raise ConfigError(f"unknown cache policy {policy!r}; allowed: {list(POLICIES)}")
    _check_int("simulate_cache", "slots", slots, 0, trace.n_experts)
    steps, layers, _ = trace.experts.shape
    if prefetch is not None and (prefetch.ndim != 3 or prefetch.shape[:2] != (steps, layers)):
        raise ConfigError(f"prefetch must be [steps, layers, n] = [{steps}, {layers}, n]")
    hits = np.zeros(layers, dtype=np.int64)
    misses = np.zeros(layers, dtype=np.int64)
    prefetched = np.zeros(layers, dtype=np.int64)
    used = np.zeros(layers, dtype=np.int64)
    miss_mask = np.zeros(trace.experts.shape, dtype=bool)
    ahead = np.zeros((steps, layers), dtype=np.int64)
    for layer in range(layers):
        picks = trace.experts[:, layer]
        state = LayerCache(policy, slots, np.bincount(picks.ravel(), minlength=trace.n_experts))
        for step in range(steps):
            ahead_of = [] if prefetch is None else state.prefetch(prefetch[step, layer].tolist())
            fetched_ahead = {e for e, _ in ahead_of}
            prefetched[layer] += len(fetched_ahead)
            ahead[step, layer] = len(fetched_ahead)
            hit, _ = state.call(picks[step].tolist())
            for slot, (e, was_hit) in enumerate(zip(picks[step].tolist(), hit, strict=True)):
                if was_hit:
                    hits[layer] += 1
                    used[layer] += e in fetched_ahead
                else:
                    misses[layer] += 1
                    miss_mask[step, layer, slot] = True
    return CacheResult(hits, misses, prefetched, used, miss_mask, ahead)


@dataclass(frozen=True)
class DecodeCost:
    """Cycles per decode token: with the cache, and the two bounds."""

    cycles_per_token: float
    all_in_device: float
    all_over_link: float
    link_bytes_per_token: float

    @property
    def hidden_fraction(self) -> float:
        """Share of the all-over-link penalty the cache (and prefetch) hide."""
        span = self.all_over_link - self.all_in_device
        return 1.0 if span <= 0 else (self.all_over_link - self.cycles_per_token) / span


def expert_bytes(spec: MoESpec) -> int:
    """Bytes of one expert's int8 weights (W1, W3 for SwiGLU, W2)."""
    passes = 2 if spec.ffn == "swiglu" else 1
    return passes * spec.d_model * spec.d_ff + spec.d_ff * spec.d_model


def decode_cost(
    cfg: AccelConfig,
    spec: MoESpec,
    trace: RoutingTrace,
    cache: CacheResult,
    link: HostLink,
    *,
    memo: dict[tuple[int, ...], int] | None = None,
) -> DecodeCost:
    """Cycles per token of the trace's decode stream with `cache`'s misses over `link`.

    Every layer of the trace is `spec` on `cfg` at one token (`layer_cycles` with
    the trace's experts). A demand miss stalls the layer for its fetch; a
    prefetched expert's fetch overlaps the previous layer's compute, and only
    what does not fit under it stalls. The bounds: no fetch at all, and every
    pick fetched on demand. `memo` (a layer's cycles by its sorted expert set) may
    be shared by the calls of a study on the same `cfg` and `spec`, which price the
    same expert sets many times; it changes no figure.
    """
    if cache.miss_mask.shape != trace.experts.shape:
        raise ConfigError("the cache result is of another trace")
    ebytes = expert_bytes(spec)
    fetch = link.fetch_cycles(ebytes)
    if memo is None:
        memo = {}

    def compute(experts: np.ndarray) -> int:
        key = tuple(sorted(int(e) for e in experts))
        if key not in memo:
            counts = np.bincount(experts, minlength=spec.n_experts)
            memo[key] = int(layer_cycles(cfg, spec, 1, counts).cycles_total[0])
        return memo[key]

    steps, layers, _ = trace.experts.shape
    total = in_device = over_link = 0.0
    for step in range(steps):
        previous = 0.0
        for layer in range(layers):
            c = compute(trace.experts[step, layer])
            in_device += c
            over_link += c + fetch * trace.top_k
            demand = cache.miss_mask[step, layer].sum() * fetch
            ahead = max(0.0, cache.prefetch_counts[step, layer] * fetch - previous)
            total += c + demand + ahead
            previous = c
    link_bytes = (cache.misses.sum() + cache.prefetched.sum()) * ebytes / steps
    return DecodeCost(total / steps, in_device / steps, over_link / steps, float(link_bytes))
