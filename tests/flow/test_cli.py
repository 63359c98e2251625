# amaranth: UnusedElaboratable=no
"""`python -m flow`: the command line is `moe-accel synth`'s."""

from pathlib import Path

from flow.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_cli_verilog_and_errors(tmp_path, capsys):
    assert main(["verilog", "--config", str(CONFIGS / "ice40.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "gemm_engine_ice40.v").exists()
    assert (tmp_path / "gemm_engine_ice40_ports.md").exists()
    assert main(["run", "--config", str(tmp_path / "none.json")]) == 2
    assert "--config" in capsys.readouterr().err.splitlines()[-1]
