"""cocotb side of bench/gemm_bench.py: dense GEMMs, no backpressure, counters recorded.

Environment: ENGINE_CFG, M_BLOCK, PARAM_ROWS, POINTS (JSON [[M, K, N, mode], …]),
BENCH_OUT (path of the JSON file to write). Every run is also checked bit for
bit against the golden model, so a number in the table is never from a wrong
result.
"""

import json

import cocotb
import numpy as np

from pymodel.gemm_engine import random_case
from pymodel.numerics import PostMode
from sim.tb.gemm_driver import GemmEngineHarness
from sim.tb.params import tb_params

P = tb_params()


@cocotb.test()
async def dense_gemm_utilisation(dut):
    cfg = P.config("cfg")
    harness = GemmEngineHarness(dut, cfg, P["m_block"], P["param_rows"])
    await harness.start()
    harness.set_backpressure(0.0, 1.0)
    rng = np.random.default_rng(0)
    rows = []
    for m, k, n, mode in P["points"]:
        case = random_case(rng, cfg, m, k, n, PostMode[mode])
        counters = await harness.run(case, garbage=False)
        rows.append({"m": m, "k": k, "n": n, "mode": mode, "counters": counters})
        dut._log.info("M=%d K=%d N=%d %s: %s", m, k, n, mode, counters)
    with open(P["bench_out"], "w") as handle:
        json.dump(rows, handle)
