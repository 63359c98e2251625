"""Two AXI4 masters on one AXI4 port: round-robin per burst, responses routed by id.

Why: the layer's DMA and the copy engine (`rtl.copy_engine`) share the one
memory bus of the accelerator; the copies must not starve the layer, nor the
layer the copies, and neither may see the other's responses.

- AR and AW: each channel grants one master's request per burst. While only one
  master requests, it is granted at once (the arbiter adds no cycle: with the
  copy engine idle the layer's bus is a wire, its cycles unchanged). When both
  request, the one not granted last on that channel wins (round robin). A
  request shown on the port is held (grant locked) until its READY, as AXI
  requires.
- W: beats follow the order of accepted AWs (AXI4 has no write interleaving):
  a queue of granted AW masters selects whose W beats pass, one burst (to its
  WLAST) at a time. So W is only ever granted to the master whose AW was
  granted, and a master slow to give its W beats holds the W channel for the
  other: the arbiter cannot see a burst's data coming, so each master must
  show AW only when its burst can follow at bus speed where it matters. The
  copy engine shows AW only with the whole burst buffered (`rtl.copy_engine`),
  so a layer write waits for at most the copy bursts granted before it, at one
  beat a cycle, never for the host link. The layer's DMA may show AW before
  its units have produced the data; then it holds W only against the copies,
  which are background work and only slow down (their FIFO stops their reads).
- R and B: routed by id. The masters must use different ids (`ids`); the
  memory may return R bursts of different ids out of order.

Counters (until `clear_counters`): bursts granted to each master (AR + AW),
and per master the cycles one of its AR/AW requests waited (VALID without
READY: the other master held the channel, or the memory was not ready).
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.wiring import In, Out

from contract.regs import COUNTER_BITS
from contract.timing import DMA_MAX_OUTSTANDING
from pymodel.config import AccelConfig, ConfigError

from .axi import AXI4Signature

__all__ = ["AXI4Arbiter"]

_ADDR_PAYLOAD = ("id", "addr", "len", "size", "burst", "lock", "cache", "prot", "qos")
_W_PAYLOAD = ("data", "strb", "last")
_R_PAYLOAD = ("id", "data", "resp", "last")


class AXI4Arbiter(wiring.Component):
    """Masters `m0`, `m1` (ids `ids`) onto `bus` (see the module docstring)."""

    def __init__(
        self,
        cfg: AccelConfig,
        ids: tuple[int, int] = (0, 1),
        max_writes: int = 2 * DMA_MAX_OUTSTANDING,
    ) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"AXI4Arbiter needs an AccelConfig, got {type(cfg).__name__}")
        sig = AXI4Signature(cfg)
        if len(ids) != 2 or ids[0] == ids[1] or not all(0 <= i < 2**sig.id_width for i in ids):
            raise ConfigError(
                f"AXI4Arbiter ids = {ids!r} must be two different {sig.id_width}-bit ids"
            )
        if isinstance(max_writes, bool) or not isinstance(max_writes, int) or max_writes < 1:
            raise ConfigError(f"AXI4Arbiter max_writes = {max_writes!r} must be a positive int")
        self.cfg, self.ids, self.max_writes = cfg, ids, max_writes
        super().__init__(
            {
                "m0": In(sig),
                "m1": In(sig),
                "bus": Out(sig),
                "bursts": Out(COUNTER_BITS).array(2),
                "wait_cycles": Out(COUNTER_BITS).array(2),
                "clear_counters": In(1),
            }
        )

    def _address_channel(self, m: Module, ch: str) -> tuple[Signal, Signal]:
        """Grant `ch` ("ar"/"aw") round robin per burst; returns (fire, granted master)."""
        masters = (self.m0, self.m1)
        bus = self.bus
        hold = Signal(name=f"{ch}_hold")
        held = Signal(name=f"{ch}_held")
        last = Signal(init=1, name=f"{ch}_last")  # the layer (m0) wins the first tie
        sel = Signal(name=f"{ch}_sel")
        v0, v1 = (getattr(x, f"{ch}valid") for x in masters)
        with m.If(hold):
            m.d.comb += sel.eq(held)
        with m.Else():
            m.d.comb += sel.eq(v1 & (~v0 | ~last))
        for name in _ADDR_PAYLOAD:
            m.d.comb += getattr(bus, f"{ch}{name}").eq(
                Mux(sel, getattr(self.m1, f"{ch}{name}"), getattr(self.m0, f"{ch}{name}"))
            )
        valid, ready = getattr(bus, f"{ch}valid"), getattr(bus, f"{ch}ready")
        m.d.comb += [
            valid.eq(Mux(sel, v1, v0)),
            getattr(self.m0, f"{ch}ready").eq(ready & ~sel),
            getattr(self.m1, f"{ch}ready").eq(ready & sel),
        ]
        fire = Signal(name=f"{ch}_fire")
        m.d.comb += fire.eq(valid & ready)
        with m.If(fire):
            m.d.sync += [last.eq(sel), hold.eq(0)]
        with m.Elif(valid):
            m.d.sync += [hold.eq(1), held.eq(sel)]
        return fire, sel

    def elaborate(self, platform: object) -> Module:
        m = Module()
        bus, masters = self.bus, (self.m0, self.m1)
        ar_fire, ar_sel = self._address_channel(m, "ar")
        aw_fire, aw_sel = self._address_channel(m, "aw")

        # W: in the order AWs were accepted.
        m.submodules.w_order = order = SyncFIFO(width=1, depth=self.max_writes)
        w_sel = order.r_data
        m.d.comb += [order.w_en.eq(aw_fire), order.w_data.eq(aw_sel)]
        for name in _W_PAYLOAD:
            m.d.comb += getattr(bus, f"w{name}").eq(
                Mux(w_sel, getattr(self.m1, f"w{name}"), getattr(self.m0, f"w{name}"))
            )
        m.d.comb += [
            bus.wvalid.eq(order.r_rdy & Mux(w_sel, self.m1.wvalid, self.m0.wvalid)),
            self.m0.wready.eq(bus.wready & order.r_rdy & ~w_sel),
            self.m1.wready.eq(bus.wready & order.r_rdy & w_sel),
            order.r_en.eq(bus.wvalid & bus.wready & bus.wlast),
        ]

        # R and B: by id.
        r_to1 = bus.rid == self.ids[1]
        b_to1 = bus.bid == self.ids[1]
        for x, mine in ((self.m0, ~r_to1), (self.m1, r_to1)):
            for name in _R_PAYLOAD:
                m.d.comb += getattr(x, f"r{name}").eq(getattr(bus, f"r{name}"))
            m.d.comb += x.rvalid.eq(bus.rvalid & mine)
        for x, mine in ((self.m0, ~b_to1), (self.m1, b_to1)):
            m.d.comb += [x.bid.eq(bus.bid), x.bresp.eq(bus.bresp), x.bvalid.eq(bus.bvalid & mine)]
        m.d.comb += [
            bus.rready.eq(Mux(r_to1, self.m1.rready, self.m0.rready)),
            bus.bready.eq(Mux(b_to1, self.m1.bready, self.m0.bready)),
        ]

        # Counters.
        with m.If(self.clear_counters):
            for i in range(2):
                m.d.sync += [self.bursts[i].eq(0), self.wait_cycles[i].eq(0)]
        with m.Else():
            for i, x in enumerate(masters):
                granted = (ar_fire & (ar_sel == i)) + (aw_fire & (aw_sel == i))
                waiting = (x.arvalid & ~x.arready) | (x.awvalid & ~x.awready)
                m.d.sync += [
                    self.bursts[i].eq(self.bursts[i] + granted),
                    self.wait_cycles[i].eq(self.wait_cycles[i] + waiting),
                ]
        return m
