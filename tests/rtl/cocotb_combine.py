"""cocotb side of the combiner tests: drive prepared term streams, compare the outputs.

`test_combine.py` computes every case with the golden model and writes a
JSON file (`UNIT_CASES`): the term beats, `out_mult`/`out_shift`, the expected
output beats and the backpressure to apply. Cases run back to back; the cycle
count from a case's first accepted term to its last accepted output is
written to `UNIT_MEASURE`.
"""

from __future__ import annotations

import json
import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from rtl.combine import CombineShapes
from sim.tb import Scoreboard, StreamDriver, StreamSink, reset_dut, start_clock
from sim.tb.params import tb_params

P = tb_params()


def _high(signal) -> bool:
    return str(signal.value) == "1"


@cocotb.test()
async def combine_cases(dut) -> None:
    cfg = P.config("cfg")
    cases = json.loads(P.path("cases").read_text())
    shapes = CombineShapes(cfg, P["lanes"])
    clk = dut.clk
    start_clock(clk)
    await reset_dut(dut, clk)
    rng = random.Random(1)
    board = Scoreboard("out")
    terms = StreamDriver.from_prefix(dut, "terms", clk, shapes.term, rng=rng)
    out = StreamSink.from_prefix(dut, "out", clk, shapes.out, rng=rng, callback=board.observe)
    measured = []
    for case in cases:
        dut.out_mult.value = case["out_mult"]
        dut.out_shift.value = case["out_shift"]
        terms.idle_prob = case["idle_prob"]
        out.ready_prob = case["ready_prob"]
        board.expect_many(case["outputs"])
        terms.send_many(case["terms"])
        await ReadOnly()
        while not (_high(dut.terms__valid) and _high(dut.terms__ready)):
            await RisingEdge(clk)
            await ReadOnly()
        cycles, seen = 0, 0
        while True:
            cycles += 1
            seen += _high(dut.out__valid) and _high(dut.out__ready)
            if seen == len(case["outputs"]):
                break
            assert cycles < 40 * len(case["terms"]) + 100, f"{case['name']}: outputs missing"
            await RisingEdge(clk)
            await ReadOnly()
        measured.append({"name": case["name"], "cycles": cycles})
        await RisingEdge(clk)
    board.check()
    P.path("measure").write_text(json.dumps(measured))
