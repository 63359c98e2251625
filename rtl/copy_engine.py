"""Copy engine: moves [src, dst, length] (host memory to a device-memory cache slot) on its own.

Why: expert offloading hides the slow host link behind compute; while a layer
runs, the driver has the next layer's predicted experts copied into device
memory (docs/codesign.md "Expert offloading"). The engine is its own AXI4
master (a `rtl.dma.DMA` with id `axi_id`) beside the layer's; `rtl.axi_arbiter`
shares the bus between the two per burst.

Commands: `cmd` takes descriptors (byte addresses `src`, `dst`, byte `length`,
the DMA's rules: multiples of the beat, inside the address space) into a queue
of `queue_depth` (`contract.regs.COPY_QUEUE_DEPTH` by default, the depth the
driver plans with); `push` with a full queue drops the descriptor and raises an
error with `ErrorCause.COPY_QUEUE_FULL`. Descriptors run one at a time, in
order: the DMA reads `src` and writes the beats, through a FIFO of
`DMA_MAX_OUTSTANDING` bursts, to `dst`; a descriptor completes when its last
write response has arrived (`completed` counts it). `done` pulses when the
queue has run empty after work.

Never in the layer's way on the shared bus (`rtl.axi_arbiter`): `src` may sit
behind a slow host link, so the engine holds back the DMA's requests until they
can run at bus speed. An AW leaves only once its whole burst is in the FIFO
(beats buffered and not owed to an earlier accepted AW), so its W beats follow
back to back and a layer write queued behind it in W order never waits on the
link; an AR leaves only once the FIFO has room for its whole burst beside the
beats of reads still in flight, so the engine never holds R (`rready`) and a
layer read is never stuck behind a copy's full FIFO. Both reservations only
shrink when their request is accepted, so a request shown stays shown until
READY. The FIFO holds as many bursts as the DMA keeps reads in flight, so the
reservation costs a slow link no throughput: the reads keep the link busy
while buffered bursts wait for their AW. After a DMA error both gates open:
the DMA issues nothing new and drains what it holds with zero strobes.

Errors never hang it: a bus error on either side (or a malformed descriptor)
makes the DMA drain its bursts; the engine then drops the descriptors still
queued, empties its FIFO, clears the DMA and pulses `error` with
`error_cause` / `error_addr` (the DMA's), ready for new descriptors.

Counters (until `clear_counters`): `bytes_copied` (bytes written by completed
and running copies), `busy_cycles` (a descriptor running or queued).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.hdl import ResetInserter
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO, SyncFIFOBuffered
from amaranth.lib.wiring import In, Out

from contract.regs import COPY_QUEUE_DEPTH, COUNTER_BITS, ErrorCause
from contract.timing import DMA_MAX_OUTSTANDING
from pymodel.config import AccelConfig, ConfigError

from .axi import AXI4Signature, burst_beats
from .dma import CAUSE_BITS, DMA

__all__ = ["CopyEngine", "copy_command_layout"]


def copy_command_layout(addr_bits: int) -> data.StructLayout:
    """One copy: `length` bytes from byte address `src` to byte address `dst`."""
    return data.StructLayout(
        {"src": unsigned(addr_bits), "dst": unsigned(addr_bits), "length": unsigned(32)}
    )


class CopyEngine(wiring.Component):
    """A queued memory-to-memory copier on its own AXI4 master (see the module docstring)."""

    def __init__(
        self, cfg: AccelConfig, *, axi_id: int = 1, queue_depth: int = COPY_QUEUE_DEPTH
    ) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"CopyEngine needs an AccelConfig, got {type(cfg).__name__}")
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int):
            raise ConfigError(f"CopyEngine queue_depth = {queue_depth!r} must be an int")
        if not 1 <= queue_depth <= 64:
            raise ConfigError(f"CopyEngine queue_depth = {queue_depth} not in [1, 64]")
        self.cfg, self.axi_id, self.queue_depth = cfg, axi_id, queue_depth
        super().__init__(
            {
                "m_axi": Out(AXI4Signature(cfg)),
                "cmd": In(stream.Signature(copy_command_layout(cfg.addr_bits))),
                "busy": Out(1),
                "pending": Out(range(queue_depth + 1)),
                "done": Out(1),
                "error": Out(1),
                "error_cause": Out(CAUSE_BITS),
                "error_addr": Out(cfg.addr_bits),
                "completed": Out(32),
                "bytes_copied": Out(COUNTER_BITS),
                "busy_cycles": Out(COUNTER_BITS),
                "clear_counters": In(1),
            }
        )

    def _gate_requests(
        self, m: Module, dma: DMA, beats: SyncFIFOBuffered, depth: int, flush: Signal
    ) -> None:
        """Pass the DMA's AR and AW to `m_axi` only when their burst can run at bus speed.

        `owed`: beats of accepted AWs not yet taken from the FIFO; `incoming`:
        beats of accepted ARs not yet put into it. AW needs `level - owed` to hold
        its burst, AR needs `depth - level - incoming` to hold its burst.
        """
        dma_axi, axi = dma.m_axi, self.m_axi
        owed = Signal(range(depth + 1))
        incoming = Signal(range(depth + 1))
        aw_ok, ar_ok = Signal(), Signal()
        m.d.comb += [
            aw_ok.eq(dma.error | (beats.level - owed >= dma_axi.awlen + 1)),
            ar_ok.eq(dma.error | (depth - beats.level - incoming >= dma_axi.arlen + 1)),
            axi.awvalid.eq(dma_axi.awvalid & aw_ok),
            dma_axi.awready.eq(axi.awready & aw_ok),
            axi.arvalid.eq(dma_axi.arvalid & ar_ok),
            dma_axi.arready.eq(axi.arready & ar_ok),
        ]
        aw_fire = axi.awvalid & axi.awready
        ar_fire = axi.arvalid & axi.arready
        pop = beats.r_en & beats.r_rdy
        push = beats.w_en & beats.w_rdy
        with m.If(flush):
            m.d.sync += [owed.eq(0), incoming.eq(0)]
        with m.Else():
            m.d.sync += [
                owed.eq(owed + Mux(aw_fire, dma_axi.awlen + 1, 0) - pop),
                incoming.eq(incoming + Mux(ar_fire, dma_axi.arlen + 1, 0) - push),
            ]

    def elaborate(self, platform: object) -> Module:
        m = Module()
        cfg = self.cfg
        m.submodules.dma = dma = DMA(cfg, axi_id=self.axi_id)
        for name, port in dma.m_axi.signature.members.items():
            if name not in ("arvalid", "arready", "awvalid", "awready"):
                if port.flow == Out:
                    m.d.comb += getattr(self.m_axi, name).eq(getattr(dma.m_axi, name))
                else:
                    m.d.comb += getattr(dma.m_axi, name).eq(getattr(self.m_axi, name))

        layout = copy_command_layout(cfg.addr_bits)
        flush = Signal()
        queue = SyncFIFO(width=layout.size, depth=self.queue_depth)
        m.submodules.queue = ResetInserter(flush)(queue)
        depth = DMA_MAX_OUTSTANDING * burst_beats(cfg)
        beats = SyncFIFOBuffered(width=8 * cfg.mem_bytes_per_cycle, depth=depth)
        m.submodules.beats = ResetInserter(flush)(beats)
        self._gate_requests(m, dma, beats, depth, flush)

        m.d.comb += [
            queue.w_data.eq(self.cmd.payload),
            queue.w_en.eq(self.cmd.valid),
            self.cmd.ready.eq(1),
            # Read beats pass through the FIFO to the write side (`_gate_requests` paces both).
            beats.w_data.eq(dma.rd_data.payload.data),
            beats.w_en.eq(dma.rd_data.valid),
            dma.rd_data.ready.eq(beats.w_rdy),
            dma.wr_data.payload.eq(beats.r_data),
            dma.wr_data.valid.eq(beats.r_rdy),
            beats.r_en.eq(dma.wr_data.ready),
        ]
        overflow = Signal()
        m.d.comb += overflow.eq(self.cmd.valid & ~queue.w_rdy)

        head = data.View(layout, queue.r_data)
        running = Signal()
        rd_sent, wr_sent = Signal(), Signal()
        m.d.comb += [
            # Up through the done/error pulse, so a status read never sees neither busy nor
            # the flag (the register file latches the pulse a cycle later).
            self.busy.eq(running | queue.r_rdy | self.done | self.error),
            self.pending.eq(queue.r_level),  # the running descriptor leaves the queue when done
            dma.rd_cmd.payload.addr.eq(head.src),
            dma.rd_cmd.payload.length.eq(head.length),
            dma.wr_cmd.payload.addr.eq(head.dst),
            dma.wr_cmd.payload.length.eq(head.length),
        ]
        m.d.sync += [self.done.eq(0), self.error.eq(0)]

        with m.FSM(name="copy"):
            with m.State("IDLE"):
                with m.If(queue.r_rdy & ~dma.error):
                    m.d.sync += [running.eq(1), rd_sent.eq(0), wr_sent.eq(0)]
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += [dma.rd_cmd.valid.eq(~rd_sent), dma.wr_cmd.valid.eq(~wr_sent)]
                rd_go = dma.rd_cmd.ready & ~rd_sent
                wr_go = dma.wr_cmd.ready & ~wr_sent
                with m.If(rd_go):
                    m.d.sync += rd_sent.eq(1)
                with m.If(wr_go):
                    m.d.sync += wr_sent.eq(1)
                with m.If(dma.error):
                    m.next = "DRAIN"
                with m.Elif((rd_sent | rd_go) & (wr_sent | wr_go)):
                    m.next = "MOVE"
            with m.State("MOVE"):
                with m.If(dma.error):
                    m.next = "DRAIN"
                with m.Elif(dma.wr_done):
                    m.d.comb += queue.r_en.eq(1)
                    m.d.sync += [running.eq(0), self.completed.eq(self.completed + 1)]
                    with m.If(queue.r_level == 1):
                        m.d.sync += self.done.eq(1)
                    m.next = "IDLE"
            with m.State("DRAIN"):
                # The DMA finishes every burst it issued; then nothing is left of this work.
                m.d.comb += flush.eq(1)
                with m.If(~dma.busy):
                    m.d.comb += dma.clear.eq(1)
                    m.d.sync += [
                        running.eq(0),
                        self.error.eq(1),
                        self.error_cause.eq(dma.error_cause),
                        self.error_addr.eq(dma.error_addr),
                    ]
                    m.next = "CLEAR"
            with m.State("CLEAR"):
                m.d.comb += flush.eq(1)
                with m.If(~dma.error):
                    m.next = "IDLE"
        with m.If(overflow):
            m.d.sync += [
                self.error.eq(1),
                self.error_cause.eq(ErrorCause.COPY_QUEUE_FULL),
                self.error_addr.eq(self.cmd.payload.src),
            ]

        with m.If(self.clear_counters):
            m.d.sync += [self.bytes_copied.eq(0), self.busy_cycles.eq(0), self.completed.eq(0)]
        with m.Else():
            m.d.sync += self.busy_cycles.eq(self.busy_cycles + self.busy)
            with m.If(dma.m_axi.wvalid & dma.m_axi.wready & (dma.m_axi.wstrb != 0)):
                m.d.sync += self.bytes_copied.eq(self.bytes_copied + cfg.mem_bytes_per_cycle)
        return m
