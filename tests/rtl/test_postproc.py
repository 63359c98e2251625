# amaranth: UnusedElaboratable=no
"""Post-processing: the Requantizer in Amaranth's simulator, PostProc lanes on Verilator.

The requantiser is checked against `numerics.requantize` on random values and
every corner (saturation, shifts 0/1/≥ product width, multiplier 0 and max,
negative halves). The PostProc component is checked through cocotb with
random backpressure in every mode (see cocotb_postproc.py).
"""

from pathlib import Path

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.numerics import PostMode, requantize
from rtl.postproc import SHIFT_BITS, Mode, PostProc, Requantizer
from sim.amaranth_sim import run_simulation
from sim.build import build_component, run_cocotb

TB = Path(__file__).with_name("cocotb_postproc.py")


def _requant_vectors(in_bits: int, mult_bits: int, rng: np.random.Generator):
    lo, hi = -(2 ** (in_bits - 1)), 2 ** (in_bits - 1) - 1
    top = 2**mult_bits - 1
    corners = [
        (v, mu, s)
        for v in (lo, lo + 1, -1, 0, 1, hi, -3, 3)
        for mu in (0, 1, top)
        for s in (0, 1, 2, in_bits + mult_bits - 1, in_bits + mult_bits, 2**SHIFT_BITS - 1)
    ]
    # Exact halves: v·m = (2j+1)·2^(s-1) must round away from zero.
    halves = [(v, 1, 1) for v in (-5, -3, -1, 1, 3, 5)] + [(-(2**10) - 2**9, 1, 10)]
    rand = zip(
        rng.integers(lo, hi + 1, 1500).tolist(),
        rng.integers(0, top + 1, 1500).tolist(),
        rng.integers(0, 2**SHIFT_BITS, 1500).tolist(),
        strict=True,
    )
    useful = zip(  # shifts that land near the int8 range, where rounding matters
        rng.integers(lo, hi + 1, 1500).tolist(),
        rng.integers(top // 2, top + 1, 1500).tolist(),
        rng.integers(max(0, in_bits + mult_bits - 12), in_bits + mult_bits - 2, 1500).tolist(),
        strict=True,
    )
    return corners + halves + list(rand) + list(useful)


@pytest.mark.parametrize(
    ("in_bits", "mult_bits", "out_bits", "narrow_bits"),
    [(32, 16, 8, None), (16, 16, 8, None), (20, 12, 8, None), (32, 16, 16, 8)],
)
def test_requantizer_matches_numerics(in_bits, mult_bits, out_bits, narrow_bits):
    """One vector per cycle through the pipeline, each result `latency` cycles later."""
    dut = Requantizer(in_bits, mult_bits, out_bits, narrow_bits=narrow_bits)
    vectors = _requant_vectors(in_bits, mult_bits, np.random.default_rng(in_bits + mult_bits))
    widths = {"result": out_bits} | ({} if narrow_bits is None else {"narrow": narrow_bits})
    got = {port: [] for port in widths}

    async def bench(ctx):
        for i in range(len(vectors) + dut.latency):
            if i < len(vectors):
                v, mu, s = vectors[i]
                ctx.set(dut.value, v)
                ctx.set(dut.mult, mu)
                ctx.set(dut.shift, s)
            if i >= dut.latency:
                for port, values in got.items():
                    values.append(ctx.get(getattr(dut, port)))
            await ctx.tick()

    run_simulation(dut, [bench])
    for port, bits in widths.items():
        want = np.array([requantize(v, mu, s, bits) for v, mu, s in vectors])
        bad = np.nonzero(np.array(got[port]) != want)[0]
        assert bad.size == 0, [(port, vectors[i], got[port][i], int(want[i])) for i in bad[:5]]


def test_the_hardware_mode_enum_is_pymodels():
    assert [(m.name, m.value) for m in Mode] == [(m.name, m.value) for m in PostMode]


def test_requantizer_rejects_a_narrow_width_past_the_output():
    with pytest.raises(ConfigError, match="narrow_bits"):
        Requantizer(32, 16, 8, narrow_bits=9)


def test_requantizer_splits_only_wide_products():
    assert (Requantizer(32, 16, 8).split, Requantizer(32, 16, 8).latency) == (True, 8)
    assert (Requantizer(16, 16, 8).split, Requantizer(16, 16, 8).latency) == (False, 7)


POSTPROC_ARRAYS = {"4lanes": AccelConfig(rows=4, cols=4), "3lanes": AccelConfig(rows=2, cols=3)}


@pytest.mark.parametrize("name", list(POSTPROC_ARRAYS))
def test_postproc_lanes_bit_exact_with_backpressure(name):
    cfg = POSTPROC_ARRAYS[name]
    build = build_component(PostProc(cfg, param_rows=8), f"postproc_{name}")
    run_cocotb(
        build,
        TB,
        params={"cfg": cfg, "param_rows": 8, "seed": len(name)},
    )


def test_postproc_rejects_bad_param_rows():
    with pytest.raises(ConfigError, match="param_rows"):
        PostProc(AccelConfig(), param_rows=0)


def test_postproc_buffer_depth_bounds():
    """The buffer may grow past its default (the engine's credits) but not below it."""
    cfg = AccelConfig(rows=2, cols=2)
    assert PostProc(cfg, param_rows=2).buffer_depth == PostProc.pipeline_depth_for(cfg) + 4
    assert PostProc(cfg, param_rows=2, buffer_depth=40).buffer_depth == 40
    with pytest.raises(ConfigError, match="buffer_depth"):
        PostProc(cfg, param_rows=2, buffer_depth=PostProc.pipeline_depth_for(cfg) + 3)


@pytest.mark.parametrize("buffer_depth", [None, 37])
def test_postproc_latency_and_admission_limit(buffer_depth):
    """One beat comes out `latency` cycles after it went in; with the output blocked the
    lanes take exactly `buffer_depth` beats, then hand them all out in order, then idle."""
    cfg = AccelConfig(rows=2, cols=2)
    dut = PostProc(cfg, param_rows=2, buffer_depth=buffer_depth)
    assert dut.pipeline_depth == 24 and dut.latency == 27 == PostProc.latency_for(cfg)
    trace = {"out_at": [], "accepted": 0, "lasts": []}

    async def bench(ctx):
        ctx.set(dut.out.ready, 1)
        ctx.set(dut.inp.payload.n_valid, 2)
        ctx.set(dut.inp.valid, 1)
        await ctx.tick()
        ctx.set(dut.inp.valid, 0)
        for cycle in range(1, 2 * dut.latency):
            if ctx.get(dut.out.valid):
                trace["out_at"].append(cycle)
            await ctx.tick()
        ctx.set(dut.out.ready, 0)
        ctx.set(dut.inp.valid, 1)
        for i in range(3 * dut.buffer_depth):
            ctx.set(dut.inp.payload.last, i % 2)
            accepted = ctx.get(dut.inp.ready)
            await ctx.tick()
            if accepted:
                trace["accepted"] += 1
            else:
                ctx.set(dut.inp.valid, 0)
                break
        ctx.set(dut.out.ready, 1)
        for _ in range(3 * dut.buffer_depth):
            if ctx.get(dut.out.valid):
                trace["lasts"].append(ctx.get(dut.out.payload.last))
            await ctx.tick()
        trace["busy_after"] = ctx.get(dut.busy)

    run_simulation(dut, [bench])
    assert trace["out_at"] == [dut.latency]
    assert trace["accepted"] == dut.buffer_depth
    assert trace["lasts"] == [i % 2 for i in range(dut.buffer_depth)]
    assert trace["busy_after"] == 0
