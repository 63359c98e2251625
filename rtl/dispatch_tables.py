"""The dispatch tables: the dispatcher's outputs into the on-chip tables the experts phase reads.

Why: the experts phase needs, per expert, its kept-pair count and its
padded group's tiles, and per sorted row its token (or a pad); the combine
phase needs, per slot, the sorted row holding it (or that it was dropped).
The dispatcher streams counts (expert order), tiles (one per M-tile, an
expert's tiles back to back) and rows (slot ids in sorted order); this
writes them into:

- the count table: count of expert `e` at `e`;
- the tile table: an expert's tiles at its id (the run length so far);
- the sorted table: row `r`'s token (looked up in the slot-token table,
  one cycle) or a pad (slot ids at or past `pairs`);
- the inverse table: slot `s` → its row, valid; a slot the routing
  recorder takes is first written invalid (`clear_*`), so a dropped slot
  stays invalid. A row's write wins over a clear in the same cycle.

`done` rises after the last row.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from pymodel.config import AccelConfig

from .activation_feeder import max_sorted_rows, sorted_row_layout, token_bits
from .dispatch import DispatchShapes
from .streams import delayed

__all__ = ["DispatchTables", "inverse_layout"]


def inverse_layout(cfg: AccelConfig) -> data.StructLayout:
    """One entry of the inverse table: a slot's sorted row and whether it was kept."""
    return data.StructLayout({"row": DispatchShapes(cfg).rows, "valid": 1})


class DispatchTables(wiring.Component):
    """Writes the dispatcher's counts, tiles and rows into tables (see the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the token, expert and top-k limits and `m_tile`.

    Ports
    -----
    start : In(1)
        Restart the count index, the tile runs and the row index; clear `done`.
    pairs : In
        T·k of this layer (slot ids at or past it are pads).
    counts, tiles, rows : In(stream), always ready
        The dispatcher's outputs.
    clear_en, clear_slot : In
        Write slot `clear_slot` of the inverse table invalid.
    done : Out(1)
        The last row has been taken.
    count_wr, tile_wr, sorted_wr, inverse_wr : In(WritePort.Signature)
        To the count, tile, sorted and inverse tables.
    slot_token_rd : In(ReadPort.Signature)
        To the slot-token table.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        s = DispatchShapes(cfg)
        pairs_max = cfg.max_tokens * cfg.max_top_k
        pair_addr = ceil_log2(pairs_max)
        expert_addr = ceil_log2(cfg.max_experts)
        super().__init__(
            {
                "start": In(1),
                "pairs": In(range(pairs_max + 1)),
                "counts": In(stream.Signature(s.count_beat, always_ready=True)),
                "tiles": In(stream.Signature(s.tile, always_ready=True)),
                "rows": In(stream.Signature(s.row, always_ready=True)),
                "clear_en": In(1),
                "clear_slot": In(range(pairs_max + 1)),
                "done": Out(1),
                "count_wr": In(WritePort.Signature(addr_width=expert_addr, shape=s.count)),
                "tile_wr": In(WritePort.Signature(addr_width=expert_addr, shape=s.count)),
                "sorted_wr": In(
                    WritePort.Signature(
                        addr_width=ceil_log2(max_sorted_rows(cfg)), shape=sorted_row_layout(cfg)
                    )
                ),
                "inverse_wr": In(
                    WritePort.Signature(addr_width=pair_addr, shape=inverse_layout(cfg))
                ),
                "slot_token_rd": In(
                    ReadPort.Signature(addr_width=pair_addr, shape=unsigned(token_bits(cfg)))
                ),
            }
        )
        self.shapes = s

    def elaborate(self, platform):
        m = Module()
        s = self.shapes
        counts, tiles, rows = self.counts, self.tiles, self.rows

        count_index = Signal(range(s.max_experts + 1))
        m.d.comb += [
            self.count_wr.en.eq(counts.valid),
            self.count_wr.addr.eq(count_index),
            self.count_wr.data.eq(counts.payload.count),
        ]
        with m.If(self.start):
            m.d.sync += count_index.eq(0)
        with m.Elif(counts.valid):
            m.d.sync += count_index.eq(count_index + 1)

        prev, run, first = Signal(s.expert), Signal(s.count), Signal()
        run_next = Mux(~first & (tiles.payload.expert == prev), run + 1, 1)
        m.d.comb += [
            self.tile_wr.en.eq(tiles.valid),
            self.tile_wr.addr.eq(tiles.payload.expert),
            self.tile_wr.data.eq(run_next),
        ]
        with m.If(tiles.valid):
            m.d.sync += [prev.eq(tiles.payload.expert), run.eq(run_next)]
        with m.If(self.start):
            m.d.sync += first.eq(1)
        with m.Elif(tiles.valid):
            m.d.sync += first.eq(0)

        # rows: the slot-token lookup takes a cycle, so the row is written one cycle later
        row = Signal(s.rows)
        now = Signal(data.StructLayout({"valid": 1, "pad": 1, "slot": s.slot, "row": s.rows}))
        m.d.comb += [
            self.slot_token_rd.en.eq(1),
            self.slot_token_rd.addr.eq(rows.payload.slot),
            now.valid.eq(rows.valid),
            now.pad.eq(rows.payload.slot >= self.pairs),
            now.slot.eq(rows.payload.slot),
            now.row.eq(row),
        ]
        r1 = delayed(m, now, name="row")
        r1_valid, r1_pad, r1_slot, r1_row = r1.valid, r1.pad, r1.slot, r1.row
        with m.If(self.start):
            m.d.sync += [row.eq(0), self.done.eq(0)]
        with m.Elif(rows.valid):
            m.d.sync += row.eq(row + 1)
            with m.If(rows.payload.last):
                m.d.sync += self.done.eq(1)
        m.d.comb += [
            self.sorted_wr.en.eq(r1_valid),
            self.sorted_wr.addr.eq(r1_row),
            self.sorted_wr.data.token.eq(self.slot_token_rd.data),
            self.sorted_wr.data.pad.eq(r1_pad),
        ]
        inv = self.inverse_wr
        with m.If(r1_valid):
            m.d.comb += [
                inv.en.eq(~r1_pad),
                inv.addr.eq(r1_slot),
                inv.data.row.eq(r1_row),
                inv.data.valid.eq(1),
            ]
        with m.Else():
            m.d.comb += [
                inv.en.eq(self.clear_en),
                inv.addr.eq(self.clear_slot),
                inv.data.valid.eq(0),
            ]
        return m
