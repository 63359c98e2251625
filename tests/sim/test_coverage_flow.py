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
from sim.tb import functional_coverage
from sim.tb.functional_coverage import (
    BINS,
    CROSS_BINS,
    DECLARED,
    ROUTING_MODES,
    SITUATIONS,
    BinReport,
    bin_table,
    layer_facts,
    layer_hits,
)
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
    assert f"1 of {len(DECLARED)} declared bins hit (3 excluded" in table


def test_the_cross_of_directed_layers():
    """Each layer is in one routing mode, and hits that mode's row of the cross only."""
    specs = mode_specs(32, 64, 8)
    drops = make_case("drops", specs["switch_drops"], SMALL_TOP, tokens=16, seed=1)
    hits = set(layer_hits(layer_facts(drops, SMALL_TOP, backpressure=True)))
    cross = {key for key in hits if key.startswith("routing mode × situation: ")}
    assert {
        "routing mode × situation: capacity (Switch) × drops",
        "routing mode × situation: capacity (Switch) × backpressure",
        "routing mode × situation: capacity (Switch) × T = max_tokens",
    } <= cross
    assert all("capacity (Switch) × " in key for key in cross)
    sigmoid = make_case("ds", specs["deepseek_v3"], SMALL_TOP, tokens=3, seed=2)
    facts = layer_facts(sigmoid, SMALL_TOP, backpressure=False)
    modes = [name for name, in_mode in ROUTING_MODES if in_mode(facts)]
    assert modes == ["sigmoid (bias, groups, scaling)"]
    assert "routing mode × situation: sigmoid (bias, groups, scaling) × shared expert" in set(
        layer_hits(facts)
    )


def test_the_cross_declares_every_cell_and_its_exclusions():
    assert len(CROSS_BINS) == len(ROUTING_MODES) * len(SITUATIONS)
    excluded = {b.name: b.excluded for b in CROSS_BINS if b.excluded}
    assert set(excluded) == {
        f"{mode} × drops" for mode, _ in ROUTING_MODES if mode != "capacity (Switch)"
    }
    assert len(DECLARED) == len(BINS) - len(excluded)
    table = bin_table({})
    for name, reason in excluded.items():
        assert f"- {name}: {reason}" in table
    drops = 1 + [name for name, _ in SITUATIONS].index("drops")
    for mode, _ in ROUTING_MODES:
        row = next(line for line in table.splitlines() if line.startswith(f"| {mode} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert (cells[drops] == "—") == (mode != "capacity (Switch)"), row


def _call_report(nodeid: str, properties: list, passed: bool = True) -> pytest.TestReport:
    return pytest.TestReport(
        nodeid,
        ("x.py", 0, nodeid),
        {},
        "passed" if passed else "failed",
        None,
        "call",
        user_properties=properties,
    )


class _Session:
    def __init__(self) -> None:
        self.config = object()
        self.exitstatus = pytest.ExitCode.OK


def test_a_hit_excluded_bin_and_a_failed_member_are_reported(monkeypatch, tmp_path):
    """An excluded cell that a layer hits fails the run (its reason is wrong); a tier
    member that failed before recording counts as a failed test of its tier."""
    monkeypatch.setattr(functional_coverage, "BUILD_ROOT", tmp_path)
    wrong = next(b for b in CROSS_BINS if b.excluded)
    plugin = BinReport()
    tier = (functional_coverage.TIER_KEY, ["soak", 2])
    hits = (functional_coverage.HITS_KEY, {b.key: 1 for b in DECLARED} | {wrong.key: 1})
    layers = (functional_coverage.LAYERS_KEY, 7)
    plugin.pytest_runtest_logreport(_call_report("a", [("seed", 5), tier, hits, layers]))
    plugin.pytest_runtest_logreport(_call_report("b", [("seed", 9), tier], passed=False))
    session = _Session()
    plugin.pytest_sessionfinish(session)  # type: ignore[arg-type]
    assert session.exitstatus == pytest.ExitCode.TESTS_FAILED
    assert plugin.failures == [
        "functional coverage: excluded bins were hit, so their reasons are wrong: " + wrong.key
    ]
    results = json.loads((tmp_path / "functional_bins.json").read_text())
    assert results["tiers"]["soak"] == {
        "tests": 2,
        "passed": 1,
        "failed": 1,
        "layers": 7,
        "seeds": {"a": 5, "b": 9},
    }


BIN_TESTS = """
import pytest
from sim.tb.functional_coverage import join_tier, record_layers
from sim.tb.layer_cases import SMALL_TOP, make_case, mode_specs

CASE = make_case("m", mode_specs(32, 64, 8)["mixtral"], SMALL_TOP, tokens=4, seed=1)

@pytest.mark.parametrize("i", range(2))
def test_of_an_incomplete_tier(request, i):
    join_tier(request.node, "test", 3)
    record_layers(request.node, SMALL_TOP, [(CASE, False)])

def test_of_a_complete_tier(request):
    join_tier(request.node, "soak", 1)
    record_layers(request.node, SMALL_TOP, [(CASE, False)])
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
    assert "tier 'soak': 1 layers checked bit for bit in 1 passed of 1 tests" in result.stdout


def test_layers_are_recorded_only_in_a_tier(request):
    with pytest.raises(ValueError, match="without a tier: call join_tier first"):
        functional_coverage.record_layers(request.node, SMALL_TOP, [])
    with pytest.raises(ValueError, match="tier 'nightly' is not one of"):
        functional_coverage.join_tier(request.node, "nightly", 1)
