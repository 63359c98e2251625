"""The `moe-accel` command: a report for each family, JSON output, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pymodel.families import FAMILIES
from sw_driver.cli import main


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


def test_tokens_beyond_the_hardware_give_a_clear_error(capsys) -> None:
    assert main(["run", "--family", "mixtral", "--tokens", "100000"]) == 2
    assert "max_tokens" in capsys.readouterr().out


def test_bad_config_file_gives_a_clear_error(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"kind": "AccelConfig", "rows": 0}))
    assert main(["run", "--config", str(cfg)]) == 2
    assert "AccelConfig.rows" in capsys.readouterr().out


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


def test_synth_delegates_to_the_fpga_flow(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    assert "--device" in capsys.readouterr().out
