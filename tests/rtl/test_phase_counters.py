# amaranth: UnusedElaboratable=no
"""rtl.phase_counters.PhaseCounters on Amaranth's simulator."""

from __future__ import annotations

from amaranth.sim import Simulator

from rtl.phase_counters import PHASES, Phase, PhaseCounters


def test_phase_counters_count_busy_cycles_per_phase():
    dut = PhaseCounters()
    schedule = [
        (0, Phase.NONE),
        (1, Phase.ROUTE),
        (1, Phase.ROUTE),
        (1, Phase.DISPATCH),
        (1, Phase.EXPERTS),
        (1, Phase.SHARED),
        (1, Phase.SHARED),
        (1, Phase.COMBINE),
        (0, Phase.COMBINE),
    ]

    async def bench(ctx):
        for busy, phase in schedule:
            ctx.set(dut.busy, busy)
            ctx.set(dut.phase, phase)
            await ctx.tick()
        got = {name: ctx.get(dut.counters[name]) for name in PHASES}
        assert got == {
            "total": 7,
            "route": 2,
            "dispatch": 1,
            "experts": 3,
            "shared": 2,
            "combine": 1,
        }
        ctx.set(dut.busy, 1)
        ctx.set(dut.clear, 1)
        await ctx.tick()
        assert all(ctx.get(dut.counters[name]) == 0 for name in PHASES)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
