# amaranth: UnusedElaboratable=no
"""GemmEngine on Verilator via cocotb: bit-exact against the golden model on three arrays.

4×4 on a 4-byte bus (one weight row per beat), 8×8 (two rows per beat, with a
small accumulator block, so groups split into M-blocks) and a non-square 4×8
array on a 32-byte bus (a whole tile per beat); random shapes with M, K, N
not multiples of the array (M = 1 included; K tails not a multiple of the
rows per beat), saturating extremes, every mode, and random valid/ready
backpressure on every stream. Sizes stay small (≤ 40, but for one 96-row
case whose slow sink must run the credits out: more final rows than
post-processing buffers) so the three first builds plus runs take a few
minutes on 2 cores; later runs reuse the cached builds.
"""

import os
import random
from pathlib import Path

import pytest

from pymodel.config import AccelConfig, ConfigError
from rtl.gemm_engine import GemmEngine
from sim.build import SimulationError, build_component, emit_verilog, lint_verilog, run_cocotb

TB = Path(__file__).with_name("cocotb_gemm_engine.py")
PARAM_ROWS = 32

# Weight rows per beat L: 1 on the 4-byte bus, 2 on the default 8×8, a whole tile on 4×8.
ARRAYS = {
    "4x4": (AccelConfig(rows=4, cols=4, mem_bytes_per_cycle=4), None),
    "8x8": (AccelConfig(rows=8, cols=8), 16),
    "4x8": (AccelConfig(rows=4, cols=8, mem_bytes_per_cycle=32), None),
}


def _random_cases(rng: random.Random, count: int) -> list[list]:
    """Random shapes (≤ 40), modes, extremes and backpressure levels."""
    modes = ["REQUANT", "REQUANT_LUT", "SWIGLU"]
    return [
        [
            rng.randint(1, 40),
            rng.randint(1, 40),
            rng.randint(1, 24),
            rng.choice(modes),
            rng.random() < 0.25,
            rng.choice([0.0, 0.2, 0.5]),
            rng.choice([1.0, 0.7, 0.3]),
        ]
        for _ in range(count)
    ]


def _cases(seed: int, cfg: AccelConfig) -> list[list]:
    """Directed corners first, then random shapes; modes and backpressure vary per case."""
    r, c = cfg.rows, cfg.cols
    directed = [
        [1, 1, 1, "REQUANT", False, 0.0, 1.0],
        [1, 2 * r + 1, c + 1, "SWIGLU", False, 0.3, 0.5],
        [r, r, c, "REQUANT", True, 0.0, 1.0],
        [r + 1, 3 * r - 1, 2 * c + 3, "SWIGLU", True, 0.3, 0.4],
        [3 * r + 2, r + 3, c - 1 if c > 1 else 1, "REQUANT_LUT", True, 0.2, 0.7],
        [40, 2 * r, c, "REQUANT", False, 0.0, 1.0],
        # Slow sink: more rows than the post-processing buffer holds, so credits run out.
        [96, r, c, "REQUANT", False, 0.0, 0.15],
        [r + 2, 2 * r + 1, c + 1, "SWIGLU", "min", 0.2, 0.6],
    ]
    return directed + _random_cases(random.Random(seed), 4)


@pytest.mark.parametrize("shape", list(ARRAYS))
def test_gemm_engine_bit_exact(shape):
    cfg, m_block = ARRAYS[shape]
    engine = GemmEngine(cfg, m_block=m_block, param_rows=PARAM_ROWS)
    build = build_component(engine, f"gemm_engine_{shape}")
    seed = sum(map(ord, shape))
    run_cocotb(
        build,
        TB,
        params={
            "cfg": cfg,
            "m_block": engine.m_block,
            "param_rows": PARAM_ROWS,
            "seed": seed,
            "cases": _cases(seed, cfg),
        },
    )


SOAK_PARAM_ROWS = 128  # N ≤ 40 for W1 and W3 even with a single column

