"""The combine phase: per token, its expert-output rows fetched and fed to the combiner.

Why: after the experts, each token's output is the weighted sum of the
expert-output rows of its kept slots (and the shared expert's row). For
token `t` (slots `s = t·k … t·k + k - 1`), in order:

- per slot `j`: read the slot's inverse entry, gate weight and the token's
  shared weight (one cycle), note whether the slot was kept; a kept slot's
  row (`scratch_addr + row · row_bytes`) is read into term row `j` of the
  term buffer (`read` with `read_addr`; the sequencer issues the DMA read
  and reports `rd_done`);
- with a shared expert, its row (`shared_scratch_addr + t · row_bytes`)
  into term row `k`;
- the terms go to the combiner (`rtl.combine_feeder`), and the next token
  starts once the last of them is taken.

`done` pulses as the last token's terms are all taken.
"""

from __future__ import annotations

from amaranth import Array, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from contract import layout
from pymodel.config import AccelConfig

from .combine import CombineShapes
from .combine_feeder import CombineFeeder
from .dispatch_tables import inverse_layout

__all__ = ["CombinePhase"]


class CombinePhase(wiring.Component):
    """Fetches each token's terms into the term buffer and feeds them (see the module).

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the token and top-k limits, the array's width, `max_d_model`
        and `gate_weight_bits`.

    Ports
    -----
    start : In(1)
        Start at token 0.
    done : Out(1)
        The last token's terms were taken (a pulse).
    tokens, k, shared : In
        Tokens, slots a token and whether a shared expert's row is added.
    row_bytes : In
        Bytes of an expert-output row in memory.
    scratch_addr, shared_scratch_addr : In
        The routed and shared experts' output rows in memory.
    read, read_addr : Out
        Read `row_bytes` bytes at `read_addr` into the term buffer (a pulse).
    rd_done : In(1)
        That read is complete.
    term_start, term_row : Out
        The term buffer row the next read fills (to its loader).
    inverse_rd, weight_rd, shared_weight_rd : In(ReadPort.Signature)
        To the inverse, slot-weight and shared-weight tables.
    term_rd : In(ReadPort.Signature)
        To the term buffer's read port.
    terms : Out(stream)
        The combiner's terms.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        pairs_max = cfg.max_tokens * cfg.max_top_k
        weight = unsigned(cfg.gate_weight_bits)
        row_bytes = layout.row_bytes(cfg, cfg.max_d_model)
        self.term_words = row_bytes // cfg.cols
        super().__init__(
            {
                "start": In(1),
                "done": Out(1),
                "tokens": In(range(cfg.max_tokens + 1)),
                "k": In(range(cfg.max_top_k + 1)),
                "shared": In(1),
                "row_bytes": In(range(row_bytes + 1)),
                "scratch_addr": In(cfg.addr_bits),
                "shared_scratch_addr": In(cfg.addr_bits),
                "read": Out(1),
                "read_addr": Out(cfg.addr_bits),
                "rd_done": In(1),
                "term_start": Out(1),
                "term_row": Out(range(cfg.max_top_k + 2)),
                "inverse_rd": In(
                    ReadPort.Signature(addr_width=ceil_log2(pairs_max), shape=inverse_layout(cfg))
                ),
                "weight_rd": In(ReadPort.Signature(addr_width=ceil_log2(pairs_max), shape=weight)),
                "shared_weight_rd": In(
                    ReadPort.Signature(addr_width=ceil_log2(cfg.max_tokens), shape=weight)
                ),
                "term_rd": In(
                    ReadPort.Signature(
                        addr_width=ceil_log2((cfg.max_top_k + 1) * self.term_words),
                        shape=data.ArrayLayout(unsigned(8), cfg.cols),
                    )
                ),
                "terms": Out(stream.Signature(CombineShapes(cfg, cfg.cols).term)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        t = Signal(range(cfg.max_tokens + 1))
        s = Signal(range(cfg.max_tokens * cfg.max_top_k + 1))
        j = Signal(range(cfg.max_top_k + 1))
        kept = Array(Signal(name=f"kept_{i}") for i in range(cfg.max_top_k))
        weights = Array(Signal(cfg.gate_weight_bits, name=f"w_{i}") for i in range(cfg.max_top_k))
        shared_weight = Signal(cfg.gate_weight_bits)
        feeder = m.submodules.feeder = CombineFeeder(cfg)
        wiring.connect(m, feeder.rd, wiring.flipped(self.term_rd))
        wiring.connect(m, feeder.o, wiring.flipped(self.terms))
        m.d.comb += [
            feeder.chunks.eq(self.row_bytes >> exact_log2(cfg.cols)),
            feeder.terms.eq(self.k + self.shared),
            feeder.k.eq(self.k),
            feeder.shared_weight.eq(shared_weight),
        ]
        for i in range(cfg.max_top_k):
            m.d.comb += [feeder.kept[i].eq(kept[i]), feeder.weights[i].eq(weights[i])]

        inv, wts, sh = self.inverse_rd, self.weight_rd, self.shared_weight_rd
        with m.FSM(name="combine"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [t.eq(0), s.eq(0), j.eq(0)]
                    m.next = "SLOT"
            with m.State("SLOT"):
                m.d.comb += [inv.addr.eq(s + j), wts.addr.eq(s + j), sh.addr.eq(t)]
                m.next = "GOT"
            with m.State("GOT"):
                m.d.comb += [inv.addr.eq(s + j), wts.addr.eq(s + j), sh.addr.eq(t)]
                m.d.sync += [
                    kept[j].eq(inv.data.valid),
                    weights[j].eq(wts.data),
                    shared_weight.eq(sh.data),
                ]
                m.d.comb += [self.term_start.eq(1), self.term_row.eq(j)]
                with m.If(inv.data.valid):
                    m.d.comb += [
                        self.read.eq(1),
                        self.read_addr.eq(self.scratch_addr + inv.data.row * self.row_bytes),
                    ]
                    m.next = "FETCH"
                with m.Else():
                    m.next = "STEP"
            with m.State("FETCH"):
                with m.If(self.rd_done):
                    m.next = "STEP"
            with m.State("STEP"):
                m.d.sync += j.eq(j + 1)
                with m.If(j == self.k - 1):
                    with m.If(self.shared):
                        m.d.comb += [
                            self.term_start.eq(1),
                            self.term_row.eq(self.k),
                            self.read.eq(1),
                            self.read_addr.eq(self.shared_scratch_addr + t * self.row_bytes),
                        ]
                        m.next = "SHARED"
                    with m.Else():
                        m.next = "FEED"
                with m.Else():
                    m.next = "SLOT"
            with m.State("SHARED"):
                with m.If(self.rd_done):
                    m.next = "FEED"
            with m.State("FEED"):
                m.d.comb += feeder.start.eq(1)
                m.next = "FEEDING"
            with m.State("FEEDING"):
                with m.If(~feeder.running & ~feeder.o.valid):
                    m.d.sync += [t.eq(t + 1), s.eq(s + self.k), j.eq(0)]
                    with m.If(t == self.tokens - 1):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "SLOT"
        return m
