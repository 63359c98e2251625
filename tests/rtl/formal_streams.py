"""Formal harness of any unit's stream handshakes, built from its signature.

Every input port of the unit is free (the solver picks it each cycle, reset
included); every `lib.stream` interface the unit receives is assumed to obey
the stream rule (valid and payload held until ready), and every stream it
sends is checked against it. No unit-specific code: a new component gets the
check by being listed in the test. A unit whose contract asks more of its
environment (the resizer is restarted only when idle; the DMA's bus slave
obeys AXI) states it in an `environment` function of assumptions.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

from amaranth import Cat, Module, Signal, Value
from amaranth.hdl import Assume, Elaboratable
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import Flow

from sim.formal import assume_stream_rules, check_stream_rules


class StreamRulesHarness(Elaboratable):
    """`dut` (any `wiring.Component`) with free inputs and the stream rule on its streams."""

    def __init__(
        self,
        dut: wiring.Component,
        environment: Callable[[Module, wiring.Component], None] | None = None,
    ) -> None:
        self.dut = dut
        self.environment = environment
        self.free: dict[str, Signal] = {}
        for path, member, _ in dut.signature.flatten(dut):
            if member.flow is Flow.In:
                name = "__".join(str(p) for p in path)
                self.free[name] = Signal(member.shape, name=f"free__{name}")
        self.received = []
        self.sent = []
        for name, member in dut.signature.members.items():
            if member.is_signature and isinstance(member.signature, stream.Signature):
                target = self.received if member.flow is Flow.In else self.sent
                target.append(name)
        if not self.sent:
            raise ValueError(f"{type(dut).__name__} sends no stream: nothing to check")

    @property
    def ports(self) -> list[Value]:
        return [Value.cast(s) for s in self.free.values()]

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.dut = dut = self.dut
        for path, member, value in dut.signature.flatten(dut):
            if member.flow is Flow.In:
                m.d.comb += value.eq(self.free["__".join(str(p) for p in path)])
        for name in self.received:
            assume_stream_rules(m, getattr(dut, name), name)
        if self.environment is not None:
            self.environment(m, dut)
        for name in self.sent:
            check_stream_rules(m, getattr(dut, name), name)
        return m


def resizer_environment(m: Module, dut: wiring.Component) -> None:
    """A new transfer starts only once the last one has produced all its items."""
    m.d.comb += Assume(~dut.start | dut.idle)


def dma_environment(m: Module, dut: wiring.Component) -> None:
    """An AXI slave that holds R and B until taken, answers only bursts it was asked for,
    with OKAY; no cancel and no bad command.

    An abort (a bus error, a bad command or `cancel`) ends `rd_data` mid-beat
    by design; the simulation tests cover it (`test_dma.py`, the bus-chaos
    tests).
    """
    bus = dut.m_axi
    r = SimpleNamespace(
        valid=bus.rvalid, ready=bus.rready, payload=Cat(bus.rdata, bus.rresp, bus.rlast, bus.rid)
    )
    b = SimpleNamespace(valid=bus.bvalid, ready=bus.bready, payload=Cat(bus.bresp, bus.bid))
    assume_stream_rules(m, r, "axi_r")
    assume_stream_rules(m, b, "axi_b")
    m.d.comb += [
        Assume(bus.rresp == 0),
        Assume(bus.bresp == 0),
        Assume(~dut.cancel),
        Assume(~dut.error),
    ]
    reads = Signal(range(dut.max_outstanding + 2))
    writes = Signal(range(dut.max_outstanding + 2))
    ar, aw = bus.arvalid & bus.arready, bus.awvalid & bus.awready
    r_end, b_end = bus.rvalid & bus.rready & bus.rlast, bus.bvalid & bus.bready
    m.d.sync += [reads.eq(reads + ar - r_end), writes.eq(writes + aw - b_end)]
    m.d.comb += [Assume(~bus.rvalid | (reads != 0)), Assume(~bus.bvalid | (writes != 0))]
