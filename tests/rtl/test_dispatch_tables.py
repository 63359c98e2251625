# amaranth: UnusedElaboratable=no
"""rtl.dispatch_tables.DispatchTables on Amaranth's simulator: what lands in each table."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from rtl.activation_feeder import max_sorted_rows, sorted_row_layout, token_bits
from rtl.dispatch_tables import DispatchTables, inverse_layout
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP


def test_dispatch_tables_fill_counts_tiles_sorted_and_inverse():
    dut = DispatchTables(CFG)
    pairs_max = CFG.max_tokens * CFG.max_top_k
    s = dut.shapes
    tokens = [5, 9, 2, 7]  # slot → token
    m = Module()
    m.submodules.dut = dut
    mems = {
        "count": Memory(shape=s.count, depth=CFG.max_experts, init=[]),
        "tile": Memory(shape=s.count, depth=CFG.max_experts, init=[]),
        "sorted": Memory(shape=sorted_row_layout(CFG), depth=max_sorted_rows(CFG), init=[]),
        "inverse": Memory(shape=inverse_layout(CFG), depth=pairs_max, init=[]),
    }
    for name, mem in mems.items():
        m.submodules[name] = mem
        wiring.connect(m, getattr(dut, f"{name}_wr"), mem.write_port())
    slot_tok = Memory(shape=token_bits(CFG), depth=pairs_max, init=tokens)
    m.submodules.slot_tok = slot_tok
    wiring.connect(m, dut.slot_token_rd, slot_tok.read_port())
    reads = {name: mem.read_port(domain="comb") for name, mem in mems.items()}
    # expert 1 keeps slots 2, 0; expert 3 keeps slot 3; slot 1 was dropped; pads are slot 4
    rows = [(2, 1), (0, 1), (4, 1), (4, 1), (3, 3), (4, 3), (4, 3), (4, 3)]

    async def bench(ctx):
        ctx.set(dut.pairs, 4)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for slot in range(4):  # the recorder clears each slot as the gate emits it
            ctx.set(dut.clear_en, 1)
            ctx.set(dut.clear_slot, slot)
            await ctx.tick()
        ctx.set(dut.clear_en, 0)
        for e, count in enumerate([0, 2, 0, 1]):
            ctx.set(dut.counts.valid, 1)
            ctx.set(dut.counts.payload, {"count": count, "last": e == 3})
            await ctx.tick()
        ctx.set(dut.counts.valid, 0)
        for e in (1, 3, 3):  # m_tile = 4: expert 1 one tile, expert 3 two (test only)
            ctx.set(dut.tiles.valid, 1)
            ctx.set(dut.tiles.payload, {"expert": e, "last": 0})
            await ctx.tick()
        ctx.set(dut.tiles.valid, 0)
        for i, (slot, e) in enumerate(rows):
            ctx.set(dut.rows.valid, 1)
            ctx.set(dut.rows.payload, {"slot": slot, "expert": e, "last": i == len(rows) - 1})
            assert not ctx.get(dut.done)
            await ctx.tick()
        ctx.set(dut.rows.valid, 0)
        await ctx.tick()
        assert ctx.get(dut.done)

        def read(name, addr):
            ctx.set(reads[name].addr, addr)
            return ctx.get(reads[name].data)

        assert [read("count", e) for e in range(4)] == [0, 2, 0, 1]
        assert read("tile", 1) == 1 and read("tile", 3) == 2
        sorted_rows = [read("sorted", r) for r in range(len(rows))]
        assert [(e.token, e.pad) for e in sorted_rows] == [
            (tokens[slot], 0) if slot < 4 else (sorted_rows[r].token, 1)
            for r, (slot, _) in enumerate(rows)
        ]
        inverse = [read("inverse", slot) for slot in range(4)]
        assert [(e.row, e.valid) for e in inverse] == [(1, 1), (0, 0), (0, 1), (4, 1)]

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
