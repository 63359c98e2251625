# amaranth: UnusedElaboratable=no
"""rtl.dma_channels on Amaranth's simulator: commands, steering and resizing each way."""

from __future__ import annotations

from amaranth.lib import enum
from amaranth.sim import Simulator

from rtl.dma_channels import ReadChannel, WriteChannel


class Unit(enum.Enum, shape=1):
    A = 0
    B = 1


ITEMS = {Unit.A: 2, Unit.B: 4}


def simulate(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


async def issue(ctx, dut, sel, addr, length, count) -> None:
    for port, value in (("sel", sel), ("addr", addr), ("length", length), ("count", count)):
        ctx.set(getattr(dut, port), value)
    ctx.set(dut.issue, 1)
    await ctx.tick()
    ctx.set(dut.issue, 0)
    assert ctx.get(dut.cmd.valid)
    assert (ctx.get(dut.cmd.payload.addr), ctx.get(dut.cmd.payload.length)) == (addr, length)
    ctx.set(dut.cmd.ready, 1)
    await ctx.tick()
    ctx.set(dut.cmd.ready, 0)
    assert not ctx.get(dut.cmd.valid)


def test_read_channel_resizes_beats_for_the_selected_unit():
    dut = ReadChannel(4, Unit, ITEMS, addr_bits=32)
    got = {Unit.A: [], Unit.B: []}

    async def run(ctx, beats):
        pending = list(beats)
        for _ in range(4 * len(beats) + 4):
            ctx.set(dut.data.valid, bool(pending))
            if pending:
                ctx.set(dut.data.payload, pending[0])
            for unit in Unit:
                port = getattr(dut, unit.name.lower())
                ctx.set(port.ready, 1)
                if ctx.get(port.valid):
                    got[unit].append(ctx.get(port.payload))
            if pending and ctx.get(dut.data.ready):
                pending.pop(0)
            await ctx.tick()

    async def bench(ctx):
        await issue(ctx, dut, Unit.B, 0x40, 8, 2)
        await run(ctx, [0x11223344, 0x55667788])
        await issue(ctx, dut, Unit.A, 0x80, 8, 3)
        await run(ctx, [0xAAAABBBB, 0xCCCCDDDD])

    simulate(dut, bench)
    assert got[Unit.B] == [0x11223344, 0x55667788]
    assert got[Unit.A] == [0xBBBB, 0xAAAA, 0xDDDD]


def test_write_channel_gathers_items_and_tracks_the_write():
    dut = WriteChannel(4, Unit, ITEMS, addr_bits=32)
    beats = []

    async def bench(ctx):
        assert ctx.get(dut.idle) == 0b11 and not ctx.get(dut.busy)
        await issue(ctx, dut, Unit.A, 0x100, 8, 2)
        assert ctx.get(dut.busy)
        assert ctx.get(dut.idle) == 0b10
        items = [0x1111, 0x2222, 0x3333, 0x4444]
        ctx.set(dut.data.ready, 1)
        for _ in range(12):
            ctx.set(dut.a.valid, bool(items))
            if items:
                ctx.set(dut.a.payload, items[0])
            ctx.set(dut.b.valid, 1)  # not started: its items are dropped, never sent
            ctx.set(dut.b.payload, 0xEEEEEEEE)
            if ctx.get(dut.data.valid):
                beats.append(ctx.get(dut.data.payload))
            if items and ctx.get(dut.a.ready):
                items.pop(0)
            await ctx.tick()
        assert ctx.get(dut.idle) == 0b11 and ctx.get(dut.busy)
        ctx.set(dut.done, 1)
        await ctx.tick()
        assert not ctx.get(dut.busy)

    simulate(dut, bench)
    assert beats == [0x22221111, 0x44443333]
