# amaranth: UnusedElaboratable=no
"""Simulation-only invariants (`rtl.checks`): generated only when switched on, and effective.

The suite runs with them on (`tests/conftest.py`); these tests switch them
explicitly, so each states which way it elaborates.
"""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from flow.verilog_export import export_verilog
from pymodel.config import AccelConfig
from rtl.checks import checks_enabled, simulation_checks
from rtl.resize import Resizer
from rtl.tile_sequencer import TileSequencer
from sim.build import emit_verilog


def restart_while_busy(enabled: bool) -> None:
    """Start a 4-item transfer, then start again at once: the invariant the resizer states."""
    with simulation_checks(enabled):
        dut = Resizer(16, 4)
        sim = Simulator(dut)
    sim.add_clock(1e-6)

    async def bench(ctx):
        ctx.set(dut.count, 4)
        ctx.set(dut.start, 1)
        await ctx.tick()
        await ctx.tick()

    sim.add_testbench(bench)
    sim.run()


def test_a_broken_invariant_stops_an_amaranth_simulation():
    with pytest.raises(AssertionError, match="Resizer restarted with items left"):
        restart_while_busy(True)


def test_without_checks_the_same_stimulus_runs():
    restart_while_busy(False)


def test_the_switch_nests_and_restores():
    with simulation_checks():
        assert checks_enabled()
        with simulation_checks(False):
            assert not checks_enabled()
        assert checks_enabled()


def small_sequencer() -> TileSequencer:
    cfg = AccelConfig(rows=2, cols=2, m_tile=2, max_experts=2, max_top_k=2, max_groups=2)
    return TileSequencer(cfg, m_block=2, param_rows=2, credits=2, cooldown=1)


def test_invariants_reach_the_verilog_only_when_switched_on():
    with simulation_checks(True):
        checked = emit_verilog(small_sequencer(), "seq")
    with simulation_checks(False):
        plain = emit_verilog(small_sequencer(), "seq")
    assert "a final row injected without a credit" in checked
    assert "assert (" in checked
    assert "assert (" not in plain


def test_exported_verilog_never_carries_invariants(tmp_path):
    with simulation_checks(True):
        v_path, _ = export_verilog(Resizer(16, 4), "resizer", tmp_path)
    assert "assert (" not in v_path.read_text()
