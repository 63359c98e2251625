"""Declared functional coverage of whole layers: a bin table fed from golden-model intermediates.

Why: line and toggle coverage say which RTL ran, not which layer situations the
random layers reached. Each bin here is one situation a layer run can be in —
its routing mode, exact logit ties, empty experts, every token on one expert,
capacity drops, saturation in a requantiser, backpressure on the bus, and T
and k at their limits — decided from the golden layer (`LayerFacts`), never
from the RTL. Two kinds of bin are declared: one-dimensional ones (a bin per
value of each axis) and the cross of the routing mode with each situation
(`ROUTING_MODES` × `SITUATIONS`: a tie under sigmoid routing exercises other
gate logic than a tie under softmax). A cross cell that cannot happen is
declared with the reason (`Bin.excluded`), reported as excluded and left out of
the goals; a run that hits one fails, since its reason is then wrong.

The random-layer tests join a tier when they start (`join_tier`) and record
every layer they run (`record_layers`) into their report's `user_properties`;
the `BinReport` pytest plugin (registered by `tests/accelerator/conftest.py`,
or with `-p sim.tb.functional_coverage` for xdist runs) sums the hit counts
over the whole run, also across xdist workers, prints the table with the
layers, seeds and wall time of each tier, writes it to `functional_bins.json`
under the build root and fails the run when a tier of tests ran completely but
hit too few of the declared bins: 95 % for the random layers of `make test`,
100 % for `make soak`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from flow.paths import BUILD_ROOT
from pymodel.config import AccelConfig
from pymodel.numerics import qmax, rshift_round

if TYPE_CHECKING:
    from .layer_cases import LayerCase

__all__ = [
    "BINS",
    "DECLARED",
    "ROUTING_MODES",
    "SITUATIONS",
    "TIER_GOALS",
    "Bin",
    "BinReport",
    "LayerFacts",
    "bin_table",
    "join_tier",
    "layer_facts",
    "layer_hits",
    "read_results",
    "record_layers",
]

HITS_KEY = "functional_bins"
TIER_KEY = "functional_bins_tier"
LAYERS_KEY = "functional_bins_layers"
RESULTS_FILE = "functional_bins.json"

TIER_GOALS: Mapping[str, float] = {"test": 0.95, "soak": 1.0}
"""Share of the declared (not excluded) `BINS` each tier of recording tests must hit once
all of its tests ran."""


@dataclass(frozen=True)
class LayerFacts:
    """What one layer run was, as the golden model and the test saw it."""

    scoring: str
    renormalize: bool
    grouped: bool
    routed_scaling: bool
    shared: str
    """"none", "plain" or "gated": the shared expert."""
    ffn: str
    tokens: int
    top_k: int
    n_experts: int
    capacity: int | None
    """Tokens per expert (Switch, or any family given one); None: no capacity, no drops."""
    max_tokens: int
    max_top_k: int
    tie: bool
    """Some token had a selected expert whose selection score equals another expert's."""
    empty_expert: bool
    all_to_one: bool
    """T ≥ 2 and every token's first choice was the same expert."""
    drops: int
    saturated: bool
    """The output requantiser clipped (its exact value was beyond the int range)."""
    backpressure: bool


@dataclass(frozen=True)
class Bin:
    """One declared bin: a named condition on `LayerFacts`."""

    axis: str
    name: str
    hit: Callable[[LayerFacts], bool]
    excluded: str = ""
    """Why no layer can hit this bin; empty for a bin the goals count."""

    @property
    def key(self) -> str:
        return f"{self.axis}: {self.name}"


