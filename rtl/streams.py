"""Stream building blocks of the layer sequencer: command register, demux, mux, memory reader.

Why: `rtl.layer_sequencer` issues commands to the DMA and the GEMM engine
one at a time, steers the DMA's read beats to one of several consumers and
its write beats from one of several producers, streams on-chip buffers out
through a synchronous read port in several places, and lines values up with
a memory read's latency. Each of those is one small, separately tested
block here instead of a hand-written copy.
"""

from __future__ import annotations

import enum as py_enum

from amaranth import Module, Signal
from amaranth.hdl import ShapeLike, ValueLike
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from pymodel.config import ConfigError

from .checks import sent_stream_invariants

__all__ = ["CommandRegister", "MemoryReader", "StreamDemux", "StreamMux", "delayed"]


def delayed(m: Module, value: ValueLike, cycles: int = 1, *, name: str = "delayed") -> Signal:
    """`value` as it was `cycles` clock cycles ago (a chain of registers, reset to 0).

    Why: a value used beside a synchronous memory read must wait for the read.
    """
    if isinstance(cycles, bool) or not isinstance(cycles, int) or cycles < 1:
        raise ConfigError(f"delayed: cycles = {cycles!r} must be an int >= 1")
    for stage in range(cycles):
        register = Signal.like(value, name=f"{name}_{stage + 1}")
        m.d.sync += register.eq(value)
        value = register
    return value


def _keyed_ports(
    shape: ShapeLike, sel: type[py_enum.Enum], common: str, keyed_flow: wiring.Flow
) -> tuple[dict[py_enum.Enum, str], dict[str, wiring.Member]]:
    """A switch's ports: `sel`, the one `common` stream, one stream per member of `sel`."""
    if not (isinstance(sel, type) and issubclass(sel, py_enum.Enum)) or not list(sel):
        raise ConfigError(f"the selector must be a non-empty enum, got {sel!r}")
    names = {member: member.name.lower() for member in sel}
    members = {"sel": In(sel), common: keyed_flow.flip()(stream.Signature(shape))}
    members.update({name: keyed_flow(stream.Signature(shape)) for name in names.values()})
    return names, members


