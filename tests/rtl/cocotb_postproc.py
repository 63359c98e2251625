"""cocotb side of tests/rtl/test_postproc.py: PostProc lanes vs pymodel.numerics.

Environment: PP_CFG (AccelConfig JSON), PARAM_ROWS, SEED.
"""

import random

import cocotb
import numpy as np

from pymodel.gemm_engine import lut_writes, param_row_writes
from pymodel.numerics import PostMode, postprocess
from rtl.postproc import (
    SHIFT_BITS,
    lut_write_layout,
    output_layout,
    param_write_layout,
    postproc_input_layout,
)
from sim.tb import Scoreboard, StreamDriver, StreamSink, reset_dut, start_clock
from sim.tb.params import tb_params

P = tb_params()


def _expected(beat, mult, shift, lut, cfg):
    pa, pb = beat["param_a"], beat["param_b"]
    mode = PostMode(beat["mode"])
    # WIDE's result is on the `wide` lanes; its act lanes carry LUT(requant(acc_a)).
    y = postprocess(
        PostMode.REQUANT_LUT if mode == PostMode.WIDE else mode,
        cfg,
        np.array(beat["acc_a"]),
        mult[pa],
        shift[pa],
        lut=lut,
        acc_b=np.array(beat["acc_b"]),
        mult_b=mult[pb],
        shift_b=shift[pb],
        gate_mult=beat["gate_mult"],
        gate_shift=beat["gate_shift"],
    ).y
    lanes = [int(v) if c < beat["n_valid"] else 0 for c, v in enumerate(y)]
    return {"data": lanes, "last": beat["last"]}


@cocotb.test()
async def lanes_bit_exact_in_every_mode(dut):
    cfg = P.config("cfg")
    rows = P["param_rows"]
    rng = np.random.default_rng(P["seed"])
    prng = random.Random(P["seed"])
    start_clock(dut.clk)
    await reset_dut(dut, dut.clk)
    lanes, acc_bits = cfg.cols, cfg.acc_bits
    top = 2**cfg.mult_bits

    mult = rng.integers(0, top, size=(rows, lanes))
    mult[:, 0] = top - 1
    shift = rng.integers(cfg.acc_bits - 2, cfg.acc_bits + cfg.mult_bits - 8, size=(rows, lanes))
    shift[0, :] = 0
    shift[1, :] = 2**SHIFT_BITS - 1
    # Row 2: m = 1, s = lane + 1, so acc = ±(2j+1)·2^lane is an exact half (rounds away).
    mult[2, :] = 1
    shift[2, :] = np.arange(1, lanes + 1)
    lut = rng.integers(-128, 128, size=2**cfg.act_bits)
    lut[0x80] = -128

    params = StreamDriver.from_prefix(dut, "param_w", dut.clk, param_write_layout(cfg, rows))
    luts = StreamDriver.from_prefix(dut, "lut_w", dut.clk, lut_write_layout(cfg))
    params.send_many(param_row_writes(cfg, 0, mult.reshape(-1), shift.reshape(-1)))
    luts.send_many(lut_writes(lut, cfg))
    await params.wait_drained(timeout_cycles=4 * rows * lanes + 10)
    await luts.wait_drained(timeout_cycles=4 * len(lut) + 10)

    board = Scoreboard("postproc")
    inp = StreamDriver.from_prefix(dut, "inp", dut.clk, postproc_input_layout(cfg, rows), rng=prng)
    out = StreamSink.from_prefix(
        dut,
        "out",
        dut.clk,
        output_layout(cfg),
        rng=prng,
        callback=lambda beat: board.observe({k: v for k, v in beat.items() if k != "wide"}),
    )
    lo, hi = -(2 ** (acc_bits - 1)), 2 ** (acc_bits - 1) - 1
    total = 0
    for idle, ready in ((0.0, 1.0), (0.3, 0.5), (0.0, 0.2)):
        inp.idle_prob, out.ready_prob = idle, ready
        for i in range(150):
            scale = prng.choice([hi, 2**20, 2**12])
            beat = {
                "acc_a": [int(v) for v in rng.integers(max(lo, -scale), scale + 1, lanes)],
                "acc_b": [int(v) for v in rng.integers(max(lo, -scale), scale + 1, lanes)],
                "param_a": prng.randrange(rows),
                "param_b": prng.randrange(rows),
                "n_valid": prng.randint(1, lanes),
                "mode": prng.choice(list(PostMode)).value,
                "gate_mult": prng.randrange(top),
                "gate_shift": prng.choice([0, 1, 20, 22, 24, 63]),
                "last": int(i == 149),
            }
            if i % 37 == 0:
                beat["acc_a"] = [lo, hi] * (lanes // 2) + [lo] * (lanes % 2)
            if i % 5 == 1:
                beat["param_a"] = beat["param_b"] = 2
                for key in ("acc_a", "acc_b"):
                    beat[key] = [
                        prng.choice([-1, 1]) * (2 * prng.randrange(100) + 1) << c
                        for c in range(lanes)
                    ]
            board.expect(_expected(beat, mult, shift, lut, cfg))
            inp.send(beat)
        total += 150
        await inp.wait_drained(timeout_cycles=50 * 150)
        await out.wait_for(total, timeout_cycles=2000)
    board.check()
    assert board.matched == total
