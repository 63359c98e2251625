"""The `moe-accel` command: a report for each family, JSON output, clear errors."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pymodel.config import AccelConfig, MoESpec
from pymodel.families import FAMILIES
from sw_driver.cli import main
from sw_driver.report import REPORT_SCHEMA_VERSION


@pytest.fixture(scope="module")
def small_cfg() -> AccelConfig:
    """The small top the Verilator tests share (one cached build)."""
    from sim.tb.layer_cases import SMALL_TOP

    return SMALL_TOP


@pytest.mark.parametrize("family", FAMILIES)
def test_run_writes_a_report_within_the_bounds(family: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.json"
    assert main(["run", "--family", family, "--tokens", "16", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["family"] == family
    assert report["rel_l2_vs_torch"] <= report["rel_l2_bound"]
    assert report["rel_l2_vs_torch_agreeing"] <= report["rel_l2_bound_agreeing"]
    assert report["routing_agreement_guaranteed"] == 1.0
    assert sum(report["tokens_per_expert"]) + report["dropped_pairs"] == 16 * report["top_k"]
    assert f"{family} layer" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["--sparsity", "2:4"], "int8 2:4"),
        (["--weights", "int4"], "int4 dense"),
        (["--weights", "int4", "--int4-group", "32"], "int4 dense g32"),
        (["--weights", "int4", "--sparsity", "2:4"], "int4 2:4"),
    ],
)
def test_run_reports_the_weight_format(argv: list[str], name: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "report.json"
    assert main(["run", "--family", "qwen2_moe", "--tokens", "16", "--json", str(out), *argv]) == 0
    report = json.loads(out.read_text())
    assert report["weight_format"] == name
    assert main(["run", "--family", "qwen2_moe", "--tokens", "16", "--json", str(out)]) == 0
    dense = json.loads(out.read_text())
    assert dense["weight_format"] == "int8 dense" and dense["rel_l2_vs_torch_pruned"] is None
    assert report["expert_weight_bytes"] < dense["expert_weight_bytes"]
    judged = report["rel_l2_vs_torch_pruned"] if "2:4" in name else report["rel_l2_vs_torch"]
    assert judged <= report["rel_l2_bound"]
    assert report["rel_l2_vs_torch_agreeing"] <= report["rel_l2_bound_agreeing"]
    if "2:4" in name:
        assert report["rel_l2_vs_torch_pruned"] < report["rel_l2_vs_torch"]
    assert name in capsys.readouterr().out


def test_tokens_beyond_the_hardware_give_a_clear_error(capsys) -> None:
    assert main(["run", "--family", "mixtral", "--tokens", "100000"]) == 2
    assert "max_tokens" in capsys.readouterr().err


def test_bad_config_file_gives_a_clear_error(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"kind": "AccelConfig", "rows": 0}))
    assert main(["run", "--config", str(cfg)]) == 2
    assert "AccelConfig.rows" in capsys.readouterr().err


def test_the_json_report_carries_its_schema_and_inputs(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    argv = ["run", "--family", "olmoe", "--tokens", "4", "--seed", "3", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["schema_version"] == REPORT_SCHEMA_VERSION
    assert report["seed"] == 3
    assert AccelConfig.from_dict(report["accel_config"]) == AccelConfig()
    assert MoESpec.from_dict(report["moe_spec"]).n_experts == report["n_experts"] == 8
    assert report["revision"]
    assert report["counters"] == {} and report["waves"] is None


@pytest.mark.parametrize("family", FAMILIES)
def test_run_on_the_verilator_backend_is_bit_exact(family: str, tmp_path: Path) -> None:
    from sim.tb.layer_cases import SMALL_TOP

    cfg = tmp_path / "small.json"
    cfg.write_text(SMALL_TOP.to_json())
    out = tmp_path / "report.json"
    argv = ["run", "--family", family, "--backend", "verilator", "--config", str(cfg)]
    argv += ["--d-model", "32", "--d-ff", "32", "--tokens", "8", "--json", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["bit_exact_vs_golden"] is True
    assert report["rel_l2_vs_torch"] <= report["rel_l2_bound"]
    assert report["routing_agreement_guaranteed"] == 1.0
    cycles = report["cycles"]
    assert cycles["total"] >= cycles["route"] + cycles["experts"] + cycles["combine"] > 0
    assert 0 < report["mac_utilization_expert_phase"] <= 1
    assert report["sim_cycles_per_s"] > 0
    assert report["counters"]["cycles_total"] == cycles["total"]


def test_a_cached_verilator_model_starts_within_2_s(small_cfg: AccelConfig) -> None:
    """The second run of an unchanged config finds its build without emitting Verilog."""
    from sw_driver.device import VerilatorDevice

    VerilatorDevice(small_cfg)._model(1 << 16).close()
    start = time.perf_counter()
    sim = VerilatorDevice(small_cfg)._model(1 << 16)
    elapsed = time.perf_counter() - start
    sim.close()
    assert sim.build.cached
    assert elapsed < 2.0


def test_waves_window_limits_the_trace(small_cfg: AccelConfig, tmp_path: Path, capsys) -> None:
    """Only the window's cycles are dumped: VCD time stamps (2 per cycle) stay inside it."""
    cfg = tmp_path / "small.json"
    cfg.write_text(small_cfg.to_json())
    waves = tmp_path / "run.vcd"
    argv = ["run", "--backend", "verilator", "--config", str(cfg), "--tokens", "4"]
    argv += ["--d-model", "32", "--d-ff", "32", "--waves", str(waves), "--waves-window", "100:150"]
    assert main(argv) == 0
    lines = waves.read_text().splitlines()
    cycles = sorted({int(line[1:]) // 2 for line in lines if line.startswith("#")})
    reset = [c for c in cycles if c < 100]  # traced before the window is set: the reset
    window = [c for c in cycles if c >= 100]
    assert reset == list(range(len(reset))) and 0 < len(reset) < 10
    # the window counts from the end of the model's reset
    assert window[0] >= 100 + len(reset) and window[-1] < 150 + len(reset)
    assert len(window) > 25
    assert "tracing ~" in capsys.readouterr().err


def test_waves_scope_limits_the_trace(small_cfg: AccelConfig, tmp_path: Path, capsys) -> None:
    """Only the top's ports and the named instance's subtree are dumped; a wrong name is refused."""
    cfg = tmp_path / "small.json"
    cfg.write_text(small_cfg.to_json())
    waves = tmp_path / "run.vcd"
    argv = ["run", "--backend", "verilator", "--config", str(cfg), "--tokens", "4"]
    argv += ["--d-model", "32", "--d-ff", "32", "--waves", str(waves)]
    assert main([*argv, "--waves-window", "0:400", "--waves-scope", "core.dispatcher"]) == 0
    stack, traced = [], set()
    for line in waves.read_text().splitlines():
        if line.startswith("$enddefinitions"):
            break
        words = line.split()
        if words[:1] == ["$scope"]:
            stack.append(words[2])
        elif words[:1] == ["$upscope"]:
            stack.pop()
        elif words[:1] == ["$var"]:
            traced.add(".".join(stack))
    ports, inside = "top.moe_accel", "top.moe_accel.top.core.dispatcher"
    assert ports in traced and inside in traced
    assert all(path == ports or path.startswith(inside) for path in traced), traced
    capsys.readouterr()
    assert main([*argv, "--waves-scope", "core.nowhere"]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("moe-accel: error")]
    assert len(errors) == 1 and "core.nowhere" in errors[0] and "Traceback" not in err


def test_synth_is_a_group_of_subcommands(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "moe-accel synth synth" not in out
    assert all(name in out for name in ("run", "verilog", "sweep"))
    with pytest.raises(SystemExit):
        main(["synth", "run", "--help"])
    assert "(default: ecp5-85f)" in capsys.readouterr().out


def test_synth_dry_run_says_what_and_how_long(tmp_path: Path, capsys) -> None:
    argv = ["synth", "run", "--dry-run", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert "would synthesise gemm_engine" in capsys.readouterr().out
    (tmp_path / "timings.json").write_text(json.dumps({"ecp5-85f/gemm_engine/default": 754}))
    assert main(argv) == 0
    assert "the last run took 12:34" in capsys.readouterr().out


def test_version_names_the_revision(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("moe-accel ")


@pytest.mark.parametrize("flag", ["-q", "-v"])
def test_quiet_and_verbose(flag: str, capsys) -> None:
    assert main(["run", flag, "--family", "switch", "--tokens", "4"]) == 0
    err = capsys.readouterr().err
    assert ("running the golden model" in err) == (flag == "-v")
