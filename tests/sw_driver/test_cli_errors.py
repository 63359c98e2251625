"""Bad input to `moe-accel`: exit status, one line on stderr, no traceback, nothing computed.

Every case runs `sw_driver.cli.main` in-process with the functions that do
the work (the layer run, synthesis, Verilog export, the doc update) replaced
by recorders: a case passes only if it was refused before any of them ran.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

import sw_driver.cli as cli
from pymodel.config import AccelConfig
from sw_driver.device import DeviceError
from sw_driver.report import LayerReport

REPO = Path(__file__).resolve().parents[2]
SWEEP_DOC = "# sweep\n<!-- sweep:begin -->\n<!-- sweep:end -->\n"

FILES: dict[str, str | bytes] = {
    "ok.json": AccelConfig().to_json(),
    "empty.json": "{}",
    "bad.json": '{"rows": 8,',
    "list.json": "[1, 2]",
    "unknown.json": '{"rowz": 8}',
    "rows0.json": '{"rows": 0}',
    "rows_str.json": '{"rows": "8"}',
    "acc16.json": '{"acc_bits": 16}',
    "spec.json": '{"kind": "MoESpec", "d_model": 8, "d_ff": 8, "n_experts": 2, "top_k": 1}',
    "wrong_kind.json": '{"kind": "Something"}',
    "binary.json": b"\xff\xfe\x00\x81",
    "cfg.txt": AccelConfig().to_json(),
    "nine.json": AccelConfig(rows=9, cols=9, m_tile=9).to_json(),
    "compressed.json": AccelConfig(sparse_2_4=True, int4_weights=True).to_json(),
    "doc.md": SWEEP_DOC,
    "nomarkers.md": "# no sweep table here\n",
    "doc.txt": SWEEP_DOC,
    "afile": "not a folder",
}

# (argv, exit status, text stderr must contain); {t} is the test's folder.
CASES: list[tuple[str, int, str]] = [
    # --config
    ("run --config {t}/missing.json", 2, "--config"),
    ("run --config {t}/dir", 2, "is a directory"),
    ("run --config {t}/cfg.txt", 2, ".json"),
    ("run --config {t}/bad.json", 2, "invalid JSON"),
    ("run --config {t}/list.json", 2, "must be an object"),
    ("run --config {t}/unknown.json", 2, "rowz"),
    ("run --config {t}/rows0.json", 2, "AccelConfig.rows"),
    ("run --config {t}/rows_str.json", 2, "AccelConfig.rows must be an int"),
    ("run --config {t}/acc16.json", 2, "acc_bits = 16"),
    ("run --config {t}/spec.json", 2, "AccelConfig"),
    ("run --config {t}/wrong_kind.json", 2, "kind="),
    ("run --config {t}/binary.json", 2, "not a text file"),
    ("run --config {t}/nine.json --backend verilator", 2, "power of two"),
    ("run --config {t}/afile/x.json", 2, "--config"),
    # --json
    ("run --json {t}/nodir/out.json", 2, "does not exist"),
    ("run --json {t}/dir", 2, "is a directory"),
    ("run --json {t}/out.txt", 2, "must end in .json"),
    ("run --json /sys/moe-accel-out.json", 2, "cannot be written"),
    ("run --json {t}/afile/out.json", 2, "is not a folder"),
    ("run --config {t}/empty.json --json {t}/nodir/out.json", 2, "--json"),
    # --waves and --waves-window
    ("run --waves {t}/run.vcd", 2, "no waveforms"),
    ("run --backend verilator --waves {t}/run.txt", 2, ".vcd or .fst"),
    ("run --backend verilator --waves {t}/nodir/run.vcd", 2, "does not exist"),
    ("run --backend verilator --waves {t}/dir", 2, "is a directory"),
    ("run --backend verilator --waves /sys/moe-accel-run.vcd", 2, "cannot be written"),
    ("run --backend verilator --waves-window 0:10", 2, "needs --waves"),
    ("run --backend verilator --waves-scope core.dispatcher", 2, "needs --waves"),
    ("run --backend verilator --waves {t}/r.vcd --waves-window 5:3", 2, "START < END"),
    ("run --backend verilator --waves {t}/r.vcd --waves-window abc", 2, "START:END"),
    ("run --backend verilator --waves {t}/r.vcd --waves-window 7", 2, "--waves-window"),
    # layer options
    ("run --tokens 0", 2, "--tokens"),
    ("run --tokens many", 2, "not an integer"),
    ("run --tokens 100000", 2, "max_tokens"),
    ("run --d-model 4096", 2, "--d-model"),
    ("run --d-ff 100000", 2, "--d-ff"),
    ("run --experts 1000", 2, "--experts"),
    ("run --experts 16 --top-k 9", 2, "--top-k"),
    ("run --experts 2 --top-k 3", 2, "--top-k"),
    ("run --family switch --top-k 2", 2, "--family switch"),
    ("run --family gpt", 2, "--family"),
    ("run --backend fpga", 2, "--backend"),
    ("run --seed -1", 2, "--seed"),
    ("run --frobnicate", 2, "unrecognized arguments"),
    # expert weight formats
    ("run --weights int2", 2, "--weights"),
    ("run --sparsity 1:4", 2, "--sparsity"),
    ("run --weights int4 --int4-group 48", 2, "--int4-group"),
    ("run --int4-group 32", 2, "need --weights int4"),
    ("run --sparsity 2:4 --d-model 30", 2, "K = 30 is not a multiple of 4"),
    ("run --weights int4 --int4-group 128", 2, "does not divide expert (d_model) K = 64"),
    ("run --sparsity 2:4 --backend verilator", 2, "AccelConfig.sparse_2_4 = True"),
    ("run --weights int4 --backend verilator", 2, "AccelConfig.int4_weights = True"),
    (
        "run --weights int4 --int4-group 32 --backend verilator --config {t}/compressed.json",
        2,
        "applies one scale per output channel",
    ),
    ("", 2, "COMMAND"),
    ("fly", 2, "invalid choice"),
    # synth
    ("synth", 2, "SUBCOMMAND"),
    ("synth synth", 2, "invalid choice"),
    ("synth run --config {t}/missing.json", 2, "--config"),
    ("synth run --config {t}/dir", 2, "is a directory"),
    ("synth run --config {t}/acc16.json", 2, "acc_bits"),
    ("synth run --top cpu", 2, "--top"),
    ("synth run --device xc7", 2, "--device"),
    ("synth run --freq 0", 2, "--freq"),
    ("synth run --out {t}/afile", 2, "is not a folder"),
    ("synth run --out /sys/moe-accel-fpga", 2, "not writable"),
    ("synth run --top moe_accel --config {t}/nine.json", 2, "power of two"),
    ("synth verilog --config {t}/bad.json", 2, "invalid JSON"),
    ("synth verilog --out /sys/moe-accel-v", 2, "not writable"),
    ("synth sweep", 2, "configs"),
    ("synth sweep {t}/ok.json {t}/missing.json", 2, "missing.json"),
    ("synth sweep {t}/ok.json --doc {t}/none.md", 2, "--doc"),
    ("synth sweep {t}/ok.json --doc {t}/nomarkers.md", 2, "markers"),
    ("synth sweep {t}/ok.json --doc {t}/doc.txt", 2, ".md"),
    ("synth sweep {t}/ok.json --out {t}/afile/sub", 2, "--out"),
]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with the files the cases name."""
    (tmp_path / "dir").mkdir()
    for name, content in FILES.items():
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return tmp_path