CROSS_AXIS = "routing mode × situation"
ROUTING_MODES: tuple[tuple[str, Callable[[LayerFacts], bool]], ...] = (
    (
        "softmax top-k",
        lambda f: f.capacity is None and f.scoring == "softmax" and not f.renormalize,
    ),
    (
        "softmax top-k, renormalised",
        lambda f: f.capacity is None and f.scoring == "softmax" and f.renormalize,
    ),
    ("sigmoid (bias, groups, scaling)", lambda f: f.capacity is None and f.scoring == "sigmoid"),
    ("capacity (Switch)", lambda f: f.capacity is not None),
)
"""The routing modes the gate and dispatcher implement, one per layer: a layer with a
capacity is in the capacity mode whatever its scores (the drops decide its dispatch)."""
SITUATIONS: tuple[tuple[str, Callable[[LayerFacts], bool]], ...] = (
    ("tie", lambda f: f.tie),
    ("empty expert", lambda f: f.empty_expert),
    ("all-to-one", lambda f: f.all_to_one),
    ("drops", lambda f: f.drops > 0),
    ("saturation", lambda f: f.saturated),
    ("backpressure", lambda f: f.backpressure),
    ("T = max_tokens", lambda f: f.tokens == f.max_tokens),
    ("k = max_top_k", lambda f: f.top_k == f.max_top_k),
    ("shared expert", lambda f: f.shared != "none"),
)
"""The situations crossed with each routing mode (their one-dimensional bins are below)."""
CROSS_EXCLUDED: Mapping[tuple[str, str], str] = {
    (mode, "drops"): "without a capacity every selected pair is dispatched: nothing can drop"
    for mode, _ in ROUTING_MODES
    if mode != "capacity (Switch)"
}
"""The cells of the cross no layer can reach, with the reason."""


def _cross_bin(
    mode: str,
    in_mode: Callable[[LayerFacts], bool],
    situation: str,
    happens: Callable[[LayerFacts], bool],
) -> Bin:
    return Bin(
        CROSS_AXIS,
        f"{mode} × {situation}",
        lambda f: in_mode(f) and happens(f),
        CROSS_EXCLUDED.get((mode, situation), ""),
    )


CROSS_BINS: tuple[Bin, ...] = tuple(
    _cross_bin(mode, in_mode, situation, happens)
    for mode, in_mode in ROUTING_MODES
    for situation, happens in SITUATIONS
)

BINS: tuple[Bin, ...] = (
    Bin("routing", "softmax", lambda f: f.scoring == "softmax" and not f.renormalize),
    Bin("routing", "softmax, renormalised", lambda f: f.scoring == "softmax" and f.renormalize),
    Bin("routing", "sigmoid", lambda f: f.scoring == "sigmoid" and not f.grouped),
    Bin("routing", "sigmoid, grouped", lambda f: f.scoring == "sigmoid" and f.grouped),
    Bin("routing", "routed scaling factor", lambda f: f.routed_scaling),
    Bin("shared expert", "plain", lambda f: f.shared == "plain"),
    Bin("shared expert", "gated", lambda f: f.shared == "gated"),
    Bin("ties", "exact tie in the selection", lambda f: f.tie),
    Bin("empty experts", "an expert got no token", lambda f: f.empty_expert),
    Bin("all-to-one", "every token's first choice is one expert", lambda f: f.all_to_one),
    Bin("drops", "capacity dropped pairs", lambda f: f.drops > 0),
    Bin("saturation", "the output requantiser clipped", lambda f: f.saturated),
    Bin("backpressure", "off", lambda f: not f.backpressure),
    Bin("backpressure", "on (bus chaos)", lambda f: f.backpressure),
    Bin("T", "1", lambda f: f.tokens == 1),
    Bin("T", "max_tokens", lambda f: f.tokens == f.max_tokens),
    Bin("k", "1", lambda f: f.top_k == 1),
    Bin("k", "max_top_k", lambda f: f.top_k == f.max_top_k),
    Bin("k", "E (every expert, E ≥ 2)", lambda f: f.top_k == f.n_experts >= 2),
    *CROSS_BINS,
)
"""The declared bins, in report order: the one-dimensional ones, then the cross."""
DECLARED: tuple[Bin, ...] = tuple(b for b in BINS if not b.excluded)
"""The bins the goals count."""


def _output_saturated(case: LayerCase, cfg: AccelConfig) -> bool:
    """Whether the output requantiser clipped: its unclipped value is beyond the int limit."""
    g = case.golden
    unclipped = rshift_round(g.combined.acc * np.int64(case.ql.out_mult), case.ql.out_shift)
    return bool(unclipped.size) and int(np.abs(unclipped).max()) > qmax(cfg.act_bits)


def _tie(select: np.ndarray, expert_ids: np.ndarray) -> bool:
    for row, chosen in zip(select, expert_ids, strict=True):
        for e in np.unique(chosen):
            if np.count_nonzero(row == row[e]) > 1:
                return True
    return False


