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

from contract.timing import (
    ACC_STAGES,
    CREDIT_RETURN_STAGES,
    OPERAND_STAGES,
    PAIR_STAGES,
    postproc_latency,
    systolic_latency,
)
from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.cycles import (
    COUNTERS,
    MemoryTiming,
    expert_weight_bytes,
    gemm_cycles,
    golden_cycles,
    layer_cycles,
)
from pymodel.families import family_spec
from pymodel.layer import run_golden
from pymodel.weight_formats import WeightFormat
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


COMPRESSED = AccelConfig(sparse_2_4=True, int4_weights=True)
ENGINE_FORMATS = (
    WeightFormat.DENSE_INT8,
    WeightFormat(8, True),
    WeightFormat(4),
    WeightFormat(4, True),
)
"""The default 8×8 array (16-byte bus: L = 2 weight rows a beat) with both format paths."""


def _drain(cfg: AccelConfig) -> int:
    return systolic_latency(cfg) + ACC_STAGES + postproc_latency(cfg) + CREDIT_RETURN_STAGES


@pytest.mark.parametrize(
    ("fmt", "k", "walk"),
    [
        # one tile, one row: load beats, then the row enters the cycle after the last beat
        (WeightFormat.DENSE_INT8, 8, 4 + 1),  # 8 rows / 2 a beat
        (WeightFormat(8, True), 16, 5 + 1),  # 2R = 16 K positions: 8 value + 2 index rows
        (WeightFormat(4), 16, 4 + 1),  # 2R = 16 K positions, two a byte row: 8 rows
        (WeightFormat(4, True), 16, 3 + 1),  # 4 packed value rows + 2 index rows
    ],
    ids=lambda v: v.name if isinstance(v, WeightFormat) else str(v),
)
def test_one_tile_by_hand(fmt: WeightFormat, k: int, walk: int) -> None:
    assert gemm_cycles(COMPRESSED, 1, k, 8, 1, fmt) == walk + _drain(COMPRESSED)


@pytest.mark.parametrize(
    ("fmt", "tiles", "load"),
    [
        (WeightFormat.DENSE_INT8, 64, 4),
        (WeightFormat(8, True), 32, 5),  # half the K passes
        (WeightFormat(4), 32, 4),  # half the K passes, int8's beats (two K a byte)
        (WeightFormat(4, True), 32, 3),
    ],
    ids=lambda v: v.name if isinstance(v, WeightFormat) else str(v),
)
def test_load_and_compute_bound_walks_by_hand(fmt: WeightFormat, tiles: int, load: int) -> None:
    """K = N = 64 (8 N-tiles): M = 1 is load-bound (every tile's load, then the last row);
    M = 64 is row-bound (the first load, then 64 rows a tile)."""
    drain = _drain(COMPRESSED)
    assert gemm_cycles(COMPRESSED, 1, 64, 64, 1, fmt) == tiles * load + 1 + drain
    assert gemm_cycles(COMPRESSED, 64, 64, 64, 1, fmt) == load + tiles * 64 + drain


def test_a_build_without_compressed_paths_is_unchanged() -> None:
    """int8 dense: the same walk in every build; a build with a compressed path has an array
    `OPERAND_STAGES` deeper, an int4 build `PAIR_STAGES` more."""
    plain = AccelConfig()
    sparse = AccelConfig(sparse_2_4=True)
    dense = gemm_cycles(plain, 4, 64, 64, 2)
    assert dense + OPERAND_STAGES == gemm_cycles(sparse, 4, 64, 64, 2)
    assert dense + OPERAND_STAGES + PAIR_STAGES == gemm_cycles(COMPRESSED, 4, 64, 64, 2)


