# amaranth: UnusedElaboratable=no
"""rtl.activation_feeder.ActivationFeeder on Amaranth's simulator, against a slice-order model."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from rtl.activation_feeder import (
    ActivationFeeder,
    ActSource,
    max_sorted_rows,
    sorted_row_layout,
)
from sim.tb.layer_cases import SMALL_TOP

CFG = SMALL_TOP
SPARSE_CFG = SMALL_TOP.replace(sparse_2_4=True)
"""A 2:4 build: 2R-lane slices for 2:4 commands, R (then don't-care lanes) for dense ones."""
M_BLOCK, PARAM_ROWS = 8, 16


def expected(src, x, h, table, row0, m, nt, passes, kt_n, tokens, r) -> list[bytes]:
    """The slices of `r` K positions in (n-tile, pass, k-tile, row) order, as the engine
    takes them."""
    out = []
    for _ in range(nt * passes):
        for kt in range(kt_n):
            for i in range(m):
                if src is ActSource.HBUF:
                    row = h[i]
                elif src is ActSource.SORTED:
                    token, pad = table[row0 + i]
                    row = np.zeros_like(x[0]) if pad else x[token]
                else:
                    t = row0 + i
                    row = x[t] if t < tokens else np.zeros_like(x[0])
                out.append(bytes(row[kt * r : (kt + 1) * r]))
    return out


@pytest.mark.parametrize(
    "cfg, sparse",
    [(CFG, None), (SPARSE_CFG, 0), (SPARSE_CFG, 1), (SMALL_TOP.replace(int4_weights=True), 1)],
    ids=["dense", "2:4-build", "2:4", "int4"],
)
@pytest.mark.parametrize("src", list(ActSource))
def test_activation_feeder_slice_order_and_padding(src, cfg, sparse):
    rng = np.random.default_rng(src.value)
    dut = ActivationFeeder(cfg, M_BLOCK, PARAM_ROWS)
    x = rng.integers(0, 256, (CFG.max_tokens, dut.x_row * dut.wx), dtype=np.uint8)
    h = rng.integers(0, 256, (M_BLOCK, dut.h_row * dut.wh), dtype=np.uint8)
    n_sorted = max_sorted_rows(cfg)
    table = [(int(rng.integers(CFG.max_tokens)), int(rng.random() < 0.3)) for _ in range(n_sorted)]
    sorted_shape = sorted_row_layout(cfg)
    m = Module()
    m.submodules.dut = dut
    mems = {
        "x": Memory(
            shape=dut.x_rd.data.shape(),
            depth=CFG.max_tokens * dut.x_row,
            init=[list(w) for w in x.reshape(-1, dut.wx)],
        ),
        "h": Memory(
            shape=dut.h_rd.data.shape(),
            depth=M_BLOCK * dut.h_row,
            init=[list(w) for w in h.reshape(-1, dut.wh)],
        ),
        "sorted": Memory(
            shape=sorted_shape,
            depth=n_sorted,
            init=[{"token": t, "pad": p} for t, p in table],
        ),
    }
    for name, mem in mems.items():
        m.submodules[name] = mem
        wiring.connect(m, getattr(dut, f"{name}_rd"), mem.read_port())
    step = 2 * cfg.rows if sparse else cfg.rows
    kt_n = 32 // step  # the whole 32-byte row of SMALL_TOP's X and H
    row0, rows, nt, passes, tokens = 3, 5, 2, 2 if src is ActSource.SORTED else 1, 6
    want = expected(src, x, h, table, row0, rows, nt, passes, kt_n, tokens, step)
    cmd = {"src": src, "row0": row0, "m": rows, "nt": nt, "passes": passes, "kt_n": kt_n}
    if sparse is not None:
        cmd["sparse"] = sparse
    got: list[bytes] = []

    async def bench(ctx):
        ctx.set(dut.tokens, tokens)
        ctx.set(dut.cmd, cmd)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        for cycle in range(4 * len(want) + 10):
            ctx.set(dut.act.ready, cycle % 4 != 3)
            if ctx.get(dut.act.valid) and ctx.get(dut.act.ready):
                got.append(bytes(v & 0xFF for v in ctx.get(dut.act.payload))[:step])
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
