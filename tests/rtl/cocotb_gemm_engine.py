"""cocotb side of tests/rtl/test_gemm_engine.py: random GEMMs, bit-exact, with backpressure.

Parameters come from the environment (set by the pytest side): ENGINE_CFG
(AccelConfig JSON), M_BLOCK, PARAM_ROWS, SEED and CASES (JSON list of
[M, K, N, mode name, extreme, idle_prob, ready_prob] and optionally the
weight format, "int8 dense" when left out); extreme is false, true (only
the extremes of each width) or "min" (every X and W entry −128, W3 127: the
largest-magnitude accumulators of both signs; int8 dense only). With
CHECK_CYCLES, a case without backpressure that fits one M-block must take
exactly `pymodel.cycles.gemm_cycles` busy cycles (the cycle model follows
the engine, formats included).
"""

import dataclasses

import cocotb
import numpy as np

from pymodel.cycles import gemm_cycles
from pymodel.gemm_engine import command, random_case
from pymodel.numerics import PostMode
from pymodel.weight_formats import WeightFormat
from rtl.tile_sequencer import CommandError
from sim.tb.gemm_driver import GemmEngineHarness
from sim.tb.params import tb_params

P = tb_params()


def _setup(dut):
    cfg = P.config("cfg")
    seed = P.get("seed", 0)
    harness = GemmEngineHarness(dut, cfg, P["m_block"], P["param_rows"], seed)
    return cfg, harness, np.random.default_rng(seed)


@cocotb.test()
async def random_gemms_bit_exact(dut):
    """Each listed case: golden outputs, counters identities, under the listed backpressure."""
    cfg, harness, rng = _setup(dut)
    await harness.start()
    for m, k, n, mode, extreme, idle, ready, *fmt_name in P["cases"]:
        harness.set_backpressure(idle, ready)
        param_a = int(rng.integers(0, 2))
        fmt = WeightFormat.parse(*fmt_name[0].split()) if fmt_name else WeightFormat.DENSE_INT8
        case = random_case(
            rng, cfg, m, k, n, PostMode[mode], extreme=bool(extreme), param_a=param_a, fmt=fmt
        )
        if extreme == "min":
            case = dataclasses.replace(
                case,
                x=np.full((m, k), -128),
                w_a=np.full((k, n), -128),
                w_b=None if case.w_b is None else np.full((k, n), 127),
            )
        counters = await harness.run(case)
        dut._log.info("M=%d K=%d N=%d %s %s: %s", m, k, n, mode, fmt.name, counters)
        if P.get("check_cycles", False) and idle == 0 and ready == 1 and m <= P["m_block"]:
            model = gemm_cycles(cfg, m, k, n, case.passes, fmt)
            assert counters["busy"] == model, (counters, model)
        if k <= cfg.rows and ready <= 0.2:
            # Every row is final and the sink takes ~1 in 7: injection must wait for credits.
            assert counters["stall_out"] > 0, counters


@cocotb.test()
async def bad_commands_rejected_then_recovery(dut):
    """Every error cause is reported without output; a good command then still works."""
    cfg, harness, rng = _setup(dut)
    param_rows = P["param_rows"]
    await harness.start()
    good = random_case(rng, cfg, 3, cfg.rows + 1, cfg.cols + 1, PostMode.SWIGLU)
    base = command(good, cfg)
    bad = [
        ({**base, "m": 0}, CommandError.ZERO_DIM),
        ({**base, "k": 0}, CommandError.ZERO_DIM),
        ({**base, "m": cfg.max_tokens + 1}, CommandError.M_TOO_LARGE),
        ({**base, "k": max(cfg.max_d_model, cfg.max_d_ff) + 1}, CommandError.K_TOO_LARGE),
        ({**base, "mode": 7}, CommandError.BAD_MODE),
        ({**base, "param_a": param_rows - 1}, CommandError.PARAM_RANGE),
        ({**base, "param_b": param_rows - 1}, CommandError.PARAM_RANGE),
    ]
    if cfg.sparse_2_4:
        # 2:4 groups of 4 along K: a 2:4 command needs K a multiple of 4.
        bad.append(({**base, "fmt": {"sparse": 1, "int4": 0}, "k": 6}, CommandError.BAD_MODE))
    for cmd, cause in bad:
        await harness.expect_rejected(cmd, cause)
    await harness.run(good)
