# amaranth: UnusedElaboratable=no
"""rtl.axi_arbiter on Amaranth's simulator: a wire for one master, round robin for two,
W in AW order, R and B routed by id, the grant and wait counters."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from pymodel.config import AccelConfig, ConfigError
from rtl.axi_arbiter import AXI4Arbiter

CFG = AccelConfig(copy_engine=True)


def simulate(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def request(ctx, port, ch: str, addr: int, ident: int) -> None:
    ctx.set(getattr(port, f"{ch}valid"), 1)
    ctx.set(getattr(port, f"{ch}addr"), addr)
    ctx.set(getattr(port, f"{ch}id"), ident)


def test_one_master_passes_through_in_the_same_cycle():
    dut = AXI4Arbiter(CFG)

    async def bench(ctx):
        ctx.set(dut.bus.arready, 1)
        request(ctx, dut.m0, "ar", 0x1000, 0)
        assert ctx.get(dut.bus.arvalid) and ctx.get(dut.bus.araddr) == 0x1000
        assert ctx.get(dut.m0.arready) and not ctx.get(dut.m1.arready)
        await ctx.tick()
        ctx.set(dut.m0.arvalid, 0)
        request(ctx, dut.m1, "ar", 0x2000, 1)
        assert ctx.get(dut.bus.araddr) == 0x2000 and ctx.get(dut.bus.arid) == 1
        assert ctx.get(dut.m1.arready)

    simulate(dut, bench)


@pytest.mark.parametrize("ch", ["ar", "aw"])
def test_two_requesting_masters_alternate_per_burst(ch):
    dut = AXI4Arbiter(CFG)

    async def bench(ctx):
        request(ctx, dut.m0, ch, 0x1000, 0)
        request(ctx, dut.m1, ch, 0x2000, 1)
        ctx.set(getattr(dut.bus, f"{ch}ready"), 1)
        granted = []
        for _ in range(6):
            granted.append(ctx.get(getattr(dut.bus, f"{ch}id")))
            await ctx.tick()
        assert granted == [0, 1, 0, 1, 0, 1]
        assert ctx.get(dut.bursts[0]) == ctx.get(dut.bursts[1]) == 3
        assert ctx.get(dut.wait_cycles[0]) == ctx.get(dut.wait_cycles[1]) == 3

    simulate(dut, bench)


def test_a_shown_request_is_held_until_ready():
    dut = AXI4Arbiter(CFG)

    async def bench(ctx):
        request(ctx, dut.m0, "ar", 0x1000, 0)
        await ctx.tick()  # not ready: m0's request stays on the bus
        request(ctx, dut.m1, "ar", 0x2000, 1)
        for _ in range(3):
            assert ctx.get(dut.bus.arid) == 0 and ctx.get(dut.bus.arvalid)
            await ctx.tick()
        ctx.set(dut.bus.arready, 1)
        assert ctx.get(dut.m0.arready)
        await ctx.tick()
        ctx.set(dut.m0.arvalid, 0)
        assert ctx.get(dut.bus.arid) == 1

    simulate(dut, bench)


def test_w_follows_aw_order_and_responses_go_by_id():
    dut = AXI4Arbiter(CFG)

    async def bench(ctx):
        ctx.set(dut.bus.awready, 1)
        request(ctx, dut.m1, "aw", 0x2000, 1)
        await ctx.tick()
        ctx.set(dut.m1.awvalid, 0)
        request(ctx, dut.m0, "aw", 0x1000, 0)
        await ctx.tick()
        ctx.set(dut.m0.awvalid, 0)
        # Both offer W: m1's burst (accepted first) passes, to its last beat; then m0's.
        ctx.set(dut.bus.wready, 1)
        for port, value in ((dut.m0, 0xA), (dut.m1, 0xB)):
            ctx.set(port.wvalid, 1)
            ctx.set(port.wdata, value)
        ctx.set(dut.m1.wlast, 0)
        assert ctx.get(dut.bus.wdata) == 0xB and not ctx.get(dut.m0.wready)
        await ctx.tick()
        ctx.set(dut.m1.wlast, 1)
        assert ctx.get(dut.bus.wdata) == 0xB
        await ctx.tick()
        ctx.set(dut.m1.wvalid, 0)
        ctx.set(dut.m0.wlast, 1)
        assert ctx.get(dut.bus.wdata) == 0xA and ctx.get(dut.m0.wready)
        # R and B by id.
        ctx.set(dut.bus.rvalid, 1)
        ctx.set(dut.bus.rid, 1)
        ctx.set(dut.m1.rready, 1)
        assert ctx.get(dut.m1.rvalid) and not ctx.get(dut.m0.rvalid) and ctx.get(dut.bus.rready)
        ctx.set(dut.bus.bvalid, 1)
        ctx.set(dut.bus.bid, 0)
        ctx.set(dut.m0.bready, 1)
        assert ctx.get(dut.m0.bvalid) and not ctx.get(dut.m1.bvalid)

    simulate(dut, bench)


def test_bad_ids_are_refused():
    with pytest.raises(ConfigError, match="two different"):
        AXI4Arbiter(CFG, ids=(1, 1))
