# amaranth: UnusedElaboratable=no
"""rtl.combine_feeder.CombineFeeder on Amaranth's simulator: term order, weights and `last`."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from rtl.combine_feeder import CombineFeeder
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP


def test_combine_feeder_sends_each_chunks_terms_with_their_weights():
    dut = CombineFeeder(CFG)
    C, row_words = CFG.cols, dut.row_words
    depth = (CFG.max_top_k + 1) * row_words
    words = [[(a * 3 + lane) & 0x7F for lane in range(C)] for a in range(depth)]
    mem = Memory(shape=dut.word, depth=depth, init=words)
    m = Module()
    m.submodules.dut = dut
    m.submodules.mem = mem
    wiring.connect(m, dut.rd, mem.read_port())
    k, chunks = 3, 2
    kept, weights, shared_weight = [1, 0, 1], [11, 22, 33], 44
    got = []

    async def bench(ctx):
        ctx.set(dut.k, k)
        ctx.set(dut.terms, k + 1)
        ctx.set(dut.chunks, chunks)
        ctx.set(dut.shared_weight, shared_weight)
        for j in range(k):
            ctx.set(dut.kept[j], kept[j])
            ctx.set(dut.weights[j], weights[j])
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cycle in range(3 * chunks * (k + 1) + 8):
            ctx.set(dut.o.ready, cycle % 4 != 1)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                p = dut.o.payload
                values = [ctx.get(p.values[lane]) & 0xFF for lane in range(C)]
                got.append((ctx.get(p.weight), values, ctx.get(p.last)))
            await ctx.tick()
        assert not ctx.get(dut.running)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = []
    for c in range(chunks):
        for j in range(k + 1):
            weight = shared_weight if j == k else weights[j] * kept[j]
            want.append((weight, words[j * row_words + c], int(j == k)))
    assert got == want
