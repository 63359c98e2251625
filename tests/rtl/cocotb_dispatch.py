"""cocotb side of the dispatcher tests: cases from a JSON file, checked against the golden model.

Environment (set by `test_dispatch.py`): `UNIT_CFG` (AccelConfig JSON),
`UNIT_CASES` (path of a JSON list of cases), `UNIT_MEASURE` (path where the
busy-cycle count of every case is written). All cases run back to back in one
simulation, so the dispatcher's state clearing between runs is exercised too.
"""

from __future__ import annotations

import json
import random

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from pymodel.dispatch import dispatch
from rtl.dispatch import DispatchShapes
from sim.tb import Scoreboard, StreamDriver, StreamSink, reset_dut, start_clock
from sim.tb.params import tb_params

P = tb_params()


@cocotb.test()
async def dispatch_cases(dut) -> None:
    cfg = P.config("cfg")
    cases = json.loads(P.path("cases").read_text())
    shapes = DispatchShapes(cfg)
    clk = dut.clk
    start_clock(clk)
    await reset_dut(dut, clk)
    rng = random.Random(0)
    boards = {name: Scoreboard(name) for name in ("rows", "tiles", "counts")}
    pairs = StreamDriver.from_prefix(dut, "pairs", clk, shapes.pair, rng=rng)
    sinks = {
        "rows": StreamSink.from_prefix(dut, "rows", clk, shapes.row, rng=rng),
        "tiles": StreamSink.from_prefix(dut, "tiles", clk, shapes.tile, rng=rng),
        "counts": StreamSink.from_prefix(dut, "counts", clk, shapes.count_beat, rng=rng),
    }
    for name, sink in sinks.items():
        sink.callback = boards[name].observe
    measured = []
    for case in cases:
        ids = np.asarray(case["ids"], dtype=np.int64)
        n_experts, capacity = case["n_experts"], case["capacity"]
        gold = dispatch(ids, n_experts, cfg.m_tile, capacity)
        dut.n_experts.value = n_experts
        dut.cap_en.value = int(capacity is not None)
        dut.capacity.value = capacity or 0
        pairs.idle_prob = case["idle_prob"]
        for sink in sinks.values():
            sink.ready_prob = case["ready_prob"]
        n_rows = gold.sorted_slots.size
        n_tiles = gold.tile_experts.size
        boards["rows"].expect_many(
            {
                "slot": int(slot),
                "expert": int(gold.tile_experts[i // cfg.m_tile]),
                "last": int(i == n_rows - 1),
            }
            for i, slot in enumerate(gold.sorted_slots)
        )
        boards["tiles"].expect_many(
            {"expert": int(e), "last": int(i == n_tiles - 1)}
            for i, e in enumerate(gold.tile_experts)
        )
        boards["counts"].expect_many(
            {"count": int(c), "last": int(e == n_experts - 1)} for e, c in enumerate(gold.counts)
        )
        flat = ids.reshape(-1)
        pairs.send_many(
            {"expert": int(e), "last": int(i == flat.size - 1)} for i, e in enumerate(flat)
        )
        budget = 50 * (flat.size + n_experts + n_rows) + 200
        await RisingEdge(clk)
        waited = 0
        while str(dut.busy.value) != "1":
            await RisingEdge(clk)
            waited += 1
            assert waited < budget, "dispatcher never became busy"
        busy = 0
        while True:
            await ReadOnly()
            if str(dut.busy.value) != "1":
                break
            busy += 1
            assert busy < budget, f"dispatcher still busy after {busy} cycles"
            await RisingEdge(clk)
        for name, board in boards.items():
            assert not board.expected, f"{case['name']}: {name} beats missing after busy fell"
        assert int(dut.dropped.value) == gold.dropped, case["name"]
        assert int(dut.n_rows.value) == n_rows, case["name"]
        assert int(dut.n_pairs.value) == flat.size, case["name"]
        assert str(dut.bad_id.value) == "0", case["name"]
        measured.append({"name": case["name"], "busy_cycles": busy})
        await RisingEdge(clk)
    for board in boards.values():
        board.check()
    P.path("measure").write_text(json.dumps(measured))
