"""The logit serialiser: the router GEMM's logit rows to the gate, one logit a beat.

Why: the router GEMM writes each token's logits as C-lane words (one per
n-tile) into the logit buffer; the gate takes them one at a time, token by
token in expert order (then the shared-gate column), `last` on the final
logit of the final token.
"""

from __future__ import annotations

from amaranth import Module, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from contract import layout
from pymodel.config import AccelConfig

from .gate import GateShapes
from .postproc import wide_bits
from .streams import MemoryReader

__all__ = ["LogitSerialiser"]


class LogitSerialiser(wiring.Component):
    """Streams `tokens × columns` logits from the logit buffer (see the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the array's width and the token and expert limits.

    Ports
    -----
    start : In(1)
        Start from token 0, column 0.
    tokens, columns : In
        Tokens and logit columns (experts, plus one for a gated shared expert),
        captured at `start`.
    running : Out(1)
        Logits remain to be read.
    rd : In(ReadPort.Signature)
        To the logit buffer's read port.
    o : Out(stream)
        To the gate.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        self.tiles = layout.n_tiles(cfg.max_experts + 1, cfg.cols)
        self.word = data.ArrayLayout(unsigned(wide_bits(cfg)), cfg.cols)
        super().__init__(
            {
                "start": In(1),
                "tokens": In(range(cfg.max_tokens + 1)),
                "columns": In(range(cfg.max_experts + 2)),
                "running": Out(1),
                "rd": In(
                    ReadPort.Signature(
                        addr_width=ceil_log2(cfg.max_tokens * self.tiles), shape=self.word
                    )
                ),
                "o": Out(stream.Signature(GateShapes(cfg).logit_beat)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg, C = self.cfg, self.cfg.cols
        z = m.submodules.reader = MemoryReader(
            len(self.rd.addr),
            self.word,
            outer=cfg.max_tokens,
            inner=cfg.max_experts + 1,
            side=data.StructLayout({"lane": range(C), "last": 1}),
        )
        wiring.connect(m, z.rd, wiring.flipped(self.rd))
        m.d.comb += [
            z.start.eq(self.start),
            z.outer_count.eq(self.tokens),
            z.inner_count.eq(self.columns),
            self.running.eq(z.running),
            z.addr.eq(z.outer * self.tiles + (z.inner >> exact_log2(C))),
            z.side_in.lane.eq(z.inner[: exact_log2(C)] if C > 1 else 0),
            z.side_in.last.eq(z.last_outer & z.last_inner),
            self.o.valid.eq(z.o.valid),
            self.o.payload.logit.eq(z.o.payload.data[z.o.payload.side.lane]),
            self.o.payload.last.eq(z.o.payload.side.last),
            z.o.ready.eq(self.o.ready),
        ]
        return m
