"""Stream width converter between bus beats and unit-sized items (powers of two of bytes).

Why: memory moves `mem_bytes_per_cycle` bytes a beat, while the units take
other sizes (weight rows, 4-byte words, parameter words, 4 LUT entries, C-byte
rows, routing records). One converter, used in both directions by
`rtl.layer_sequencer` (DMA reads → units, units → DMA writes):

- split (`out_bytes <= in_bytes`): each input beat gives `in/out` items,
  lowest bytes first, one per cycle;
- gather (`out_bytes > in_bytes`): `out/in` beats make one item, the first
  beat in the lowest bytes.

`start` (a pulse) loads `count`, the number of items to produce; once they
are out, the rest of the current input beat and any further beats are
dropped (the tail padding of a DMA transfer rounded up to whole beats).
`idle` is high when no items remain.
"""

from __future__ import annotations

from amaranth import Module, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from pymodel.config import ConfigError

from .checks import invariant

__all__ = ["Resizer"]

COUNT_BITS = 32


class Resizer(wiring.Component):
    """`in_bytes`-wide beats → `out_bytes`-wide items (see the module docstring)."""

    def __init__(self, in_bytes: int, out_bytes: int) -> None:
        for name, value in (("in_bytes", in_bytes), ("out_bytes", out_bytes)):
            if not isinstance(value, int) or value < 1 or value & (value - 1):
                raise ConfigError(f"Resizer.{name} = {value!r} must be a power of two")
        self.in_bytes, self.out_bytes = in_bytes, out_bytes
        super().__init__(
            {
                "i": In(stream.Signature(unsigned(8 * in_bytes))),
                "o": Out(stream.Signature(unsigned(8 * out_bytes))),
                "start": In(1),
                "count": In(COUNT_BITS),
                "idle": Out(1),
            }
        )

    def elaborate(self, platform):
        m = Module()
        remaining = Signal(COUNT_BITS)
        m.d.comb += self.idle.eq(remaining == 0)
        o_fire = self.o.valid & self.o.ready
        # What `sim.formal`'s proof of the stream rule assumes of the sequencer that drives it.
        # (The rule itself is no invariant here: `o` follows `i`, which an abort may end.)
        invariant(m, ~self.start | (remaining == 0), "Resizer restarted with items left")
        with m.If(self.start):
            m.d.sync += remaining.eq(self.count)
        with m.Elif(o_fire):
            m.d.sync += remaining.eq(remaining - 1)

        if self.out_bytes <= self.in_bytes:
            ratio = self.in_bytes // self.out_bytes
            m.d.comb += self.o.valid.eq(self.i.valid & (remaining != 0))
            if ratio == 1:
                m.d.comb += self.o.payload.eq(self.i.payload)
                end_of_beat = 1
            else:
                idx = Signal(range(ratio))
                m.d.comb += self.o.payload.eq(self.i.payload.word_select(idx, 8 * self.out_bytes))
                end_of_beat = (idx == ratio - 1) | (remaining == 1)
                with m.If(o_fire):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(end_of_beat):
                        m.d.sync += idx.eq(0)
            m.d.comb += self.i.ready.eq((o_fire & end_of_beat) | (remaining == 0))
        else:
            ratio = self.out_bytes // self.in_bytes
            cnt = Signal(range(ratio))
            full = Signal()
            m.d.comb += [
                self.o.valid.eq(full),
                self.i.ready.eq(~full | (remaining == 0)),
            ]
            with m.If(self.i.valid & self.i.ready & (remaining != 0)):
                m.d.sync += self.o.payload.word_select(cnt, 8 * self.in_bytes).eq(self.i.payload)
                m.d.sync += cnt.eq(cnt + 1)
                with m.If(cnt == ratio - 1):
                    m.d.sync += [cnt.eq(0), full.eq(1)]
            with m.If(o_fire):
                m.d.sync += full.eq(0)
            with m.If(self.start):
                m.d.sync += [cnt.eq(0), full.eq(0)]
        return m
