"""`bench/calibrate.py` without Verilator: the draw, the judging, the doc section, the plot."""

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_draw_is_seeded_and_covers_the_space() -> None:
    cal = load("calibrate")
    cases = cal.draw_cases(cal.DEFAULT_SEED, cal.DEFAULT_CASES)
    assert cases == cal.draw_cases(cal.DEFAULT_SEED, cal.DEFAULT_CASES)
    assert cases != cal.draw_cases(cal.DEFAULT_SEED + 1, cal.DEFAULT_CASES)
    assert len(cases) >= 40
    assert {c["config"] for c in cases} == set(cal.CONFIGS)
    assert {c["family"] for c in cases} == {
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
        "olmoe",
        "deepseek_v3",
        "switch",
    }
    assert {True, False} <= {c["skewed"] for c in cases}
    assert all(1 <= c["tokens"] <= 256 for c in cases)
    assert {cfg.mem_bytes_per_cycle for cfg in cal.CONFIGS.values()} == {8, 16, 32}
    for c in cases:
        cal.CONFIGS[c["config"]].check_fits(cal.case_spec(c), c["tokens"])


def _row(name: str, measured: int, predicted: int) -> dict:
    phases = ("total", "route", "dispatch", "experts", "shared", "combine")
    meas = {f"cycles_{p}": measured for p in phases}
    pred = {f"cycles_{p}": predicted for p in phases}
    for key in ("mac_cycles", "useful_macs", "bytes_read", "bytes_written"):
        meas[key] = pred[key] = 1
    return {
        "name": name,
        "measured": meas,
        "predicted": pred,
        "error": {p: (predicted - measured) / measured for p in phases},
    }


def test_judge_flags_each_bound() -> None:
    cal = load("calibrate")
    summary, failures = cal.judge([_row("a", 10_000, 10_100), _row("b", 10_000, 10_000)])
    assert failures == []
    assert summary["max_total_error"] == 0.01
    _, failures = cal.judge([_row("a", 10_000, 10_400), _row("b", 10_000, 10_000)])
    assert any("a: total" in f for f in failures)
    assert not any("a: route" in f for f in failures)  # 4 % < the 5 % phase bound
    _, failures = cal.judge([_row("a", 10_000, 10_200)] * 3)
    assert any("median" in f for f in failures)


def test_doc_section_is_replaced_not_appended(tmp_path: Path) -> None:
    cal = load("calibrate")
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nintro\n")
    cal.update_doc(doc, "table one\n")
    cal.update_doc(doc, "table two\n")
    text = doc.read_text()
    assert "intro" in text and "table two" in text and "table one" not in text
    assert text.count(cal.DOC_BEGIN) == 1


def test_calibration_plot(tmp_path: Path) -> None:
    plots = load("plots")
    rows = [_row("a", 1000, 1010), _row("b", 50_000, 49_900)]
    results = {"calibration": {"rows": rows, "summary": {"cases": 2, "max_total_error": 0.01}}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    assert plots.main(["--results", str(path), "--out-dir", str(tmp_path)]) == 0
    png = (tmp_path / "cycle_model_calibration.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