SOAK_ARRAYS = {
    "4x4": ARRAYS["4x4"],
    "4x8": ARRAYS["4x8"],
    "3x5": (AccelConfig(rows=3, cols=5), None),
    "1x2": (AccelConfig(rows=1, cols=2), 3),
    "5x1": (AccelConfig(rows=5, cols=1), None),
    "3x2": (AccelConfig(rows=3, cols=2, mem_bytes_per_cycle=4), None),  # L = 2 does not divide R
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", list(SOAK_ARRAYS))
def test_gemm_engine_soak(shape):
    """`make soak`: 40 more random shapes per array, odd array shapes included."""
    cfg, m_block = SOAK_ARRAYS[shape]
    engine = GemmEngine(cfg, m_block=m_block, param_rows=SOAK_PARAM_ROWS)
    build = build_component(engine, f"gemm_engine_{shape}")
    cases = _cases(7, cfg)[:8] + _random_cases(random.Random(2024), 40)
    run_cocotb(
        build,
        TB,
        testcase="random_gemms_bit_exact",
        params={
            "cfg": cfg,
            "m_block": engine.m_block,
            "param_rows": SOAK_PARAM_ROWS,
            "seed": 99,
            "cases": cases,
        },
    )


# A build with both compressed weight paths, on the default 8×8 array and 16-byte bus
# (L = 2: int4 beats fill 4 array rows, index beats 8, int8 beats half the lanes).
FORMAT_CFG = AccelConfig(rows=8, cols=8, sparse_2_4=True, int4_weights=True)
FORMAT_SEED = 19


# An int4 build without 2:4 on a small array (4×4, 8-byte bus: L = 2): int4 dense
# pairs on an L-row weight port, int8 commands spread to lane 2r.
INT4_CFG = AccelConfig(rows=4, cols=4, mem_bytes_per_cycle=8, int4_weights=True)


def _format_cases(seed: int, count: int) -> list[list]:
    """All four formats: directed corners (K tails, M = 1, SwiGLU), then random ones."""
    r, c = FORMAT_CFG.rows, FORMAT_CFG.cols
    directed = [
        [r + 2, 2 * r + 1, c + 1, "SWIGLU", False, 0.2, 0.6, "int8 dense"],
        [3, 2 * r + 4, c + 1, "SWIGLU", False, 0.2, 0.6, "int8 2:4"],
        [1, 4, 3, "REQUANT", False, 0.0, 1.0, "int8 2:4"],
        [2, 2 * r + 3, 2 * c + 3, "REQUANT_LUT", False, 0.3, 0.5, "int4 dense"],
        [1, 4 * r, c, "REQUANT", True, 0.0, 1.0, "int4 2:4"],
        [r + 1, 3 * r + 4, c - 1, "SWIGLU", False, 0.2, 0.7, "int4 2:4"],
    ]
    rng = random.Random(seed)
    names = ["int8 dense", "int8 2:4", "int4 dense", "int4 2:4"]
    randoms = []
    for case in _random_cases(rng, count):
        fmt = rng.choice(names)
        if "2:4" in fmt:
            case[1] = 4 * -(-case[1] // 4)
        randoms.append([*case, fmt])
    return directed + randoms


def _run_formats(
    seed: int,
    cases: list[list],
    testcase: str | None = None,
    cfg: AccelConfig = FORMAT_CFG,
    name: str = "gemm_engine_8x8_formats",
) -> None:
    engine = GemmEngine(cfg, m_block=16, param_rows=PARAM_ROWS)
    build = build_component(engine, name)
    print(f"format cases: seed {seed}")
    try:
        run_cocotb(
            build,
            TB,
            testcase=testcase,
            params={
                "cfg": cfg,
                "m_block": engine.m_block,
                "param_rows": PARAM_ROWS,
                "seed": seed,
                "cases": cases,
                "check_cycles": True,
            },
        )
    except SimulationError as exc:
        raise SimulationError(
            f"{exc}\nreplay: FORMAT_SEED={seed} .venv/bin/python -m pytest "
            "tests/rtl/test_gemm_engine.py -k formats"
        ) from None


def test_gemm_engine_formats_bit_exact():
    """int8/int4 × dense/2:4 on one build with both switches on; bad formats rejected."""
    seed = int(os.environ.get("FORMAT_SEED", FORMAT_SEED))
    _run_formats(seed, _format_cases(seed, 2))


def test_gemm_engine_int4_only_build_bit_exact():
    """int8 and int4 dense on a build with int4 but not 2:4 (cycles checked against the model)."""
    seed = int(os.environ.get("FORMAT_SEED", FORMAT_SEED))
    r, c = INT4_CFG.rows, INT4_CFG.cols
    rng = random.Random(seed)
    cases = [
        [r + 2, 2 * r + 1, c + 1, "SWIGLU", False, 0.2, 0.6, "int8 dense"],
        [1, 1, 1, "REQUANT", False, 0.0, 1.0, "int4 dense"],
        [3, 4 * r + 3, 2 * c + 1, "SWIGLU", True, 0.3, 0.5, "int4 dense"],
        *([*case, rng.choice(["int8 dense", "int4 dense"])] for case in _random_cases(rng, 2)),
    ]
    _run_formats(seed, cases, cfg=INT4_CFG, name="gemm_engine_4x4_int4")


@pytest.mark.slow
def test_gemm_engine_formats_soak():
    """`make soak`: 24 more random cases over the four formats."""
    seed = int(os.environ.get("FORMAT_SEED", FORMAT_SEED + 1))
    _run_formats(seed, _format_cases(seed, 24), "random_gemms_bit_exact")


def test_gemm_engine_refuses_compressed_paths_without_byte_weights():
    with pytest.raises(ConfigError, match="weight_bits = 8"):
        GemmEngine(AccelConfig(weight_bits=6, int4_weights=True))


def test_gemm_engine_verilog_lint_clean():
    engine = GemmEngine(AccelConfig(rows=4, cols=8), param_rows=PARAM_ROWS)
    assert lint_verilog(emit_verilog(engine, "gemm_engine"), "gemm_engine") == []


def test_gemm_engine_rejects_bad_generator_parameters():
    with pytest.raises(ConfigError, match="m_block"):
        GemmEngine(AccelConfig(), m_block=0)
    with pytest.raises(ConfigError, match="param_rows"):
        GemmEngine(AccelConfig(), param_rows=0)
    with pytest.raises(ConfigError, match="AccelConfig"):
        GemmEngine({"rows": 4})
    with pytest.raises(ConfigError, match="weight_buffers"):
        GemmEngine(AccelConfig(weight_buffers=1))
