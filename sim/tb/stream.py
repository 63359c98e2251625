"""cocotb driver and sink for Amaranth `lib.stream` ports, with random valid/ready gaps.

Amaranth names a stream port's signals `<port>__valid`, `<port>__ready` and
`<port>__payload` (nested ports: `outer__inner__valid`); `from_prefix` finds
them. Timing discipline (one coroutine per stream, two awaits per cycle):
values are driven just after the rising edge and `valid & ready` is sampled
in the `ReadOnly` phase of the same cycle, so combinational `ready` paths are
seen settled. The driver holds `valid` and the payload until the transfer
(AXI-style, stricter than lib.stream needs) and puts random garbage on the
payload while idle, which catches a design that samples without `valid`.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import cocotb
from cocotb.clock import Clock
from cocotb.handle import SimHandleBase
from cocotb.triggers import ClockCycles, Event, First, ReadOnly, RisingEdge

from .payload import pack, unpack, width_of

__all__ = ["StreamDriver", "StreamSink", "reset_dut", "start_clock"]


def start_clock(clk: SimHandleBase, period_ns: int = 10) -> None:
    """Start a GPI clock (no Python per edge) on `clk`."""
    Clock(clk, period_ns, unit="ns").start(start_high=False)


async def reset_dut(dut: Any, clk: SimHandleBase, cycles: int = 2) -> None:
    """Hold Amaranth's synchronous `rst` high for `cycles` rising edges."""
    dut.rst.value = 1
    await ClockCycles(clk, cycles)
    dut.rst.value = 0
    await RisingEdge(clk)


def _signal(dut: Any, name: str) -> SimHandleBase:
    try:
        return getattr(dut, name)
    except AttributeError:
        raise AttributeError(f"{dut._name} has no signal {name!r}") from None


class _StreamEnd:
    """What a driver and a sink share: a stream port's signals, its layout and its name.

    Built by `from_prefix` from the Amaranth port's name; `rng` makes runs
    reproducible (each end gets its own default seed).
    """

    default_seed = 0

    def __init__(
        self,
        clk: SimHandleBase,
        port: dict[str, SimHandleBase],
        layout: Any,
        *,
        rng: random.Random | None = None,
        name: str = "stream",
    ) -> None:
        self.clk, self.valid, self.ready, self.payload = clk, *port.values()
        self.layout = layout
        self.rng = rng or random.Random(self.default_seed)
        self.name = name

    @classmethod
    def from_prefix(cls, dut: Any, prefix: str, clk: SimHandleBase, layout: Any, **kwargs: Any):
        """The end for the Amaranth stream port named `prefix` (e.g. `"cmd"`, `"out"`)."""
        port = {part: _signal(dut, f"{prefix}__{part}") for part in ("valid", "ready", "payload")}
        return cls(clk, port, layout, name=prefix, **kwargs)


class StreamDriver(_StreamEnd):
    """Sends items into a stream *input* of the DUT.

    `layout` is the stream's payload layout or shape (the RTL's own object);
    `idle_prob` is the chance of inserting an idle cycle before each beat,
    i.e. source-side starvation for the DUT. `rng` makes runs reproducible.
    """

    def __init__(self, *args: Any, idle_prob: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 <= idle_prob < 1.0:
            raise ValueError(f"{self.name}: idle_prob must be in [0, 1), got {idle_prob}")
        self.idle_prob = idle_prob
        self.sent = 0
        self._width = width_of(self.layout)
        self._queue: deque[int] = deque()
        self._drained = Event()
        self._drained.set()
        self.valid.value = 0
        self._task = cocotb.start_soon(self._run())

    def send(self, item: Any) -> None:
        """Queue one item (packed now, so a bad value fails at the call site)."""
        self._queue.append(pack(self.layout, item))
        self._drained.clear()

    def send_many(self, items: Iterable[Any]) -> None:
        for item in items:
            self.send(item)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def wait_drained(self, timeout_cycles: int) -> None:
        """Wait until every queued item was accepted; AssertionError after `timeout_cycles`."""
        if not self._queue:
            return
        await First(self._drained.wait(), ClockCycles(self.clk, timeout_cycles))
        if self._queue:
            raise AssertionError(
                f"{self.name}: {len(self._queue)} item(s) not accepted within {timeout_cycles} "
                "cycles (DUT stuck or not ready)"
            )

    async def _run(self) -> None:
        driving = False
        accepted = False
        while True:
            await RisingEdge(self.clk)
            if accepted:
                self._queue.popleft()
                self.sent += 1
                driving = False
                if not self._queue:
                    self._drained.set()
            if not driving and self._queue and self.rng.random() >= self.idle_prob:
                driving = True
            if driving:
                self.valid.value = 1
                self.payload.value = self._queue[0]
            else:
                self.valid.value = 0
                self.payload.value = self.rng.getrandbits(self._width)
            await ReadOnly()
            accepted = driving and str(self.ready.value) == "1"


class StreamSink(_StreamEnd):
    """Accepts items from a stream *output* of the DUT, with random `ready`.

    `ready_prob` is the chance `ready` is high in a cycle (1.0: always ready),
    i.e. output backpressure for the DUT. Every accepted payload is unpacked
    with `layout`, appended to `items` and passed to `callback` (e.g. a
    `Scoreboard.observe`).
    """

    default_seed = 1

    def __init__(
        self,
        *args: Any,
        ready_prob: float = 1.0,
        callback: Callable[[Any], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not 0.0 < ready_prob <= 1.0:
            raise ValueError(f"{self.name}: ready_prob must be in (0, 1], got {ready_prob}")
        self.ready_prob = ready_prob
        self.callback = callback
        self.items: list[Any] = []
        self._target = 0
        self._reached = Event()
        self.ready.value = 0
        self._task = cocotb.start_soon(self._run())

    async def wait_for(self, count: int, timeout_cycles: int) -> list[Any]:
        """Wait until `count` items in total were received; AssertionError on timeout."""
        if len(self.items) < count:
            self._target = count
            self._reached.clear()
            await First(self._reached.wait(), ClockCycles(self.clk, timeout_cycles))
        if len(self.items) < count:
            raise AssertionError(
                f"{self.name}: received {len(self.items)} of {count} items within "
                f"{timeout_cycles} cycles"
            )
        return self.items[:count]

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            ready = self.ready_prob >= 1.0 or self.rng.random() < self.ready_prob
            self.ready.value = int(ready)
            await ReadOnly()
            if ready and str(self.valid.value) == "1":
                item = unpack(self.layout, self.payload.value.to_unsigned())
                self.items.append(item)
                if self.callback is not None:
                    self.callback(item)
                if self._target and len(self.items) >= self._target:
                    self._reached.set()
