# amaranth: UnusedElaboratable=no
"""Resets in the middle of a layer, then a bit-exact layer (the fast backend).

Why: a reset must leave nothing of an interrupted layer behind. Pulsing the
`rst` port during the route or dispatch phase once made the *next* layer end
in DONE with inflated per-expert counts, because the dispatcher's histogram
memory (which no reset clears) kept the interrupted run's pairs.

Reset points are drawn at random (the `seed` fixture: replay a failure with
the command its report prints) inside each phase's window, measured from an
uninterrupted run of the same layer: 25 points per phase, 100 per kind of
reset, the `rst` port held for 1–8 cycles or `CTRL.soft_reset`. After each,
the next layer (drawn from three routing modes) must match the golden model
bit for bit, per-expert counts and drops included.

The soak (`make soak`) repeats it from random power-up contents: a build
with Verilator's `--x-initial unique`, every memory random from a seed
drawn from the test's seed, and the first layer after power-up checked too.
"""

from __future__ import annotations

import numpy as np
import pytest

from contract.regs import REGISTER_MAP
from rtl.top import MoEAccel
from sim.fast import FastSim
from sim.tb.layer_cases import (
    SMALL_TOP,
    LayerCase,
    load_case,
    make_case,
    mode_specs,
    run_case,
)

MEM_BYTES = 1 << 18
STATUS = REGISTER_MAP["STATUS"].register
CTRL = REGISTER_MAP["CTRL"].register
PHASES = ("ROUTE", "DISPATCH", "EXPERTS", "COMBINE")
POINTS_PER_PHASE = 25
MODES = ("mixtral", "deepseek_v3", "switch_drops")


@pytest.fixture(scope="module")
def cases() -> list[LayerCase]:
    specs = mode_specs(32, 64, 8)
    return [make_case(m, specs[m], SMALL_TOP, tokens=16, seed=i) for i, m in enumerate(MODES)]


def phase_windows(sim: FastSim, case: LayerCase) -> dict[str, tuple[int, int]]:
    """[first, last) cycle after the start write of each phase, from an uninterrupted run."""
    run_case(sim, case)
    windows, first = {}, 0
    for phase in PHASES:
        length = sim.read_reg(f"CYCLES_{phase}")
        assert length > 0, phase
        windows[phase] = (first, first + length)
        first += length
    return windows


def idle_after_abort(sim: FastSim) -> None:
    for _ in range(100):
        fields = STATUS.unpack(sim.read_reg("STATUS"))
        if not fields["busy"]:
            break
        sim.step(16)
    assert not fields["busy"] and not fields["error"] and not fields["done"], fields


def reset_at_random_points(
    sim: FastSim, cases: list[LayerCase], rng: np.random.Generator, kind: str, per_phase: int
) -> None:
    """`per_phase` resets of `kind` in each phase, each followed by a layer checked bit for bit."""
    windows = [phase_windows(sim, case) for case in cases]
    for phase in PHASES:
        for point in range(per_phase):
            i = int(rng.integers(len(cases)))
            first, last = windows[i][phase]
            delay = int(rng.integers(first, last))
            after = cases[int(rng.integers(len(cases)))]
            load_case(sim, cases[i])
            sim.step(delay)
            try:
                if kind == "rst_port":
                    sim.reset(int(rng.integers(1, 9)))
                else:
                    sim.write_reg("CTRL", CTRL.pack(soft_reset=1))
                idle_after_abort(sim)
                run_case(sim, after)
            except AssertionError as e:
                raise AssertionError(
                    f"{kind} at cycle {delay} of {cases[i].name} ({phase}, point {point}), "
                    f"then {after.name}: {e}"
                ) from None


@pytest.mark.parametrize("kind", ["rst_port", "soft_reset"])
def test_reset_at_random_points_in_every_phase_then_a_bit_exact_layer(sim, cases, seed, kind):
    reset_at_random_points(sim, cases, np.random.default_rng(seed), kind, POINTS_PER_PHASE)


@pytest.mark.slow
def test_random_power_up_contents_then_resets(cases, seed):
    """Soak: 8 power-ups with random memories, each a first layer then 40 random resets."""
    rng = np.random.default_rng(seed)
    for _ in range(8):
        init_seed = int(rng.integers(1, 2**31))
        print(f"power-up contents from random_init_seed = {init_seed}")
        with FastSim(
            lambda: MoEAccel(SMALL_TOP),
            SMALL_TOP,
            MEM_BYTES,
            read_latency=12,
            name="moe_accel",
            random_init_seed=init_seed,
        ) as sim:
            run_case(sim, cases[int(rng.integers(len(cases)))])
            for kind in ("rst_port", "soft_reset"):
                reset_at_random_points(sim, cases, rng, kind, 5)
