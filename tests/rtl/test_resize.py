# amaranth: UnusedElaboratable=no
"""rtl.resize.Resizer on Amaranth's simulator: split, gather, item count and tail drop."""

import pytest
from amaranth.sim import Simulator

from pymodel.config import ConfigError
from rtl.resize import Resizer


def run(in_bytes: int, out_bytes: int, beats: list[bytes], count: int) -> list[bytes]:
    dut = Resizer(in_bytes, out_bytes)
    got: list[bytes] = []

    async def bench(ctx):
        ctx.set(dut.start, 1)
        ctx.set(dut.count, count)
        await ctx.tick()
        ctx.set(dut.start, 0)
        pending = list(beats)
        for cycle in range(8 * len(beats) + 8):
            ctx.set(dut.o.ready, cycle % 3 != 1)
            ctx.set(dut.i.valid, bool(pending))
            if pending:
                ctx.set(dut.i.payload, int.from_bytes(pending[0], "little"))
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                got.append(ctx.get(dut.o.payload).to_bytes(out_bytes, "little"))
            if pending and ctx.get(dut.i.ready):
                pending.pop(0)
            await ctx.tick()
        assert ctx.get(dut.idle)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


def beats_of(n: int, size: int) -> list[bytes]:
    return [bytes(range(i * size, (i + 1) * size)) for i in range(n)]


def test_split_emits_items_in_byte_order_and_drops_the_tail():
    data = b"".join(beats_of(3, 16))
    got = run(16, 4, beats_of(3, 16), count=10)
    assert got == [data[4 * i : 4 * i + 4] for i in range(10)]


def test_gather_joins_beats_lowest_first():
    data = b"".join(beats_of(4, 4))
    assert run(4, 8, beats_of(4, 4), count=2) == [data[:8], data[8:16]]


def test_equal_widths_pass_through():
    assert run(8, 8, beats_of(3, 8), count=3) == beats_of(3, 8)


def test_sizes_must_be_powers_of_two():
    with pytest.raises(ConfigError, match="power of two"):
        Resizer(12, 4)
