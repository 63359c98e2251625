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
switch without a bubble. The caller (the tile sequencer) guarantees a bank is
rewritten only after the last activation using it has left the row being
written (see `SystolicArray.bank_cooldown`).

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
    """The R×C grid plus input skew and output deskew registers.

    Ports: `a_in` (one unskewed activation row, R lanes) with its bank `sel_in`;
    `w_row` (one weight row, C lanes) written to row `w_addr` of bank `w_bank`
    when `w_we`; `psum_out` (C aligned int32 sums), `latency` cycles after the
    row entered.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        rows, cols = cfg.rows, cfg.cols
        super().__init__(
            {
                "a_in": In(data.ArrayLayout(signed(cfg.act_bits), rows)),
                "sel_in": In(1),
                "w_row": In(data.ArrayLayout(signed(cfg.weight_bits), cols)),
                "w_addr": In(range(rows)),
                "w_bank": In(1),
                "w_we": In(1),
                "psum_out": Out(data.ArrayLayout(signed(cfg.acc_bits), cols)),
            }
        )

    @property
    def latency(self) -> int:
        """Cycles from a row on `a_in` to its sums on `psum_out`."""
        return self.cfg.rows + self.cfg.cols

    @property
    def bank_cooldown(self) -> int:
        """Cycles after the last row using a bank entered before row 0 of it may be rewritten.

        PE(r, c) uses the row injected at cycle t during cycle t + r + c, and a
        weight write takes effect the cycle after it is issued; writing rows in
        order 0, 1, … one per cycle from t + C − 1 on is therefore safe.
        """
        return self.cfg.cols - 1

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        rows, cols = cfg.rows, cfg.cols
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
                m.d.comb += [
                    pe.w_data.eq(self.w_row[c]),
                    pe.w_bank.eq(self.w_bank),
                    pe.w_we.eq(self.w_we & (self.w_addr == r)),
                ]
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
