# amaranth: UnusedElaboratable=no
"""ProcessingElement and a small SystolicArray in Amaranth's simulator vs `matmul_int`."""

import numpy as np
import pytest

from pymodel.config import AccelConfig
from pymodel.gemm import matmul_int
from pymodel.gemm_engine import activation_lanes
from pymodel.weight_formats import decompress_2_4
from rtl.systolic import ProcessingElement, SystolicArray, index_lanes, weight_lanes
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
        # Operands, then product are registered: a partial sum joins its activation
        # two cycles later, and the sum appears the cycle after that.
        cases = ((-128, 0, 5), (-128, 1, -7), (127, 0, 2**31 - 2**14 - 1), (0, 0, 0), (5, 1, 3))
        history = []
        for a, sel, psum in cases:
            ctx.set(pe.a_in, a)
            ctx.set(pe.sel_in, sel)
            if len(history) >= 2:
                ctx.set(pe.psum_in, history[-2][2])
            await ctx.tick()
            assert ctx.get(pe.a_out) == a
            assert ctx.get(pe.sel_out) == sel
            if len(history) >= 2:
                pa, psel, ppsum = history[-2]
                assert ctx.get(pe.psum_out) == ppsum + pa * (-128 if psel == 0 else 127)
            history.append((a, sel, psum))

    run_simulation(pe, [bench])


def _write_beat(ctx, array, bank: int, row0: int, rows: np.ndarray, valid: int) -> None:
    """Present one weight beat: `rows` [L, C] for array rows row0 …, the first `valid` enabled."""
    lanes, cols = weight_lanes(array.cfg), array.cfg.cols
    beat = [[int(v) for v in rows[i]] if i < len(rows) else [0] * cols for i in range(lanes)]
    ctx.set(array.w_we, (1 << valid) - 1)
    ctx.set(array.w_bank, bank)
    ctx.set(array.w_addr, row0)
    ctx.set(array.w_row, beat)


async def _load_both_banks(ctx, array, weights: list[np.ndarray]) -> None:
    """Write `weights[b]` into bank b, a beat a cycle, and wait until the skewed writes land."""
    rows, cols = array.cfg.rows, array.cfg.cols
    lanes = weight_lanes(array.cfg)
    for bank in range(2):
        for r0 in range(0, rows, lanes):
            chunk = weights[bank][r0 : r0 + lanes]
            _write_beat(ctx, array, bank, r0, chunk, len(chunk))
            await ctx.tick()
    ctx.set(array.w_we, 0)
    for _ in range(rows + cols):
        await ctx.tick()


@pytest.mark.parametrize(("rows", "cols", "bus"), [(2, 3, 4), (3, 2, 4), (4, 4, 8)])
def test_array_rows_stream_back_to_back_across_banks(rows, cols, bus):
    """Two weight tiles in the two banks; rows alternate banks every cycle, outputs aligned."""
    cfg = AccelConfig(rows=rows, cols=cols, mem_bytes_per_cycle=bus)
    array = SystolicArray(cfg)
    rng = np.random.default_rng(rows * 10 + cols)
    weights = [rng.integers(-128, 128, size=(rows, cols)) for _ in range(2)]
    x = rng.integers(-128, 128, size=(8, rows))
    x[0, :] = -128
    expect = [matmul_int(x[i : i + 1], weights[i % 2], cfg)[0] for i in range(len(x))]
    got = []

    async def bench(ctx):
        await _load_both_banks(ctx, array, weights)
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
    assert array.latency == rows + cols + 1
    assert array.bank_cooldown == 0


