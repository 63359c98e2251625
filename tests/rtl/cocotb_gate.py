"""cocotb side of the gate-unit tests: drive prepared logit streams, compare pairs and weights.

`test_gate.py` computes every case with the golden `pymodel.gate.gate` and
writes a JSON file (`UNIT_CASES`): the run's configuration inputs, the
correction bias to load, the logit beats, the expected `pairs` and `shared`
beats and the backpressure to apply. Cases run back to back in one
simulation; the cycles `busy` is high in each are written to `UNIT_MEASURE`.
"""

from __future__ import annotations

import json
import random

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge

from rtl.gate import GateShapes
from sim.tb import Scoreboard, StreamDriver, StreamSink, reset_dut, start_clock
from sim.tb.params import tb_params

P = tb_params()

CONFIG_PORTS = (
    "n_experts",
    "top_k",
    "sigmoid",
    "renormalize",
    "group_size",
    "topk_group",
    "bias_en",
    "scale",
    "shared_mode",
)


def _high(signal) -> bool:
    return str(signal.value) == "1"


@cocotb.test()
async def gate_cases(dut) -> None:
    cfg = P.config("cfg")
    cases = json.loads(P.path("cases").read_text())
    shapes = GateShapes(cfg)
    clk = dut.clk
    start_clock(clk)
    dut.bias_we.value = 0
    await reset_dut(dut, clk)
    rng = random.Random(2)
    boards = {"pairs": Scoreboard("pairs"), "shared": Scoreboard("shared")}
    logits = StreamDriver.from_prefix(dut, "logits", clk, shapes.logit_beat, rng=rng)
    sinks = {
        "pairs": StreamSink.from_prefix(dut, "pairs", clk, shapes.pair, rng=rng),
        "shared": StreamSink.from_prefix(dut, "shared", clk, shapes.shared_beat, rng=rng),
    }
    for name, sink in sinks.items():
        sink.callback = boards[name].observe
    measured = []
    for case in cases:
        for port in CONFIG_PORTS:
            getattr(dut, port).value = case["config"][port]
        for addr, value in enumerate(case["bias"]):
            await RisingEdge(clk)
            dut.bias_we.value = 1
            dut.bias_addr.value = addr
            dut.bias_data.value = value
        await RisingEdge(clk)
        dut.bias_we.value = 0
        logits.idle_prob = case["idle_prob"]
        for sink in sinks.values():
            sink.ready_prob = case["ready_prob"]
        boards["pairs"].expect_many(case["pairs"])
        boards["shared"].expect_many(case["shared"])
        logits.send_many(case["beats"])
        budget = 40 * len(case["beats"]) * (cfg.gate_frac_bits + 8) + 500
        waited = 0
        while not _high(dut.busy):
            await RisingEdge(clk)
            waited += 1
            assert waited < budget, f"{case['name']}: the gate never became busy"
        busy = 0
        while True:
            await ReadOnly()
            if not _high(dut.busy):
                break
            busy += 1
            assert busy < budget, f"{case['name']}: still busy after {busy} cycles"
            await RisingEdge(clk)
        for name, board in boards.items():
            assert not board.expected, f"{case['name']}: {name} beats missing after busy fell"
        measured.append({"name": case["name"], "busy_cycles": busy})
        await RisingEdge(clk)
    for board in boards.values():
        if board.observed:
            board.check()
    assert boards["pairs"].observed, "no pairs were checked"
    P.path("measure").write_text(json.dumps(measured))
