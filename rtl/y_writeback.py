"""The Y write-back: an M-block's GEMM2 rows from the Y buffer to the DMA's write path.

Why: GEMM2 writes each M-block's expert outputs into the on-chip Y buffer;
they go to the expert's scratch rows in memory while the next block runs.
The write-back reads `words` bus-wide words of each of `rows` rows, in
order, as fast as the write path takes them.
"""

from __future__ import annotations

from amaranth import Module, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from contract import layout
from pymodel.config import AccelConfig

from .streams import MemoryReader

__all__ = ["YWriteBack"]


class YWriteBack(wiring.Component):
    """Streams `rows × words` words of the Y buffer (see the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the array's width, the bus width and `max_d_model`.
    m_block : int
        The engine's M-block (rows of the Y buffer).

    Ports
    -----
    start : In(1)
        Start from row 0.
    rows : In
        Rows to write back, captured at `start`.
    words : In
        Words a row, captured at `start`.
    running : Out(1)
        Words remain to be read.
    rd : In(ReadPort.Signature)
        To the Y buffer's read port.
    o : Out(stream)
        The words, to the write resizer.
    """

    def __init__(self, cfg: AccelConfig, m_block: int) -> None:
        self.width = max(cfg.cols, cfg.mem_bytes_per_cycle)
        self.row_words = layout.row_bytes(cfg, cfg.max_d_model) // self.width
        self.m_block = m_block
        self.word = data.ArrayLayout(unsigned(8), self.width)
        super().__init__(
            {
                "start": In(1),
                "rows": In(range(m_block + 1)),
                "words": In(range(self.row_words + 1)),
                "running": Out(1),
                "rd": In(
                    ReadPort.Signature(
                        addr_width=ceil_log2(m_block * self.row_words), shape=self.word
                    )
                ),
                "o": Out(stream.Signature(unsigned(8 * self.width))),
            }
        )

    def elaborate(self, platform):
        m = Module()
        yb = m.submodules.reader = MemoryReader(
            len(self.rd.addr), self.word, outer=self.m_block, inner=self.row_words
        )
        wiring.connect(m, yb.rd, wiring.flipped(self.rd))
        m.d.comb += [
            yb.start.eq(self.start),
            yb.outer_count.eq(self.rows),
            yb.inner_count.eq(self.words),
            self.running.eq(yb.running),
            yb.addr.eq(yb.outer * self.row_words + yb.inner),
            self.o.valid.eq(yb.o.valid),
            self.o.payload.eq(yb.o.payload.data),
            yb.o.ready.eq(self.o.ready),
        ]
        return m
