"""Helpers for Amaranth's own simulator, for the smallest units (a PE, a requantiser).

Amaranth's Python simulator runs ~6–8 k cycles/s on an 8×8 array,
far slower than Verilator, but it needs no build and checks a small unit in
milliseconds. Testbenches are `async def tb(ctx)` functions (Amaranth 0.5).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from amaranth.hdl import Elaboratable
from amaranth.sim import Simulator

__all__ = ["run_simulation", "stream_get", "stream_put"]

Testbench = Callable[[Any], Awaitable[None]]


def run_simulation(
    dut: Elaboratable,
    testbenches: Sequence[Testbench],
    *,
    clock_period: float | None = 1e-8,
    vcd: Path | str | None = None,
    background: Sequence[Testbench] = (),
) -> None:
    """Simulate `dut` until every testbench in `testbenches` returns.

    `clock_period=None` for purely combinational designs (no `sync` domain).
    `background` testbenches (e.g. a randomly-ready sink) run alongside but do
    not keep the simulation alive. `vcd` writes a waveform for debugging.
    """
    if not testbenches:
        raise ValueError("run_simulation needs at least one testbench")
    sim = Simulator(dut)
    if clock_period is not None:
        sim.add_clock(clock_period)
    for tb in testbenches:
        sim.add_testbench(tb)
    for tb in background:
        sim.add_testbench(tb, background=True)
    with sim.write_vcd(str(vcd)) if vcd is not None else nullcontext():
        sim.run()


async def stream_put(ctx: Any, stream: Any, payload: Any) -> None:
    """Send one beat on a stream input of the DUT and wait for its transfer."""
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx: Any, stream: Any) -> Any:
    """Receive one beat from a stream output of the DUT (ready held high while waiting)."""
    ctx.set(stream.ready, 1)
    (payload,) = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload
