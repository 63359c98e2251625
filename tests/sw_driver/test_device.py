"""Driver backends: the Verilator accelerator reproduces the golden device bit for bit.

Runs on the small top the RTL tests build (`SMALL_TOP`), so the Verilator
model comes from the same cache.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from pymodel.config import ConfigError
from pymodel.families import family_spec
from sim.tb.layer_cases import SMALL_TOP, make_case
from sw_driver.device import DeviceError, GoldenDevice, VerilatorDevice, make_device
from sw_driver.report import router_mac_cycles


def expert_mac_cycles(case, cfg) -> int:
    """Issue cycles of every expert GEMM the layer ran (rows × K-tiles × N-tiles × passes)."""
    spec = case.ql.spec
    d, f, r, c = spec.d_model, spec.d_ff, cfg.rows, cfg.cols
    passes = 2 if spec.ffn == "swiglu" else 1
    per_row = passes * -(-d // r) * -(-f // c) + -(-f // r) * -(-d // c)
    rows = int(case.golden.dispatch.counts.sum())
    cycles = rows * per_row
    if spec.has_shared:
        fs = spec.shared_d_ff
        cycles += case.x_q.shape[0] * (2 * -(-d // r) * -(-fs // c) + -(-fs // r) * -(-d // c))
    return cycles


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "switch"])
def test_verilator_device_matches_golden_device(family: str) -> None:
    shared = {"shared_d_ff": 48} if family in ("qwen2_moe", "deepseek_v3") else {}
    spec = family_spec(family, d_model=32, d_ff=48, n_experts=8, **shared)
    case = make_case(family, spec, SMALL_TOP, tokens=12, seed=4)
    hw = VerilatorDevice(SMALL_TOP).run(case.ql, case.x_q)
    ref = GoldenDevice(SMALL_TOP).run(case.ql, case.x_q)
    assert np.array_equal(hw.y_q, ref.y_q)
    assert np.array_equal(hw.expert_ids, ref.expert_ids)
    assert np.array_equal(hw.gate_weights, ref.gate_weights)
    assert np.array_equal(hw.tokens_per_expert, ref.tokens_per_expert)
    assert hw.dropped == ref.dropped
    cycles = hw.cycles
    assert set(cycles) == {"total", "route", "dispatch", "experts", "combine"}
    assert 0 < sum(v for k, v in cycles.items() if k != "total") <= cycles["total"]
    assert hw.counters["mac_cycles"] == router_mac_cycles(spec, SMALL_TOP, 12) + (
        expert_mac_cycles(case, SMALL_TOP)
    )
    assert hw.sim_cycles_per_s > 0


def test_bad_input_is_refused_before_simulation() -> None:
    spec = family_spec("mixtral", d_model=32, d_ff=48, n_experts=8)
    case = make_case("bad", spec, SMALL_TOP, tokens=4, seed=1)
    device = VerilatorDevice(SMALL_TOP)
    with pytest.raises(ConfigError, match="x_q has shape"):
        device.run(case.ql, case.x_q[:, :16])
    with pytest.raises(ConfigError, match="max_tokens"):
        device.run(case.ql, np.zeros((SMALL_TOP.max_tokens + 1, 32), dtype=np.int64))
    with pytest.raises(ConfigError, match="unknown backend"):
        make_device("fpga", SMALL_TOP)


def test_growing_images_never_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers with ever larger memory images on one device: a bigger memory, never a build."""
    import sim.fast

    device = VerilatorDevice(SMALL_TOP)
    cases = [
        make_case(
            f"grow{i}",
            family_spec("mixtral", d_model=d, d_ff=f, n_experts=8),
            SMALL_TOP,
            tokens=t,
            seed=i,
        )
        for i, (d, f, t) in enumerate(((16, 16, 2), (32, 48, 8), (32, 64, 16)))
    ]
    sizes = [c.image.base + c.image.mem_bytes for c in cases]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3, sizes
    device.run(cases[0].ql, cases[0].x_q)  # builds the model once if no test did before
    tool_runs: list[str] = []
    real = sim.fast._run_logged
    monkeypatch.setattr(
        sim.fast, "_run_logged", lambda cmd, *a, **k: (tool_runs.append(cmd[0]), real(cmd, *a, **k))
    )
    memories = [device._sim.mem.size]
    for case in cases[1:]:
        res = device.run(case.ql, case.x_q)
        assert np.array_equal(res.y_q, case.golden.y_q)
        memories.append(device._sim.mem.size)
    assert tool_runs == [], "a layer with a bigger image rebuilt the model"
    assert memories == sorted(memories) and memories[-1] >= sizes[-1]


