# amaranth: UnusedElaboratable=no
"""rtl.routing_recorder.RoutingRecorder on Amaranth's simulator: pairs move in step."""

from __future__ import annotations

from amaranth.sim import Simulator

from rtl.routing_recorder import RoutingRecorder
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP


def test_routing_recorder_moves_pairs_to_all_three_in_step():
    dut = RoutingRecorder(CFG)
    pairs = [(t, e, 100 + 7 * i) for i, (t, e) in enumerate([(0, 3), (0, 5), (1, 2), (2, 7)])]
    disp_got, records, slots, shared = [], [], [], []

    async def bench(ctx):
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        pending = list(pairs)
        for cycle in range(30):
            ctx.set(dut.disp_pairs.ready, cycle % 3 != 0)
            ctx.set(dut.records.ready, cycle % 4 != 1)
            ctx.set(dut.pad, not pending and cycle > 20)
            ctx.set(dut.pairs.valid, bool(pending))
            ctx.set(dut.shared.valid, cycle in (3, 4))
            ctx.set(dut.shared.payload.weight, 40 + cycle)
            if pending:
                t, e, w = pending[0]
                ctx.set(dut.pairs.payload, {"token": t, "expert": e, "weight": w, "last": 0})
            if ctx.get(dut.disp_pairs.valid) and ctx.get(dut.disp_pairs.ready):
                disp_got.append(ctx.get(dut.disp_pairs.payload.expert))
            if ctx.get(dut.records.valid) and ctx.get(dut.records.ready):
                records.append(ctx.get(dut.records.payload))
            if ctx.get(dut.slot_token_wr.en):
                assert ctx.get(dut.fire)
                slots.append(
                    (
                        ctx.get(dut.slot_token_wr.addr),
                        ctx.get(dut.slot_token_wr.data),
                        ctx.get(dut.slot_weight_wr.addr),
                        ctx.get(dut.slot_weight_wr.data),
                    )
                )
            if ctx.get(dut.shared_weight_wr.en):
                shared.append(
                    (ctx.get(dut.shared_weight_wr.addr), ctx.get(dut.shared_weight_wr.data))
                )
            if pending and ctx.get(dut.pairs.ready):
                pending.pop(0)
            await ctx.tick()
        assert ctx.get(dut.slot) == len(pairs)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert disp_got == [e for _, e, _ in pairs]
    real = records[: len(pairs)]
    assert real == [e | (w << 32) for _, e, w in pairs]
    assert records[len(pairs) :] and not any(records[len(pairs) :])
    assert slots == [(s, t, s, w) for s, (t, _, w) in enumerate(pairs)]
    assert shared == [(0, 43), (1, 44)]
