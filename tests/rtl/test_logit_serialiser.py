# amaranth: UnusedElaboratable=no
"""rtl.logit_serialiser.LogitSerialiser on Amaranth's simulator: order, lanes and `last`."""

from __future__ import annotations

import numpy as np
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from rtl.logit_serialiser import LogitSerialiser
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP.replace(cols=4)


def test_logit_serialiser_streams_tokens_in_column_order():
    dut = LogitSerialiser(CFG)
    C, tiles = CFG.cols, dut.tiles
    tokens, columns = 3, CFG.max_experts + 1  # a gated shared column spills into a new tile
    rng = np.random.default_rng(1)
    logits = rng.integers(-1000, 1000, (CFG.max_tokens, tiles * C))
    words = [
        [int(v) & ((1 << dut.word.elem_shape.width) - 1) for v in logits[t, n * C : (n + 1) * C]]
        for t in range(CFG.max_tokens)
        for n in range(tiles)
    ]
    mem = Memory(shape=dut.word, depth=CFG.max_tokens * tiles, init=words)
    m = Module()
    m.submodules.dut = dut
    m.submodules.mem = mem
    wiring.connect(m, dut.rd, mem.read_port())
    got = []

    async def bench(ctx):
        ctx.set(dut.tokens, tokens)
        ctx.set(dut.columns, columns)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cycle in range(3 * tokens * columns + 10):
            ctx.set(dut.o.ready, cycle % 5 != 2)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                got.append((ctx.get(dut.o.payload.logit), ctx.get(dut.o.payload.last)))
            await ctx.tick()
        assert not ctx.get(dut.running)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want = [
        (int(logits[t, c]), int(t == tokens - 1 and c == columns - 1))
        for t in range(tokens)
        for c in range(columns)
    ]
    assert got == want
