# amaranth: UnusedElaboratable=no
"""rtl.streams on Amaranth's simulator: command register, demux, mux, memory reader."""

from __future__ import annotations

import enum

import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from pymodel.config import ConfigError
from rtl.streams import CommandRegister, MemoryReader, StreamDemux, StreamMux, delayed


class Sel(enum.Enum):
    A = 0
    B = 1
    C = 2


def simulate(dut, bench, *, clocked: bool = True) -> None:
    sim = Simulator(dut)
    if clocked:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_command_register_holds_until_taken_and_load_wins():
    dut = CommandRegister(16)

    async def bench(ctx):
        assert not ctx.get(dut.o.valid)
        ctx.set(dut.data, 0x1234)
        ctx.set(dut.load, 1)
        await ctx.tick()
        ctx.set(dut.load, 0)
        ctx.set(dut.data, 0)
        for _ in range(3):
            assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0x1234
            await ctx.tick()
        ctx.set(dut.o.ready, 1)
        await ctx.tick()
        assert not ctx.get(dut.o.valid)
        # taken and reloaded in the same cycle: the new command stays
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.load, 1)
        ctx.set(dut.data, 7)
        await ctx.tick()
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.data, 9)
        await ctx.tick()
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 9

    simulate(dut, bench)


def test_stream_demux_steers_beats_and_ready():
    dut = StreamDemux(8, Sel)

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, 0x5A)
        ctx.set(dut.b.ready, 1)
        for sel, want in ((Sel.A, (1, 0, 0)), (Sel.B, (0, 1, 0)), (Sel.C, (0, 0, 1))):
            ctx.set(dut.sel, sel)
            got = tuple(ctx.get(getattr(dut, n).valid) for n in "abc")
            assert got == want
            assert ctx.get(dut.i.ready) == (sel is Sel.B)
            assert ctx.get(getattr(dut, sel.name.lower()).payload) == 0x5A

    simulate(dut, bench, clocked=False)


def test_stream_mux_forwards_the_selected_input():
    dut = StreamMux(8, Sel)

    async def bench(ctx):
        for i, name in enumerate("abc"):
            ctx.set(getattr(dut, name).valid, name != "b")
            ctx.set(getattr(dut, name).payload, 10 + i)
        ctx.set(dut.o.ready, 1)
        for sel in Sel:
            ctx.set(dut.sel, sel)
            assert ctx.get(dut.o.valid) == (sel is not Sel.B)
            assert ctx.get(dut.o.payload) == 10 + sel.value
            readies = [ctx.get(getattr(dut, n).ready) for n in "abc"]
            assert readies == [n == sel.name.lower() for n in "abc"]

    simulate(dut, bench, clocked=False)


def test_stream_demux_and_mux_need_an_enum():
    with pytest.raises(ConfigError, match="enum"):
        StreamDemux(8, int)
    with pytest.raises(ConfigError, match="enum"):
        StreamMux(8, Sel.__members__)


def test_memory_reader_scans_outer_by_inner_under_backpressure():
    depth, inner_max = 32, 8
    mem = Memory(shape=16, depth=depth, init=[1000 + a for a in range(depth)])
    reader = MemoryReader(5, 16, outer=4, inner=inner_max, side=4)
    top = Module()
    top.submodules.mem = mem
    top.submodules.reader = reader
    wiring.connect(top, reader.rd, mem.read_port())
    top.d.comb += [
        reader.addr.eq(reader.outer * inner_max + reader.inner),
        reader.side_in.eq(reader.last_inner | (reader.last_outer << 1)),
    ]
    got: list[tuple[int, int]] = []

    async def bench(ctx):
        ctx.set(reader.outer_count, 3)
        ctx.set(reader.inner_count, 5)
        ctx.set(reader.start, 1)
        await ctx.tick()
        ctx.set(reader.start, 0)
        ctx.set(reader.outer_count, 0)
        for cycle in range(60):
            ctx.set(reader.o.ready, cycle % 3 != 2)
            if ctx.get(reader.o.valid) and ctx.get(reader.o.ready):
                got.append((ctx.get(reader.o.payload.data), ctx.get(reader.o.payload.side)))
            await ctx.tick()
        assert not ctx.get(reader.running) and not ctx.get(reader.o.valid)

    simulate(top, bench)
    want = [
        (1000 + o * inner_max + i, int(i == 4) | (int(o == 2) << 1))
        for o in range(3)
        for i in range(5)
    ]
    assert got == want


def test_delayed_lags_by_the_given_cycles():
    m = Module()
    value = Signal(8)
    late = delayed(m, value, 3)
    seen = []

    async def bench(ctx):
        for cycle in range(8):
            ctx.set(value, cycle + 1)
            seen.append(ctx.get(late))
            await ctx.tick()

    simulate(m, bench)
    assert seen == [0, 0, 0, 1, 2, 3, 4, 5]
    with pytest.raises(ConfigError, match="cycles"):
        delayed(Module(), value, 0)
