# amaranth: UnusedElaboratable=no
"""A broken RTL invariant stops a fast-backend run with an error, instead of going unnoticed.

The suite's fast builds carry the invariants (`rtl.checks`, `--assert`,
`FASTSIM_CHECKS`). This builds the small top once more, in its own build
folder so no other test can reuse it, with the resizer's invariant made to
fail, and checks the run stops on it. A whole extra build: `make soak`.
"""

from __future__ import annotations

import pytest

import rtl.resize
from rtl.top import MoEAccel
from sim.fast import FastSim, ProtocolViolation
from sim.tb.layer_cases import SMALL_TOP, load_case, make_case, mode_specs

pytestmark = pytest.mark.slow


def test_a_failing_invariant_stops_the_run(tmp_path, monkeypatch):
    real = rtl.resize.invariant

    def broken(m, condition, message):  # the resizer's, negated: it fails on its first start
        real(m, ~condition if "Resizer" in message else condition, message)

    monkeypatch.setattr(rtl.resize, "invariant", broken)
    case = make_case("mixtral", mode_specs(24, 40, 8)["mixtral"], SMALL_TOP, tokens=4, seed=1)
    with FastSim(
        lambda: MoEAccel(SMALL_TOP), SMALL_TOP, 1 << 18, build_root=tmp_path, name="probe"
    ) as sim:
        with pytest.raises(ProtocolViolation, match="RTL invariant failed at cycle"):
            load_case(sim, case)  # the register writes already run cycles: it may stop here
            sim.run(100_000)
