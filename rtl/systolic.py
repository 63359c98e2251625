"""Weight-stationary R×C int8 systolic array with double-buffered weight registers.

Geometry (`AccelConfig.rows` = R input channels, `cols` = C output channels):
processing element PE(r, c) holds two weights (banks 0/1) for input channel
r and output channel c. An activation row `x[0:R]` enters at the left edge,
skewed so that row r is delayed r cycles; activations move right one PE per
cycle and partial sums move down one PE per cycle, so column c's bottom PE
emits `Σ_r x[r]·w[r, c]` for that row. Each PE registers its product before
the add (a multiplier feeding the 32-bit carry chain in one cycle caps ECP5
near 89 MHz), so every sum takes one cycle more. The outputs are deskewed
inside the array: the sum for the row presented at cycle t appears on
`psum_out` at cycle t + `latency` (R + C), all C columns aligned.

Double buffering: every activation carries a bank-select bit `sel` that
travels with it, and each PE multiplies by `w[sel]`. So the next weight tile
is written into the other bank while the current tile computes, and tiles
switch without a bubble.

Weight writes: `L = AccelConfig.weight_rows_per_beat` rows a cycle (rows
`w_addr … w_addr+L−1`, `w_we` one enable bit per row, so the tail of a tile
with fewer rows writes only its valid ones), so loads keep up with a bus of
L·C bytes a cycle. A write travels the same diagonal wavefront as the
activations: the write of row r = j·L + i issued with beat j reaches PE(r, c)
`r − j + c` cycles later (`r − j` skew registers per row, then one more per
column, carrying only the bytes of the columns still ahead). For beats
issued one per cycle from s₀ on, every PE(r, c) is written at s₀ + r + c —
the cycle the activation injected at s₀ passes it. So a bank may be rewritten
from the cycle its last row is injected on (`bank_cooldown` = 0), whatever L,
R and C, and a tile is usable from the cycle after its last beat; a short
tile (decode: one token row per expert) no longer waits for the previous
tile to sweep the array before its bank can be refilled.

Accumulation is exact in `acc_bits`: the contract bounds K by
`AccelConfig.max_k`, so no PE saturates or wraps.
"""

from __future__ import annotations

from amaranth import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from pymodel.config import AccelConfig

__all__ = ["ProcessingElement", "SystolicArray"]


