"""A tiny stream unit for testing the simulation infrastructure itself.

`ToyStage` adds the two fields of its input struct into its output, behind a
one-entry register slice (valid never waits on ready), so a driver, a sink
and backpressure all matter.
"""

from amaranth import Module, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

IN_LAYOUT = data.StructLayout({"a": signed(8), "b": unsigned(4)})
OUT_LAYOUT = data.StructLayout({"total": signed(10), "b": unsigned(4)})


class ToyStage(wiring.Component):
    i: In(stream.Signature(IN_LAYOUT))
    o: Out(stream.Signature(OUT_LAYOUT))

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.i.ready.eq(self.o.ready | ~self.o.valid)
        with m.If(self.i.ready):
            m.d.sync += [
                self.o.valid.eq(self.i.valid),
                self.o.payload.total.eq(self.i.payload.a + self.i.payload.b + self.offset),
                self.o.payload.b.eq(self.i.payload.b),
            ]
        return m


def toy_model(item: dict, offset: int = 0) -> dict:
    """What ToyStage outputs for one input item."""
    return {"total": item["a"] + item["b"] + offset, "b": item["b"]}
