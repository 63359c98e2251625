"""The cocotb benches' AXI4 checker (`sim.tb.axi_checker.AxiRules`) against a scripted master.

A well-behaved master's cycles pass; each rule is then broken once by a
master that differs from it in one signal, and must be named.
"""

from __future__ import annotations

import pytest

from sim.tb.axi_checker import SIGNALS, AxiRules

BEAT = 16


def idle() -> dict[str, int]:
    return dict.fromkeys(SIGNALS, 0) | {"arsize": 4, "awsize": 4, "arburst": 1, "awburst": 1}


def good_cycles() -> list[dict[str, int]]:
    """A 2-beat write (AW held one cycle before ready) and a 2-beat read."""
    aw = {"awvalid": 1, "awaddr": 0x100, "awlen": 1}
    w = {"wvalid": 1, "wready": 1, "wdata": 5, "wstrb": 0xFFFF}
    return [
        idle() | aw,
        idle() | aw | {"awready": 1},
        idle() | w,
        idle() | w | {"wlast": 1},
        idle() | {"bvalid": 1, "bready": 1},
        idle() | {"arvalid": 1, "arready": 1, "araddr": 0x200, "arlen": 1},
        idle() | {"rvalid": 1, "rready": 1},
        idle() | {"rvalid": 1, "rready": 1, "rlast": 1},
    ]


def run(cycles: list[dict[str, int]], **limits: int) -> list[str]:
    rules = AxiRules(beat_bytes=BEAT, max_burst=limits.get("max_burst", 16), max_outstanding=2)
    for sample in cycles:
        rules.observe(sample)
    return rules.violations


def test_a_well_behaved_master_passes():
    assert run(good_cycles()) == []


def broken(index: int, **changes: int) -> list[dict[str, int]]:
    cycles = good_cycles()
    cycles[index] = cycles[index] | changes
    return cycles


@pytest.mark.parametrize(
    ("cycles", "rule"),
    [
        (broken(1, awaddr=0x140), "AW valid or payload changed"),
        (broken(1, awvalid=0), "AW valid or payload changed"),
        (broken(5, arburst=2), "only INCR"),
        (broken(5, arsize=3), "size code 3"),
        (broken(5, arlen=31), "32 beats"),
        (broken(5, araddr=0xFF0), "crosses a 4 KiB boundary"),
        (broken(2, wlast=1), "WLAST set on beat 1 of 2"),
        (broken(3, wlast=0), "WLAST missing on beat 2 of 2"),
        ([idle() | {"wvalid": 1, "wready": 1, "wlast": 1}], "W beat without an accepted AW"),
    ],
)
def test_each_rule_names_its_violation(cycles, rule):
    violations = run(cycles)
    assert violations and rule in violations[0], violations


def test_outstanding_bursts_beyond_the_limit():
    ar = idle() | {"arvalid": 1, "arready": 1, "araddr": 0x0}
    violations = run([ar, ar, ar])
    assert violations and "3 read / 0 write bursts outstanding > 2" in violations[0]


def test_changing_w_before_ready():
    cycles = good_cycles()
    cycles[2] = cycles[2] | {"wready": 0}
    cycles.insert(3, cycles[2] | {"wdata": 6})
    assert "W valid or payload changed" in run(cycles)[0]


def test_reset_forgets_bursts_in_flight():
    rules = AxiRules(beat_bytes=BEAT, max_burst=16, max_outstanding=2)
    for sample in good_cycles()[:3]:
        rules.observe(sample)
    rules.reset()
    rules.observe(idle() | {"wvalid": 1, "wready": 1, "wlast": 1})
    assert rules.violations and "without an accepted AW" in rules.violations[0]
