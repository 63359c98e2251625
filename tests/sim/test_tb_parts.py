# amaranth: UnusedElaboratable=no
"""sim.tb payload packing and scoreboard; sim.amaranth_sim helpers on ToyStage."""

import numpy as np
import pytest
from amaranth import signed
from amaranth.lib import data
from toy_stage import IN_LAYOUT, ToyStage, toy_model

from sim.amaranth_sim import run_simulation, stream_get, stream_put
from sim.tb.payload import pack, unpack
from sim.tb.scoreboard import Scoreboard

ROW = data.StructLayout({"data": data.ArrayLayout(signed(8), 3), "last": 1})


def test_pack_unpack_roundtrip_struct_and_array():
    item = {"data": [-128, 127, -1], "last": 1}
    bits = pack(ROW, item)
    assert bits == (0x80 | 0x7F << 8 | 0xFF << 16 | 1 << 24)
    assert unpack(ROW, bits) == item
    assert unpack(signed(8), 0xFF) == -1
    assert pack(signed(8), -1) == 0xFF


def test_pack_rejects_bad_values():
    with pytest.raises(ValueError, match="does not fit"):
        pack(signed(8), 200)
    with pytest.raises(ValueError, match="needs 3 elements"):
        pack(ROW, {"data": [1, 2], "last": 0})


def test_scoreboard_reports_mismatch_missing_and_extra():
    board = Scoreboard("t")
    board.expect_many([np.array([1, 2]), np.array([3, 4]), 5])
    board.observe([1, 2])
    board.observe(np.array([3, 5]))
    with pytest.raises(AssertionError, match=r"(?s)1 mismatch.*item 1.*1 expected item"):
        board.check()
    extra = Scoreboard("x")
    extra.observe(1)
    with pytest.raises(AssertionError, match="unexpected extra"):
        extra.check()
    with pytest.raises(AssertionError, match="nothing was checked"):
        Scoreboard("empty").check()


def test_amaranth_stream_helpers_on_toy_stage():
    dut = ToyStage(offset=3)
    items = [{"a": -128, "b": 15}, {"a": 127, "b": 0}, {"a": 5, "b": 7}]
    got = []

    async def source(ctx):
        for item in items:
            await stream_put(ctx, dut.i, IN_LAYOUT.const(item))

    async def sink(ctx):
        for _ in items:
            payload = await stream_get(ctx, dut.o)
            got.append({"total": payload.total, "b": payload.b})

    run_simulation(dut, [source, sink])
    assert got == [toy_model(item, 3) for item in items]


def test_run_simulation_needs_a_testbench():
    with pytest.raises(ValueError, match="at least one"):
        run_simulation(ToyStage(), [])
