# amaranth: UnusedElaboratable=no
"""Whole layers with compressed expert weights (int8/int4, dense/2:4) on the fast backend.

One top, `FORMAT_TOP` (the small top with both compressed paths built), runs
random layers of every family in every weight format bit for bit against the
golden model; the layer's phase counters and BYTES_READ are checked against
`pymodel.cycles.layer_cycles(weight_format=...)`. `make test` runs one layer
per family and format; `make soak` (`-m slow`) more draws. Each test prints
its seed; a failure names the layer and the command that replays the test.
"""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.cycles import MemoryTiming, layer_cycles
from pymodel.families import FAMILIES, family_spec
from pymodel.weight_formats import WeightFormat
from rtl.top import MoEAccel
from sim.fast import FastSim
from sim.tb.layer_cases import SMALL_TOP, make_case, run_case

FORMAT_TOP = SMALL_TOP.replace(sparse_2_4=True, int4_weights=True)
"""The small top (8×8 array) with the 2:4 and int4 weight paths."""

FORMATS = {
    "int8_dense": WeightFormat.DENSE_INT8,
    "int8_2of4": WeightFormat.parse("int8", "2:4"),
    "int4_dense": WeightFormat.parse("int4", "dense"),
    "int4_2of4": WeightFormat.parse("int4", "2:4"),
}
READ_LATENCY = 12
EXACT = ("mac_cycles", "bytes_read", "bytes_written")
"""Counters the cycle model predicts exactly."""
BOUNDS = {"cycles_total": 0.03, "cycles_experts": 0.05, "cycles_shared": 0.05}
"""The cycle model's documented error bounds (tests/pymodel/test_cycles.py), checked where a
counter reaches 1,000 cycles."""
SOAK_DRAWS = 6
"""Draws per family and format under `-m slow`."""


@pytest.fixture(scope="module")
def sim():
    """`MoEAccel(FORMAT_TOP)` on the fast backend (one cached build)."""
    with FastSim(
        lambda: MoEAccel(FORMAT_TOP),
        FORMAT_TOP,
        1 << 18,
        read_latency=READ_LATENCY,
        name="moe_formats",
    ) as s:
        yield s


def draw_layer(seed: int, family: str, fmt: WeightFormat):
    """A random layer of `family` in `fmt`: shapes drawn within FORMAT_TOP (2:4: K multiples
    of 4), tokens 1…max_tokens."""
    rng = np.random.default_rng(seed)
    unit = 4 if fmt.sparse else 1
    d = unit * int(rng.integers(1, FORMAT_TOP.max_d_model // unit + 1))
    f = unit * int(rng.integers(1, FORMAT_TOP.max_d_ff // unit + 1))
    options: dict = {"d_model": d, "d_ff": f, "n_experts": int(rng.choice([4, 8]))}
    if family in ("qwen2_moe", "deepseek_v3"):
        options["shared_d_ff"] = unit * int(rng.integers(1, FORMAT_TOP.max_d_ff // unit + 1))
    spec = family_spec(family, **options)
    tokens = int(rng.integers(1, FORMAT_TOP.max_tokens + 1))
    name = f"{family} {fmt.name} seed {seed} (d {d}, f {f}, T {tokens})"
    return make_case(name, spec, FORMAT_TOP, tokens, seed, fmt), spec, tokens


def run_and_check(sim: FastSim, seed: int, family: str, fmt_key: str, request) -> None:
    """Run one drawn layer bit-exact; its counters against the cycle model."""
    fmt = FORMATS[fmt_key]
    print(f"seed {seed}")
    case, spec, tokens = draw_layer(seed, family, fmt)
    replay = f"pytest '{request.node.nodeid}'"
    try:
        total = run_case(sim, case)
    except AssertionError as e:
        raise AssertionError(f"{case.name}: {e}; replay: {replay}") from None
    model = layer_cycles(
        FORMAT_TOP,
        spec,
        tokens,
        case.golden.dispatch.counts,
        memory=MemoryTiming(read_latency=READ_LATENCY),
        weight_format=fmt,
    )
    for name in EXACT:
        measured, predicted = sim.read_reg(name.upper()), int(model[name][0])
        assert measured == predicted, f"{case.name}: {name} {measured}, model {predicted}"
    for name, bound in BOUNDS.items():
        measured, predicted = sim.read_reg(name.upper()), int(model[name][0])
        if measured >= 1000:
            assert abs(measured - predicted) <= bound * measured, (
                f"{case.name}: {name} {measured}, model {predicted} (bound {bound:.0%})"
            )
    assert sim.read_reg("CYCLES_TOTAL") == total


@pytest.mark.parametrize("fmt_key", list(FORMATS))
@pytest.mark.parametrize("family", FAMILIES)
def test_a_layer_in_each_format_is_bit_exact(sim, family, fmt_key, request):
    seed = 100 * FAMILIES.index(family) + list(FORMATS).index(fmt_key)
    run_and_check(sim, seed, family, fmt_key, request)


@pytest.mark.slow
@pytest.mark.parametrize("fmt_key", list(FORMATS))
@pytest.mark.parametrize("family", FAMILIES)
def test_more_layers_in_each_format_are_bit_exact(sim, family, fmt_key, request):
    base = 10_000 + 100 * FAMILIES.index(family) + 10 * list(FORMATS).index(fmt_key)
    for seed in range(base, base + SOAK_DRAWS):
        run_and_check(sim, seed, family, fmt_key, request)
