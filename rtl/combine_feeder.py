"""The combine feeder: a token's terms from the term buffer to the combiner.

Why: the combiner sums, per C-lane chunk of a token's output row, the
token's terms: each routed slot's expert-output chunk with its gate weight
(0 for a slot dropped by capacity), then the shared expert's chunk with the
shared weight. The combine phase fetches a token's rows into the term
buffer (term `j` in row `j`, the shared term in row `k`); this reads them
chunk by chunk, the `terms` terms of a chunk back to back, `last` on the
chunk's final term.
"""

from __future__ import annotations

from amaranth import Module, Mux, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from contract import layout
from pymodel.config import AccelConfig

from .combine import CombineShapes
from .streams import MemoryReader

__all__ = ["CombineFeeder"]


class CombineFeeder(wiring.Component):
    """Feeds one token's terms to the combiner (see the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the array's width, `max_top_k`, `max_d_model` and
        `gate_weight_bits`.

    Ports
    -----
    start : In(1)
        Start from chunk 0, term 0.
    chunks, terms : In
        C-lane chunks of a row and terms of a chunk, captured at `start`.
    k : In
        The routed slots of a token (term `k` is the shared expert's).
    kept, weights, shared_weight : In
        Per slot: kept (else weight 0) and its gate weight; the shared weight.
    running : Out(1)
        Terms remain to be read.
    rd : In(ReadPort.Signature)
        To the term buffer's read port.
    o : Out(stream)
        The combiner's terms.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        self.row_words = layout.row_bytes(cfg, cfg.max_d_model) // cfg.cols
        self.word = data.ArrayLayout(unsigned(8), cfg.cols)
        weight = unsigned(cfg.gate_weight_bits)
        super().__init__(
            {
                "start": In(1),
                "chunks": In(range(self.row_words + 1)),
                "terms": In(range(cfg.max_top_k + 2)),
                "k": In(range(cfg.max_top_k + 1)),
                "kept": In(data.ArrayLayout(1, cfg.max_top_k)),
                "weights": In(data.ArrayLayout(weight, cfg.max_top_k)),
                "shared_weight": In(weight),
                "running": Out(1),
                "rd": In(
                    ReadPort.Signature(
                        addr_width=ceil_log2((cfg.max_top_k + 1) * self.row_words),
                        shape=self.word,
                    )
                ),
                "o": Out(stream.Signature(CombineShapes(cfg, cfg.cols).term)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        ct = m.submodules.reader = MemoryReader(
            len(self.rd.addr),
            self.word,
            outer=self.row_words,
            inner=cfg.max_top_k + 1,
            side=data.StructLayout({"weight": unsigned(cfg.gate_weight_bits), "last": 1}),
        )
        wiring.connect(m, ct.rd, wiring.flipped(self.rd))
        j = ct.inner
        weight = Mux(self.kept[j], self.weights[j], 0)
        m.d.comb += [
            ct.start.eq(self.start),
            ct.outer_count.eq(self.chunks),
            ct.inner_count.eq(self.terms),
            self.running.eq(ct.running),
            ct.addr.eq(j * self.row_words + ct.outer),
            ct.side_in.last.eq(ct.last_inner),
            ct.side_in.weight.eq(Mux(j == self.k, self.shared_weight, weight)),
            self.o.valid.eq(ct.o.valid),
            self.o.payload.weight.eq(ct.o.payload.side.weight),
            self.o.payload.last.eq(ct.o.payload.side.last),
            ct.o.ready.eq(self.o.ready),
        ]
        for lane in range(cfg.cols):
            m.d.comb += self.o.payload.values[lane].eq(ct.o.payload.data[lane])
        return m
