# amaranth: UnusedElaboratable=no
"""rtl.loaders on Amaranth's simulator: parameter, LUT, word and row loaders."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from contract import layout
from rtl.loaders import LutLoader, ParamLoader, RowLoader, WordDest, WordLoader
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP


def simulate(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


def test_param_loader_walks_groups_then_rows():
    dut = ParamLoader(CFG, param_rows=4)
    pw = CFG.param_words_per_beat
    groups = CFG.cols // pw
    seen = []

    async def bench(ctx):
        for item in range(2 * groups + 1):
            ctx.set(dut.clear, item == groups + 1)
            words = [(item * pw + j) | (5 << layout.PARAM_SHIFT_LSB) for j in range(pw)]
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, sum(w << (32 * j) for j, w in enumerate(words)))
            p = dut.o.payload
            assert ctx.get(dut.o.valid)
            seen.append((ctx.get(p.row), ctx.get(p.group)))
            assert [ctx.get(p.words[j].mult) for j in range(pw)] == [
                (item * pw + j) & ((1 << CFG.mult_bits) - 1) for j in range(pw)
            ]
            assert all(ctx.get(p.words[j].shift) == 5 for j in range(pw))
            await ctx.tick()

    simulate(dut, bench)
    first = [(r, g) for r in range(2) for g in range(groups)][: groups + 2]
    # the item in the clear cycle is still written at its index; counting restarts after it
    assert seen == first + [(0, g) for g in range(2 * groups + 1 - len(first))]


def test_lut_loader_counts_rows_and_restarts_on_clear():
    dut = LutLoader(CFG)
    rows = []

    async def bench(ctx):
        for item in range(6):
            ctx.set(dut.clear, item == 3)
            ctx.set(dut.i.valid, item != 1)
            ctx.set(dut.i.payload, item)
            if ctx.get(dut.o.valid):
                rows.append((ctx.get(dut.o.payload.row), item))
            await ctx.tick()

    simulate(dut, bench)
    assert rows == [(0, 0), (1, 2), (2, 3), (0, 4), (1, 5)]


def test_word_loader_writes_bias_then_captures_descriptor_words():
    dut = WordLoader(CFG)
    bias = []

    async def bench(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.dest, WordDest.BIAS)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.i.valid, 1)
        for value in (11, 12, 13):
            ctx.set(dut.i.payload, value)
            assert ctx.get(dut.bias_we)
            bias.append((ctx.get(dut.bias_addr), ctx.get(dut.bias_data)))
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.start, 1)
        ctx.set(dut.dest, WordDest.DESC)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.i.valid, 1)
        for n in range(len(layout.DESC_FIELDS)):
            ctx.set(dut.i.payload, 100 + n)
            assert not ctx.get(dut.bias_we)
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        got = [ctx.get(dut.desc[name]) for name in layout.DESC_FIELDS]
        assert got == [100 + n for n in range(len(layout.DESC_FIELDS))]

    simulate(dut, bench)
    assert bias == [(0, 11), (1, 12), (2, 13)]


def test_row_loader_fills_rows_from_the_first_row():
    row_words, rows = 4, 5
    shape = data.ArrayLayout(8, 2)
    mem = Memory(shape=shape, depth=rows * row_words, init=[])
    dut = RowLoader(5, shape, rows, row_words)
    top = Module()
    top.submodules.mem = mem
    top.submodules.dut = dut
    wiring.connect(top, dut.wr, mem.write_port())
    read = mem.read_port(domain="comb")

    async def bench(ctx):
        ctx.set(dut.first_row, 1)
        ctx.set(dut.words, 3)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for item in range(7):
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, item + 1)
            await ctx.tick()
            ctx.set(dut.i.valid, 0)
            await ctx.tick()
        got = {}
        for addr in range(rows * row_words):
            ctx.set(read.addr, addr)
            value = ctx.get(read.data.as_value())
            if value:
                got[addr] = value
        assert got == {4 + (k // 3) * row_words + k % 3: k + 1 for k in range(7)}

    simulate(top, bench)
