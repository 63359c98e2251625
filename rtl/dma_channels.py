"""The layer sequencer's DMA channels: one read and one write transfer at a time, resized.

Why: the sequencer moves many kinds of data over one DMA read and one DMA
write engine, one transfer at a time per direction: a command names the
transfer (address, length) and the unit it serves (`sel`); the channel
registers the command for the DMA, resizes the beats to or from that unit's
item size (`rtl.resize.Resizer`, which also drops a transfer's padding past
`count` items) and steers them by `sel` (`rtl.streams` demux and mux).
"""

from __future__ import annotations

import enum as py_enum
from collections.abc import Callable

from amaranth import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .dma import dma_command_layout
from .resize import COUNT_BITS, Resizer
from .streams import CommandRegister, StreamDemux, StreamMux

__all__ = ["ReadChannel", "WriteChannel"]


def _issue_ports(sel: type[py_enum.Enum], addr_bits: int) -> dict:
    return {
        "issue": In(1),
        "addr": In(addr_bits),
        "length": In(32),
        "sel": In(sel),
        "count": In(COUNT_BITS),
        "cmd": Out(stream.Signature(dma_command_layout(addr_bits))),
    }


def _unit_streams(items: dict[py_enum.Enum, int], flow: wiring.Flow) -> dict:
    """One item stream per unit, named after its member in lower case."""
    return {m.name.lower(): flow(stream.Signature(unsigned(8 * size))) for m, size in items.items()}


def _command(m: Module, channel: wiring.Component) -> Signal:
    """The DMA command register loaded at `issue`; returns the unit it serves (held till next)."""
    command = m.submodules.command = CommandRegister(channel.cmd.payload.shape())
    wiring.connect(m, command.o, wiring.flipped(channel.cmd))
    m.d.comb += [
        command.load.eq(channel.issue),
        command.data.addr.eq(channel.addr),
        command.data.length.eq(channel.length),
    ]
    sel = Signal.like(channel.sel)
    with m.If(channel.issue):
        m.d.sync += sel.eq(channel.sel)
    return sel


class _Channel(wiring.Component):
    """What both channels share: the issue ports, the command register, one stream per unit.

    A channel gives the flow of its unit streams (`_unit_flow`) and its own
    ports (`_own_ports(beat_bytes, sel)`); `addr_bits` is the bus address width
    (`AccelConfig.addr_bits`).
    """

    _unit_flow: wiring.Flow
    _own_ports: Callable[[int, type[py_enum.Enum]], dict[str, wiring.Member]]

    def __init__(
        self,
        beat_bytes: int,
        sel: type[py_enum.Enum],
        items: dict[py_enum.Enum, int],
        *,
        addr_bits: int,
    ) -> None:
        self._sel, self._items, self._beat = sel, items, beat_bytes
        members = _issue_ports(sel, addr_bits) | self._own_ports(beat_bytes, sel)
        super().__init__(members | _unit_streams(items, self._unit_flow))


class ReadChannel(_Channel):
    """DMA reads into the unit each transfer serves, as items of that unit's size.

    Parameters
    ----------
    beat_bytes : int
        The DMA's beat.
    sel : enum class
        The units; `items[member]` is the item size of the unit `member`.
    items : dict
        Item bytes per unit (powers of two).
    addr_bits : int
        The bus address width (`AccelConfig.addr_bits`).

    Ports
    -----
    issue : In(1)
        Issue a read: `addr`, `length` bytes, for unit `sel`, `count` items.
    cmd : Out(stream)
        To the DMA's read command.
    data : In(stream)
        The DMA's read beats.
    <member> : Out(stream)
        One item stream per unit, named after its member in lower case.
    """

    _unit_flow = Out

    @staticmethod
    def _own_ports(beat_bytes: int, sel: type[py_enum.Enum]) -> dict[str, wiring.Member]:
        return {"data": In(stream.Signature(unsigned(8 * beat_bytes)))}

    def elaborate(self, platform):
        m = Module()
        sel = _command(m, self)
        demux = m.submodules.demux = StreamDemux(unsigned(8 * self._beat), self._sel)
        m.d.comb += demux.sel.eq(sel)
        wiring.connect(m, wiring.flipped(self.data), demux.i)
        for member, size in self._items.items():
            name = member.name.lower()
            rz = m.submodules[f"rz_{name}"] = Resizer(self._beat, size)
            m.d.comb += [rz.start.eq(self.issue & (self.sel == member)), rz.count.eq(self.count)]
            wiring.connect(m, getattr(demux, name), rz.i)
            wiring.connect(m, rz.o, wiring.flipped(getattr(self, name)))
        return m


class WriteChannel(_Channel):
    """DMA writes from the unit each transfer serves, resized to beats.

    Parameters
    ----------
    beat_bytes, sel, items, addr_bits
        As for `ReadChannel`; here each unit's items are gathered into beats.

    Ports
    -----
    issue : In(1)
        Issue a write: `addr`, `length` bytes, from unit `sel`, `count` beats.
    cmd : Out(stream)
        To the DMA's write command.
    data : Out(stream)
        The DMA's write beats.
    done : In(1)
        The DMA finished the write.
    busy : Out(1)
        A write is outstanding: from `issue` (which wins) until `done`.
    idle : Out(len(sel))
        Per unit (bit `member.value`): its resizer has no beats left to send.
    <member> : In(stream)
        One item stream per unit, named after its member in lower case.
    """

    _unit_flow = In

    @staticmethod
    def _own_ports(beat_bytes: int, sel: type[py_enum.Enum]) -> dict[str, wiring.Member]:
        return {
            "data": Out(stream.Signature(unsigned(8 * beat_bytes))),
            "done": In(1),
            "busy": Out(1),
            "idle": Out(max(m.value for m in sel) + 1),
        }

    def elaborate(self, platform):
        m = Module()
        sel = _command(m, self)
        mux = m.submodules.mux = StreamMux(unsigned(8 * self._beat), self._sel)
        m.d.comb += mux.sel.eq(sel)
        wiring.connect(m, mux.o, wiring.flipped(self.data))
        with m.If(self.issue):
            m.d.sync += self.busy.eq(1)
        with m.Elif(self.done):
            m.d.sync += self.busy.eq(0)
        for member, size in self._items.items():
            name = member.name.lower()
            rz = m.submodules[f"rz_{name}"] = Resizer(size, self._beat)
            m.d.comb += [
                rz.start.eq(self.issue & (self.sel == member)),
                rz.count.eq(self.count),
                self.idle[member.value].eq(rz.idle),
            ]
            wiring.connect(m, wiring.flipped(getattr(self, name)), rz.i)
            wiring.connect(m, rz.o, getattr(mux, name))
        return m