def test_layer_weight_bytes_by_format_by_hand() -> None:
    """Mixtral d = 64, f = 128, one point with tokens on 3 experts (one M-block each):
    W1/W3 are 16 N-tiles × 2 passes of 64 K, W2 8 N-tiles of 128 K, C = 8 bytes a row."""
    spec = family_spec("mixtral", d_model=64, d_ff=128, n_experts=8, top_k=2)
    counts = np.array([3, 0, 2, 0, 0, 1, 0, 0])
    dense = layer_cycles(COMPRESSED, spec, 3, counts)
    assert expert_weight_bytes(COMPRESSED, spec, 3, counts).tolist() == [
        3 * 8 * (32 * 64 + 8 * 128)
    ]

    def rows_per_expert(run: int) -> int:  # rows of one K run of 64 (W1, W3) and of 128 (W2)
        return 16 * 2 * run(64) + 8 * run(128)

    formats = {
        WeightFormat(8, True): lambda k: k // 16 * (8 + 2),
        WeightFormat(4): lambda k: k // 8 * 4,
        WeightFormat(4, True): lambda k: k // 16 * (4 + 2),
    }
    for fmt, run in formats.items():
        est = layer_cycles(COMPRESSED, spec, 3, counts, weight_format=fmt)
        saved = 3 * 8 * (rows_per_expert(lambda k: k) - rows_per_expert(run))
        assert dense["bytes_read"][0] - est["bytes_read"][0] == saved, fmt.name
        weights = expert_weight_bytes(COMPRESSED, spec, 3, counts, fmt)
        assert weights.tolist() == [3 * 8 * rows_per_expert(run)]
        assert est["useful_macs"][0] == dense["useful_macs"][0]
        assert est["cycles_experts"][0] < dense["cycles_experts"][0]
        assert est["cycles_route"][0] == dense["cycles_route"][0]  # the router stays int8 dense
    sparse = layer_cycles(COMPRESSED, spec, 3, counts, weight_format=WeightFormat(8, True))
    router = 3 * 8  # 3 token rows × 8 K-tiles × 1 N-tile, int8 dense in every format
    experts = 6 * (16 * 2 * 8 + 8 * 16)  # 6 expert rows × (W1/W3 tiles + W2 tiles), dense
    assert dense["mac_cycles"][0] == router + experts
    assert sparse["mac_cycles"][0] == router + experts // 2  # half the experts' K passes


def test_formats_the_build_lacks_are_refused() -> None:
    spec = _spec()
    counts = np.array([2, 0, 0, 0, 0, 0, 0, 0])
    with pytest.raises(ConfigError, match=r"AccelConfig\.sparse_2_4 = True"):
        layer_cycles(AccelConfig(), spec, 1, counts, weight_format=WeightFormat(8, True))
    with pytest.raises(ConfigError, match=r"AccelConfig\.int4_weights = True"):
        gemm_cycles(AccelConfig(), 1, 8, 8, 1, WeightFormat(4))
    with pytest.raises(ConfigError, match="one scale per output channel"):
        layer_cycles(COMPRESSED, spec, 1, counts, weight_format=WeightFormat(4, False, 32))
    with pytest.raises(ConfigError, match="K = 10 is not a multiple of 4"):
        gemm_cycles(COMPRESSED, 1, 10, 8, 1, WeightFormat(8, True))
    with pytest.raises(ConfigError, match="not whole M-blocks"):
        gemm_cycles(COMPRESSED, 100, 8, 8)


def test_golden_cycles_use_the_layers_format() -> None:
    spec = family_spec("olmoe", d_model=32, d_ff=64, n_experts=8)
    weights = MoEWeights.random(spec, 3)
    x = np.random.default_rng(1003).standard_normal((16, 32)).astype(np.float32)
    fmt = WeightFormat(4, True)
    res = run_golden(spec, weights, x, COMPRESSED, weight_format=fmt)
    est = layer_cycles(COMPRESSED, spec, 16, res.dispatch.counts, weight_format=fmt)
    assert golden_cycles(COMPRESSED, res).as_dict().keys() == est.as_dict().keys()
    for name, value in golden_cycles(COMPRESSED, res).as_dict().items():
        assert np.array_equal(value, est[name]), name


ENGINE = json.loads((Path(__file__).parents[2] / "bench" / "gemm_formats.json").read_text())
"""The GEMM engine's own counters per weight format (Verilator, `bench/gemm_format_bench.py`)."""


@pytest.mark.parametrize(
    "point", ENGINE["points"], ids=lambda p: f"{p['m']}x{p['k']}x{p['n']}-{p['format']}"
)
def test_gemm_cycles_match_the_engines_busy_counter(point: dict) -> None:
    """The model, derived from the hardware rules, against the RTL engine measured per format."""
    cfg = AccelConfig.from_dict(ENGINE["config"])
    fmt = next(f for f in ENGINE_FORMATS if f.name == point["format"])
    passes = 2 if point["mode"] == "SWIGLU" else 1
    busy = point["counters"]["busy"]
    assert gemm_cycles(cfg, point["m"], point["k"], point["n"], passes, fmt) == busy