def _tight_schedule(cfg: AccelConfig, tiles: list[tuple[int, int]], gaps: np.ndarray) -> list:
    """Cycle-by-cycle events of a loader/issuer pair running tiles as tightly as allowed.

    Each tile `(k_valid, m)` is loaded in ⌈k_valid/L⌉ beats (L: `weight_lanes`) into
    bank i mod 2 (beat j at or after `gaps`-delayed slots), no earlier than
    `bank_cooldown` cycles after the cycle the bank's previous tile injected its
    last row, and its m rows are injected from the cycle after its last beat on. Returns per cycle
    `(beat or None, inject or None)` with beat = (tile, j) and inject = (tile, row).
    """
    lanes = weight_lanes(cfg)
    events: dict[int, list] = {}
    loader_free = 0
    issue_free = 0
    last_inject: dict[int, int] = {}
    g = iter(gaps)
    for i, (kv, m) in enumerate(tiles):
        start = loader_free
        if i >= 2:
            start = max(start, last_inject[i - 2] + SystolicArray(cfg).bank_cooldown)
        cycle = start
        for j in range(-(-kv // lanes)):
            cycle += int(next(g))
            events.setdefault(cycle, [None, None])[0] = (i, j)
            cycle += 1
        loader_free = cycle
        t = max(issue_free, cycle)
        for row in range(m):
            events.setdefault(t + row, [None, None])[1] = (i, row)
        issue_free = t + m
        last_inject[i] = t + m - 1
    return [events.get(c, [None, None]) for c in range(max(events) + 1)]


@pytest.mark.parametrize(
    ("rows", "cols", "bus", "int4"),
    [
        (4, 4, 4, False),
        (4, 3, 8, False),
        (4, 4, 8, False),
        (3, 2, 4, False),
        (4, 2, 16, False),
        (8, 4, 8, True),
        (6, 2, 4, True),
    ],
    ids=["L1", "L2-C3", "L2", "L2-R-odd", "L4", "int4-L2", "int4-L1-R6"],
)
def test_banks_refill_as_soon_as_the_last_row_is_injected(rows, cols, bus, int4):
    """Short tiles (1–3 rows, K tails) back to back: a bank is refilled at once, all sums exact.

    In an int4 build (int8 tiles here) every PE has `OPERAND_STAGES` + `PAIR_STAGES` more
    and takes 2R activation lanes.
    """
    cfg = AccelConfig(rows=rows, cols=cols, mem_bytes_per_cycle=bus, int4_weights=int4)
    array = SystolicArray(cfg)
    lanes = weight_lanes(cfg)
    rng = np.random.default_rng(rows * 100 + cols * 10 + bus)
    n = 14
    tiles = [(int(rng.integers(1, rows + 1)), int(rng.integers(1, 4))) for _ in range(n)]
    weights = [rng.integers(-128, 128, size=(rows, cols)) for _ in range(n)]
    acts = [rng.integers(-128, 128, size=(m, rows)) for _, m in tiles]
    gaps = rng.choice([0, 0, 0, 1, 2], size=n * rows)
    schedule = _tight_schedule(cfg, tiles, gaps)
    expect = {
        (i, row): matmul_int(acts[i][row : row + 1, :kv], weights[i][:kv], cfg)[0]
        for i, (kv, m) in enumerate(tiles)
        for row in range(m)
    }
    got: dict = {}

    async def bench(ctx):
        pending: dict[int, tuple] = {}
        for cycle in range(len(schedule) + array.latency + 1):
            beat, inject = schedule[cycle] if cycle < len(schedule) else (None, None)
            ctx.set(array.w_we, 0)
            if beat is not None:
                i, j = beat
                kv = tiles[i][0]
                r0 = j * lanes
                _write_beat(ctx, array, i % 2, r0, weights[i][r0 : r0 + lanes], min(lanes, kv - r0))
            ctx.set(array.a_in, [0] * activation_lanes(cfg))
            if inject is not None:
                i, row = inject
                kv = tiles[i][0]
                a = [int(v) if r < kv else 0 for r, v in enumerate(acts[i][row])]
                # An int4 build's PE row r multiplies an int8 weight by lane 2r.
                ctx.set(array.a_in, [v for x in a for v in (x, 0)] if int4 else a)
                ctx.set(array.sel_in, i % 2)
                pending[cycle + array.latency] = inject
            if cycle in pending:
                got[pending.pop(cycle)] = [ctx.get(array.psum_out[c]) for c in range(cols)]
            await ctx.tick()

    run_simulation(array, [bench])
    assert got.keys() == expect.keys()
    for key, want in expect.items():
        assert np.array_equal(got[key], want), key


def test_pe_holds_its_registers_without_a_valid_activation():
    """An invalid cycle changes neither the product nor the sum; the next valid row is exact."""
    cfg = AccelConfig(rows=2, cols=2)
    pe = ProcessingElement(cfg)

    async def bench(ctx):
        ctx.set(pe.w_we, 1)
        ctx.set(pe.w_data, -3)
        await ctx.tick()
        ctx.set(pe.w_we, 0)
        ctx.set(pe.a_in, 5)
        await ctx.tick()
        ctx.set(pe.valid_in, 0)
        ctx.set(pe.a_in, 77)
        await ctx.tick()
        assert (ctx.get(pe.a_out), ctx.get(pe.valid_out)) == (77, 0)
        ctx.set(pe.psum_in, 100)
        await ctx.tick()
        assert ctx.get(pe.psum_out) == 100 - 15
        ctx.set(pe.psum_in, -9)
        await ctx.tick()
        assert ctx.get(pe.psum_out) == 100 - 15

    run_simulation(pe, [bench])


@pytest.mark.parametrize(("rows", "cols", "bus"), [(3, 4, 8), (4, 2, 4)])
def test_invalid_rows_with_garbage_leave_valid_sums_exact(rows, cols, bus):
    """Rows with `valid_in` clear carry random activations; every valid row's sums are exact."""
    cfg = AccelConfig(rows=rows, cols=cols, mem_bytes_per_cycle=bus)
    array = SystolicArray(cfg)
    rng = np.random.default_rng(rows * 7 + cols)
    weights = [rng.integers(-128, 128, size=(rows, cols)) for _ in range(2)]
    n = 24
    x = rng.integers(-128, 128, size=(n, rows))
    valid = rng.random(n) < 0.5
    sel = rng.integers(0, 2, size=n)
    got: dict[int, list] = {}

    async def bench(ctx):
        await _load_both_banks(ctx, array, weights)
        for i in range(n + array.latency):
            if i < n:
                ctx.set(array.a_in, [int(v) for v in x[i]])
                ctx.set(array.sel_in, int(sel[i]))
                ctx.set(array.valid_in, int(valid[i]))
            else:
                ctx.set(array.valid_in, 0)
            j = i - array.latency
            if j >= 0 and valid[j]:
                got[j] = [ctx.get(array.psum_out[c]) for c in range(cols)]
            await ctx.tick()

    run_simulation(array, [bench])
    assert sorted(got) == [i for i in range(n) if valid[i]]
    for i, sums in got.items():
        want = matmul_int(x[i : i + 1], weights[int(sel[i])], cfg)[0]
        assert np.array_equal(sums, want), i


def _random_positions(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """idx[rows, cols]: a random kept pair (ascending) per pair of rows and column."""
    pairs = np.array([(a, b) for a in range(4) for b in range(a + 1, 4)])
    pick = pairs[rng.integers(0, len(pairs), size=(rows // 2, cols))]
    return pick.transpose(0, 2, 1).reshape(rows, cols)


@pytest.mark.parametrize(
    ("rows", "cols", "bus", "int4"),
    [(4, 3, 8, False), (8, 2, 4, True), (4, 4, 16, True)],
    ids=["L2", "L2-int4-lanes", "L4-int4-lanes"],
)
def test_2_4_array_multiplies_the_activation_each_position_selects(rows, cols, bus, int4):
    """Bank 0: a 2:4 tile (values, then positions via `i_row`); bank 1: a dense tile.

    Rows alternate banks; each PE(r, c) must pick activation 4·(r//2) + idx[r, c]
    of the row's 2R (bank 0), or x[r] spread to lane 4·(r//2) + r mod 2 (bank 1).
    """
    cfg = AccelConfig(
        rows=rows, cols=cols, mem_bytes_per_cycle=bus, sparse_2_4=True, int4_weights=int4
    )
    array = SystolicArray(cfg)
    seed = rows * 100 + cols * 10 + bus
    rng = np.random.default_rng(seed)
    values, dense = (rng.integers(-128, 128, size=(rows, cols)) for _ in range(2))
    idx = _random_positions(rng, rows, cols)
    lanes, ilanes = weight_lanes(cfg), index_lanes(cfg)
    n = 10
    x = rng.integers(-128, 128, size=(n, 2 * rows))
    x[0, :] = -128
    spread = np.zeros_like(x)
    for r in range(rows):
        spread[:, 4 * (r // 2) + r % 2] = x[:, r]
    w_sparse = decompress_2_4(values, idx)
    expect = [
        matmul_int(x[i : i + 1], w_sparse, cfg)[0]
        if i % 2 == 0
        else matmul_int(x[i : i + 1, :rows], dense, cfg)[0]
        for i in range(n)
    ]
    got = []

    async def bench(ctx):
        for bank, w in ((0, values), (1, dense)):
            for r0 in range(0, rows, lanes):
                beat = [
                    [int(v) for v in w[r]] if r < rows else [0] * cols
                    for r in range(r0, r0 + lanes)
                ]
                ctx.set(array.w_we, (1 << lanes) - 1)
                ctx.set(array.w_bank, bank)
                ctx.set(array.w_addr, r0)
                ctx.set(array.w_row, beat)
                await ctx.tick()
            ctx.set(array.w_we, 0)
        # Positions of bank 0 after its values (bank 1 keeps the dense positions r mod 2).
        for r0 in range(0, rows, ilanes):
            beat = [
                [int(v) for v in idx[r]] if r < rows else [0] * cols for r in range(r0, r0 + ilanes)
            ]
            ctx.set(array.i_we, (1 << ilanes) - 1)
            ctx.set(array.w_bank, 0)
            ctx.set(array.i_addr, r0)
            ctx.set(array.i_row, beat)
            await ctx.tick()
        ctx.set(array.i_we, 0)
        for _ in range(rows + cols):
            await ctx.tick()
        for i in range(n + array.latency):
            if i < n:
                row = x[i] if i % 2 == 0 else spread[i]
                ctx.set(array.a_in, [int(v) for v in row])
                ctx.set(array.sel_in, i % 2)
            if i >= array.latency:
                got.append([ctx.get(array.psum_out[c]) for c in range(cols)])
            await ctx.tick()

    run_simulation(array, [bench])
    assert np.array_equal(np.array(got), np.array(expect)), f"seed {seed}"
