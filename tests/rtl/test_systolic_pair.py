# amaranth: UnusedElaboratable=no
"""The int4 build's PE pair: two int4 × int8 products a PE and cycle, one of them in logic.

`int4_halves` over the whole int8 × int4 range (exhaustive), then arrays
whose bank 0 holds an int4 dense tile (byte row r = K positions 2r, 2r + 1)
and bank 1 an int8 tile, rows alternating banks, against `matmul_int`.
"""

import numpy as np
import pytest
from amaranth import Module, Signal, signed

from pymodel.config import AccelConfig
from pymodel.gemm import matmul_int
from pymodel.gemm_engine import activation_lanes
from pymodel.weight_formats import pack_int4
from rtl.multiplier import int4_halves
from rtl.systolic import SystolicArray, weight_lanes
from sim.amaranth_sim import run_simulation


def test_int4_halves_sum_to_the_product_over_the_whole_range():
    """Every int8 a and every 4-bit two's-complement w (−8 … 7): the halves sum to a·w."""
    a, w = Signal(signed(8)), Signal(4)
    p = Signal(signed(12))
    m = Module()
    low, high = int4_halves(a, w)
    m.d.comb += p.eq(low + high)
    wrong = []

    async def bench(ctx):
        for av in range(-128, 128):
            ctx.set(a, av)
            for wv in range(-8, 8):
                ctx.set(w, wv & 0xF)
                if ctx.get(p) != av * wv:
                    wrong.append((av, wv, ctx.get(p)))

    run_simulation(m, [bench], clock_period=None)
    assert not wrong, wrong[:5]


def _dense_lanes(cfg: AccelConfig, x: np.ndarray) -> np.ndarray:
    """An int8 tile's row on the array's lanes: x[r] on PE row r's multiplier lane."""
    out = np.zeros((len(x), activation_lanes(cfg)), dtype=np.int64)
    for r in range(cfg.rows):
        lane = 4 * (r // 2) + r % 2 if cfg.sparse_2_4 else 2 * r
        out[:, lane] = x[:, r]
    return out


@pytest.mark.parametrize(
    ("rows", "cols", "bus", "sparse"),
    [(4, 3, 8, False), (6, 2, 4, False), (4, 2, 16, True)],
    ids=["int4-L2", "int4-L1-R6", "int4-2:4-L2"],
)
def test_pair_tiles_multiply_two_k_positions_a_pe(rows, cols, bus, sparse):
    """Bank 0: an int4 dense tile of 2R K positions (`w_pair`); bank 1: an int8 tile of R."""
    cfg = AccelConfig(
        rows=rows, cols=cols, mem_bytes_per_cycle=bus, int4_weights=True, sparse_2_4=sparse
    )
    array = SystolicArray(cfg)
    seed = rows * 100 + cols * 10 + bus + sparse
    rng = np.random.default_rng(seed)
    w4 = rng.integers(-8, 8, size=(2 * rows, cols))
    w4[:2] = -8  # the extremes: −8 · −128 in the first rows
    w8 = rng.integers(-128, 128, size=(rows, cols))
    packed = pack_int4(w4).view(np.int8)
    n = 12
    x = rng.integers(-128, 128, size=(n, 2 * rows))
    x[0] = -128
    lanes = weight_lanes(cfg)
    expect = [
        matmul_int(x[i : i + 1], w4, cfg)[0]
        if i % 2 == 0
        else matmul_int(x[i : i + 1, :rows], w8, cfg)[0]
        for i in range(n)
    ]
    fed = np.where((np.arange(n) % 2 == 0)[:, None], x, _dense_lanes(cfg, x[:, :rows]))
    got = []

    async def bench(ctx):
        # L byte rows a beat (a 2:4 + int4 build's port is 2L rows: the lower or upper L).
        step = cfg.weight_rows_per_beat
        for bank, w, pair in ((0, packed, 1), (1, w8, 0)):
            for r0 in range(0, rows, step):
                beat = [[0] * cols for _ in range(lanes)]
                we = 0
                for r in range(r0, min(r0 + step, rows)):
                    beat[r % lanes] = [int(v) for v in w[r]]
                    we |= 1 << (r % lanes)
                ctx.set(array.w_we, we)
                ctx.set(array.w_bank, bank)
                ctx.set(array.w_pair, pair)
                ctx.set(array.w_addr, r0 - r0 % lanes)
                ctx.set(array.w_row, beat)
                await ctx.tick()
        ctx.set(array.w_we, 0)
        for _ in range(rows + cols):
            await ctx.tick()
        for i in range(n + array.latency):
            if i < n:
                ctx.set(array.a_in, [int(v) for v in fed[i]])
                ctx.set(array.sel_in, i % 2)
            if i >= array.latency:
                got.append([ctx.get(array.psum_out[c]) for c in range(cols)])
            await ctx.tick()

    run_simulation(array, [bench])
    assert np.array_equal(np.array(got), np.array(expect)), f"seed {seed}"
