# amaranth: UnusedElaboratable=no
"""Constrained-random whole layers on the fast backend (`sim.tb.random_layers`).

Every layer is checked bit for bit against the golden model (outputs,
per-expert counts, drops). `make test` runs 40 draws on the small top and a
second top whose M-block (32 rows) is smaller than its token limit (48), so
the layer sequencer's M-block loop-backs run (router GEMM, a crowded expert,
the shared expert); `make soak` runs 10,000 draws in 20 chunks, spread over
processes with pytest-xdist. Each test's seed is printed, and a failure names
the draw (its own seed) and the command that replays the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtl.gemm_engine import default_m_block
from rtl.top import MoEAccel
from sim.fast import FastSim
from sim.tb.layer_cases import SMALL_TOP, LayerCase, run_case
from sim.tb.random_layers import random_layer

LOOP_TOP = SMALL_TOP.replace(rows=4, cols=4, max_tokens=48)
"""A 4×4 top with 48 tokens: M-blocks of 32 rows, so a layer can need two."""
SOAK_CHUNKS, SOAK_LAYERS_PER_CHUNK = 20, 500


def run_draws(sim: FastSim, cfg, seeds, *, tokens: int | None = None) -> list[LayerCase]:
    cases = []
    for draw in seeds:
        case = random_layer(cfg, int(draw), tokens=tokens)
        try:
            run_case(sim, case)
        except AssertionError as e:
            raise AssertionError(f"{case.name}: {e}") from None
        cases.append(case)
    return cases


def test_random_layers_are_bit_exact(sim, seed):
    rng = np.random.default_rng(seed)
    run_draws(sim, SMALL_TOP, rng.integers(2**31, size=40))


def test_m_block_loop_backs_are_bit_exact(seed):
    assert default_m_block(LOOP_TOP) == 32 < LOOP_TOP.max_tokens
    rng = np.random.default_rng(seed)
    with FastSim(
        lambda: MoEAccel(LOOP_TOP), LOOP_TOP, 1 << 18, read_latency=12, name="moe_accel"
    ) as sim:
        cases = run_draws(sim, LOOP_TOP, rng.integers(2**31, size=8), tokens=48)
        # 48 tokens: the router GEMM (and any shared expert) always takes two blocks; draw
        # on until two layers also had a routed expert with more than one block of rows
        crowded = [c for c in cases if c.golden.dispatch.counts.max() > 32]
        for draw in rng.integers(2**31, size=200):
            if len(crowded) >= 2:
                break
            case = random_layer(LOOP_TOP, int(draw), tokens=48)
            if case.golden.dispatch.counts.max() > 32:
                crowded += run_draws(sim, LOOP_TOP, [draw], tokens=48)
    assert len(crowded) >= 2, "no draw crowded an expert past one M-block"


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SOAK_CHUNKS))
def test_soak_random_layers(sim, seed, chunk):
    """Soak: 20 chunks × 500 draws = 10,000 random layers (`make soak`, pytest-xdist)."""
    rng = np.random.default_rng([seed, chunk])
    run_draws(sim, SMALL_TOP, rng.integers(2**31, size=SOAK_LAYERS_PER_CHUNK))