def test_build_dir_is_a_parameter(tmp_path) -> None:
    device = VerilatorDevice(SMALL_TOP, build_dir=tmp_path / "models")
    assert device.build_dir == tmp_path / "models"
    assert make_device("verilator", SMALL_TOP, build_dir=tmp_path).build_dir == tmp_path


def test_results_carry_the_dequantised_output() -> None:
    spec = family_spec("olmoe", d_model=32, d_ff=48, n_experts=8)
    case = make_case("deq", spec, SMALL_TOP, tokens=6, seed=2)
    for device in (GoldenDevice(SMALL_TOP), VerilatorDevice(SMALL_TOP)):
        res = device.run(case.ql, case.x_q)
        assert res.y.dtype == np.float32
        assert np.array_equal(res.y, (case.golden.y_q * case.ql.s_y).astype(np.float32))


def test_a_layer_larger_than_the_memory_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import sw_driver.device as device_module

    spec = family_spec("mixtral", d_model=32, d_ff=48, n_experts=8)
    case = make_case("big", spec, SMALL_TOP, tokens=4, seed=1)
    need = device_module.image_bytes_estimate(case.image)
    assert case.image.written_bytes <= need <= 2 * case.image.mem_bytes
    monkeypatch.setattr(device_module, "available_memory_bytes", lambda: need - 1)
    with pytest.raises(ConfigError, match="GiB this machine has available"):
        VerilatorDevice(SMALL_TOP).run(case.ql, case.x_q)


def test_routed_experts_only_runs_bit_exact_and_reads_only_what_was_written() -> None:
    spec = family_spec("deepseek_v3", d_model=32, d_ff=48, n_experts=8, shared_d_ff=48)
    every = VerilatorDevice(SMALL_TOP)
    routed = VerilatorDevice(SMALL_TOP, experts="routed")
    for seed in (6, 7):  # the second run reuses the memory the first one wrote
        case = make_case("routed", spec, SMALL_TOP, tokens=1, seed=seed)
        full, sparse = every.run(case.ql, case.x_q), routed.run(case.ql, case.x_q)
        assert np.array_equal(sparse.y_q, case.golden.y_q)
        assert np.array_equal(sparse.expert_ids, case.golden.routing.expert_ids)
        assert sparse.counters["bytes_read"] == full.counters["bytes_read"]
        image = routed.last_image
        assert list(image.resident) == np.flatnonzero(case.golden.dispatch.counts).tolist()
        assert image.written_bytes < every.last_image.written_bytes


def test_a_token_routed_to_a_non_resident_expert_stops_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sw_driver.device as device_module

    spec = family_spec("mixtral", d_model=32, d_ff=48, n_experts=8)
    case = make_case("miss", spec, SMALL_TOP, tokens=1, seed=7)
    real_route = device_module.route

    def first_choice_only(ql, x_q, cfg):
        routing = real_route(ql, x_q, cfg)
        return SimpleNamespace(expert_ids=routing.expert_ids[:, :1])

    monkeypatch.setattr(device_module, "route", first_choice_only)
    with pytest.raises(DeviceError, match="were resident"):
        VerilatorDevice(SMALL_TOP, experts="routed").run(case.ql, case.x_q)
    with pytest.raises(ConfigError, match="experts = 'some'"):
        VerilatorDevice(SMALL_TOP, experts="some")


def test_the_demand_estimate_counts_only_as_many_experts_as_can_be_routed() -> None:
    import sw_driver.device as device_module

    spec = family_spec("deepseek_v3", d_model=32, d_ff=48, n_experts=8, shared_d_ff=48)
    case = make_case("estimate", spec, SMALL_TOP, tokens=1, seed=2)
    image = case.image
    every = device_module.image_bytes_estimate(image)
    demand = device_module.image_bytes_estimate(image, demand=True)
    expert0 = sum(image.regions[f"expert0.{p}"].size for p in ("w1", "w2", "params"))
    assert every - demand == (spec.n_experts - spec.top_k) * expert0  # T = 1: k experts
    with pytest.raises(ConfigError, match="experts = 'some'"):
        VerilatorDevice(SMALL_TOP, experts="some")
