# amaranth: UnusedElaboratable=no
"""rtl.output_sink.OutputSink on Amaranth's simulator: addresses and lane enables per buffer."""

from __future__ import annotations

import pytest
from amaranth.sim import Simulator

from rtl.output_sink import OutputSink, SinkKind
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP.replace(mem_bytes_per_cycle=32)
M_BLOCK, PARAM_ROWS = 8, 16


@pytest.mark.parametrize("kind", list(SinkKind))
def test_output_sink_addresses_each_buffer(kind):
    dut = OutputSink(CFG, M_BLOCK, PARAM_ROWS)
    C = CFG.cols
    row0, rows, n_tiles = 2, 3, 4
    writes: dict[str, list[tuple[int, int]]] = {"logit": [], "h": [], "y": []}

    async def bench(ctx):
        ctx.set(dut.cmd, {"kind": kind, "row0": row0, "m": rows})
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        accepted, cycle = 0, 0
        while accepted < rows * n_tiles:
            valid = cycle % 3 != 1
            ctx.set(dut.i.valid, valid)
            for name in writes:
                port = getattr(dut, f"{name}_wr")
                if en := ctx.get(port.en):
                    writes[name].append((ctx.get(port.addr), en))
            accepted += valid
            cycle += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    order = [(n, i) for n in range(n_tiles) for i in range(rows)]
    want = {"logit": [], "h": [], "y": []}
    if kind is SinkKind.LOGIT:
        want["logit"] = [((row0 + i) * dut.logit_tiles + n, 1) for n, i in order]
    elif kind is SinkKind.HBUF:
        per = dut.wh // C
        want["h"] = [(i * dut.h_row + n // per, 1 << (n % per)) for n, i in order]
    else:
        per = dut.wy // C
        want["y"] = [(i * dut.y_row + n // per, 1 << (n % per)) for n, i in order]
    assert writes == want
