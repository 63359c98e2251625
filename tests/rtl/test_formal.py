# amaranth: UnusedElaboratable=no
"""Bounded proofs of RTL units with SymbiYosys (`sim.formal`), and mutants they must catch.

`make test` runs each proof to a depth that covers a reset and a complete
small run (a dispatch run; a register write then its read-back); `make
formal` runs every check (deeper or on the full register map, marked slow
as well). A mutant is a unit built from today's source with one change, so
it cannot drift from the real unit: the dispatcher as it was before the
mid-layer reset fix (its FSM starting in INGEST, without the histogram
clear), and a register file that ignores write strobes.
"""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from amaranth import signed
from formal_credits import (
    SMALL_ENGINE,
    PostProcHarness,
    TileCreditHarness,
    postproc_harness,
    tile_credit_harness,
)
from formal_csr import SMALL_CSR_CONFIG, SMALL_MAP, CSRHarness, csr_harness
from formal_dispatch import SMALL_DISPATCH, DispatchHarness, dispatch_harness
from formal_streams import StreamRulesHarness, dma_environment, resizer_environment

import rtl.csr
import rtl.dispatch
import rtl.postproc
import rtl.tile_sequencer
from contract.regs import REGISTER_MAP
from pymodel.config import AccelConfig
from rtl.combine import Combiner
from rtl.dma import DMA
from rtl.gate import Gate
from rtl.gemm_engine import GemmEngine
from rtl.resize import Resizer
from rtl.topk import TopK
from sim.formal import prove

pytestmark = pytest.mark.formal

DISPATCH_DEPTH = 17
"""Cycles: the histogram clear (4), then a one-pair run through scan, scatter and walk (~12)."""
DISPATCH_DEEP_DEPTH = 20
"""Longer runs: more pairs, more experts, resets and stalls (`make formal`; ~5 min loaded)."""
CSR_DEPTH = 10
"""Cycles on the small map: AW and W in any order, the write, a read-back, with resets between."""
CSR_FULL_MAP_DEPTH = 6
"""The accelerator's map: a write and a read each complete (~3 min loaded at depth 8)."""
POSTPROC_DEPTH = 32
"""Enough cycles to fill the small engine's 28-beat buffer with `out` stalled and push once more."""
TILE_CREDIT_DEPTH = 16
"""A command checked, its tiles loaded and both credits spent, then returns and more rows."""
TILE_CREDIT_DEEP_DEPTH = 24
"""Two commands back to back (`make formal`)."""
STREAM_DEPTH = 12
"""Cycles of the generic stream-rule check in `make test` (`make formal`: `STREAM_DEEP_DEPTH`)."""
STREAM_DEEP_DEPTH = 20

STREAM_UNITS = {
    "resizer_gather": lambda: StreamRulesHarness(Resizer(4, 16), resizer_environment),
    "resizer_split": lambda: StreamRulesHarness(Resizer(16, 4), resizer_environment),
    "combiner": lambda: StreamRulesHarness(Combiner(SMALL_ENGINE)),
    "gate": lambda: StreamRulesHarness(Gate(SMALL_ENGINE)),
    "dma": lambda: StreamRulesHarness(DMA(SMALL_ENGINE, max_outstanding=2), dma_environment),
    "gemm_engine": lambda: StreamRulesHarness(GemmEngine(SMALL_ENGINE)),
}
"""Units whose output streams keep valid and payload until ready, with their environments."""


def mutant_module(unit: types.ModuleType, original: str, replacement: str) -> types.ModuleType:
    """`unit` rebuilt from its source with the one line `original` replaced."""
    source = Path(unit.__file__).read_text()
    assert source.count(original) == 1, "the mutation site moved: update this test"
    mutant = types.ModuleType(f"{unit.__name__}_mutant")
    mutant.__package__ = unit.__package__
    code = source.replace(original, replacement)
    exec(compile(code, f"{unit.__file__} (mutant)", "exec"), mutant.__dict__)
    return mutant


def mutant_dispatcher_module() -> types.ModuleType:
    """`rtl.dispatch` with its FSM starting in INGEST: no histogram clear after reset."""
    return mutant_module(rtl.dispatch, 'm.FSM(name="phase")', 'm.FSM(name="phase", init="INGEST")')


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


def test_csr_bounded_proof():
    harness = csr_harness()
    result = prove(harness, harness.ports, name="csr", depth=CSR_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


@pytest.mark.slow
def test_csr_full_register_map_bounded_proof():
    harness = csr_harness(REGISTER_MAP, AccelConfig())
    result = prove(harness, harness.ports, name="csr_full_map", depth=CSR_FULL_MAP_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


def test_csr_ignoring_write_strobes_is_caught():
    mutant = mutant_module(
        rtl.csr,
        "port.eq((port & ~bitmask[bits]) | masked[bits])",
        "port.eq(masked[bits])",
    )
    harness = CSRHarness(mutant.CSR(SMALL_CSR_CONFIG, SMALL_MAP))
    result = prove(harness, harness.ports, name="csr_mutant", depth=CSR_DEPTH)
    assert not result.passed
    assert result.trace is not None and result.trace.stat().st_size > 0


def test_postproc_admission_bounded_proof():
    harness = postproc_harness()
    result = prove(harness, harness.ports, name="postproc", depth=POSTPROC_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


def test_postproc_admitting_past_its_buffer_is_caught():
    mutant = mutant_module(rtl.postproc, "room.eq(inside + 1 != self.buffer_depth)", "room.eq(1)")
    harness = PostProcHarness(mutant.PostProc(SMALL_ENGINE, param_rows=2))
    result = prove(harness, harness.ports, name="postproc_mutant", depth=POSTPROC_DEPTH)
    assert not result.passed


def test_tile_sequencer_credits_bounded_proof():
    harness = tile_credit_harness()
    result = prove(harness, harness.ports, name="tile_credits", depth=TILE_CREDIT_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


@pytest.mark.slow
def test_tile_sequencer_credits_deep_bounded_proof():
    harness = tile_credit_harness()
    result = prove(harness, harness.ports, name="tile_credits_deep", depth=TILE_CREDIT_DEEP_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


def test_tile_sequencer_issuing_without_credit_is_caught():
    mutant = mutant_module(
        rtl.tile_sequencer,
        "issuing_next & full_next.bit_select(bank_next, 1) & (~final_next | has_credit_next)",
        "issuing_next & full_next.bit_select(bank_next, 1)",
    )
    harness = TileCreditHarness(
        mutant.TileSequencer(SMALL_ENGINE, m_block=2, param_rows=2, credits=2, cooldown=1)
    )
    result = prove(harness, harness.ports, name="tile_credits_mutant", depth=TILE_CREDIT_DEPTH)
    assert not result.passed


@pytest.mark.parametrize("unit", sorted(STREAM_UNITS))
def test_stream_rules_bounded_proof(unit):
    harness = STREAM_UNITS[unit]()
    result = prove(harness, harness.ports, name=f"streams_{unit}", depth=STREAM_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


@pytest.mark.slow
@pytest.mark.parametrize("unit", sorted(STREAM_UNITS))
def test_stream_rules_deep_bounded_proof(unit):
    harness = STREAM_UNITS[unit]()
    result = prove(harness, harness.ports, name=f"streams_{unit}_deep", depth=STREAM_DEEP_DEPTH)
    assert result.passed, f"counterexample: {result.trace}"


def test_a_unit_without_output_streams_is_refused():
    with pytest.raises(ValueError, match="sends no stream"):
        StreamRulesHarness(TopK(2, signed(4), 2))
