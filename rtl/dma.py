"""AXI4 master DMA: a read engine and a write engine sharing one `m_axi` port.

Why: every byte the accelerator touches (tokens, weights, tables, outputs)
moves through here, as INCR bursts the way FPGA/SoC memory controllers want
them, and a bus error must end a job with a cause instead of hanging it.

Commands (`dma_command_layout`: byte `addr`, byte `length`) arrive on `rd_cmd` /
`wr_cmd` streams. `addr` and `length` must be multiples of the beat size
`B = cfg.mem_bytes_per_cycle` and `addr + length` must stay below
2^`cfg.addr_bits` (the bus's byte-address width), else
the command is a BAD_DESCRIPTOR error; `length = 0` completes at once. Each
engine runs one command at a time, split into bursts of at most `burst`
beats (`contract.timing.burst_beats(cfg)`, 16) that never cross a 4 KiB boundary.

- Read: data leaves on `rd_data` (`read_beat_layout`: `data`, `last` on the
  command's final beat), in address order; `rd_done` pulses with that beat.
- Write: `wr_data` beats (B bytes each, full strobes) fill the bursts in
  order; W never runs ahead of an accepted AW; `wr_done` pulses when the
  command's last B response has arrived.

Outstanding-transaction limits: at most `max_outstanding` read bursts
(AR issued, last R beat not yet received) and at most `max_outstanding`
write bursts (AW issued, B not yet received) are in flight; all use id
`axi_id`, so responses return in order. AR and AW are issued from output
registers (valid and payload stay stable until accepted, as AXI requires),
one burst per cycle at best; R is passed straight to `rd_data` (R `ready`
is `rd_data.ready`), W is registered (one beat per cycle, a bubble only
before a command's first burst).

Errors: a SLVERR/DECERR on R or B (or a bad command) sets the sticky
`error` with `error_cause` (`contract.regs.ErrorCause`) and `error_addr` (the
failing beat's or burst's address, or the bad command's address); the
first error wins. From then on both engines *abort*: no new AR/AW is
issued, beats of bursts already issued are still accepted (R) or sent with
zero strobes (W, without waiting for `wr_data`), responses are drained,
`rd_data` carries nothing more, and commands and `wr_data` beats are
accepted and dropped, so neither the bus nor a producer can hang. `busy`
stays high until the drain ends. `clear` (a pulse, remembered until the
engines have drained) then clears the error; issue new commands only once
`error` reads 0. `cancel` (a pulse) enters the same drain without a cause
(`error_cause` stays NONE): how the top cancels a job (soft reset,
watchdog) without leaving bursts half done. `bytes_read` (OKAY R beats
delivered) and `bytes_written` (W beats with data) count until
`clear_counters`.
"""

from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from contract.regs import COUNTER_BITS, ErrorCause
from contract.timing import DMA_MAX_OUTSTANDING
from pymodel.config import AccelConfig, ConfigError

from .axi import BOUNDARY_BYTES, AXI4Signature, Burst, burst_beats

__all__ = ["DMA", "dma_command_layout", "read_beat_layout"]

CAUSE_BITS = 8


def dma_command_layout(addr_bits: int) -> data.StructLayout:
    """One transfer: `length` bytes from/to byte address `addr` (`addr_bits` = `cfg.addr_bits`)."""
    return data.StructLayout({"addr": unsigned(addr_bits), "length": unsigned(32)})


def read_beat_layout(cfg: AccelConfig) -> data.StructLayout:
    """One read beat: B bytes (byte i of the beat at address addr + i) and the command's last."""
    return data.StructLayout({"data": unsigned(8 * cfg.mem_bytes_per_cycle), "last": unsigned(1)})