def layer_facts(case: LayerCase, cfg: AccelConfig, *, backpressure: bool) -> LayerFacts:
    """The facts of running `case` on the top built from `cfg`, with or without bus chaos."""
    spec, g = case.ql.spec, case.golden
    tokens = int(case.x_q.shape[0])
    first = g.routing.expert_ids[:, 0] if tokens else np.zeros(0, int)
    return LayerFacts(
        scoring=spec.scoring,
        renormalize=spec.renormalize,
        grouped=spec.n_group > 1,
        routed_scaling=spec.routed_scaling_factor != 1.0,
        shared="none" if not spec.shared_d_ff else ("gated" if spec.shared_gate else "plain"),
        ffn=spec.ffn,
        tokens=tokens,
        top_k=spec.top_k,
        n_experts=spec.n_experts,
        capacity=spec.capacity,
        max_tokens=cfg.max_tokens,
        max_top_k=cfg.max_top_k,
        tie=_tie(g.routing.select, g.routing.expert_ids),
        empty_expert=bool((g.dispatch.counts == 0).any()),
        all_to_one=tokens >= 2 and bool((first == first[0]).all()),
        drops=int(g.dispatch.dropped),
        saturated=_output_saturated(case, cfg),
        backpressure=backpressure,
    )


def layer_hits(facts: LayerFacts) -> list[str]:
    """The keys of the bins `facts` hits."""
    return [b.key for b in BINS if b.hit(facts)]


def join_tier(node: pytest.Item, tier: str, tier_size: int) -> None:
    """Enter test `node` in `tier` (a key of `TIER_GOALS`), a group of `tier_size` tests.

    Called when the test starts, so that a test failing on a mismatch before it
    records its layers still counts as a failed member of its tier. The tier's
    goal is checked only in a run where all of its tests reported.
    """
    if tier not in TIER_GOALS:
        raise ValueError(f"tier {tier!r} is not one of {sorted(TIER_GOALS)}")
    if not isinstance(tier_size, int) or tier_size < 1:
        raise ValueError(f"tier_size must be an int >= 1, got {tier_size!r}")
    node.user_properties.append((TIER_KEY, [tier, tier_size]))


def record_layers(
    node: pytest.Item, cfg: AccelConfig, layers: Iterable[tuple[LayerCase, bool]]
) -> dict[str, int]:
    """Count the bins of `layers` ((case, backpressure) pairs) into `node`'s report;
    `node` must have joined a tier (`join_tier`). Returns this test's hit counts."""
    if not any(key == TIER_KEY for key, _ in node.user_properties):
        raise ValueError(f"{node.nodeid} records layers without a tier: call join_tier first")
    counts = dict.fromkeys((b.key for b in BINS), 0)
    n = 0
    for case, backpressure in layers:
        n += 1
        for key in layer_hits(layer_facts(case, cfg, backpressure=backpressure)):
            counts[key] += 1
    node.user_properties.append((HITS_KEY, counts))
    node.user_properties.append((LAYERS_KEY, n))
    return counts


def _hit_line(counts: Mapping[str, int]) -> str:
    hit = sum(1 for b in DECLARED if counts.get(b.key, 0))
    excluded = len(BINS) - len(DECLARED)
    return f"{hit} of {len(DECLARED)} declared bins hit ({excluded} excluded, see below)"


