# amaranth: UnusedElaboratable=no
"""rtl.divider.PipelinedDivider on Amaranth's simulator: the exact floor quotient that
`pymodel.gate.div_round` uses, saturating, with stalls, at its documented latency."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import unsigned

from rtl.divider import PipelinedDivider
from sim.amaranth_sim import run_simulation


def _divide(dut: PipelinedDivider, cases: list[tuple[int, int]], stall_every: int) -> list:
    """(quotient, overflow, tag) per case, one operand pair per advancing cycle; `en` is
    dropped every `stall_every`-th cycle to check that every stage holds."""
    out: list[tuple[int, int, int]] = []

    async def feed(ctx):
        n, cycle = 0, 0
        while len(out) < len(cases):
            stall = stall_every and cycle % stall_every == stall_every - 1
            ctx.set(dut.en, not stall)
            ctx.set(dut.i_valid, n < len(cases))
            if n < len(cases):
                ctx.set(dut.i_num, cases[n][0])
                ctx.set(dut.i_den, cases[n][1])
                ctx.set(dut.i_tag, n)
            if not stall and ctx.get(dut.o_valid):
                out.append((ctx.get(dut.o_quotient), ctx.get(dut.o_overflow), ctx.get(dut.o_tag)))
            if not stall and n < len(cases):
                n += 1
            cycle += 1
            await ctx.tick()

    run_simulation(dut, [feed])
    return out


@pytest.mark.parametrize("stall_every", [0, 3])
def test_divider_exact_and_saturating(stall_every: int) -> None:
    rng = np.random.default_rng(3)
    dut = PipelinedDivider(num_width=24, den_width=12, quo_width=13, tag_shape=unsigned(8))
    top = (1 << 13) - 1
    cases = [(0, 1), (1, 1), ((1 << 24) - 1, (1 << 12) - 1), (top, 1), (top + 1, 1), (5, 0)]
    for _ in range(60):
        den = int(rng.integers(1, 1 << 12))
        cases.append((int(rng.integers(0, min(1 << 24, den << 13))), den))
    results = _divide(dut, cases, stall_every)
    assert [tag for _, _, tag in results] == list(range(len(cases)))
    for (num, den), (q, ovf, _) in zip(cases, results, strict=True):
        if den and num // den <= top:
            assert (q, ovf) == (num // den, 0), (num, den)
        else:
            assert (q, ovf) == (top, 1), (num, den)


def test_divider_latency() -> None:
    dut = PipelinedDivider(num_width=10, den_width=4, quo_width=6, tag_shape=unsigned(1))
    seen: list[int] = []

    async def bench(ctx):
        ctx.set(dut.en, 1)
        ctx.set(dut.i_valid, 1)
        ctx.set(dut.i_num, 45)
        ctx.set(dut.i_den, 7)
        await ctx.tick()
        ctx.set(dut.i_valid, 0)
        for cycle in range(1, 3 * dut.latency):
            if ctx.get(dut.o_valid):
                seen.append(cycle)
                assert ctx.get(dut.o_quotient) == 45 // 7
            await ctx.tick()

    run_simulation(dut, [bench])
    assert seen == [dut.latency]


def test_divider_rejects_bad_widths() -> None:
    with pytest.raises(ValueError, match=r"PipelinedDivider\.den_width"):
        PipelinedDivider(8, 0, 4, unsigned(1))
    with pytest.raises(ValueError, match=r"PipelinedDivider\.quo_width"):
        PipelinedDivider(8, 8, 0, unsigned(1))
