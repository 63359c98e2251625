"""Formal harness of the dispatcher: its output checked against a register-level model of one run.

The solver drives the pairs (any expert id, stalls anywhere), the run
parameters, every output's `ready` and the reset. The harness keeps what a
correct run must produce — per-expert counts after capacity, which slots are
kept and their experts — and asserts, beat by beat:

- the stream rule on `counts`, `rows` and `tiles`;
- `counts`: one beat per expert, the model's kept count, `last` on the final;
- `rows`: a permutation of the kept slots (each exactly once, the right
  expert), experts ascending, slots ascending inside an expert (stable),
  pads (slot id T·k) only after an expert's pairs, every expert's group a
  whole number of row tiles;
- `dropped` and `n_pairs` when the run ends.

Because the reset is free, this includes "a reset anywhere, then a correct
run": the property the mid-layer reset defect broke.
"""

from __future__ import annotations

from amaranth import Array, Const, Module, Mux, Signal
from amaranth.hdl import Assert, Assume, Elaboratable

from pymodel.config import AccelConfig
from rtl.dispatch import Dispatcher
from sim.formal import assume_stream_rules, check_stream_rules

SMALL_DISPATCH = AccelConfig(
    rows=2, cols=2, m_tile=2, max_experts=4, max_groups=4, max_top_k=2, max_tokens=2
)
"""Four experts, at most four pairs, row tile 2: every case of the walk in a few dozen cycles."""


