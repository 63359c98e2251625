# amaranth: UnusedElaboratable=no
"""rtl.topk.TopK on Amaranth's simulator: the streaming top-k against `topk_lower_index`
(ties to the lower index), in any arrival order and with short rows."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import signed, unsigned
from amaranth.sim import Simulator

from pymodel.gate import topk_lower_index
from rtl.topk import TopK


def _run_topk(dut: TopK, rows: list[list[tuple[int, int]]]) -> list[list[tuple[int, int]]]:
    """Feed each row's (value, index) candidates, clearing between rows; return the lists."""
    results: list[list[tuple[int, int]]] = []

    async def bench(ctx):
        for row in rows:
            for n, (value, index) in enumerate(row):
                ctx.set(dut.clear, n == 0)
                ctx.set(dut.cand.valid, 1)
                ctx.set(dut.cand.payload, {"value": value, "index": index})
                await ctx.tick()
            ctx.set(dut.cand.valid, 0)
            ctx.set(dut.clear, 0)
            await ctx.tick()
            entries = ctx.get(dut.entries)
            results.append([(e.value, e.index) for e in entries if e.valid])

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


@pytest.mark.parametrize("k", [1, 3, 8])
def test_topk_matches_golden_with_ties(k: int) -> None:
    rng = np.random.default_rng(k)
    n = 12
    dut = TopK(k, signed(6), 4)
    # Few distinct values, so exact ties are frequent; rows arrive in index order.
    scores = rng.integers(-4, 4, size=(20, n))
    got = _run_topk(dut, [[(int(v), i) for i, v in enumerate(row)] for row in scores])
    want = topk_lower_index(scores, k)
    for row, ids, result in zip(scores, want, got, strict=True):
        assert [i for _, i in result] == list(ids)
        assert [v for v, _ in result] == list(row[ids])


def test_topk_any_arrival_order_and_short_rows() -> None:
    """Ties go to the lower index even when candidates arrive out of index order."""
    rng = np.random.default_rng(7)
    dut = TopK(4, unsigned(3), 4)
    rows, wants = [], []
    for length in (1, 2, 3, 9, 16):
        values = rng.integers(0, 3, size=length)
        order = rng.permutation(length)
        rows.append([(int(values[i]), int(i)) for i in order])
        wants.append(list(topk_lower_index(values[None, :], min(4, length))[0]))
    got = _run_topk(dut, rows)
    for result, want in zip(got, wants, strict=True):
        assert [i for _, i in result] == want


def test_topk_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match=r"TopK\.k"):
        TopK(0, unsigned(4), 3)
    with pytest.raises(ValueError, match=r"TopK\.index_width"):
        TopK(2, unsigned(4), 0)
