# amaranth: UnusedElaboratable=no
"""TileSequencer's command check in Amaranth's simulator, at the parameter-memory boundary.

A command's N columns must fit in the parameter rows from `param_a` (and
`param_b` for SwiGLU) to the end: `n ≤ (param_rows − param) · C`. The check is
built from shifts and adds of `param` (no multiplier), so it is checked at the
exact boundary for array widths that are and are not powers of two. A build
refuses a weight format it lacks (`BAD_MODE`, never a hang). The rest of the
sequencer is covered bit for bit through GemmEngine on Verilator.
"""

import pytest

from pymodel.config import AccelConfig
from rtl.postproc import Mode
from rtl.tile_sequencer import CommandError, TileSequencer
from sim.amaranth_sim import run_simulation

PARAM_ROWS = 7


def _verdict(
    cfg: AccelConfig, mode: Mode, n: int, param_a: int, param_b: int, **extra
) -> CommandError:
    """Offer one command to a fresh sequencer; return `error` once it starts or rejects."""
    dut = TileSequencer(cfg, m_block=4, param_rows=PARAM_ROWS, credits=2, cooldown=0)
    verdict = []

    async def bench(ctx):
        command = {"m": 1, "k": 1, "n": n, "mode": mode, "param_a": param_a, "param_b": param_b}
        ctx.set(dut.cmd.payload, {**command, "gate_mult": 1, "gate_shift": 0, **extra})
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        for _ in range(8):
            await ctx.tick()
            if ctx.get(dut.busy) or ctx.get(dut.done):
                verdict.append(ctx.get(dut.error))
                return
        raise AssertionError("the sequencer neither started nor rejected the command")

    run_simulation(dut, [bench])
    return CommandError(verdict[0])


@pytest.mark.parametrize("cols", [3, 8, 9])
@pytest.mark.parametrize("param", [1, 4, PARAM_ROWS - 1])
def test_columns_fit_exactly_to_the_last_parameter_row(cols, param):
    cfg = AccelConfig(rows=4, cols=cols, mem_bytes_per_cycle=4)
    fits = (PARAM_ROWS - param) * cols
    for mode, a, b in ((Mode.REQUANT, param, 0), (Mode.SWIGLU, 0, param)):
        assert _verdict(cfg, mode, fits, a, b) == CommandError.NONE
        assert _verdict(cfg, mode, fits + 1, a, b) == CommandError.PARAM_RANGE


def test_a_parameter_row_past_the_memory_is_rejected():
    cfg = AccelConfig(rows=4, cols=9, mem_bytes_per_cycle=4)
    assert _verdict(cfg, Mode.REQUANT, 1, PARAM_ROWS, 0) == CommandError.PARAM_RANGE
    assert _verdict(cfg, Mode.SWIGLU, 1, 0, PARAM_ROWS) == CommandError.PARAM_RANGE


@pytest.mark.parametrize(
    ("sparse", "int4"), [(True, False), (False, True), (True, True)], ids=["2:4", "int4", "both"]
)
def test_a_format_the_build_lacks_is_rejected(sparse, int4):
    """Each of the three compressed formats on builds with one or both paths; K for 2:4."""
    cfg = AccelConfig(rows=4, cols=4, mem_bytes_per_cycle=8, sparse_2_4=sparse, int4_weights=int4)
    for fmt_sparse in (0, 1):
        for fmt_int4 in (0, 1):
            runs = (not fmt_sparse or sparse) and (not fmt_int4 or int4)
            for k in (4, 6):
                fmt = {"sparse": fmt_sparse, "int4": fmt_int4}
                got = _verdict(cfg, Mode.REQUANT, 1, 0, 0, fmt=fmt, k=k)
                ok = runs and not (fmt_sparse and k % 4)
                assert got == (CommandError.NONE if ok else CommandError.BAD_MODE), (fmt, k)
