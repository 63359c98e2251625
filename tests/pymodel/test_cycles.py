"""Cycle model (`pymodel.cycles`): against checked-in RTL counters, bad input, batching.

The RTL comparison uses `tests/pymodel/data/cycle_calibration.json`, counters measured on the
Verilator fast backend by `bench/calibrate.py --write-fixture` (no build here); the bounds
are the bench's documented ones, the full ≥ 40-case table is `make bench`'s.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.cycles import COUNTERS, MemoryTiming, golden_cycles, layer_cycles
from pymodel.families import family_spec
from pymodel.layer import run_golden
from pymodel.weights import MoEWeights

DATA = json.loads((Path(__file__).parent / "data" / "cycle_calibration.json").read_text())
PHASES = ("route", "dispatch", "experts", "shared", "combine")
EXACT = ("mac_cycles", "useful_macs", "bytes_read", "bytes_written")


@pytest.mark.parametrize("case", DATA["cases"], ids=lambda c: f"{c['name']}-{c['config']}")
def test_model_matches_measured_rtl_counters(case: dict) -> None:
    cfg = AccelConfig.from_dict(DATA["configs"][case["config"]])
    spec = MoESpec.from_dict(case["spec"])
    est = layer_cycles(cfg, spec, case["tokens"], np.asarray(case["tokens_per_expert"]))
    meas = case["measured"]
    for name in EXACT:
        assert est[name][0] == meas[name], name
    total = meas["cycles_total"]
    assert abs(est["cycles_total"][0] - total) <= 0.03 * total
    for ph in PHASES:
        m = meas[f"cycles_{ph}"]
        if m >= 1000:
            assert abs(est[f"cycles_{ph}"][0] - m) <= 0.05 * m, ph
    phases = sum(int(est[f"cycles_{ph}"][0]) for ph in PHASES if ph != "shared")
    assert phases == est["cycles_total"][0]


def _spec() -> MoESpec:
    return family_spec("deepseek_v3", d_model=64, d_ff=128, n_experts=8, top_k=2)


def test_batch_equals_points_and_has_one_entry_per_point() -> None:
    cfg, spec = AccelConfig(), _spec()
    rng = np.random.default_rng(5)
    tokens = rng.integers(1, 200, size=50)
    counts = np.stack([np.bincount(rng.integers(0, 8, 2 * t), minlength=8) for t in tokens])
    batch = layer_cycles(cfg, spec, tokens, counts)
    for name in COUNTERS:
        assert batch[name].shape == (50,)
    for i in (0, 17, 49):
        one = layer_cycles(cfg, spec, int(tokens[i]), counts[i])
        for name in COUNTERS:
            assert one[name].shape == (1,)
            assert one[name][0] == batch[name][i], name


def test_a_golden_layer_routing_gives_the_same_estimate() -> None:
    cfg = AccelConfig()
    spec = family_spec("switch", d_model=32, d_ff=64, n_experts=4, capacity=3)
    x = np.random.default_rng(2).standard_normal((20, 32)).astype(np.float32)
    result = run_golden(spec, MoEWeights.random(spec, seed=2), x, cfg)
    assert result.dispatch.dropped > 0
    est = golden_cycles(cfg, result)
    same = layer_cycles(cfg, spec, 20, result.dispatch.counts)
    assert est.as_dict().keys() == same.as_dict().keys()
    for name in COUNTERS:
        assert est[name][0] == same[name][0]
    with pytest.raises(ConfigError, match="LayerResult"):
        golden_cycles(cfg, result.dispatch)


def test_more_tokens_cost_more_and_empty_experts_are_skipped() -> None:
    cfg, spec = AccelConfig(), _spec()
    few = layer_cycles(cfg, spec, 4, np.array([4, 4, 0, 0, 0, 0, 0, 0]))
    spread = layer_cycles(cfg, spec, 4, np.array([1, 1, 1, 1, 1, 1, 1, 1]))
    many = layer_cycles(cfg, spec, 64, np.full(8, 16))
    assert spread["cycles_experts"][0] > few["cycles_experts"][0]
    assert spread["bytes_read"][0] > few["bytes_read"][0]
    assert many["cycles_total"][0] > spread["cycles_total"][0]
    slow = layer_cycles(cfg, spec, 4, np.full(8, 1), memory=MemoryTiming(read_latency=40))
    assert slow["cycles_total"][0] > spread["cycles_total"][0]


def test_real_sizes_beyond_the_rtl_limits_are_modelled() -> None:
    cfg = AccelConfig(rows=16, cols=16, mem_bytes_per_cycle=32)  # RTL max_experts = 64
    spec = family_spec("deepseek_v3", d_model=7168, d_ff=2048, n_experts=256, top_k=8)
    spec = spec.replace(n_group=8, topk_group=4, shared_d_ff=2048)
    counts = np.zeros(256, dtype=np.int64)
    counts[:8] = 1
    est = layer_cycles(cfg, spec, 1, counts)
    assert est["useful_macs"][0] == 7168 * 256 + 9 * 3 * 7168 * 2048  # router + 8 routed + shared


@pytest.mark.parametrize(
    ("tokens", "counts", "match"),
    [
        (4, np.full(7, 1), r"\[8\] or \[points, 8\]"),
        (4, np.array([9, -1, 0, 0, 0, 0, 0, 0]), "negative"),
        (4, np.full(8, 2), "sums to 16, but T·k = 8"),
        (0, np.zeros(8, dtype=np.int64), "tokens must be >= 1"),
        (4, np.full(8, 1.0), "integers"),
        (np.array([4, 4]), np.full((3, 8), 1), "2 token counts for 3 routings"),
    ],
)
def test_bad_routing_is_a_config_error(tokens, counts, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        layer_cycles(AccelConfig(), _spec(), tokens, counts)


def test_capacity_drops_must_be_consistent() -> None:
    spec = family_spec("switch", d_model=32, d_ff=64, n_experts=4, capacity=2)
    cfg = AccelConfig()
    est = layer_cycles(cfg, spec, 8, np.array([2, 2, 1, 0]))  # 3 of 8 pairs dropped
    assert est["cycles_total"][0] > 0
    with pytest.raises(ConfigError, match="capacity"):
        layer_cycles(cfg, spec, 8, np.array([3, 2, 1, 0]))


@pytest.mark.parametrize(
    ("cfg", "memory", "match"),
    [
        (AccelConfig(rows=6), MemoryTiming(), "power of two"),
        (AccelConfig(), MemoryTiming(read_latency=500), "outstanding"),
        (
            AccelConfig(acc_bits=20, max_d_model=16, max_d_ff=16),
            MemoryTiming(),
            "d_model = 64 exceeds AccelConfig.max_k = 31",
        ),
    ],
)
def test_configs_the_model_cannot_represent(cfg, memory, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        layer_cycles(cfg, _spec(), 4, np.full(8, 1), memory=memory)


def test_memory_timing_is_validated() -> None:
    with pytest.raises(ConfigError, match="read_latency"):
        MemoryTiming(read_latency=-1)
    with pytest.raises(ConfigError, match="bytes_per_cycle"):
        MemoryTiming(bytes_per_cycle=0)
