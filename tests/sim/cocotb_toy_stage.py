"""cocotb side of tests/sim/test_sim_build.py: sim.tb parts against ToyStage."""

import random

import cocotb
from toy_stage import IN_LAYOUT, OUT_LAYOUT, toy_model

from sim.tb import Scoreboard, StreamDriver, StreamSink, reset_dut, start_clock
from sim.tb.params import tb_params

P = tb_params()


@cocotb.test()
async def stream_roundtrip_with_backpressure(dut):
    """Random items through ToyStage with idle source cycles and a randomly-ready sink."""
    rng = random.Random(P.get("seed", 1))
    start_clock(dut.clk)
    await reset_dut(dut, dut.clk)
    # TOY_WRONG_MODEL makes the golden model wrong on purpose: the pytest side
    # checks that a failing scoreboard really fails the run.
    offset = 1 if P.get("wrong_model") == 1 else 0
    board = Scoreboard("toy")
    driver = StreamDriver.from_prefix(dut, "i", dut.clk, IN_LAYOUT, idle_prob=0.3, rng=rng)
    sink = StreamSink.from_prefix(
        dut, "o", dut.clk, OUT_LAYOUT, ready_prob=0.5, rng=rng, callback=board.observe
    )
    items = [
        {"a": rng.choice([-128, 127, rng.randint(-128, 127)]), "b": rng.randint(0, 15)}
        for _ in range(200)
    ]
    for item in items:
        board.expect(toy_model(item, offset))
    driver.send_many(items)
    await driver.wait_drained(timeout_cycles=5000)
    await sink.wait_for(len(items), timeout_cycles=100)
    board.check()
    assert driver.sent == len(items)
