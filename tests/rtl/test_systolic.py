# amaranth: UnusedElaboratable=no
"""ProcessingElement and a small SystolicArray in Amaranth's simulator vs `matmul_int`."""

import numpy as np
import pytest

from pymodel.config import AccelConfig
from pymodel.gemm import matmul_int
from rtl.systolic import ProcessingElement, SystolicArray
from sim.amaranth_sim import run_simulation


def test_pe_mac_and_double_buffered_weights():
    cfg = AccelConfig(rows=2, cols=2)
    pe = ProcessingElement(cfg)

    async def bench(ctx):
        for bank, w in ((0, -128), (1, 127)):
            ctx.set(pe.w_we, 1)
            ctx.set(pe.w_bank, bank)
            ctx.set(pe.w_data, w)
            await ctx.tick()
        ctx.set(pe.w_we, 0)
        # The product is registered: a partial sum joins its activation a cycle later.
        cases = ((-128, 0, 5), (-128, 1, -7), (127, 0, 2**31 - 2**14 - 1), (0, 0, 0))
        previous = None
        for a, sel, psum in cases:
            ctx.set(pe.a_in, a)
            ctx.set(pe.sel_in, sel)
            if previous is not None:
                ctx.set(pe.psum_in, previous[2])
            await ctx.tick()
            assert ctx.get(pe.a_out) == a
            assert ctx.get(pe.sel_out) == sel
            if previous is not None:
                pa, psel, ppsum = previous
                assert ctx.get(pe.psum_out) == ppsum + pa * (-128 if psel == 0 else 127)
            previous = (a, sel, psum)

    run_simulation(pe, [bench])


@pytest.mark.parametrize(("rows", "cols"), [(2, 3), (3, 2)])
def test_array_rows_stream_back_to_back_across_banks(rows, cols):
    """Two weight tiles in the two banks; rows alternate banks every cycle, outputs aligned."""
    cfg = AccelConfig(rows=rows, cols=cols)
    array = SystolicArray(cfg)
    rng = np.random.default_rng(rows * 10 + cols)
    weights = [rng.integers(-128, 128, size=(rows, cols)) for _ in range(2)]
    x = rng.integers(-128, 128, size=(8, rows))
    x[0, :] = -128
    expect = [matmul_int(x[i : i + 1], weights[i % 2], cfg)[0] for i in range(len(x))]
    got = []

    async def bench(ctx):
        for bank in range(2):
            for r in range(rows):
                ctx.set(array.w_we, 1)
                ctx.set(array.w_bank, bank)
                ctx.set(array.w_addr, r)
                ctx.set(array.w_row, [int(v) for v in weights[bank][r]])
                await ctx.tick()
        ctx.set(array.w_we, 0)
        for i in range(len(x) + array.latency):
            if i < len(x):
                ctx.set(array.a_in, [int(v) for v in x[i]])
                ctx.set(array.sel_in, i % 2)
            else:
                ctx.set(array.a_in, [0] * rows)
            if i >= array.latency:
                got.append([ctx.get(array.psum_out[c]) for c in range(cols)])
            await ctx.tick()

    run_simulation(array, [bench])
    assert np.array_equal(np.array(got), np.array(expect))
    assert array.latency == rows + cols
    assert array.bank_cooldown == cols - 1
