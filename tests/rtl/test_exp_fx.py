# amaranth: UnusedElaboratable=no
"""rtl.exp_fx.ExpFx on Amaranth's simulator against `pymodel.gate.exp_fx`, the golden exp."""

from __future__ import annotations

import numpy as np
import pytest
from gate_configs import CONFIGS

from pymodel.config import AccelConfig
from pymodel.gate import exp_fx
from rtl.exp_fx import ExpFx
from sim.amaranth_sim import run_simulation


def _exp_rtl(cfg: AccelConfig, zs: list[int]) -> list[int]:
    """ExpFx outputs for `zs`, one per cycle through its pipeline (Amaranth simulator)."""
    dut = ExpFx(cfg)
    out: list[int] = []

    async def feed(ctx):
        for z in zs:
            ctx.set(dut.z, z)
            ctx.set(dut.z_valid, 1)
            await ctx.tick()
        ctx.set(dut.z_valid, 0)

    async def collect(ctx):
        async for _, _, valid, e in ctx.tick().sample(dut.e_valid, dut.e):
            if valid:
                out.append(e)
                if len(out) == len(zs):
                    return

    run_simulation(dut, [feed, collect])
    return out


@pytest.mark.parametrize("tag", ["odd", "small"])
def test_exp_fx_matches_golden(tag: str) -> None:
    """Exhaustive for the 12-bit logits of `odd`; extremes and a random sample for 16 bits."""
    cfg = CONFIGS[tag]
    lowest = -(2**cfg.logit_bits - 1)  # l - max(l) of two extreme logits
    if tag == "odd":
        zs = list(range(lowest, 1))
    else:
        rng = np.random.default_rng(4)
        zs = [lowest, lowest + 1, -1, 0, *rng.integers(lowest, 1, size=1500).tolist()]
    assert _exp_rtl(cfg, zs) == exp_fx(np.asarray(zs), cfg).tolist()