@pytest.fixture
def computed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the work functions that were called (each one records and fails)."""
    import flow.reports
    import flow.runs
    import flow.verilog_export

    calls: list[str] = []

    def recorder(name: str):
        def record(*args: object, **kwargs: object) -> None:
            calls.append(name)
            raise AssertionError(f"{name} ran although the input was bad")

        return record

    monkeypatch.setattr(cli, "run_family_layer", recorder("run_family_layer"))
    monkeypatch.setattr(flow.runs, "synth", recorder("synth"))
    monkeypatch.setattr(flow.reports, "update_doc", recorder("update_doc"))
    monkeypatch.setattr(flow.verilog_export, "export_verilog", recorder("export_verilog"))
    return calls


def _stderr_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_the_table_has_at_least_40_cases() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize(("argv", "code", "needle"), CASES, ids=[c[0] or "<none>" for c in CASES])
def test_bad_input_is_one_line_before_any_work(
    argv: str,
    code: int,
    needle: str,
    workdir: Path,
    computed: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(argv.format(t=workdir).split()) == code
    line = _stderr_line(capsys)
    assert line.startswith("moe-accel: error: ")
    assert needle in line
    assert computed == []


def _fake_report() -> LayerReport:
    return LayerReport(
        family="mixtral",
        backend="golden",
        tokens=1,
        d_model=8,
        d_ff=8,
        n_experts=2,
        top_k=1,
        torch_device="cpu fp32",
        max_abs_vs_torch=0.0,
        rel_l2_vs_torch=0.0,
        rel_l2_bound=0.1,
        rel_l2_vs_torch_agreeing=0.0,
        rel_l2_bound_agreeing=0.1,
        routing_agreement=1.0,
        routing_agreement_guaranteed=1.0,
        guaranteed_tokens=1,
        dropped_pairs=0,
        tokens_per_expert=[1, 0],
    )


@pytest.mark.parametrize(
    ("exc", "needle"),
    [
        (DeviceError("accelerator stopped with status ERROR"), "DeviceError"),
        (RuntimeError("a build failed\nlog tail line 1\nline 2"), "rerun with --debug"),
        (OSError(28, "No space left on device"), "No space left"),
        (ValueError("a bug"), "internal error"),
    ],
)
def test_run_failures_exit_1_with_one_line(
    exc: Exception, needle: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def fail(*args: object, **kwargs: object) -> LayerReport:
        raise exc

    monkeypatch.setattr(cli, "run_family_layer", fail)
    assert cli.main(["run"]) == 1
    assert needle in _stderr_line(capsys)


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> LayerReport:
        raise DeviceError("boom")

    monkeypatch.setattr(cli, "run_family_layer", fail)
    with pytest.raises(DeviceError, match="boom"):
        cli.main(["run", "--debug"])


def test_a_report_that_cannot_be_written_after_the_run_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def run_and_lose_the_folder(*args: object, **kwargs: object) -> LayerReport:
        out_dir.rmdir()
        return _fake_report()

    monkeypatch.setattr(cli, "run_family_layer", run_and_lose_the_folder)
    assert cli.main(["run", "--json", str(out_dir / "r.json")]) == 1
    assert "--json" in capsys.readouterr().err.splitlines()[-1]


def test_a_partial_config_reports_the_defaults_it_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    seen: dict[str, object] = {}

    def record(family: str, **kwargs: object) -> LayerReport:
        seen.update(kwargs)
        return _fake_report()

    cfg = tmp_path / "small.json"
    cfg.write_text(json.dumps({"rows": 4, "cols": 4}))
    monkeypatch.setattr(cli, "run_family_layer", record)
    assert cli.main(["run", "--config", str(cfg)]) == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warning) == 1
    assert f"using defaults for {len(dataclasses.fields(AccelConfig)) - 2} fields" in warning[0]
    assert "m_tile=8" in warning[0]
    assert seen["cfg"] == AccelConfig(rows=4, cols=4)


def test_fst_without_lz4_falls_back_to_vcd_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    import sim.build

    seen: dict[str, object] = {}

    def record(family: str, **kwargs: object) -> LayerReport:
        seen.update(kwargs)
        return _fake_report()

    monkeypatch.setattr(sim.build, "_fst_supported", lambda: False)
    monkeypatch.setattr(cli, "run_family_layer", record)
    argv = ["run", "--backend", "verilator", "--waves", str(tmp_path / "run.fst")]
    assert cli.main(argv) == 0
    assert seen["trace"] == tmp_path / "run.vcd"
    assert "writing VCD to" in capsys.readouterr().err


def test_the_installed_command_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    """One real process: exit status 2, one stderr line, no traceback, no report."""
    out = tmp_path / "missing" / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sw_driver.cli", "run", "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"moe-accel: error: --json {out}: folder {out.parent} does not exist"
    ]
    assert proc.stdout == ""
