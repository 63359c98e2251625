"""The coverage flow's parts without a simulator: counts files, waivers, tables, bins.

`make coverage` itself runs the RTL tests on coverage builds (minutes); here
its reading of Verilator's counts format, the waiver file, the per-module
tally and the functional bins are checked on small hand-made inputs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flow.paths import REPO_ROOT
from sim.build import COVERAGE_ENV, COVERAGE_FLAGS, coverage_flags
from sim.coverage import (
    WAIVERS,
    CoverageError,
    load_waivers,
    missed,
    read_points,
    report,
    summarise,
    write_doc,
)
from sim.tb.functional_coverage import BINS, bin_table, layer_facts, layer_hits
from sim.tb.layer_cases import SMALL_TOP, make_case, mode_specs


def _point(kind: str, module: str, comment: str, line: int, count: int) -> str:
    fields = {
        "f": "/b/top.v",
        "l": str(line),
        "t": kind,
        "page": f"v_{kind}/{module}",
        "o": comment,
        "h": module,
    }
    body = "".join(f"\x01{k}\x02{v}" for k, v in fields.items())
    return f"C '{body}' {count}"


@pytest.fixture
def dat(tmp_path: Path) -> Path:
    path = tmp_path / "c.dat"
    lines = [
        "# SystemC::Coverage-3",
        _point("line", "top.core", "block", 3, 5),
        _point("line", "top.core", "block", 4, 0),
        _point("branch", "top.core", "if", 5, 2),
        _point("branch", "top.core", "else", 5, 0),
        _point("toggle", "top.pe_0_1", "acc[31]:0->1", 9, 0),
        _point("toggle", "top.pe_1_0", "acc[0]:0->1", 9, 7),
        _point("toggle", "top", "in_q[0]:0->1", 2, 1),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_points_are_read_and_numbered_copies_folded(dat):
    points = read_points(dat)
    assert [p.kind for p in points] == ["line", "line", "branch", "branch", "toggle"] + [
        "toggle"
    ] * 2
    assert {p.module for p in points} == {"top.core", "top.pe_*_*", "top"}
    assert points[4].text == "acc[31]:0->1 @ top.v:9: "  # no Verilog file: no line text


def test_waivers_apply_in_order_and_report_their_points(dat, tmp_path):
    toml = tmp_path / "w.toml"
    toml.write_text(
        '[[outside]]\nmodule = "^top$"\nreason = "harness flops"\n'
        '[[waiver]]\nmodule = "pe_"\nkind = "toggle"\npoint = "\\\\[31\\\\]"\n'
        'reason = "the sign bit cannot toggle at T <= 16"\n'
        '[[waiver]]\nkind = "line"\npoint = "nothing"\nreason = "stale"\n'
    )
    waivers = load_waivers(toml)
    points = read_points(dat)
    summary = summarise(points, waivers)
    assert summary.waiver_points == [1, 1, 0]
    assert summary.outside == 1
    toggle = summary.modules["top.pe_*_*"]["toggle"]
    assert (toggle.hit, toggle.total, toggle.waived) == (1, 2, 1)
    assert toggle.percent(False) == 50.0 and toggle.percent(True) == 100.0
    assert [p.text for p in missed(points, waivers)] == ["block @ top.v:4: ", "else @ top.v:5: "]
    text = report(points, waivers)
    assert "| `top.core` | 50.0 (2) | 50.0 (2) | – |" in text
    assert "| `toggle /pe_/ /\\[31\\]/` | 1 | the sign bit cannot toggle at T <= 16 |" in text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[[waiver]]\nmodule = "x"\n', "needs a reason"),
        ('[[waiver]]\nkind = "expr"\nreason = "r"\n', "kind 'expr'"),
        ('[[waiver]]\nmodule = "("\nreason = "r"\n', "bad regular expression"),
        ('[[waivers]]\nreason = "r"\n', "unknown tables"),
        ('[[waiver]]\nreason = "r"\nwhy = 1\n', "unknown keys"),
        ("[[waiver]\n", "cannot read"),
    ],
)
def test_bad_waiver_files_are_clear_errors(tmp_path, body, message):
    path = tmp_path / "w.toml"
    path.write_text(body)
    with pytest.raises(CoverageError, match=message):
        load_waivers(path)


def test_the_checked_in_waivers_load():
    assert all(w.reason for w in load_waivers(WAIVERS))


def test_doc_tables_go_between_the_markers(tmp_path):
    doc = tmp_path / "v.md"
    doc.write_text("# Verification\n\nintro\n")
    write_doc(doc, "table one")
    write_doc(doc, "table two")
    text = doc.read_text()
    assert text.startswith("# Verification\n\nintro\n\n<!--") and "table one" not in text
    assert text.count("table two") == 1


def test_coverage_flags_only_with_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(COVERAGE_ENV, raising=False)
    assert coverage_flags() == ()
    monkeypatch.setenv(COVERAGE_ENV, str(tmp_path / "counts"))
    assert coverage_flags() == COVERAGE_FLAGS and (tmp_path / "counts").is_dir()


def test_bins_of_directed_layers():
    specs = mode_specs(32, 64, 8)
    drops = make_case("drops", specs["switch_drops"], SMALL_TOP, tokens=16, seed=1)
    hits = layer_hits(layer_facts(drops, SMALL_TOP, backpressure=True))
    assert {
        "drops: capacity dropped pairs",
        "backpressure: on (bus chaos)",
        "T: max_tokens",
        "k: 1",
    } <= set(hits)
    one = make_case("one", specs["deepseek_v3"], SMALL_TOP, tokens=1, seed=2)
    facts = layer_facts(one, SMALL_TOP, backpressure=False)
    assert facts.tokens == 1 and not facts.all_to_one and facts.scoring == "sigmoid"
    assert "T: 1" in layer_hits(facts) and "backpressure: off" in layer_hits(facts)
    table = bin_table({BINS[0].key: 3})
    assert f"| {BINS[0].axis} | {BINS[0].name} | 3 |" in table
    assert f"1 of {len(BINS)} bins hit" in table


BIN_TESTS = """
import pytest
from sim.tb.functional_coverage import record_layers
from sim.tb.layer_cases import SMALL_TOP, make_case, mode_specs

CASE = make_case("m", mode_specs(32, 64, 8)["mixtral"], SMALL_TOP, tokens=4, seed=1)

@pytest.mark.parametrize("i", range(2))
def test_of_an_incomplete_tier(request, i):
    record_layers(request.node, SMALL_TOP, [(CASE, False)], tier="test", tier_size=3)

def test_of_a_complete_tier(request):
    record_layers(request.node, SMALL_TOP, [(CASE, False)], tier="soak", tier_size=1)
"""


def test_a_complete_tier_below_its_goal_fails_the_run(tmp_path):
    """Only the tier whose tests all ran (here "soak", one of one) is held to its goal."""
    (tmp_path / "test_bins.py").write_text(BIN_TESTS)
    env = {**os.environ, "MOE_ACCEL_BUILD_DIR": str(tmp_path / "build")}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "sim.tb.functional_coverage"]
    result = subprocess.run(
        [*command, "-p", "no:cacheprovider", str(tmp_path / "test_bins.py")],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "functional coverage bins" in result.stdout, result.stdout
    counts = json.loads((tmp_path / "build" / "functional_bins.json").read_text())["counts"]
    assert counts["T: 1"] == 0 and counts["backpressure: off"] == 3
    assert result.returncode == 1 and "3 passed" in result.stdout
    assert "the 'soak' tier needs 100%" in result.stdout and "'test' tier" not in result.stdout
