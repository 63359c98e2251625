"""The routing recorder: the gate's (token, expert, weight) pairs into the dispatcher and tables.

Why: each pair the gate emits goes to three places in the same cycle: the
dispatcher (its expert), the routing record written back to memory
(`contract.layout`: expert and weight, 32 bits each), and the slot tables the
combine phase reads (token and gate weight at slot `s`, the pair's position
in emission order). A pair moves only when both the dispatcher and the
record path can take it, so the three stay in step. The record path is
padded with zero records while `pad` is high (the tail of the records' DMA
write, rounded up to whole beats). The gate's shared-expert weights go to
their own table, one per token.
"""

from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from contract import layout
from pymodel.config import AccelConfig

from .dispatch import DispatchShapes
from .gate import GateShapes

__all__ = ["RoutingRecorder"]


class RoutingRecorder(wiring.Component):
    """Pairs into the dispatcher, the routing records and the slot tables (see the module).

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the token, expert and top-k limits and `gate_weight_bits`.

    Ports
    -----
    start : In(1)
        Restart at slot 0 and token 0 (it wins over a pair in the same cycle).
    pad : In(1)
        Offer zero records (after the last pair, until the write completes).
    pairs : In(stream)
        The gate's pairs.
    shared : In(stream), always ready
        The gate's shared-expert weights, one per token.
    disp_pairs : Out(stream)
        To the dispatcher.
    records : Out(stream)
        Routing records, to the write resizer.
    slot : Out
        Pairs taken since `start` (the next pair's slot).
    fire : Out(1)
        A pair is taken this cycle (at `slot`).
    slot_token_wr, slot_weight_wr, shared_weight_wr : In(WritePort.Signature)
        To the slot token, slot weight and shared-weight tables.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        gs, ds = GateShapes(cfg), DispatchShapes(cfg)
        pairs_max = cfg.max_tokens * cfg.max_top_k
        tok_bits = ceil_log2(cfg.max_tokens) or 1
        weight = unsigned(cfg.gate_weight_bits)
        super().__init__(
            {
                "start": In(1),
                "pad": In(1),
                "pairs": In(stream.Signature(gs.pair)),
                "shared": In(stream.Signature(gs.shared_beat, always_ready=True)),
                "disp_pairs": Out(stream.Signature(ds.pair)),
                "records": Out(stream.Signature(unsigned(8 * layout.ROUTING_RECORD_BYTES))),
                "slot": Out(range(pairs_max + 1)),
                "fire": Out(1),
                "slot_token_wr": In(
                    WritePort.Signature(addr_width=ceil_log2(pairs_max), shape=unsigned(tok_bits))
                ),
                "slot_weight_wr": In(
                    WritePort.Signature(addr_width=ceil_log2(pairs_max), shape=weight)
                ),
                "shared_weight_wr": In(
                    WritePort.Signature(addr_width=ceil_log2(cfg.max_tokens), shape=weight)
                ),
            }
        )

    def elaborate(self, platform):
        m = Module()
        pairs, disp, rec = self.pairs, self.disp_pairs, self.records
        pair = pairs.payload
        m.d.comb += [
            self.fire.eq(pairs.valid & disp.ready & rec.ready),
            pairs.ready.eq(disp.ready & rec.ready),
            disp.valid.eq(pairs.valid & rec.ready),
            disp.payload.expert.eq(pair.expert),
            disp.payload.last.eq(pair.last),
            rec.valid.eq((pairs.valid & disp.ready) | self.pad),
            rec.payload.eq(
                Mux(
                    self.pad,
                    0,
                    Cat(
                        pair.expert,
                        Const(0, 32 - len(pair.expert)),
                        pair.weight,
                        Const(0, 32 - self.cfg.gate_weight_bits),
                    ),
                )
            ),
        ]
        for port, value in ((self.slot_token_wr, pair.token), (self.slot_weight_wr, pair.weight)):
            m.d.comb += [port.en.eq(self.fire), port.addr.eq(self.slot), port.data.eq(value)]
        token = Signal(range(self.cfg.max_tokens + 1))
        sh = self.shared_weight_wr
        m.d.comb += [
            sh.en.eq(self.shared.valid),
            sh.addr.eq(token),
            sh.data.eq(self.shared.payload.weight),
        ]
        with m.If(self.start):
            m.d.sync += [self.slot.eq(0), token.eq(0)]
        with m.Else():
            with m.If(self.fire):
                m.d.sync += self.slot.eq(self.slot + 1)
            with m.If(self.shared.valid):
                m.d.sync += token.eq(token + 1)
        return m