class DispatchHarness(Elaboratable):
    """`dut` (a `Dispatcher`) with free inputs and the assertions of the module docstring."""

    def __init__(self, dut: Dispatcher) -> None:
        self.dut = dut
        s = dut.shapes
        self.pairs_valid = Signal()
        self.pairs_expert = Signal(s.expert)
        self.pairs_last = Signal()
        self.n_experts = Signal(s.n_experts)
        self.capacity = Signal(s.count)
        self.cap_en = Signal()
        self.counts_ready = Signal()
        self.rows_ready = Signal()
        self.tiles_ready = Signal()

    @property
    def ports(self) -> list[Signal]:
        return [
            self.pairs_valid,
            self.pairs_expert,
            self.pairs_last,
            self.n_experts,
            self.capacity,
            self.cap_en,
            self.counts_ready,
            self.rows_ready,
            self.tiles_ready,
        ]

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.dut = dut = self.dut
        s = dut.shapes
        P, E = s.max_pairs, s.max_experts
        m.d.comb += [
            dut.pairs.valid.eq(self.pairs_valid),
            dut.pairs.payload.expert.eq(self.pairs_expert),
            dut.pairs.payload.last.eq(self.pairs_last),
            dut.n_experts.eq(self.n_experts),
            dut.capacity.eq(self.capacity),
            dut.cap_en.eq(self.cap_en),
            dut.counts.ready.eq(self.counts_ready),
            dut.rows.ready.eq(self.rows_ready),
            dut.tiles.ready.eq(self.tiles_ready),
        ]

        # ---- environment: a well-formed producer, parameters fixed between resets ----
        assume_stream_rules(m, dut.pairs, "pairs")
        started = Signal()
        params = Signal.like(self.n_experts), Signal.like(self.capacity), Signal()
        inputs = self.n_experts, self.capacity, self.cap_en
        m.d.sync += [started.eq(1), *(p.eq(i) for p, i in zip(params, inputs, strict=True))]
        m.d.comb += Assume((self.n_experts >= 1) & (self.n_experts <= E))
        with m.If(started):
            m.d.comb += [Assume(i == p) for p, i in zip(params, inputs, strict=True)]
        for name in ("counts", "rows", "tiles"):
            check_stream_rules(m, getattr(dut, name), name)

        # ---- the model: what this run must produce ----
        count = Array(Signal(s.count, name=f"count_{e}") for e in range(E))
        slot_expert = Array(Signal(s.expert, name=f"slot_expert_{i}") for i in range(P))
        kept = Signal(P)
        n_pairs = Signal(s.count)  # pairs of the run so far: T·k, the pad id, once complete
        dropped = Signal(s.count)
        complete = Signal()  # the run's last pair is in
        pair = dut.pairs
        accept = pair.valid & pair.ready
        first = (n_pairs == 0) | complete  # this pair starts a run
        slot = Mux(first, 0, n_pairs)
        with m.If(pair.valid):
            m.d.comb += Assume(pair.payload.last | (slot < P - 1))  # T·k ≤ max_tokens·max_top_k
        with m.If(accept):
            e = pair.payload.expert
            rank = Mux(first, 0, count[e])
            ok = e < self.n_experts
            keep = ok & ~(self.cap_en & (rank >= self.capacity))
            with m.If(first):
                m.d.sync += [c.eq(0) for c in count]
            m.d.sync += [
                count[e].eq(rank + ok),
                slot_expert[slot].eq(e),
                kept.eq(Mux(first, 0, kept) | (keep << slot)),
                dropped.eq(Mux(first, 0, dropped) + ~keep),
                n_pairs.eq(slot + 1),
                complete.eq(pair.payload.last),
            ]

        def kept_count(e: object) -> object:
            return Mux(self.cap_en & (count[e] > self.capacity), self.capacity, count[e])

        # ---- counts ----
        beat = Signal(s.n_experts)
        with m.If(accept & first):
            m.d.sync += beat.eq(0)
        with m.If(dut.counts.valid):
            m.d.comb += [
                Assert(complete, "counts before the last pair"),
                Assert(beat < self.n_experts, "more count beats than experts"),
                Assert(dut.counts.payload.count == kept_count(beat), "wrong kept count"),
                Assert(dut.counts.payload.last == (beat == self.n_experts - 1), "counts.last"),
            ]
            with m.If(dut.counts.ready):
                m.d.sync += beat.eq(beat + 1)

        # ---- rows ----
        emitted = Signal(P)
        prev_expert = Signal(s.expert)
        prev_slot = Signal(s.slot)
        prev_real = Signal()  # the previous row of this run was a kept slot, not a pad
        any_row = Signal()
        group_rows = Signal(s.rows)
        group_pads = Signal(s.rows)
        row = dut.rows.payload
        pad = row.slot == n_pairs
        new_group = ~any_row | (row.expert != prev_expert)
        bit = (Const(1, P) << row.slot)[:P]
        with m.If(accept & first):
            m.d.sync += [emitted.eq(0), any_row.eq(0)]
        with m.If(dut.rows.valid):
            m.d.comb += [
                Assert(complete, "rows before the last pair"),
                Assert(pad | (row.slot < n_pairs), "slot id beyond T·k"),
                Assert(~any_row | (row.expert >= prev_expert), "experts out of order"),
                Assert(new_group | pad | prev_real, "a slot after a pad in one group"),
                Assert(Mux(new_group, 0, group_pads) + pad < s.m_tile, "more pads than a tile"),
            ]
            with m.If(~pad):
                m.d.comb += [
                    Assert(kept.bit_select(row.slot, 1), "a dropped or unknown slot emitted"),
                    Assert((emitted & bit) == 0, "a slot emitted twice"),
                    Assert(slot_expert[row.slot] == row.expert, "slot under the wrong expert"),
                    Assert(new_group | (row.slot > prev_slot), "slots out of order (unstable)"),
                ]
            with m.If(new_group & any_row):
                m.d.comb += Assert(group_rows % s.m_tile == 0, "group not a whole row tile")
            with m.If(row.last):
                m.d.comb += [
                    Assert(
                        (Mux(new_group, 0, group_rows) + 1) % s.m_tile == 0,
                        "last group not a whole row tile",
                    ),
                    Assert((emitted | Mux(pad, 0, bit)) == kept, "kept slots missing"),
                ]
            with m.If(dut.rows.ready):
                m.d.sync += [
                    any_row.eq(1),
                    prev_expert.eq(row.expert),
                    prev_slot.eq(row.slot),
                    prev_real.eq(~pad),
                    group_rows.eq(Mux(new_group, 0, group_rows) + 1),
                    group_pads.eq(Mux(new_group, 0, group_pads) + pad),
                ]
                with m.If(~pad):
                    m.d.sync += emitted.eq(emitted | bit)

        # ---- totals when the run ends ----
        was_busy = Signal()
        m.d.sync += was_busy.eq(dut.busy)
        with m.If(was_busy & ~dut.busy):
            m.d.comb += [
                Assert(dut.dropped == dropped, "dropped"),
                Assert(dut.n_pairs == n_pairs, "n_pairs"),
            ]
        return m


def dispatch_harness(cfg: AccelConfig = SMALL_DISPATCH) -> DispatchHarness:
    return DispatchHarness(Dispatcher(cfg))