class CommandRegister(wiring.Component):
    """A one-entry command register: `load` captures `data`, the stream offers it until taken.

    Why: the sequencer's FSM issues a command in one cycle and moves on; the
    receiver takes it when ready.

    Parameters
    ----------
    shape : ShapeLike
        The command's shape (a `lib.data` layout).

    Ports
    -----
    load : In(1)
        Capture `data` this cycle (a load wins over the command being taken).
    data : In(shape)
        The command to capture.
    o : Out(stream)
        The captured command, valid until `o.ready`.
    """

    def __init__(self, shape: ShapeLike) -> None:
        super().__init__({"load": In(1), "data": In(shape), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.load):
            m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(self.data)]
        with m.Elif(self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        return m


class StreamDemux(wiring.Component):
    """One input stream to the output named by `sel` (the others see no beats).

    Parameters
    ----------
    shape : ShapeLike
        The payload shape.
    sel : enum class
        One output per member, named after it in lower case.

    Ports
    -----
    sel : In(sel)
        The output the input goes to; with no member selected, nothing is taken.
    i : In(stream)
        The input.
    <member> : Out(stream)
        One output per member of `sel`.

    Raises
    ------
    ConfigError
        If `sel` is not a non-empty enum.
    """

    def __init__(self, shape: ShapeLike, sel: type[py_enum.Enum]) -> None:
        self._names, members = _keyed_ports(shape, sel, "i", Out)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for member, name in self._names.items():
            port = getattr(self, name)
            m.d.comb += [
                port.valid.eq(self.i.valid & (self.sel == member)),
                port.payload.eq(self.i.payload),
            ]
            with m.If(self.sel == member):
                m.d.comb += self.i.ready.eq(port.ready)
        return m


class StreamMux(wiring.Component):
    """The input named by `sel` to one output stream (the others are held).

    Parameters
    ----------
    shape : ShapeLike
        The payload shape.
    sel : enum class
        One input per member, named after it in lower case.

    Ports
    -----
    sel : In(sel)
        The input the output comes from.
    <member> : In(stream)
        One input per member of `sel`.
    o : Out(stream)
        The output.

    Raises
    ------
    ConfigError
        If `sel` is not a non-empty enum.
    """

    def __init__(self, shape: ShapeLike, sel: type[py_enum.Enum]) -> None:
        self._names, members = _keyed_ports(shape, sel, "o", In)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for member, name in self._names.items():
            port = getattr(self, name)
            m.d.comb += port.ready.eq(self.o.ready & (self.sel == member))
            with m.If(self.sel == member):
                m.d.comb += [self.o.valid.eq(port.valid), self.o.payload.eq(port.payload)]
        return m


class MemoryReader(wiring.Component):
    """Streams a memory out in a two-level scan (outer × inner) through a read port.

    Why: the Y write-back, the logit serialiser and the combine feeder all
    walk a buffer the same way: the address of the current (outer, inner)
    index is presented while the output stage can advance, and the word (with
    a sideband captured at the same time) is valid the next cycle.

    `start` (a pulse) captures the two counts and starts at (0, 0); the scan
    ends after `outer_count · inner_count` words. The user turns the current
    indices into `addr` and `side` combinationally.

    Parameters
    ----------
    addr_width : int
        Width of the read port's address.
    shape : ShapeLike
        The memory's word shape.
    outer, inner : int
        The largest outer and inner counts.
    side : ShapeLike or None
        The sideband captured with each word (e.g. a `last` flag); None for none.

    Ports
    -----
    start : In(1)
        Start a scan (it wins over a scan in progress).
    outer_count, inner_count : In
        The scan's counts, captured at `start`.
    outer, inner : Out
        The current indices; `last_inner`, `last_outer` flag their final values.
    addr : In(addr_width)
        The address of the current index.
    side_in : In(side)
        The sideband of the current index (only with a `side`).
    running : Out(1)
        Indices remain to be read.
    rd : In(ReadPort.Signature)
        To the memory's read port.
    o : Out(stream)
        {data, side} ({data} without a `side`).
    """

    def __init__(
        self,
        addr_width: int,
        shape: ShapeLike,
        outer: int,
        inner: int,
        side: ShapeLike | None = None,
    ) -> None:
        self._outer, self._inner = outer, inner
        self._side = side is not None
        fields = {"data": shape, **({"side": side} if self._side else {})}
        self._payload = data.StructLayout(fields)
        super().__init__(
            {
                "start": In(1),
                "outer_count": In(range(outer + 1)),
                "inner_count": In(range(inner + 1)),
                "outer": Out(range(outer + 1)),
                "inner": Out(range(inner + 1)),
                "last_outer": Out(1),
                "last_inner": Out(1),
                "addr": In(addr_width),
                **({"side_in": In(side)} if self._side else {}),
                "running": Out(1),
                "rd": In(ReadPort.Signature(addr_width=addr_width, shape=shape)),
                "o": Out(stream.Signature(self._payload)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        n_outer = Signal.like(self.outer_count)
        n_inner = Signal.like(self.inner_count)
        adv = ~self.o.valid | self.o.ready
        sent_stream_invariants(m, self)
        m.d.comb += [
            self.last_outer.eq(self.outer == n_outer - 1),
            self.last_inner.eq(self.inner == n_inner - 1),
            self.rd.en.eq(adv),
            self.rd.addr.eq(self.addr),
            self.o.payload.data.eq(self.rd.data),
        ]
        with m.If(adv):
            m.d.sync += self.o.valid.eq(self.running)
            if self._side:
                m.d.sync += self.o.payload.side.eq(self.side_in)
        with m.If(self.start):
            m.d.sync += [
                self.running.eq(1),
                self.outer.eq(0),
                self.inner.eq(0),
                n_outer.eq(self.outer_count),
                n_inner.eq(self.inner_count),
            ]
        with m.Elif(adv & self.running):
            m.d.sync += self.inner.eq(self.inner + 1)
            with m.If(self.last_inner):
                m.d.sync += [self.inner.eq(0), self.outer.eq(self.outer + 1)]
                with m.If(self.last_outer):
                    m.d.sync += self.running.eq(0)
        return m
