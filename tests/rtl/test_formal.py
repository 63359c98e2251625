# amaranth: UnusedElaboratable=no
"""Bounded proofs of RTL units with SymbiYosys (`sim.formal`), and a mutant they must catch.

`make test` runs the dispatcher's proof to a depth that covers a reset and
a complete small run; `make formal` runs every check (deeper, marked slow
as well). The mutant is the dispatcher as it was before the mid-layer reset
fix — its FSM starting in INGEST, without the histogram clear — built from
today's source with that one change, so it cannot drift from the real unit.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from formal_dispatch import SMALL_DISPATCH, DispatchHarness, dispatch_harness

import rtl.dispatch
from sim.formal import prove

pytestmark = pytest.mark.formal

DISPATCH_DEPTH = 17
"""Cycles: the histogram clear (4), then a one-pair run through scan, scatter and walk (~12)."""
DISPATCH_DEEP_DEPTH = 20
"""Longer runs: more pairs, more experts, resets and stalls (`make formal`; ~5 min loaded)."""


def mutant_dispatcher_module() -> types.ModuleType:
    """`rtl.dispatch` with its FSM starting in INGEST: no histogram clear after reset."""
    source = Path(rtl.dispatch.__file__).read_text()
    original = 'm.FSM(name="phase")'
    assert source.count(original) == 1, "the mutation site moved: update this test"
    mutant = types.ModuleType("dispatch_mutant")
    code = source.replace(original, 'm.FSM(name="phase", init="INGEST")')
    exec(compile(code, f"{rtl.dispatch.__file__} (mutant)", "exec"), mutant.__dict__)
    return mutant


def test_dispatcher_bounded_proof():
    harness = dispatch_harness()
    result = prove(harness, harness.ports, name="dispatch", depth=DISPATCH_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


@pytest.mark.slow
def test_dispatcher_deep_bounded_proof():
    harness = dispatch_harness()
    result = prove(harness, harness.ports, name="dispatch_deep", depth=DISPATCH_DEEP_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


def test_dispatcher_without_the_reset_clear_is_caught():
    harness = DispatchHarness(mutant_dispatcher_module().Dispatcher(SMALL_DISPATCH))
    result = prove(harness, harness.ports, name="dispatch_mutant", depth=16)
    assert not result.passed
    assert result.trace is not None and result.trace.stat().st_size > 0
