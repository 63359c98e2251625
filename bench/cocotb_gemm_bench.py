"""cocotb side of bench/gemm_bench.py: dense GEMMs, no backpressure, counters recorded.

Environment: ENGINE_CFG, M_BLOCK, PARAM_ROWS, POINTS (JSON [[M, K, N, mode], …],
optionally a weight format fifth, e.g. "int4 2:4"; bench/gemm_format_bench.py),
BENCH_OUT (path of the JSON file to write). Every run is also checked bit for
bit against the golden model, so a number in the table is never from a wrong
result.
"""

import json

import cocotb
import numpy as np

from pymodel.gemm_engine import random_case
from pymodel.numerics import PostMode
from pymodel.weight_formats import WeightFormat
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
    for m, k, n, mode, *fmt_name in P["points"]:
        fmt = WeightFormat.parse(*fmt_name[0].split()) if fmt_name else WeightFormat.DENSE_INT8
        case = random_case(rng, cfg, m, k, n, PostMode[mode], fmt=fmt)
        counters = await harness.run(case, garbage=False)
        row = {"m": m, "k": k, "n": n, "mode": mode, "counters": counters}
        if fmt_name:
            row["format"] = fmt.name
        rows.append(row)
        dut._log.info("M=%d K=%d N=%d %s %s: %s", m, k, n, mode, fmt.name, counters)
    with open(P["bench_out"], "w") as handle:
        json.dump(rows, handle)
