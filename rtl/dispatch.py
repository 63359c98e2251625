"""Token dispatcher: group the T·k (token, slot) pairs by expert for the grouped GEMM.

The hardware twin of `pymodel.dispatch.dispatch` (vLLM's `moe_align_block_size`
contract): a counting sort of the flat slot ids `t·k + j` by expert id, stable
(ascending slot id inside an expert), each expert's group padded to a multiple
of the row tile `m_tile` with the pad id `T·k`, one expert id per row tile, and
an optional capacity that keeps only an expert's first `capacity` pairs in
sequence order (Switch) and counts the rest as dropped.

Storage is O(T·k + E), never O(T·E): one pair memory (expert id, rank inside
the expert, keep flag) and one sorted-slot memory of `max_tokens·max_top_k`
entries, and two `max_experts`-entry memories (histogram / kept counts and
compact group offsets). Pads are never stored: the output walker inserts them.

After every reset the histogram is cleared (`max_experts` cycles, one entry
a cycle) before the first pair is accepted: memories keep their contents
through a reset. Then a run has four phases, each a pipeline advancing one
item per cycle:

1. ingest: accept one pair per cycle from `pairs` (token-major order, the order
   the gate emits them); read-modify-write the histogram through a transparent
   read port (so back-to-back pairs to one expert need no stall); store the
   pair's rank and keep flag.
2. scan: for each expert, kept count = min(histogram, capacity), written back
   and sent on `counts`; exclusive prefix sum of kept counts into the offsets.
3. scatter: `sorted[offset[e] + rank] = slot` for every kept pair.
4. walk: for each expert up to the last non-empty one, stream its slots and
   pads on `rows` and one beat per row tile on `tiles`; clears the histogram
   for the next run.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from pymodel.config import AccelConfig, ConfigError

from .checks import sent_stream_invariants

__all__ = ["DispatchShapes", "Dispatcher"]


class DispatchShapes:
    """Field widths and stream layouts of a dispatcher generated for one `AccelConfig`.

    Shared by the dispatcher, its producers/consumers and the testbenches so a
    width is derived in exactly one place.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"DispatchShapes needs an AccelConfig, got {type(cfg).__name__}")
        self.max_experts = cfg.max_experts
        self.max_pairs = cfg.max_tokens * cfg.max_top_k
        self.m_tile = cfg.m_tile
        #: expert ids 0 … max_experts-1
        self.expert = unsigned(max(1, (self.max_experts - 1).bit_length()))
        #: n_experts 1 … max_experts
        self.n_experts = unsigned(self.max_experts.bit_length())
        #: slot ids 0 … max_pairs (max_pairs is the largest pad id)
        self.slot = unsigned(self.max_pairs.bit_length())
        #: counts, ranks and capacities 0 … max_pairs
        self.count = unsigned(self.max_pairs.bit_length())
        #: rows emitted: at most max_pairs + max_experts·(m_tile−1)
        self.rows = unsigned((self.max_pairs + self.max_experts * (self.m_tile - 1)).bit_length())
        self.pair = data.StructLayout({"expert": self.expert, "last": 1})
        self.row = data.StructLayout({"slot": self.slot, "expert": self.expert, "last": 1})
        self.tile = data.StructLayout({"expert": self.expert, "last": 1})
        self.count_beat = data.StructLayout({"count": self.count, "last": 1})


