"""Declared functional coverage of whole layers: a bin table fed from golden-model intermediates.

Why: line and toggle coverage say which RTL ran, not which layer situations the
random layers reached. Each bin here is one situation a layer run can be in —
its routing mode, exact logit ties, empty experts, every token on one expert,
capacity drops, saturation in a requantiser, backpressure on the bus, and T
and k at their limits — decided from the golden layer (`LayerFacts`), never
from the RTL. The bins are one-dimensional (a bin per value of each axis), not
the full cross product of the axes.

The random-layer tests record every layer they run (`record_layers`) into their
report's `user_properties`; the `BinReport` pytest plugin (registered by
`tests/accelerator/conftest.py`, or with `-p sim.tb.functional_coverage` for xdist
runs) sums the hit counts over the whole run, also across xdist workers, prints
the table, writes it to `functional_bins.json` under the build root and fails
the run when a tier of tests ran completely but hit too few bins: 95 % for the
random layers of `make test`, 100 % for `make soak`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
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
    "TIER_GOALS",
    "Bin",
    "BinReport",
    "LayerFacts",
    "bin_table",
    "layer_facts",
    "layer_hits",
    "read_results",
    "record_layers",
]

HITS_KEY = "functional_bins"
TIER_KEY = "functional_bins_tier"
RESULTS_FILE = "functional_bins.json"

TIER_GOALS: Mapping[str, float] = {"test": 0.95, "soak": 1.0}
"""Share of `BINS` each tier of recording tests must hit once all of its tests ran."""


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

    @property
    def key(self) -> str:
        return f"{self.axis}: {self.name}"


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
)
"""The declared bins, in report order."""


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


def record_layers(
    node: pytest.Item,
    cfg: AccelConfig,
    layers: Iterable[tuple[LayerCase, bool]],
    *,
    tier: str,
    tier_size: int,
) -> dict[str, int]:
    """Count the bins of `layers` ((case, backpressure) pairs) into `node`'s report.

    `tier` names the group of tests this one belongs to (a key of `TIER_GOALS`)
    and `tier_size` how many tests the group has: its goal is checked only in a
    run where all of them reported. Returns this test's hit counts.
    """
    if tier not in TIER_GOALS:
        raise ValueError(f"tier {tier!r} is not one of {sorted(TIER_GOALS)}")
    counts = dict.fromkeys((b.key for b in BINS), 0)
    for case, backpressure in layers:
        for key in layer_hits(layer_facts(case, cfg, backpressure=backpressure)):
            counts[key] += 1
    node.user_properties.append((HITS_KEY, counts))
    node.user_properties.append((TIER_KEY, [tier, tier_size]))
    return counts


def bin_table(counts: Mapping[str, int], title: str = "hits") -> str:
    """A Markdown table of every declared bin with its hit count from `counts`."""
    lines = [f"| axis | bin | {title} |", "|---|---|---:|"]
    for b in BINS:
        lines.append(f"| {b.axis} | {b.name} | {counts.get(b.key, 0):,} |")
    hit = sum(1 for b in BINS if counts.get(b.key, 0))
    lines.append(f"| **all** | **{hit} of {len(BINS)} bins hit** | |")
    return "\n".join(lines)


class BinReport:
    """pytest plugin: sums the recorded bin hits of a run, reports them, checks the tiers."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.tiers: dict[str, tuple[int, set[str]]] = {}
        self.failure: str | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        properties = dict(report.user_properties)
        if HITS_KEY not in properties:
            return
        for key, n in properties[HITS_KEY].items():
            self.counts[key] = self.counts.get(key, 0) + int(n)
        tier, size = properties[TIER_KEY]
        if report.passed:
            self.tiers.setdefault(tier, (int(size), set()))[1].add(report.nodeid)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if hasattr(session.config, "workerinput") or not self.counts:
            return  # an xdist worker: the controller sums its reports
        path = BUILD_ROOT / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"counts": self.counts}, indent=1, sort_keys=True))
        hit = sum(1 for b in BINS if self.counts.get(b.key, 0))
        for tier, (size, passed) in sorted(self.tiers.items()):
            goal = TIER_GOALS[tier]
            if len(passed) >= size and hit < goal * len(BINS):
                self.failure = (
                    f"functional coverage: {hit} of {len(BINS)} bins hit, the {tier!r} tier "
                    f"needs {goal:.0%}; missed: "
                    + ", ".join(b.key for b in BINS if not self.counts.get(b.key, 0))
                )
                session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.counts:
            return
        terminalreporter.section("functional coverage bins")
        terminalreporter.write_line(bin_table(self.counts))
        terminalreporter.write_line(f"(written to {BUILD_ROOT / RESULTS_FILE})")
        if self.failure:
            terminalreporter.write_line(self.failure, red=True, bold=True)


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
