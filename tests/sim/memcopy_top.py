"""A test fixture top built from the CSR and the DMA: copy N bytes, adding a constant.

`MemCopyTop` has exactly the ports a full accelerator top has (`s_axil`,
`m_axi`, `clk`, `rst`), so it exercises the register file, both DMA engines,
error reporting and both simulation backends (cocotb + cocotbext-axi, and
`sim.fast`) the way the real top will. Each byte of `dst` becomes
`(src byte + ADD) mod 256`.

Registers: the accelerator's ID and control blocks, plus a test-local block
(SRC_ADDR, DST_ADDR, LENGTH, ADD) and the counters it fills (CYCLES_TOTAL,
BYTES_READ, BYTES_WRITTEN).
"""

from __future__ import annotations

import numpy as np
from amaranth import Cat, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from contract.regs import CONTROL_BLOCK, ID_BLOCK, Access, Block, ErrorCause, Reg, RegisterMap
from pymodel.config import AccelConfig
from rtl.axi import AXI4Signature, AXILiteSignature
from rtl.csr import CSR
from rtl.dma import DMA

COPY_MAP = RegisterMap(
    (
        ID_BLOCK,
        CONTROL_BLOCK,
        Block(
            "copy",
            0x100,
            0x40,
            (
                Reg("SRC_ADDR", Access.RW, "Source byte address."),
                Reg("DST_ADDR", Access.RW, "Destination byte address."),
                Reg("LENGTH", Access.RW, "Bytes to copy."),
                Reg("ADD", Access.RW, "Added to every byte (mod 256)."),
            ),
        ),
        Block(
            "copy_counters",
            0x200,
            0x20,
            (
                Reg("CYCLES_TOTAL", Access.RO, "Cycles from start to done.", width=64),
                Reg("BYTES_READ", Access.RO, "Bytes read.", width=64),
                Reg("BYTES_WRITTEN", Access.RO, "Bytes written.", width=64),
            ),
        ),
    )
)


def expected_copy(mem: np.ndarray, src: int, dst: int, length: int, add: int) -> np.ndarray:
    """Memory after a successful copy (the golden model of MemCopyTop)."""
    out = mem.copy()
    out[dst : dst + length] = (mem[src : src + length].astype(np.uint16) + add) % 256
    return out


class MemCopyTop(wiring.Component):
    def __init__(self, cfg: AccelConfig, *, max_outstanding: int = 4) -> None:
        self.cfg = cfg
        self.max_outstanding = max_outstanding
        super().__init__({"s_axil": In(AXILiteSignature()), "m_axi": Out(AXI4Signature(cfg))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.csr = csr = CSR(self.cfg, COPY_MAP)
        m.submodules.dma = dma = DMA(self.cfg, max_outstanding=self.max_outstanding)
        wiring.connect(m, wiring.flipped(self.s_axil), csr.s_axil)
        wiring.connect(m, dma.m_axi, wiring.flipped(self.m_axi))
        regs = csr.regs

        busy = Signal()
        failed = Signal()  # the job hit an error: end it once the DMA has drained
        rd_pending, wr_pending = Signal(), Signal()
        cause = Signal(8)
        err_addr = Signal(32)
        cycles = Signal(48)
        m.d.comb += [
            regs.status.busy.eq(busy),
            regs.error_cause.value.eq(cause),
            regs.error_addr.value.eq(err_addr),
            regs.cycles_total.value.eq(cycles),
            regs.bytes_read.value.eq(dma.bytes_read),
            regs.bytes_written.value.eq(dma.bytes_written),
        ]

        # Commands: issued at start, held until the DMA takes them.
        for cmd, pending, addr in (
            (dma.rd_cmd, rd_pending, regs.src_addr.value),
            (dma.wr_cmd, wr_pending, regs.dst_addr.value),
        ):
            m.d.comb += [
                cmd.valid.eq(pending),
                cmd.payload.addr.eq(addr),
                cmd.payload.length.eq(regs.length.value),
            ]
            with m.If(cmd.ready):
                m.d.sync += pending.eq(0)

        # Data path: add a constant to every byte.
        beat = self.cfg.mem_bytes_per_cycle
        data = dma.rd_data.payload.data
        add = regs.add.value[:8]
        m.d.comb += [
            dma.wr_data.valid.eq(dma.rd_data.valid),
            dma.wr_data.payload.eq(Cat((data.word_select(i, 8) + add)[:8] for i in range(beat))),
            dma.rd_data.ready.eq(dma.wr_data.ready),
        ]

        def raise_error(code: object, addr: object = 0) -> None:
            m.d.comb += regs.status.error_set.eq(1)
            with m.If(~regs.status.error):
                m.d.sync += [cause.eq(code), err_addr.eq(addr)]

        with m.If(~regs.status.error & ~regs.status.error_set):
            m.d.sync += [cause.eq(ErrorCause.NONE), err_addr.eq(0)]

        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
        m.d.comb += dma.clear_counters.eq(regs.ctrl.start & ~busy)
        with m.If(regs.ctrl.start):
            with m.If(busy):
                raise_error(ErrorCause.START_WHILE_BUSY)
            with m.Else():
                m.d.sync += [busy.eq(1), rd_pending.eq(1), wr_pending.eq(1), cycles.eq(0)]
        with m.Elif(busy & ~failed & dma.error):
            raise_error(dma.error_cause, dma.error_addr)
            m.d.sync += failed.eq(1)
        with m.Elif(busy & failed & ~dma.busy):
            m.d.comb += dma.clear.eq(1)
            m.d.sync += [busy.eq(0), failed.eq(0)]
        with m.Elif(busy & dma.wr_done):
            m.d.comb += regs.status.done_set.eq(1)
            m.d.sync += busy.eq(0)
        return m