def bin_table(counts: Mapping[str, int], title: str = "hits") -> str:
    """Markdown tables of every declared bin with its hit count from `counts`: the
    one-dimensional bins, the routing mode × situation cross, the excluded cells' reasons."""
    lines = [f"| axis | bin | {title} |", "|---|---|---:|"]
    for b in BINS:
        if b.axis != CROSS_AXIS:
            lines.append(f"| {b.axis} | {b.name} | {counts.get(b.key, 0):,} |")
    cross = {b.name: b for b in CROSS_BINS}
    lines += [
        "",
        f"{CROSS_AXIS} ({title}; — marks an excluded cell):",
        "",
        "| routing mode | " + " | ".join(name for name, _ in SITUATIONS) + " |",
        "|---|" + "---:|" * len(SITUATIONS),
    ]
    for mode, _ in ROUTING_MODES:
        cells = []
        for situation, _ in SITUATIONS:
            b = cross[f"{mode} × {situation}"]
            n = counts.get(b.key, 0)
            cells.append(("—" if not n else f"— ({n:,} ✗)") if b.excluded else f"{n:,}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    lines += ["", f"**{_hit_line(counts)}.** Excluded:", ""]
    lines += [f"- {b.name}: {b.excluded}" for b in CROSS_BINS if b.excluded]
    return "\n".join(lines)


def _seed_range(seeds: Mapping[str, int]) -> str:
    if not seeds:
        return "no test seeds"
    return (
        f"test seeds {min(seeds.values())} to {max(seeds.values())} "
        f"({len(seeds)}, each test's in {RESULTS_FILE}; replay with --seed)"
    )


@dataclass
class _Tier:
    """What the recording tests of one tier reported in a run."""

    size: int
    passed: set[str]
    failed: set[str]
    layers: int = 0
    seeds: dict[str, int] = field(default_factory=dict)
    """Each test's seed (`tests/conftest.py`'s `seed` fixture), by node id."""


class BinReport:
    """pytest plugin: sums the recorded bin hits of a run, reports them, checks the tiers."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.tiers: dict[str, _Tier] = {}
        self.failures: list[str] = []
        self.summary: list[str] = []
        self.start = time.monotonic()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.start = time.monotonic()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        properties = dict(report.user_properties)
        if TIER_KEY not in properties:
            return
        for key, n in properties.get(HITS_KEY, {}).items():
            self.counts[key] = self.counts.get(key, 0) + int(n)
        tier, size = properties[TIER_KEY]
        entry = self.tiers.setdefault(tier, _Tier(int(size), set(), set()))
        (entry.passed if report.passed else entry.failed).add(report.nodeid)
        entry.layers += int(properties.get(LAYERS_KEY, 0))
        if "seed" in properties:
            entry.seeds[report.nodeid] = int(properties["seed"])

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput") or not self.tiers:
            return  # an xdist worker: the controller sums its reports
        wall = time.monotonic() - self.start
        tiers = {
            tier: {
                "tests": t.size,
                "passed": len(t.passed),
                "failed": len(t.failed),
                "layers": t.layers,
                "seeds": dict(sorted(t.seeds.items())),
            }
            for tier, t in sorted(self.tiers.items())
        }
        path = BUILD_ROOT / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {"counts": self.counts, "tiers": tiers, "wall_s": round(wall, 1)},
                indent=1,
                sort_keys=True,
            )
        )
        self.summary = [
            f"tier {tier!r}: {t['layers']:,} layers checked bit for bit in {t['passed']} "
            f"passed of {t['tests']} tests ({t['failed']} failed, each at its first "
            f"mismatch); {_seed_range(t['seeds'])}; wall time of the run {wall:.0f} s"
            for tier, t in tiers.items()
        ]
        hit = sum(1 for b in DECLARED if self.counts.get(b.key, 0))
        wrong = [b.key for b in BINS if b.excluded and self.counts.get(b.key, 0)]
        if wrong:
            self.failures.append(
                "functional coverage: excluded bins were hit, so their reasons are wrong: "
                + ", ".join(wrong)
            )
        for tier, t in sorted(self.tiers.items()):
            goal = TIER_GOALS[tier]
            if len(t.passed) + len(t.failed) >= t.size and hit < goal * len(DECLARED):
                self.failures.append(
                    f"functional coverage: {hit} of {len(DECLARED)} declared bins hit, the "
                    f"{tier!r} tier needs {goal:.0%}; missed: "
                    + ", ".join(b.key for b in DECLARED if not self.counts.get(b.key, 0))
                )
        if self.failures:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.tiers:
            return
        terminalreporter.section("functional coverage bins")
        terminalreporter.write_line(bin_table(self.counts))
        for line in self.summary:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"(written to {BUILD_ROOT / RESULTS_FILE})")
        for failure in self.failures:
            terminalreporter.write_line(failure, red=True, bold=True)


def read_results(path: Path | None = None) -> dict[str, int]:
    """The hit counts the last reporting run wrote (`functional_bins.json`)."""
    path = path or BUILD_ROOT / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no functional coverage results at {path}; run the tests first")
    return {str(k): int(v) for k, v in json.loads(path.read_text())["counts"].items()}


def pytest_configure(config: pytest.Config) -> None:
    """Register one `BinReport` per run (as a `-p` plugin or from a conftest)."""
    if not config.pluginmanager.has_plugin("functional-bin-report"):
        config.pluginmanager.register(BinReport(), "functional-bin-report")
