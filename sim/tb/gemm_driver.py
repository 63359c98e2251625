"""cocotb harness for `rtl.gemm_engine.GemmEngine`: streams, scoreboard, counters.

Shared by the engine's tests and `bench/gemm_bench.py`, so both drive the
engine the same way. Everything the engine sees comes from
`pymodel.gemm_engine` (golden outputs and stream orders).
"""

from __future__ import annotations

import random
from typing import Any

from amaranth import signed
from amaranth.lib import data
from cocotb.triggers import ClockCycles, RisingEdge

from pymodel.config import AccelConfig
from pymodel.gemm_engine import (
    GemmCase,
    activation_beats,
    activation_lanes,
    command,
    lut_writes,
    output_beats,
    param_writes,
    reference_output,
    tile_k,
    weight_beats,
)
from rtl.postproc import lut_write_layout, output_layout, param_write_layout
from rtl.tile_sequencer import (
    CommandError,
    counter_layout,
    gemm_command_layout,
    weight_beat_layout,
)

from .payload import unpack
from .scoreboard import Scoreboard
from .stream import StreamDriver, StreamSink, reset_dut, start_clock

__all__ = ["GemmEngineHarness"]


class GemmEngineHarness:
    """Drives every engine stream; `run(case)` checks one command bit for bit.

    `set_backpressure(idle_prob, ready_prob)` applies random source gaps to
    `cmd`/`act`/`weight`/`param_w`/`lut_w` and random `ready` to `out` for the
    next runs.
    """

    def __init__(
        self, dut: Any, cfg: AccelConfig, m_block: int, param_rows: int, seed: int = 0
    ) -> None:
        self.dut, self.cfg, self.m_block, self.param_rows = dut, cfg, m_block, param_rows
        self.rng = random.Random(seed)
        self.clk = dut.clk
        self._board: Scoreboard | None = None

    async def start(self) -> None:
        """Start the clock, reset, and attach the stream drivers."""
        dut, clk, cfg, rng = self.dut, self.clk, self.cfg, self.rng
        start_clock(clk)
        dut.counters_clear.value = 0
        await reset_dut(dut, clk)
        self.cmd = StreamDriver.from_prefix(
            dut, "cmd", clk, gemm_command_layout(cfg, self.param_rows), rng=rng
        )
        self.act = StreamDriver.from_prefix(
            dut, "act", clk, _row(cfg.act_bits, activation_lanes(cfg)), rng=rng
        )
        self.weight = StreamDriver.from_prefix(dut, "weight", clk, weight_beat_layout(cfg), rng=rng)
        self.param = StreamDriver.from_prefix(
            dut, "param_w", clk, param_write_layout(cfg, self.param_rows), rng=rng
        )
        self.lut = StreamDriver.from_prefix(dut, "lut_w", clk, lut_write_layout(cfg), rng=rng)
        self.out = StreamSink.from_prefix(
            dut, "out", clk, output_layout(cfg), rng=rng, callback=self._observe
        )

    def set_backpressure(self, idle_prob: float, ready_prob: float) -> None:
        for driver in (self.cmd, self.act, self.weight, self.param, self.lut):
            driver.idle_prob = idle_prob
        self.out.ready_prob = ready_prob

    def _observe(self, item: Any) -> None:
        if self._board is None:
            raise AssertionError(f"engine output {item!r} while no command was running")
        # The `wide` lanes carry only WIDE mode's logits (checked by the top-level tests).
        self._board.observe({key: value for key, value in item.items() if key != "wide"})

    def read_counters(self) -> dict[str, int]:
        return unpack(counter_layout(), self.dut.counters.value.to_unsigned())

    async def clear_counters(self) -> None:
        self.dut.counters_clear.value = 1
        await RisingEdge(self.clk)
        self.dut.counters_clear.value = 0

    async def load_parameters(self, case: GemmCase) -> None:
        self.param.send_many(param_writes(case, self.cfg))
        if case.lut is not None:
            self.lut.send_many(lut_writes(case.lut, self.cfg))
        await self.param.wait_drained(timeout_cycles=10 * (self.param.pending + 10))
        await self.lut.wait_drained(timeout_cycles=10 * (self.lut.pending + 10))

    async def wait_idle(self, timeout_cycles: int) -> None:
        for _ in range(timeout_cycles):
            if str(self.dut.busy.value) == "0":
                return
            await RisingEdge(self.clk)
        raise AssertionError(f"engine still busy after {timeout_cycles} cycles")

    async def run(self, case: GemmCase, *, garbage: bool = True) -> dict[str, int]:
        """Run one command, check every output beat, return the counters it took.

        `garbage` puts random values in don't-care lanes (padding beyond K/N),
        which the engine must ignore.
        """
        cfg, mb = self.cfg, self.m_block
        await self.load_parameters(case)
        await self.clear_counters()
        expected = output_beats(reference_output(case, cfg), cfg, mb)
        self._board = Scoreboard(
            f"gemm {case.mode.name} {case.fmt.name} M={case.m} K={case.k} N={case.n}"
        )
        self._board.expect_many(expected)
        fill = self.rng if garbage else None
        weights = weight_beats(case, cfg, mb, fill)
        acts = activation_beats(case, cfg, mb, fill)
        received = len(self.out.items)
        self.cmd.send(command(case, cfg))
        self.weight.send_many(weights)
        self.act.send_many(acts)
        budget = 40 * (len(acts) + len(weights) + len(expected)) + 20 * (cfg.rows + cfg.cols) + 500
        await self.out.wait_for(received + len(expected), timeout_cycles=budget)
        await self.wait_idle(200)
        if self.weight.pending or self.act.pending:
            raise AssertionError(
                f"engine finished with {self.weight.pending} weight and {self.act.pending} "
                "activation beats unconsumed"
            )
        await ClockCycles(self.clk, 2)
        self._board.check()
        self._board = None
        if int(self.dut.error.value.to_unsigned()) != CommandError.NONE.value:
            raise AssertionError(f"engine flagged error {self.dut.error.value} on a valid command")
        counters = self.read_counters()
        self.check_counters(case, counters)
        return counters

    def check_counters(self, case: GemmCase, counters: dict[str, int]) -> None:
        """Counter identities every command must satisfy.

        `macs` counts the multiplies done: a 2:4 row does half its K positions.
        """
        cfg = self.cfg
        tiles_per_block = -(-case.n // cfg.cols) * case.passes * -(-case.k // tile_k(cfg, case.fmt))
        expect_rows = case.m * tiles_per_block
        parts = ("mac_cycles", "stall_weight", "stall_act", "stall_out", "drain")
        problems = []
        if counters["mac_cycles"] != expect_rows:
            problems.append(f"mac_cycles {counters['mac_cycles']} != rows issued {expect_rows}")
        kept = case.k // 2 if case.fmt.sparse else case.k
        if counters["macs"] != case.m * kept * case.n * case.passes:
            problems.append(f"macs {counters['macs']} != M·K·N·passes (K kept: {kept})")
        if sum(counters[p] for p in parts) != counters["busy"]:
            problems.append(f"buckets do not add up to busy: {counters}")
        if problems:
            raise AssertionError("; ".join(problems))

    async def expect_rejected(self, cmd: dict, cause: CommandError) -> None:
        """Send a bad command: it must raise `error = cause`, finish, and output nothing."""
        before = len(self.out.items)
        self.cmd.send(cmd)
        await self.cmd.wait_drained(timeout_cycles=100)
        await ClockCycles(self.clk, 3)
        got = CommandError(int(self.dut.error.value.to_unsigned()))
        if got != cause:
            raise AssertionError(f"command {cmd} gave error {got.name}, expected {cause.name}")
        if str(self.dut.busy.value) != "0" or len(self.out.items) != before:
            raise AssertionError(f"rejected command {cmd} started work")


def _row(bits: int, lanes: int) -> data.ArrayLayout:
    return data.ArrayLayout(signed(bits), lanes)
