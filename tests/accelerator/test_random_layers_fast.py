# amaranth: UnusedElaboratable=no
"""Constrained-random whole layers on the fast backend (`sim.tb.random_layers`).

Every layer is checked bit for bit against the golden model (outputs,
per-expert counts, drops). `make test` runs 40 draws on the small top and a
second top whose M-block (32 rows) is smaller than its token limit (48), so
the layer sequencer's M-block loop-backs run (router GEMM, a crowded expert,
the shared expert), and a soft reset at a random cycle of a crowded layer must
leave the layer's rerun bit-exact; that top also runs the fault paths (bad descriptors,
bus errors, start while busy, watchdog), which its good layers never take; `make soak`
runs 10,000 draws in 20 chunks, spread over processes with pytest-xdist. Each test's
seed is printed, and a failure names the draw (its own seed) and the command that
replays the test.

Every fifth draw runs under bus chaos (backpressure). Each test records the
functional bins its layers hit (`sim.tb.functional_coverage`, the routing mode ×
situation cross included); the `make test` draws on the small top then steer:
while declared bins stay missed they draw on (golden model only) and run each
draw that hits one, under bus chaos where that hits more.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from contract.regs import REGISTER_MAP, ErrorCause
from pymodel.config import AccelConfig
from rtl.gemm_engine import default_m_block
from rtl.top import MoEAccel
from sim.fast import FastSim
from sim.tb.functional_coverage import (
    DECLARED,
    join_tier,
    layer_facts,
    layer_hits,
    record_layers,
)
from sim.tb.layer_cases import (
    SMALL_TOP,
    LayerCase,
    check_start_while_busy,
    expect_error,
    load_case,
    make_case,
    mode_specs,
    run_case,
)
from sim.tb.random_layers import random_layer

LOOP_TOP = SMALL_TOP.replace(rows=4, cols=4, max_tokens=48)
"""A 4×4 top with 48 tokens: M-blocks of 32 rows, so a layer can need two."""
SOAK_CHUNKS, SOAK_LAYERS_PER_CHUNK = 20, 500
CHAOS_EVERY = 5
"""Every fifth draw runs with bus chaos (READY drops, held-back beats, extra latency)."""
CTRL = REGISTER_MAP["CTRL"].register
STATUS = REGISTER_MAP["STATUS"].register
STEER_TRIES = 1500
"""Draws (golden model only, ~10 ms each) tried in all before the missed bins are left missed."""


def run_draws(
    sim: FastSim, cfg: AccelConfig, seeds, *, tokens: int | None = None, chaos: bool | None = None
) -> list[tuple[LayerCase, bool]]:
    """Run the random layers of `seeds` bit-exact; (case, under bus chaos) for each.

    `chaos` None: every `CHAOS_EVERY`-th draw runs under bus chaos seeded by its draw.
    """
    layers = []
    for i, draw in enumerate(seeds):
        case = random_layer(cfg, int(draw), tokens=tokens)
        stormy = i % CHAOS_EVERY == CHAOS_EVERY - 1 if chaos is None else chaos
        sim.set_bus_chaos(
            seed=int(draw),
            stall_probability=0.1 if stormy else 0.0,
            max_extra_latency=16 if stormy else 0,
        )
        try:
            run_case(sim, case)
        except AssertionError as e:
            raise AssertionError(f"{case.name}{' (bus chaos)' if stormy else ''}: {e}") from None
        finally:
            sim.set_bus_chaos(seed=0)
        layers.append((case, stormy))
    return layers


def steer_missed_bins(
    sim: FastSim, cfg: AccelConfig, rng: np.random.Generator, layers: list[tuple[LayerCase, bool]]
) -> list[tuple[LayerCase, bool]]:
    """Draw on (golden model only) while declared bins stay missed; run each draw that hits
    one, under bus chaos when that hits more of them."""
    hit = {
        key
        for case, stormy in layers
        for key in layer_hits(layer_facts(case, cfg, backpressure=stormy))
    }
    steered: list[tuple[LayerCase, bool]] = []
    for draw in rng.integers(2**31, size=STEER_TRIES):
        missed = {b.key for b in DECLARED} - hit
        if not missed:
            break
        facts = layer_facts(random_layer(cfg, int(draw)), cfg, backpressure=False)
        gains = {
            stormy: missed & set(layer_hits(replace(facts, backpressure=stormy)))
            for stormy in (False, True)
        }
        stormy = len(gains[True]) > len(gains[False])
        if gains[stormy]:
            steered += run_draws(sim, cfg, [draw], chaos=stormy)
            hit |= gains[stormy]
    return steered


def test_random_layers_are_bit_exact(sim, seed, request):
    join_tier(request.node, "test", 2)
    rng = np.random.default_rng(seed)
    layers = run_draws(sim, SMALL_TOP, rng.integers(2**31, size=40))
    layers += steer_missed_bins(sim, SMALL_TOP, rng, layers)
    record_layers(request.node, SMALL_TOP, layers)


@pytest.fixture(scope="module")
def loop_sim():
    """`MoEAccel(LOOP_TOP)` on the fast backend, shared by this module's 48-token tests."""
    with FastSim(
        lambda: MoEAccel(LOOP_TOP), LOOP_TOP, 1 << 18, read_latency=12, name="moe_accel"
    ) as sim:
        yield sim


def test_m_block_loop_backs_are_bit_exact(loop_sim, seed, request):
    join_tier(request.node, "test", 2)
    assert default_m_block(LOOP_TOP) == 32 < LOOP_TOP.max_tokens
    rng = np.random.default_rng(seed)
    sim = loop_sim
    layers = run_draws(sim, LOOP_TOP, rng.integers(2**31, size=8), tokens=48)
    # 48 tokens: the router GEMM (and any shared expert) always takes two blocks; draw
    # on until two layers also had a routed expert with more than one block of rows
    crowded = [c for c, _ in layers if c.golden.dispatch.counts.max() > 32]
    for draw in rng.integers(2**31, size=200):
        if len(crowded) >= 2:
            break
        case = random_layer(LOOP_TOP, int(draw), tokens=48)
        if case.golden.dispatch.counts.max() > 32:
            more = run_draws(sim, LOOP_TOP, [draw], tokens=48)
            layers += more
            crowded += [c for c, _ in more]
    assert len(crowded) >= 2, "no draw crowded an expert past one M-block"
    layers.append(soft_reset_mid_layer(sim, crowded[0], rng))
    record_layers(request.node, LOOP_TOP, layers)


def test_fault_paths_on_the_48_token_top(loop_sim):
    """The top's and the DMA's error arms on the 48-token build, each followed by a
    bit-exact layer: a coverage build is its own population, so the small top's fault
    tests (test_top_fast.py) do not reach this build's copy of them. Bad descriptors, a
    read and a write bus error, a start while busy and the watchdog."""
    sim = loop_sim
    spec = mode_specs(32, 64, 8)["qwen2_moe"]
    case = make_case("loop_fault", spec, LOOP_TOP, tokens=LOOP_TOP.max_tokens, seed=3)
    start = case.image.program[-1]
    for reg, value in (
        ("TOP_K", LOOP_TOP.max_top_k + 1),
        ("N_EXPERTS", 0),
        ("D_MODEL", LOOP_TOP.max_d_model + 1),
        ("NUM_TOKENS", LOOP_TOP.max_tokens + 1),
        ("TOKENS_ADDR", case.image.regions["tokens"].addr + 16),
        ("ROUTING_MODE", REGISTER_MAP["ROUTING_MODE"].register.pack(n_group=3, topk_group=1)),
    ):
        load_case(sim, case, start=False)
        sim.write_reg(reg, value)
        sim.write_reg(*start)
        expect_error(sim, ErrorCause.BAD_DESCRIPTOR, 1000)
    run_case(sim, case)

    for cause, regions, write in (
        (ErrorCause.BUS_READ_ERROR, [f"expert{e}.w1" for e in range(8)], False),
        (ErrorCause.BUS_WRITE_ERROR, ["output"], True),
    ):
        load_case(sim, case, start=False)
        for name in regions:
            region = case.image.regions[name]
            sim.inject_error(region.addr, region.addr + region.size, write=write)
        sim.write_reg(*start)
        expect_error(sim, cause)
        sim.clear_errors()
        run_case(sim, case)

    check_start_while_busy(sim, case)

    load_case(sim, case, start=False)
    sim.write_reg("WATCHDOG_CYCLES", 500)
    sim.write_reg(*start)
    expect_error(sim, ErrorCause.WATCHDOG_TIMEOUT, 10_000)
    run_case(sim, case)


def soft_reset_mid_layer(
    sim: FastSim, case: LayerCase, rng: np.random.Generator
) -> tuple[LayerCase, bool]:
    """`CTRL.soft_reset` at a random cycle of `case`, then `case` again, bit-exact.

    On the 48-token top a reset lands inside the M-block loop-backs; it also
    takes this top's soft-reset arms, which its good layers alone never reach.
    """
    cycles = run_case(sim, case)
    delay = int(rng.integers(1, cycles))
    load_case(sim, case)
    sim.step(delay)
    sim.write_reg("CTRL", CTRL.pack(soft_reset=1))
    for _ in range(100):
        if not STATUS.unpack(sim.read_reg("STATUS"))["busy"]:
            break
        sim.step(16)
    fields = STATUS.unpack(sim.read_reg("STATUS"))
    assert not fields["busy"] and not fields["error"] and not fields["done"], fields
    try:
        run_case(sim, case)
    except AssertionError as e:
        raise AssertionError(
            f"soft reset at cycle {delay} of {case.name}, then again: {e}"
        ) from None
    return case, False


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(SOAK_CHUNKS))
def test_soak_random_layers(sim, seed, chunk, request):
    """Soak: 20 chunks × 500 draws = 10,000 random layers (`make soak`, pytest-xdist)."""
    join_tier(request.node, "soak", SOAK_CHUNKS)
    rng = np.random.default_rng([seed, chunk])
    layers = run_draws(sim, SMALL_TOP, rng.integers(2**31, size=SOAK_LAYERS_PER_CHUNK))
    record_layers(request.node, SMALL_TOP, layers)