class DMA(wiring.Component):
    """AXI4 master with independent read and write engines (see the module docstring)."""

    def __init__(
        self,
        cfg: AccelConfig,
        *,
        max_outstanding: int = DMA_MAX_OUTSTANDING,
        burst: int | None = None,
        axi_id: int = 0,
    ) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"DMA needs an AccelConfig, got {type(cfg).__name__}")
        if burst is None:
            burst = burst_beats(cfg)
        if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 256:
            raise ConfigError(f"DMA burst = {burst!r} must be an int in [1, 256]")
        if burst * cfg.mem_bytes_per_cycle > BOUNDARY_BYTES:
            raise ConfigError(
                f"DMA burst = {burst} beats of {cfg.mem_bytes_per_cycle} B exceeds 4 KiB"
            )
        if isinstance(max_outstanding, bool) or not isinstance(max_outstanding, int):
            raise ConfigError("DMA max_outstanding must be an int")
        if not 1 <= max_outstanding <= 64:
            raise ConfigError(f"DMA max_outstanding = {max_outstanding} out of range [1, 64]")
        self.cfg = cfg
        self.beat_bytes = cfg.mem_bytes_per_cycle
        self.burst = burst
        self.max_outstanding = max_outstanding
        bus = AXI4Signature(cfg)
        if not 0 <= axi_id < 2**bus.id_width:
            raise ConfigError(f"DMA axi_id = {axi_id} does not fit {bus.id_width} bits")
        self.axi_id = axi_id
        super().__init__(
            {
                "m_axi": Out(bus),
                "rd_cmd": In(stream.Signature(dma_command_layout(cfg.addr_bits))),
                "rd_data": Out(stream.Signature(read_beat_layout(cfg))),
                "rd_done": Out(1),
                "wr_cmd": In(stream.Signature(dma_command_layout(cfg.addr_bits))),
                "wr_data": In(stream.Signature(unsigned(8 * cfg.mem_bytes_per_cycle))),
                "wr_done": Out(1),
                "busy": Out(1),
                "error": Out(1),
                "error_cause": Out(CAUSE_BITS),
                "error_addr": Out(cfg.addr_bits),
                "clear": In(1),
                "cancel": In(1),
                "bytes_read": Out(COUNTER_BITS),
                "bytes_written": Out(COUNTER_BITS),
                "clear_counters": In(1),
            }
        )

    def _burst_len(self, m: Module, addr: Signal, left: Signal, name: str) -> Signal:
        """Beats of the next burst at `addr` with `left` beats to go (4 KiB and `burst` caps)."""
        s = exact_log2(self.beat_bytes)
        page = BOUNDARY_BYTES // self.beat_bytes
        room = Signal(range(page + 1), name=f"{name}_room")
        cap = Signal(range(self.burst + 1), name=f"{name}_cap")
        blen = Signal(range(self.burst + 1), name=f"{name}_blen")
        m.d.comb += [
            room.eq(page - addr[s : exact_log2(BOUNDARY_BYTES)]),
            cap.eq(Mux(room < self.burst, room, self.burst)),
            blen.eq(Mux(left < cap, left, cap)),
        ]
        return blen

    def _check(self, m: Module, cmd: data.View, name: str) -> Signal:
        """High when `cmd` is malformed (misaligned, or running past the address space)."""
        s = exact_log2(self.beat_bytes)
        abits = self.cfg.addr_bits
        bad = Signal(name=f"{name}_bad")
        end = Signal(abits + 1, name=f"{name}_end")
        m.d.comb += [
            end.eq(cmd.addr + cmd.length),
            bad.eq((cmd.addr[:s] != 0) | (cmd.length[:s] != 0) | end[abits]),
        ]
        return bad

    def _read_engine(
        self, m: Module, rd_err: Signal, rd_err_addr: Signal, rd_bad: Signal
    ) -> tuple[Signal, Signal, Signal]:
        """The read channel: `rd_cmd` into AR bursts, R beats onto `rd_data`, errors flagged.

        Returns `rd_active`, `forward` (R beats go to `rd_data`) and `r_fire` (an R handshake).
        """
        axi, error, bb = self.m_axi, self.error, self.beat_bytes
        s = exact_log2(bb)
        abits, beat_bits = self.cfg.addr_bits, 32 - s + 1
        out_range = range(self.max_outstanding + 1)
        rd_active = Signal()
        ar_addr = Signal(abits)
        ar_left = Signal(beat_bits)
        rx_left = Signal(beat_bits)
        rx_addr = Signal(abits)
        rd_out = Signal(out_range)

        rcmd = self.rd_cmd.payload
        rcmd_bad = self._check(m, rcmd, "rd_cmd")
        m.d.comb += self.rd_cmd.ready.eq(~rd_active)
        with m.If(self.rd_cmd.valid & ~rd_active & ~error):
            with m.If(rcmd_bad):
                m.d.comb += rd_bad.eq(1)
            with m.Elif(rcmd.length == 0):
                m.d.sync += self.rd_done.eq(1)
            with m.Else():
                m.d.sync += [
                    rd_active.eq(1),
                    ar_addr.eq(rcmd.addr),
                    ar_left.eq(rcmd.length[s:]),
                    rx_addr.eq(rcmd.addr),
                    rx_left.eq(rcmd.length[s:]),
                ]

        ar_blen = self._burst_len(m, ar_addr, ar_left, "ar")
        ar_load = Signal()
        m.d.comb += ar_load.eq(
            rd_active
            & ~error
            & (ar_left != 0)
            & (rd_out < self.max_outstanding)
            & (~axi.arvalid | axi.arready)
        )
        with m.If(ar_load):
            m.d.sync += [
                axi.arvalid.eq(1),
                axi.araddr.eq(ar_addr),
                axi.arlen.eq(ar_blen - 1),
                ar_addr.eq(ar_addr + (ar_blen << s)),
                ar_left.eq(ar_left - ar_blen),
            ]
        with m.Elif(axi.arready):
            m.d.sync += axi.arvalid.eq(0)

        r_ok = Signal()
        forward = Signal()
        r_fire = Signal()
        m.d.comb += [
            r_ok.eq(~axi.rresp[1]),  # OKAY or EXOKAY
            forward.eq(rd_active & ~error & r_ok),
            self.rd_data.valid.eq(axi.rvalid & forward),
            self.rd_data.payload.data.eq(axi.rdata),
            self.rd_data.payload.last.eq(rx_left == 1),
            axi.rready.eq(~forward | self.rd_data.ready),
            r_fire.eq(axi.rvalid & axi.rready),
        ]
        rd_out_next = rd_out + ar_load - (r_fire & axi.rlast)
        m.d.sync += rd_out.eq(rd_out_next)
        with m.If(r_fire):
            m.d.sync += [rx_left.eq(rx_left - 1), rx_addr.eq(rx_addr + bb)]
            with m.If(~r_ok):
                m.d.comb += [rd_err.eq(1), rd_err_addr.eq(rx_addr)]
            with m.Elif(forward & (rx_left == 1)):
                m.d.sync += [self.rd_done.eq(1), rd_active.eq(0)]
        with m.If(rd_active & error & (rd_out == 0)):
            m.d.sync += rd_active.eq(0)
        return rd_active, forward, r_fire

    def elaborate(self, platform: object) -> Module:
        m = Module()
        axi = self.m_axi
        bb = self.beat_bytes
        s = exact_log2(bb)
        abits = self.cfg.addr_bits
        beat_bits = 32 - s + 1
        out_range = range(self.max_outstanding + 1)

        error = self.error
        clear_pending = Signal()
        rd_err, wr_err = Signal(), Signal()
        rd_err_addr, wr_err_addr = Signal(abits), Signal(abits)
        rd_bad, wr_bad = Signal(), Signal()

        for ch in ("ar", "aw"):
            m.d.comb += [
                getattr(axi, f"{ch}id").eq(self.axi_id),
                getattr(axi, f"{ch}size").eq(s),
                getattr(axi, f"{ch}burst").eq(Burst.INCR),
                getattr(axi, f"{ch}cache").eq(0b0011),  # normal, non-cacheable, bufferable
            ]
        m.d.sync += [self.rd_done.eq(0), self.wr_done.eq(0)]

        # ---------------- read engine ----------------
        rd_active, forward, r_fire = self._read_engine(m, rd_err, rd_err_addr, rd_bad)

        # ---------------- write engine ----------------
        wr_active = Signal()
        aw_addr = Signal(abits)
        aw_left = Signal(beat_bits)
        w_addr = Signal(abits)
        w_left = Signal(beat_bits)
        b_addr = Signal(abits)
        b_left = Signal(beat_bits)
        wr_out = Signal(out_range)
        aw_ahead = Signal(out_range)  # AW accepted, W burst not yet set up
        w_in_burst = Signal()
        w_beat = Signal(range(self.burst))
        w_blen = Signal(range(self.burst + 1))
        w_real = Signal()  # the W register holds producer data (not an abort filler)

        wcmd = self.wr_cmd.payload
        wcmd_bad = self._check(m, wcmd, "wr_cmd")
        m.d.comb += self.wr_cmd.ready.eq(~wr_active)
        with m.If(self.wr_cmd.valid & ~wr_active & ~error):
            with m.If(wcmd_bad):
                m.d.comb += wr_bad.eq(1)
            with m.Elif(wcmd.length == 0):
                m.d.sync += self.wr_done.eq(1)
            with m.Else():
                beats = wcmd.length[s:]
                m.d.sync += [
                    wr_active.eq(1),
                    aw_addr.eq(wcmd.addr),
                    aw_left.eq(beats),
                    w_addr.eq(wcmd.addr),
                    w_left.eq(beats),
                    b_addr.eq(wcmd.addr),
                    b_left.eq(beats),
                ]

        aw_blen = self._burst_len(m, aw_addr, aw_left, "aw")
        aw_load = Signal()
        m.d.comb += aw_load.eq(
            wr_active
            & ~error
            & (aw_left != 0)
            & (wr_out < self.max_outstanding)
            & (~axi.awvalid | axi.awready)
        )
        with m.If(aw_load):
            m.d.sync += [
                axi.awvalid.eq(1),
                axi.awaddr.eq(aw_addr),
                axi.awlen.eq(aw_blen - 1),
                aw_addr.eq(aw_addr + (aw_blen << s)),
                aw_left.eq(aw_left - aw_blen),
            ]
        with m.Elif(axi.awready):
            m.d.sync += axi.awvalid.eq(0)
        aw_fire = axi.awvalid & axi.awready

        # W: set up a burst once its AW is accepted; beats go through the W register.
        w_blen_next = self._burst_len(m, w_addr, w_left, "w")
        w_can_load = Signal()
        w_load = Signal()
        w_last_beat = Signal()
        w_setup = Signal()
        m.d.comb += [
            w_can_load.eq(~axi.wvalid | axi.wready),
            w_load.eq(w_in_burst & w_can_load & (error | self.wr_data.valid)),
            w_last_beat.eq(w_beat == w_blen - 1),
            w_setup.eq((aw_ahead != 0) & (~w_in_burst | (w_load & w_last_beat))),
            self.wr_data.ready.eq(error | (w_in_burst & w_can_load)),
        ]
        m.d.sync += aw_ahead.eq(aw_ahead + aw_fire - w_setup)
        with m.If(w_load):
            m.d.sync += [
                axi.wvalid.eq(1),
                axi.wdata.eq(Mux(error, 0, self.wr_data.payload)),
                axi.wstrb.eq(Mux(error, 0, Const(2**bb - 1, bb))),
                axi.wlast.eq(w_last_beat),
                w_real.eq(~error),
                w_beat.eq(w_beat + 1),
            ]
            with m.If(w_last_beat):
                m.d.sync += w_in_burst.eq(0)
        with m.Elif(axi.wready):
            m.d.sync += axi.wvalid.eq(0)
        with m.If(w_setup):
            m.d.sync += [
                w_in_burst.eq(1),
                w_beat.eq(0),
                w_blen.eq(w_blen_next),
                w_addr.eq(w_addr + (w_blen_next << s)),
                w_left.eq(w_left - w_blen_next),
            ]

        # B: always ready; walk the burst addresses to name a failing one.
        b_blen = self._burst_len(m, b_addr, b_left, "b")
        m.d.comb += axi.bready.eq(1)
        b_fire = axi.bvalid
        m.d.sync += wr_out.eq(wr_out + aw_load - b_fire)
        with m.If(b_fire):
            m.d.sync += [b_addr.eq(b_addr + (b_blen << s)), b_left.eq(b_left - b_blen)]
            with m.If(axi.bresp[1]):
                m.d.comb += [wr_err.eq(1), wr_err_addr.eq(b_addr)]
            with m.Elif(~error & (b_left == b_blen)):
                m.d.sync += [self.wr_done.eq(1), wr_active.eq(0)]
        with m.If(wr_active & error & (wr_out == 0) & (aw_ahead == 0) & ~w_in_burst & ~axi.wvalid):
            m.d.sync += wr_active.eq(0)

        # ---------------- status, errors, counters ----------------
        m.d.comb += self.busy.eq(rd_active | wr_active)
        with m.If(self.clear):
            m.d.sync += clear_pending.eq(1)
        with m.If((clear_pending | self.clear) & ~self.busy):
            m.d.sync += [
                clear_pending.eq(0),
                error.eq(0),
                self.error_cause.eq(ErrorCause.NONE),
                self.error_addr.eq(0),
            ]
        # Later statements win, so the list runs from the lowest priority to the highest.
        with m.If(~error):
            with m.If(self.cancel):
                m.d.sync += [error.eq(1), clear_pending.eq(0)]
            for flag, cause, addr in (
                (wr_bad, ErrorCause.BAD_DESCRIPTOR, wcmd.addr),
                (rd_bad, ErrorCause.BAD_DESCRIPTOR, self.rd_cmd.payload.addr),
                (wr_err, ErrorCause.BUS_WRITE_ERROR, wr_err_addr),
                (rd_err, ErrorCause.BUS_READ_ERROR, rd_err_addr),
            ):
                with m.If(flag):
                    m.d.sync += [
                        error.eq(1),
                        clear_pending.eq(0),
                        self.error_cause.eq(cause),
                        self.error_addr.eq(addr),
                    ]

        with m.If(self.clear_counters):
            m.d.sync += [self.bytes_read.eq(0), self.bytes_written.eq(0)]
        with m.Else():
            with m.If(r_fire & forward):
                m.d.sync += self.bytes_read.eq(self.bytes_read + bb)
            with m.If(axi.wvalid & axi.wready & w_real):
                m.d.sync += self.bytes_written.eq(self.bytes_written + bb)
        return m
