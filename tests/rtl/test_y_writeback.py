# amaranth: UnusedElaboratable=no
"""rtl.y_writeback.YWriteBack on Amaranth's simulator: rows × words in order, under stalls."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from rtl.y_writeback import YWriteBack
from sim.tb.layer_cases import SMALL_TOP

M_BLOCK = 4


def test_y_writeback_streams_the_block_rows_in_order():
    dut = YWriteBack(SMALL_TOP, M_BLOCK)
    depth = M_BLOCK * dut.row_words
    words = [[(a * 7 + b) & 0xFF for b in range(dut.width)] for a in range(depth)]
    mem = Memory(shape=dut.word, depth=depth, init=words)
    m = Module()
    m.submodules.dut = dut
    m.submodules.mem = mem
    wiring.connect(m, dut.rd, mem.read_port())
    rows, row_words = 3, dut.row_words - 1
    got = []

    async def bench(ctx):
        ctx.set(dut.rows, rows)
        ctx.set(dut.words, row_words)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.rows, 0)
        for cycle in range(4 * rows * row_words + 8):
            ctx.set(dut.o.ready, cycle % 3 != 0)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                got.append(ctx.get(dut.o.payload).to_bytes(dut.width, "little"))
            await ctx.tick()
        assert not ctx.get(dut.running)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = [bytes(words[r * dut.row_words + w]) for r in range(rows) for w in range(row_words)]
    assert got == want