class ProcessingElement(wiring.Component):
    """One MAC cell, two stages: `product <= a_in · w[sel_in]`, then
    `psum_out <= psum_in + product`; `a`/`sel` pass right.

    The cell's partial-sum input must therefore arrive one cycle after its
    activation, which the array's one-cycle-per-row psum chain provides.
    Weights are written through `w_we`/`w_bank`/`w_data` (registered; the new
    value is used from the next cycle on).
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        super().__init__(
            {
                "a_in": In(signed(cfg.act_bits)),
                "sel_in": In(1),
                "psum_in": In(signed(cfg.acc_bits)),
                "a_out": Out(signed(cfg.act_bits)),
                "sel_out": Out(1),
                "psum_out": Out(signed(cfg.acc_bits)),
                "w_we": In(1),
                "w_bank": In(1),
                "w_data": In(signed(cfg.weight_bits)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        w = [Signal(signed(self.cfg.weight_bits), name=f"w{b}") for b in range(2)]
        with m.If(self.w_we):
            with m.If(self.w_bank):
                m.d.sync += w[1].eq(self.w_data)
            with m.Else():
                m.d.sync += w[0].eq(self.w_data)
        weight = Signal(signed(self.cfg.weight_bits))
        m.d.comb += weight.eq(w[0])
        with m.If(self.sel_in):
            m.d.comb += weight.eq(w[1])
        product = Signal(signed(self.cfg.act_bits + self.cfg.weight_bits))
        m.d.sync += [
            self.a_out.eq(self.a_in),
            self.sel_out.eq(self.sel_in),
            product.eq(self.a_in * weight),
            self.psum_out.eq(self.psum_in + product),
        ]
        return m


class SystolicArray(wiring.Component):
    """The R×C grid plus input skew, weight-write skew and output deskew registers.

    Ports: `a_in` (one unskewed activation row, R lanes) with its bank `sel_in`;
    `w_row` (L weight rows of C lanes, L = `cfg.weight_rows_per_beat`): row i
    is written to array row `w_addr + i` of bank `w_bank` when bit i of `w_we`
    is set (`w_addr` is a multiple of L; rows past R are ignored); `psum_out`
    (C aligned int32 sums), `latency` cycles after the row entered.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        rows, cols = cfg.rows, cfg.cols
        lanes = cfg.weight_rows_per_beat
        super().__init__(
            {
                "a_in": In(data.ArrayLayout(signed(cfg.act_bits), rows)),
                "sel_in": In(1),
                "w_row": In(
                    data.ArrayLayout(data.ArrayLayout(signed(cfg.weight_bits), cols), lanes)
                ),
                "w_addr": In(range(rows)),
                "w_bank": In(1),
                "w_we": In(lanes),
                "psum_out": Out(data.ArrayLayout(signed(cfg.acc_bits), cols)),
            }
        )

    @staticmethod
    def latency_for(cfg: AccelConfig) -> int:
        """Cycles from a row on `a_in` to its sums on `psum_out`, without building an array."""
        return cfg.rows + cfg.cols

    @property
    def latency(self) -> int:
        """Cycles from a row on `a_in` to its sums on `psum_out`."""
        return self.latency_for(self.cfg)

    @property
    def bank_cooldown(self) -> int:
        """Cycles after the cycle the last row using a bank entered before it may be rewritten.

        PE(r, c) uses the row injected at cycle t during cycle t + r + c; a
        weight write takes effect the cycle after it reaches the PE. Beat j
        (rows j·L …), issued at s_j ≥ s₀ + j, reaches PE(r, c) at
        s_j − j + r + c ≥ s₀ + r + c (see the module docstring), so any
        s₀ ≥ t is safe: no cooldown beyond the cycle of the last injection.
        """
        return 0

    def write_delay(self, row: int) -> int:
        """Cycles a weight write to array row `row` waits before its column-0 PE (skew)."""
        return row - row // self.cfg.weight_rows_per_beat

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        rows, cols = cfg.rows, cfg.cols
        lanes = cfg.weight_rows_per_beat
        pes = [[ProcessingElement(cfg) for _ in range(cols)] for _ in range(rows)]
        for r in range(rows):
            for c in range(cols):
                m.submodules[f"pe_{r}_{c}"] = pes[r][c]

        # Input skew: row r's activation and bank bit are delayed r cycles.
        for r in range(rows):
            a, sel = self.a_in[r], self.sel_in
            for d in range(r):
                a_d = Signal(signed(cfg.act_bits), name=f"skew_a_{r}_{d}")
                sel_d = Signal(name=f"skew_sel_{r}_{d}")
                m.d.sync += [a_d.eq(a), sel_d.eq(sel)]
                a, sel = a_d, sel_d
            m.d.comb += [pes[r][0].a_in.eq(a), pes[r][0].sel_in.eq(sel)]

        # Weight-write skew: row r = j·L + i waits r − j cycles, then one more per column.
        row_w = data.ArrayLayout(signed(cfg.weight_bits), cols)
        for r in range(rows):
            beat_row, lane = r - r % lanes, r % lanes
            we, bank = Signal(name=f"wsk_we_{r}"), Signal(name=f"wsk_bank_{r}")
            wdata = Signal(row_w, name=f"wsk_data_{r}")
            m.d.comb += [
                we.eq(self.w_we[lane] & (self.w_addr == beat_row)),
                bank.eq(self.w_bank),
                wdata.eq(self.w_row[lane]),
            ]
            for d in range(self.write_delay(r)):
                we_d = Signal(name=f"wsk_we_{r}_{d}")
                bank_d = Signal(name=f"wsk_bank_{r}_{d}")
                wdata_d = Signal(row_w, name=f"wsk_data_{r}_{d}")
                m.d.sync += [we_d.eq(we), bank_d.eq(bank), wdata_d.eq(wdata)]
                we, bank, wdata = we_d, bank_d, wdata_d
            lanes_left = [wdata[c] for c in range(cols)]
            for c in range(cols):
                pe = pes[r][c]
                m.d.comb += [
                    pe.w_data.eq(lanes_left[0]),
                    pe.w_bank.eq(bank),
                    pe.w_we.eq(we),
                ]
                if c + 1 < cols:
                    # Stage c + 1 carries only the bytes of columns c + 1 … C − 1.
                    we_c = Signal(name=f"wcol_we_{r}_{c}")
                    bank_c = Signal(name=f"wcol_bank_{r}_{c}")
                    rest = [
                        Signal(signed(cfg.weight_bits), name=f"wcol_{r}_{c}_{k}")
                        for k in range(c + 1, cols)
                    ]
                    m.d.sync += [we_c.eq(we), bank_c.eq(bank)]
                    m.d.sync += [dst.eq(src) for dst, src in zip(rest, lanes_left[1:], strict=True)]
                    we, bank, lanes_left = we_c, bank_c, rest

        for r in range(rows):
            for c in range(cols):
                pe = pes[r][c]
                if c + 1 < cols:
                    m.d.comb += [
                        pes[r][c + 1].a_in.eq(pe.a_out),
                        pes[r][c + 1].sel_in.eq(pe.sel_out),
                    ]
                if r + 1 < rows:
                    m.d.comb += pes[r + 1][c].psum_in.eq(pe.psum_out)
        for c in range(cols):
            m.d.comb += pes[0][c].psum_in.eq(0)

        # Output deskew: column c is delayed cols-1-c more cycles.
        for c in range(cols):
            p = pes[rows - 1][c].psum_out
            for d in range(cols - 1 - c):
                p_d = Signal(signed(cfg.acc_bits), name=f"deskew_{c}_{d}")
                m.d.sync += p_d.eq(p)
                p = p_d
            m.d.comb += self.psum_out[c].eq(p)
        return m
