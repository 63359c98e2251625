"""Driver backends: the Verilator accelerator reproduces the golden device bit for bit.

Runs on the small top the RTL tests build (`SMALL_TOP`), so the Verilator
model comes from the same cache.
"""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.config import ConfigError
from pymodel.families import family_spec
from sim.tb.layer_cases import SMALL_TOP, make_case
from sw_driver.device import GoldenDevice, VerilatorDevice, make_device
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
    image = case.image.mem_bytes
    assert device_module.image_bytes_estimate(case.ql) >= 0.5 * image
    monkeypatch.setattr(device_module, "available_memory_bytes", lambda: image // 2)
    with pytest.raises(ConfigError, match="GiB this machine has available"):
        VerilatorDevice(SMALL_TOP).run(case.ql, case.x_q)
