# amaranth: UnusedElaboratable=no
"""rtl.combine_phase.CombinePhase on Amaranth's simulator: reads, terms and `done` per token."""

from __future__ import annotations

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from rtl.combine_phase import CombinePhase
from rtl.dispatch_tables import inverse_layout
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP
TOKENS, K, ROW_BYTES = 3, 2, 16
SCRATCH, SHARED_SCRATCH = 0x1000, 0x8000
INVERSE = {0: 5, 2: 1, 3: 7}  # kept slot → its sorted row; slots 1, 4, 5 were dropped


def test_combine_phase_fetches_and_feeds_every_token():
    dut = CombinePhase(CFG)
    pairs = CFG.max_tokens * CFG.max_top_k
    m = Module()
    m.submodules.dut = dut
    tables = {
        "inverse_rd": Memory(
            shape=inverse_layout(CFG),
            depth=pairs,
            init=[{"row": INVERSE.get(s, 0), "valid": s in INVERSE} for s in range(pairs)],
        ),
        "weight_rd": Memory(shape=CFG.gate_weight_bits, depth=pairs, init=range(10, 10 + pairs)),
        "shared_weight_rd": Memory(
            shape=CFG.gate_weight_bits, depth=CFG.max_tokens, init=range(100, 100 + CFG.max_tokens)
        ),
        "term_rd": Memory(
            shape=dut.term_rd.data.shape(), depth=(CFG.max_top_k + 1) * dut.term_words, init=[]
        ),
    }
    for port, mem in tables.items():
        m.submodules[port] = mem
        wiring.connect(m, getattr(dut, port), mem.read_port())
    reads, terms, done_at = [], [], []

    async def bench(ctx):
        for port, value in (
            ("tokens", TOKENS),
            ("k", K),
            ("shared", 1),
            ("row_bytes", ROW_BYTES),
            ("scratch_addr", SCRATCH),
            ("shared_scratch_addr", SHARED_SCRATCH),
        ):
            ctx.set(getattr(dut, port), value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        pending = None
        for cycle in range(400):
            ctx.set(dut.terms.ready, cycle % 3 != 0)
            if ctx.get(dut.read):
                assert ctx.get(dut.term_start)
                reads.append((ctx.get(dut.read_addr), ctx.get(dut.term_row)))
                pending = cycle + 4
            ctx.set(dut.rd_done, pending == cycle)
            if ctx.get(dut.terms.valid) and ctx.get(dut.terms.ready):
                terms.append((ctx.get(dut.terms.payload.weight), ctx.get(dut.terms.payload.last)))
            if ctx.get(dut.done):
                done_at.append(cycle)
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    want_reads, want_terms = [], []
    for t in range(TOKENS):
        slots = [t * K + j for j in range(K)]
        want_reads += [
            (SCRATCH + INVERSE[s] * ROW_BYTES, j) for j, s in enumerate(slots) if s in INVERSE
        ]
        want_reads.append((SHARED_SCRATCH + t * ROW_BYTES, K))
        weights = [10 + s if s in INVERSE else 0 for s in slots] + [100 + t]
        for _ in range(ROW_BYTES // CFG.cols):
            want_terms += [(w, int(j == K)) for j, w in enumerate(weights)]
    assert reads == want_reads
    assert terms == want_terms
    assert len(done_at) == 1
