"""The GEMM engine's output sink: result rows into the logit, H or Y buffer.

Why: the engine emits a command's results as C-lane rows in (n-tile, row)
order; the router's wide logits go to the logit buffer (row `row0 + i`,
n-tile `n`), GEMM1's activations to H and GEMM2's outputs to Y (row `i`;
a buffer word holds `width / C` n-tiles, written through byte-lane enables).
The sink always takes a row: the buffers have room for a whole command.
"""

from __future__ import annotations

from amaranth import Const, Module, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2, exact_log2

from contract import layout
from pymodel.config import AccelConfig

from .activation_feeder import h_word_bytes
from .postproc import output_layout, wide_bits

__all__ = ["OutputSink", "SinkKind", "sink_command_layout"]


class SinkKind(enum.Enum, shape=2):
    """The buffer a command's results go to."""

    LOGIT = 0
    HBUF = 1
    YBUF = 2


def sink_command_layout(cfg: AccelConfig, m_block: int) -> data.StructLayout:
    """One command's results: the buffer, the first (logit) row and the rows per n-tile."""
    return data.StructLayout(
        {"kind": SinkKind, "row0": range(cfg.max_tokens + 1), "m": range(m_block + 1)}
    )


class OutputSink(wiring.Component):
    """Writes the engine's result rows into the buffers (see the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the array's width, the bus width and the buffer limits.
    m_block : int
        Result rows of one command at most (the engine's M-block).
    param_rows : int
        Result N-tiles of one command at most (the engine's parameter rows).

    Ports
    -----
    start : In(1)
        Start `cmd` (it wins over a row arriving in the same cycle).
    cmd : In(sink_command_layout)
        The command whose rows follow.
    i : In(stream), always ready
        The engine's output rows.
    logit_wr, h_wr, y_wr : In(WritePort.Signature)
        To the logit, H and Y buffers' write ports.
    """

    def __init__(self, cfg: AccelConfig, m_block: int, param_rows: int) -> None:
        self.cfg, self.m_block, self.param_rows = cfg, m_block, param_rows
        C, B = cfg.cols, cfg.mem_bytes_per_cycle
        self.wh, self.wy = h_word_bytes(cfg), max(C, B)
        self.h_row = layout.align(cfg.max_d_ff, self.wh) // self.wh
        self.y_row = layout.row_bytes(cfg, cfg.max_d_model) // self.wy
        self.logit_tiles = layout.n_tiles(cfg.max_experts + 1, C)
        super().__init__(
            {
                "start": In(1),
                "cmd": In(sink_command_layout(cfg, m_block)),
                "i": In(stream.Signature(output_layout(cfg), always_ready=True)),
                "logit_wr": In(
                    WritePort.Signature(
                        addr_width=ceil_log2(cfg.max_tokens * self.logit_tiles),
                        shape=data.ArrayLayout(unsigned(wide_bits(cfg)), C),
                    )
                ),
                "h_wr": In(
                    WritePort.Signature(
                        addr_width=ceil_log2(m_block * self.h_row),
                        shape=data.ArrayLayout(unsigned(8), self.wh),
                        granularity=C,
                    )
                ),
                "y_wr": In(
                    WritePort.Signature(
                        addr_width=ceil_log2(m_block * self.y_row),
                        shape=data.ArrayLayout(unsigned(8), self.wy),
                        granularity=C,
                    )
                ),
            }
        )

    def elaborate(self, platform):
        m = Module()
        C = self.cfg.cols
        cmd = Signal.like(self.cmd)
        n = Signal(range(self.param_rows + 1))
        i = Signal(range(self.m_block))
        row = self.i.payload
        hw_sub, yw_sub = exact_log2(self.wh // C), exact_log2(self.wy // C)
        m.d.comb += [
            self.logit_wr.addr.eq((cmd.row0 + i) * self.logit_tiles + n),
            self.logit_wr.data.eq(row.wide),
            self.h_wr.addr.eq(i * self.h_row + (n >> hw_sub)),
            self.y_wr.addr.eq(i * self.y_row + (n >> yw_sub)),
        ]
        for lane in range(self.wh):
            m.d.comb += self.h_wr.data[lane].eq(row.data[lane % C])
        for lane in range(self.wy):
            m.d.comb += self.y_wr.data[lane].eq(row.data[lane % C])
        h_group = n[:hw_sub] if hw_sub else Const(0, 1)
        y_group = n[:yw_sub] if yw_sub else Const(0, 1)
        with m.If(self.i.valid):
            with m.Switch(cmd.kind):
                with m.Case(SinkKind.LOGIT):
                    m.d.comb += self.logit_wr.en.eq(1)
                with m.Case(SinkKind.HBUF):
                    m.d.comb += self.h_wr.en.eq(Const(1, self.wh // C) << h_group)
                with m.Case(SinkKind.YBUF):
                    m.d.comb += self.y_wr.en.eq(Const(1, self.wy // C) << y_group)
        with m.If(self.start):
            m.d.sync += [cmd.eq(self.cmd), n.eq(0), i.eq(0)]
        with m.Elif(self.i.valid):
            m.d.sync += i.eq(i + 1)
            with m.If(i == cmd.m - 1):
                m.d.sync += [i.eq(0), n.eq(n + 1)]
        return m