class Dispatcher(wiring.Component):
    """Counting-sort dispatcher with capacity drops and row-tile padding.

    Parameters
    ----------
    cfg : AccelConfig
        Supplies `max_tokens`, `max_top_k`, `max_experts` and `m_tile`.

    Ports
    -----
    pairs : In(stream)
        One beat per (token, slot) pair in token-major order: its expert id and
        `last` on the final pair. The flat slot id is the beat's position.
    n_experts, capacity, cap_en : In
        Run parameters, held stable from the first pair until `busy` falls.
        Pairs whose expert id is ≥ `n_experts` are dropped and raise `bad_id`.
    counts : Out(stream)
        `n_experts` beats: each expert's kept pair count (after capacity).
    rows : Out(stream)
        The sorted slot list with pads (slot = T·k), each row tagged with its
        tile's expert; `last` on the final row.
    tiles : Out(stream)
        One beat per row tile: its expert id; `last` on the final tile.
    n_pairs, dropped, n_rows : Out
        T·k, pairs dropped by capacity, padded total; valid once `busy` falls.
    bad_id : Out
        Sticky for the run: some pair named an expert ≥ `n_experts`.
    busy : Out
        High from the first pair until the last output beat is accepted.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.shapes = s = DispatchShapes(cfg)
        super().__init__(
            {
                "pairs": In(stream.Signature(s.pair)),
                "n_experts": In(s.n_experts),
                "capacity": In(s.count),
                "cap_en": In(1),
                "counts": Out(stream.Signature(s.count_beat)),
                "rows": Out(stream.Signature(s.row)),
                "tiles": Out(stream.Signature(s.tile)),
                "n_pairs": Out(s.count),
                "dropped": Out(s.count),
                "n_rows": Out(s.rows),
                "bad_id": Out(1),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        s = self.shapes
        m = Module()
        sent_stream_invariants(m, self)

        pair_mem_layout = data.StructLayout({"expert": s.expert, "rank": s.count, "keep": 1})
        m.submodules.pair_mem = pair_mem = Memory(shape=pair_mem_layout, depth=s.max_pairs, init=[])
        m.submodules.hist_mem = hist_mem = Memory(shape=s.count, depth=s.max_experts, init=[])
        m.submodules.off_mem = off_mem = Memory(shape=s.count, depth=s.max_experts, init=[])
        m.submodules.sorted_mem = sorted_mem = Memory(shape=s.slot, depth=s.max_pairs, init=[])
        pair_wr = pair_mem.write_port()
        pair_rd = pair_mem.read_port()
        hist_wr = hist_mem.write_port()
        hist_rd = hist_mem.read_port(transparent_for=(hist_wr,))
        off_wr = off_mem.write_port()
        off_rd = off_mem.read_port()
        sorted_wr = sorted_mem.write_port()
        sorted_rd = sorted_mem.read_port()
        for port in (pair_rd, hist_rd, off_rd, sorted_rd):
            m.d.comb += port.en.eq(0)

        def capped(count):
            return Mux(self.cap_en & (count > self.capacity), self.capacity, count)

        # ---- ingest pipeline stage 1 (the histogram read is in flight) ----
        in_valid = Signal()
        in_expert = Signal(s.expert)
        in_ok = Signal()
        in_last = Signal()
        in_slot = Signal(s.count)
        idx = Signal(s.count)  # flat slot id of the next pair to arrive
        total_kept = Signal(s.count)  # Σ kept counts, from the scan

        # ---- scan pipeline ----
        sc_addr = Signal(s.n_experts)  # next expert whose histogram is read
        sc_valid = Signal()  # hist_rd.data holds expert sc_expert's histogram
        sc_expert = Signal(s.expert)
        sc_last = Signal()

        # ---- scatter pipeline ----
        sx_addr = Signal(s.count)
        sx1_valid = Signal()  # pair_rd.data holds pair sx1_slot
        sx1_slot = Signal(s.count)
        sx2_valid = Signal()  # off_rd.data holds the pair's expert offset
        sx2_slot = Signal(s.count)
        sx2_rank = Signal(s.count)
        sx2_keep = Signal()

        # ---- walk state and output registers ----
        w_expert = Signal(s.n_experts)
        w_count = Signal(s.count)
        w_base = Signal(s.count)
        w_row = Signal(s.rows)  # row index inside the current expert's padded group
        w_tpos = Signal(range(s.m_tile))  # position inside the current row tile
        o_valid = Signal()
        o_pad = Signal()
        o_expert = Signal(s.expert)
        o_last = Signal()
        t_valid = Signal()
        t_expert = Signal(s.expert)
        t_last = Signal()

        m.d.comb += [
            self.rows.valid.eq(o_valid),
            self.rows.payload.slot.eq(Mux(o_pad, self.n_pairs, sorted_rd.data)),
            self.rows.payload.expert.eq(o_expert),
            self.rows.payload.last.eq(o_last),
            self.tiles.valid.eq(t_valid),
            self.tiles.payload.expert.eq(t_expert),
            self.tiles.payload.last.eq(t_last),
        ]
        with m.If(self.rows.ready):
            m.d.sync += o_valid.eq(0)
        with m.If(self.tiles.ready):
            m.d.sync += t_valid.eq(0)

        clr_addr = Signal(s.expert)
        with m.FSM(name="phase"):
            with m.State("CLEAR"):
                # After every reset: no reset reaches a memory, and an interrupted run (or
                # power-up) leaves the histogram holding counts the next run would add to.
                m.d.comb += [hist_wr.en.eq(1), hist_wr.addr.eq(clr_addr), hist_wr.data.eq(0)]
                m.d.sync += clr_addr.eq(clr_addr + 1)
                with m.If(clr_addr == s.max_experts - 1):
                    m.next = "INGEST"

            with m.State("INGEST"):
                # After the last pair no new run starts until this one has drained.
                m.d.comb += [
                    self.pairs.ready.eq(~(in_valid & in_last)),
                    hist_rd.en.eq(1),
                    hist_rd.addr.eq(self.pairs.payload.expert),
                ]
                m.d.sync += in_valid.eq(0)
                with m.If(self.pairs.valid & self.pairs.ready):
                    m.d.sync += [
                        in_valid.eq(1),
                        in_expert.eq(self.pairs.payload.expert),
                        in_ok.eq(self.pairs.payload.expert < self.n_experts),
                        in_last.eq(self.pairs.payload.last),
                        in_slot.eq(idx),
                        idx.eq(idx + 1),
                    ]
                    with m.If(idx == 0):
                        m.d.sync += [self.dropped.eq(0), self.bad_id.eq(0), self.busy.eq(1)]
                with m.If(in_valid):
                    rank = hist_rd.data
                    keep = in_ok & ~(self.cap_en & (rank >= self.capacity))
                    m.d.comb += [
                        hist_wr.en.eq(in_ok),
                        hist_wr.addr.eq(in_expert),
                        hist_wr.data.eq(rank + 1),
                        pair_wr.en.eq(1),
                        pair_wr.addr.eq(in_slot),
                        pair_wr.data.expert.eq(in_expert),
                        pair_wr.data.rank.eq(rank),
                        pair_wr.data.keep.eq(keep),
                    ]
                    with m.If(~keep):
                        m.d.sync += self.dropped.eq(self.dropped + 1)
                    with m.If(~in_ok):
                        m.d.sync += self.bad_id.eq(1)
                    with m.If(in_last):
                        m.d.sync += [
                            self.n_pairs.eq(in_slot + 1),
                            idx.eq(0),
                            sc_addr.eq(0),
                            sc_valid.eq(0),
                            total_kept.eq(0),
                        ]
                        m.next = "SCAN"

            with m.State("SCAN"):
                # hist_rd.data is held (en low) while the counts beat waits.
                advance = ~sc_valid | self.counts.ready
                more = sc_addr < self.n_experts
                count = capped(hist_rd.data)
                m.d.comb += [
                    self.counts.valid.eq(sc_valid),
                    self.counts.payload.count.eq(count),
                    self.counts.payload.last.eq(sc_last),
                ]
                with m.If(sc_valid & self.counts.ready):
                    m.d.comb += [
                        hist_wr.en.eq(1),
                        hist_wr.addr.eq(sc_expert),
                        hist_wr.data.eq(count),
                        off_wr.en.eq(1),
                        off_wr.addr.eq(sc_expert),
                        off_wr.data.eq(total_kept),
                    ]
                    m.d.sync += total_kept.eq(total_kept + count)
                with m.If(advance):
                    m.d.comb += [hist_rd.en.eq(more), hist_rd.addr.eq(sc_addr)]
                    m.d.sync += [
                        sc_valid.eq(more),
                        sc_expert.eq(sc_addr),
                        sc_last.eq(sc_addr == self.n_experts - 1),
                        sc_addr.eq(sc_addr + more),
                    ]
                    with m.If(~more):
                        m.d.sync += [sx_addr.eq(0), sx1_valid.eq(0), sx2_valid.eq(0)]
                        m.next = "SCATTER"

            with m.State("SCATTER"):
                more = sx_addr < self.n_pairs
                m.d.comb += [
                    pair_rd.en.eq(1),
                    pair_rd.addr.eq(sx_addr),
                    off_rd.en.eq(1),
                    off_rd.addr.eq(pair_rd.data.expert),
                    sorted_wr.en.eq(sx2_valid & sx2_keep),
                    sorted_wr.addr.eq(off_rd.data + sx2_rank),
                    sorted_wr.data.eq(sx2_slot),
                ]
                m.d.sync += [
                    sx_addr.eq(sx_addr + more),
                    sx1_valid.eq(more),
                    sx1_slot.eq(sx_addr),
                    sx2_valid.eq(sx1_valid),
                    sx2_slot.eq(sx1_slot),
                    sx2_rank.eq(pair_rd.data.rank),
                    sx2_keep.eq(pair_rd.data.keep),
                ]
                with m.If(~more & ~sx1_valid & ~sx2_valid):
                    m.d.sync += [w_expert.eq(0), w_base.eq(0), self.n_rows.eq(0)]
                    with m.If(total_kept == 0):
                        m.next = "DRAIN"
                    with m.Else():
                        m.next = "LOAD"

            with m.State("LOAD"):
                m.d.comb += [hist_rd.en.eq(1), hist_rd.addr.eq(w_expert)]
                m.next = "COUNT"

            with m.State("COUNT"):
                # The scan left the kept count in the histogram; clear it for the next run.
                m.d.comb += [hist_wr.en.eq(1), hist_wr.addr.eq(w_expert), hist_wr.data.eq(0)]
                m.d.sync += [w_count.eq(hist_rd.data), w_row.eq(0), w_tpos.eq(0)]
                with m.If(hist_rd.data == 0):
                    m.d.sync += w_expert.eq(w_expert + 1)
                    m.next = "LOAD"
                with m.Else():
                    m.next = "EMIT"

            with m.State("EMIT"):
                final_expert = w_base + w_count == total_kept
                tile_start = w_tpos == 0
                group_end = (w_tpos == s.m_tile - 1) & (w_row + 1 >= w_count)
                pad = w_row >= w_count
                step = (~o_valid | self.rows.ready) & (~tile_start | ~t_valid | self.tiles.ready)
                with m.If(step):
                    m.d.comb += [
                        sorted_rd.en.eq(1),
                        sorted_rd.addr.eq(Mux(pad, 0, w_base + w_row)),
                    ]
                    m.d.sync += [
                        o_valid.eq(1),
                        o_pad.eq(pad),
                        o_expert.eq(w_expert),
                        o_last.eq(group_end & final_expert),
                        w_row.eq(w_row + 1),
                        w_tpos.eq(Mux(w_tpos == s.m_tile - 1, 0, w_tpos + 1)),
                        self.n_rows.eq(self.n_rows + 1),
                    ]
                    with m.If(tile_start):
                        m.d.sync += [
                            t_valid.eq(1),
                            t_expert.eq(w_expert),
                            t_last.eq(final_expert & (w_row + s.m_tile >= w_count)),
                        ]
                    with m.If(group_end):
                        m.d.sync += [w_base.eq(w_base + w_count), w_expert.eq(w_expert + 1)]
                        with m.If(final_expert):
                            m.next = "DRAIN"
                        with m.Else():
                            m.next = "LOAD"

            with m.State("DRAIN"):
                with m.If((~o_valid | self.rows.ready) & (~t_valid | self.tiles.ready)):
                    m.d.sync += self.busy.eq(0)
                    m.next = "INGEST"

        return m
