"""Formal harnesses of the GEMM engine's flow control: PostProc's admission and the tile credits.

The array never stalls, so a final row it injects must always find room in
post-processing. Two halves make that true, and each is proved on its own
unit with everything else free (inputs, payloads, handshake timing, reset):

- `PostProcHarness`: PostProc admits a beat only while fewer than
  `buffer_depth` beats are inside (pipeline + output FIFO): `inp.ready`
  is exactly "inside < depth", `busy` exactly "inside > 0", an output beat
  only for a beat inside, and the stream rule on `out`. So its FIFO, whose
  write has no full check, never overflows.
- `TileCreditHarness`: the tile sequencer injects final rows only against
  credits: with credits returned at any time for rows still outstanding,
  final rows outstanding never exceed `credits`; the cycle counters
  partition every busy cycle (busy = MAC + weight + activation + output
  stalls + drain).
"""

from __future__ import annotations

from amaranth import Module, Signal, Value
from amaranth.hdl import Assert, Assume, Elaboratable

from pymodel.config import AccelConfig
from rtl.postproc import PostProc
from rtl.tile_sequencer import TileSequencer
from sim.formal import assume_stream_rules, check_stream_rules

SMALL_ENGINE = AccelConfig(
    rows=2,
    cols=2,
    m_tile=2,
    max_tokens=4,
    max_d_model=4,
    max_d_ff=4,
    max_experts=2,
    max_top_k=2,
    max_groups=2,
)
"""Two lanes, K and N of two tiles, M of two blocks: every walker case in a few dozen cycles."""


class PostProcHarness(Elaboratable):
    """`dut` (a `PostProc`) with a free producer and consumer, checked against a beat count."""

    def __init__(self, dut: PostProc) -> None:
        self.dut = dut
        self.inp_valid = Signal()
        self.inp_payload = Signal(dut.inp.payload.shape())
        self.out_ready = Signal()

    @property
    def ports(self) -> list[Signal]:
        return [self.inp_valid, Value.cast(self.inp_payload), self.out_ready]

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.dut = dut = self.dut
        m.d.comb += [
            dut.inp.valid.eq(self.inp_valid),
            dut.inp.payload.eq(self.inp_payload),
            dut.out.ready.eq(self.out_ready),
        ]
        assume_stream_rules(m, dut.inp, "inp")
        check_stream_rules(m, dut.out, "out")
        depth = dut.buffer_depth
        inside = Signal(range(depth + 2))
        accept = dut.inp.valid & dut.inp.ready
        pop = dut.out.valid & dut.out.ready
        m.d.sync += inside.eq(inside + accept - pop)
        m.d.comb += [
            Assert(inside <= depth, "more beats inside than the buffer holds"),
            Assert(dut.inp.ready == (inside < depth), "admission is not 'inside < depth'"),
            Assert(dut.busy == (inside != 0), "busy is not 'a beat inside'"),
            Assert(~dut.out.valid | (inside != 0), "an output beat with nothing inside"),
        ]
        return m


class TileCreditHarness(Elaboratable):
    """`dut` (a `TileSequencer`) with free commands, operands and credit returns."""

    def __init__(self, dut: TileSequencer) -> None:
        self.dut = dut
        self.inputs = {
            name: Signal(getattr(dut, name).shape(), name=f"env_{name}")
            for name in ("credit_return", "pp_busy", "counters_clear")
        }
        self.streams = {
            name: (Signal(name=f"{name}_valid"), Signal(getattr(dut, name).payload.shape()))
            for name in ("cmd", "act", "weight")
        }

    @property
    def ports(self) -> list[Signal]:
        return [
            *(Value.cast(s) for s in self.inputs.values()),
            *(Value.cast(s) for pair in self.streams.values() for s in pair),
        ]

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.dut = dut = self.dut
        for name, signal in self.inputs.items():
            m.d.comb += getattr(dut, name).eq(signal)
        for name, (valid, payload) in self.streams.items():
            port = getattr(dut, name)
            m.d.comb += [port.valid.eq(valid), port.payload.eq(payload)]
            assume_stream_rules(m, port, name)

        outstanding = Signal(range(dut.credits + 2))
        spent = dut.tag.valid & dut.tag.final
        returned = dut.credit_return
        m.d.comb += Assume(~returned | (outstanding != 0))  # a return is for a row in flight
        m.d.sync += outstanding.eq(outstanding + spent - returned)
        m.d.comb += Assert(outstanding <= dut.credits, "final rows in flight beyond the credits")

        c = dut.counters
        m.d.comb += Assert(
            c.busy == c.mac_cycles + c.stall_weight + c.stall_act + c.stall_out + c.drain,
            "a busy cycle not attributed to exactly one counter",
        )
        return m


def postproc_harness(cfg: AccelConfig = SMALL_ENGINE) -> PostProcHarness:
    return PostProcHarness(PostProc(cfg, param_rows=2))


def tile_credit_harness(cfg: AccelConfig = SMALL_ENGINE, credits: int = 2) -> TileCreditHarness:
    return TileCreditHarness(
        TileSequencer(cfg, m_block=2, param_rows=2, credits=credits, cooldown=1)
    )
