"""Routing traces, the per-layer expert cache and the decode cost with offloaded experts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.expert_cache import (
    HostLink,
    LayerCache,
    copy_cycles,
    copy_stall_cycles,
    decode_cost,
    expert_bytes,
    prefetch_pair_cycles,
    simulate_cache,
)
from pymodel.expert_traces import RoutingTrace, synthetic_trace
from pymodel.families import family_spec


def hand_trace() -> RoutingTrace:
    # one layer, top-1, 4 experts: 0 1 0 2 0 1
    return RoutingTrace(np.array([0, 1, 0, 2, 0, 1]).reshape(6, 1, 1), 4, "hand")


@pytest.mark.parametrize(
    ("policy", "slots", "hits"),
    [
        ("lru", 1, 0),  # every pick evicts the last one
        ("lru", 2, 2),  # 0 1 [0] 2(evicts 1) [0] 1(evicts 2)
        ("lfu", 2, 2),  # 0 1 [0] 2(evicts 1, used once) [0] 1(evicts 2, used once)
        ("pinned", 1, 3),  # expert 0 pinned (3 uses): hits at its three uses
        ("pinned", 2, 5),  # 0 and 1 pinned: only expert 2 misses
    ],
)
def test_policies_on_a_hand_trace(policy: str, slots: int, hits: int) -> None:
    res = simulate_cache(hand_trace(), slots, policy)
    assert int(res.hits[0]) == hits
    assert int(res.hits[0] + res.misses[0]) == 6
    assert int(res.miss_mask.sum()) == int(res.misses[0])


def test_lfu_keeps_the_frequent_expert() -> None:
    # 0 0 1 2 0 with 2 slots: at 2, LRU evicts 0 (used longer ago than 1) and misses it at
    # the end; LFU evicts 1 (used once, 0 twice) and hits
    trace = RoutingTrace(np.array([0, 0, 1, 2, 0]).reshape(5, 1, 1), 3)
    assert simulate_cache(trace, 2, "lru").misses[0] == 4
    assert simulate_cache(trace, 2, "lfu").misses[0] == 3


def test_prefetch_turns_misses_into_hits() -> None:
    trace = hand_trace()
    perfect = trace.experts.copy()  # a predictor that is always right
    res = simulate_cache(trace, 1, "lru", prefetch=perfect)
    assert res.misses[0] == 0 and res.prefetch_used[0] == res.prefetched[0] > 0
    wrong = (trace.experts + 1) % 4
    res = simulate_cache(trace, 1, "lru", prefetch=wrong)
    assert res.prefetch_used[0] == 0 and res.misses[0] == 6


def test_a_prefetch_never_evicts_another_prediction_nor_fetches_into_a_pinned_cache() -> None:
    cache = LayerCache("lru", 2, np.zeros(4))
    assert cache.prefetch([0, 1]) == [(0, None), (1, None)]
    cache.call([0])  # 1 is now the least recently used
    assert cache.prefetch([2, 1, -1]) == [(2, 0)]  # 0 evicted: 1 is a prediction too
    assert cache.contents == {1, 2}
    assert LayerCache("lru", 1, np.zeros(4)).prefetch([3, 2]) == [(3, None)]
    pinned = LayerCache("pinned", 2, np.array([5, 0, 0, 9]))
    assert pinned.prefetch([1, 2]) == [] and pinned.contents == {0, 3}
    hit, admitted = pinned.call([3, 1])
    assert hit == [True, False] and admitted == []


def test_prefetch_pair_cycles_exposes_only_what_the_copies_take_beyond_the_layer() -> None:
    cfg, link = AccelConfig(), HostLink(bytes_per_cycle=4, latency=200)
    assert prefetch_pair_cycles(cfg, link, 1000.0, 0, 4096) == 1000.0
    beat = cfg.mem_bytes_per_cycle
    # 800 cycles of the layer after the link's latency: 3,200 of the 4,096 bytes arrive.
    assert copy_stall_cycles(cfg, link, 1000.0, 1, 4096) == pytest.approx(3200 / beat)
    assert copy_stall_cycles(cfg, link, 150.0, 1, 4096) == 0.0
    stalled = 1000.0 + 3200 / beat
    assert prefetch_pair_cycles(cfg, link, 1000.0, 1, 4096) == pytest.approx(
        max(stalled, copy_cycles(cfg, link, 4096))
    )
    long = prefetch_pair_cycles(cfg, link, 100_000.0, 2, 4096)
    assert long == pytest.approx(100_000.0 + 2 * 4096 / beat)  # every beat inside the layer
    with pytest.raises(ConfigError, match="copies"):
        prefetch_pair_cycles(cfg, link, 1000.0, -1, 4096)


def test_synthetic_trace_statistics(seed: int) -> None:
    t = synthetic_trace(layers=3, steps=400, n_experts=16, top_k=2, skew=1.2, reuse=0.5, seed=seed)
    assert t.experts.shape == (400, 3, 2)
    assert 0.5 <= t.reuse_rate() <= 0.75  # kept with p = 0.5, plus chance re-draws
    counts = np.bincount(t.experts[:, 0].ravel(), minlength=16)
    assert counts.max() > 3 * np.median(counts)  # Zipf 1.2: a few experts dominate
    flat = synthetic_trace(layers=1, steps=400, n_experts=16, top_k=2, skew=0, reuse=0, seed=seed)
    assert flat.reuse_rate() < 0.25  # ~2 × 2/16 by chance
    again = synthetic_trace(layers=3, steps=400, n_experts=16, top_k=2, skew=1.2, reuse=0.5,
                            seed=seed)  # fmt: skip
    assert np.array_equal(again.experts, t.experts)


def test_trace_files(tmp_path: Path) -> None:
    t = synthetic_trace(layers=2, steps=5, n_experts=8, top_k=2, seed=1)
    t.save(tmp_path / "t.json")
    back = RoutingTrace.load(tmp_path / "t.json")
    assert np.array_equal(back.experts, t.experts) and back.n_experts == 8
    bad = {
        "broken.json": ("{", "not valid JSON"),
        "kind.json": ('{"kind": "x"}', "not a RoutingTrace"),
        "range.json": (
            '{"kind": "RoutingTrace", "n_experts": 4, "experts": [[[0, 9]]]}',
            "outside",
        ),
        "twice.json": ('{"kind": "RoutingTrace", "n_experts": 4, "experts": [[[1, 1]]]}', "twice"),
        "keys.json": ('{"kind": "RoutingTrace", "n_experts": 4, "experts": [], "x": 1}', "unknown"),
    }
    for name, (text, message) in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError, match=message):
            RoutingTrace.load(tmp_path / name)


def test_decode_cost_between_its_bounds(seed: int) -> None:
    cfg = AccelConfig()
    spec = family_spec("mixtral", d_model=256, d_ff=512, n_experts=8)
    trace = synthetic_trace(layers=4, steps=32, n_experts=8, top_k=2, skew=1.0, reuse=0.4,
                            seed=seed)  # fmt: skip
    link = HostLink(bytes_per_cycle=2.0, latency=500)
    costs = {}
    for slots in (0, 2, 4, 8):
        res = simulate_cache(trace, slots, "lru")
        costs[slots] = decode_cost(cfg, spec, trace, res, link)
    for c in costs.values():
        assert c.all_in_device <= c.cycles_per_token <= c.all_over_link
    assert costs[0].cycles_per_token == pytest.approx(costs[0].all_over_link)
    # without prefetch the hidden share is the hit rate; with every expert cached after its
    # first use, only cold misses remain: at most 8 a layer of the 32 × 2 picks
    for slots, cost in costs.items():
        assert cost.hidden_fraction == pytest.approx(simulate_cache(trace, slots, "lru").hit_rate)
    assert costs[8].hidden_fraction >= 1 - 8 / 64
    assert costs[2].cycles_per_token >= costs[4].cycles_per_token >= costs[8].cycles_per_token
    assert costs[0].link_bytes_per_token == pytest.approx(2 * 4 * expert_bytes(spec))


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="unknown cache policy"):
        simulate_cache(hand_trace(), 1, "fifo")
    with pytest.raises(ConfigError, match="slots"):
        simulate_cache(hand_trace(), 5, "lru")
    with pytest.raises(ConfigError, match="bytes_per_cycle"):
        HostLink(bytes_per_cycle=0)
    with pytest.raises(ConfigError, match="non-empty"):
        RoutingTrace(np.zeros((0, 1, 1), dtype=np.int64), 4)
    with pytest.raises(ConfigError, match="skew"):
        synthetic_trace(layers=1, steps=1, n_experts=4, top_k=1, skew=-1)
