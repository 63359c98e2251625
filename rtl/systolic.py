"""Weight-stationary R×C int8 systolic array with double-buffered weight registers.

Geometry (`AccelConfig.rows` = R input channels, `cols` = C output channels):
processing element PE(r, c) holds two weights (banks 0/1) for input channel
r and output channel c. An activation row `x[0:R]` enters at the left edge,
skewed so that row r is delayed r cycles; activations move right one PE per
cycle and partial sums move down one PE per cycle, so column c's bottom PE
emits `Σ_r x[r]·w[r, c]` for that row. Each PE multiplies in a
`PipelinedMultiplier` (operands registered, product registered: on ECP5 the
MULT18X18D's own registers) and adds the product to the partial sum in a
third stage, so a PE's partial-sum input is due two cycles after its
activation: a row reaches PE(r + 1, c) one cycle after PE(r, c), whose sum is
ready two cycles after that. Every sum takes two cycles more than a
combinational MAC would. The outputs are deskewed inside
the array: the sum for the row presented at cycle t appears on `psum_out` at
cycle t + `latency` (R + C + 1), all C columns aligned.

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

Valid gating: a `valid` bit travels beside each activation (`valid_in`, one
per row, default 1 when left unconnected), and each PE's product and partial
sum registers load only when their stage holds a row. `psum_out` is exact
in every cycle whose row was valid; in other cycles it holds stale data.
Why: a software model (Verilator) evaluates every register's next state every
cycle, busy or idle, and the array idles through routing, dispatch, combining
and weight loads; a guarded multiply-add is skipped. Plain register copies
(skew, deskew, `a`/`sel`) are not gated: a guarded copy costs a model more
than a copy. The enables are local (one valid bit per PE), no global fan-out.

Registers that always load together are one signal (a PE's activation, bank
and valid bits; its two weights; each weight-skew stage's enable, bank and
bytes): a software model pays per variable, not per bit (Verilator: −2 000
instructions per simulated cycle of the default top, docs/simulation.md); the
flip-flops and logic are the same.

Accumulation is exact in `acc_bits`: the contract bounds K by
`AccelConfig.max_k`, so no PE saturates or wraps.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from contract.timing import systolic_latency
from pymodel.config import AccelConfig

from .multiplier import PipelinedMultiplier

__all__ = ["ProcessingElement", "SystolicArray", "act_layout"]


def act_layout(cfg: AccelConfig) -> data.StructLayout:
    """An activation as it moves through the array: value, weight bank, valid bit."""
    return data.StructLayout({"a": signed(cfg.act_bits), "sel": 1, "valid": 1})


class ProcessingElement(wiring.Component):
    """One MAC cell, three stages: `a_in` and `w[sel_in]` into the multiplier's
    operand registers, their product, then `psum_out <= psum_in + product`;
    `a`/`sel`/`valid` pass right.

    The cell's partial-sum input must therefore arrive two cycles after its
    activation, which the array's skew provides (see the module docstring).
    Each stage loads only for a valid row (`valid_in`, then its delayed copies).
    Weights are written through `w_we`/`w_bank`/`w_data` (registered; the new
    value is used from the next cycle on).
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        super().__init__(
            {
                "a_in": In(signed(cfg.act_bits)),
                "sel_in": In(1),
                "valid_in": In(1, init=1),
                "psum_in": In(signed(cfg.acc_bits)),
                "a_out": Out(signed(cfg.act_bits)),
                "sel_out": Out(1),
                "valid_out": Out(1),
                "psum_out": Out(signed(cfg.acc_bits)),
                "w_we": In(1),
                "w_bank": In(1),
                "w_data": In(signed(cfg.weight_bits)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        # One register each for both weight banks and for the passing activation
        # (see the module docstring: a software model pays per variable).
        w = Signal(data.ArrayLayout(signed(cfg.weight_bits), 2))
        act = Signal(act_layout(cfg))
        with m.If(self.w_we):
            with m.If(self.w_bank):
                m.d.sync += w[1].eq(self.w_data)
            with m.Else():
                m.d.sync += w[0].eq(self.w_data)
        m.d.sync += [act.a.eq(self.a_in), act.sel.eq(self.sel_in), act.valid.eq(self.valid_in)]
        m.d.comb += [
            self.a_out.eq(act.a),
            self.sel_out.eq(act.sel),
            self.valid_out.eq(act.valid),
        ]
        m.submodules.mul = mul = PipelinedMultiplier(signed(cfg.act_bits), signed(cfg.weight_bits))
        m.d.comb += [
            mul.a.eq(self.a_in),
            mul.b.eq(Mux(self.sel_in, w[1], w[0])),
            mul.en.eq(self.valid_in),
        ]
        # The product of the row that entered two cycles ago is ready: add it.
        product_valid = Signal()
        m.d.sync += product_valid.eq(act.valid)
        with m.If(product_valid):
            m.d.sync += self.psum_out.eq(self.psum_in + mul.p)
        return m


class SystolicArray(wiring.Component):
    """The R×C grid plus input skew, weight-write skew and output deskew registers.

    Ports: `a_in` (one unskewed activation row, R lanes) with its bank `sel_in`
    and `valid_in` (clear: no row this cycle; tied to 1 when left unconnected);
    `w_row` (L weight rows of C lanes, L = `cfg.weight_rows_per_beat`): row i
    is written to array row `w_addr + i` of bank `w_bank` when bit i of `w_we`
    is set (`w_addr` is a multiple of L; rows past R are ignored); `psum_out`
    (C aligned int32 sums), `latency` cycles after a valid row entered (stale otherwise).
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        rows, cols = cfg.rows, cfg.cols
        lanes = cfg.weight_rows_per_beat
        super().__init__(
            {
                "a_in": In(data.ArrayLayout(signed(cfg.act_bits), rows)),
                "sel_in": In(1),
                "valid_in": In(1, init=1),
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
        return systolic_latency(cfg)

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

        # Input skew: row r's activation, bank bit and valid bit are delayed r cycles.
        for r in range(rows):
            act = Signal(act_layout(cfg), name=f"skew_{r}")
            m.d.comb += [
                act.a.eq(self.a_in[r]),
                act.sel.eq(self.sel_in),
                act.valid.eq(self.valid_in),
            ]
            for d in range(r):
                act_d = Signal(act_layout(cfg), name=f"skew_{r}_{d}")
                m.d.sync += act_d.eq(act)
                act = act_d
            m.d.comb += [
                pes[r][0].a_in.eq(act.a),
                pes[r][0].sel_in.eq(act.sel),
                pes[r][0].valid_in.eq(act.valid),
            ]

        # Weight-write skew: row r = j·L + i waits r − j cycles, then one more per column.
        # Each stage is one register: its enable, bank and the bytes still ahead.
        def write_stage(n_cols: int) -> data.StructLayout:
            return data.StructLayout(
                {
                    "we": 1,
                    "bank": 1,
                    "data": data.ArrayLayout(signed(cfg.weight_bits), n_cols),
                }
            )

        for r in range(rows):
            beat_row, lane = r - r % lanes, r % lanes
            stage = Signal(write_stage(cols), name=f"wsk_{r}")
            m.d.comb += [
                stage.we.eq(self.w_we[lane] & (self.w_addr == beat_row)),
                stage.bank.eq(self.w_bank),
                stage.data.eq(self.w_row[lane]),
            ]
            for d in range(self.write_delay(r)):
                stage_d = Signal(write_stage(cols), name=f"wsk_{r}_{d}")
                m.d.sync += stage_d.eq(stage)
                stage = stage_d
            for c in range(cols):
                pe = pes[r][c]
                m.d.comb += [
                    pe.w_data.eq(stage.data[0]),
                    pe.w_bank.eq(stage.bank),
                    pe.w_we.eq(stage.we),
                ]
                if c + 1 < cols:
                    # Stage c + 1 carries only the bytes of columns c + 1 … C − 1.
                    rest = Signal(write_stage(cols - 1 - c), name=f"wcol_{r}_{c}")
                    m.d.sync += [
                        rest.we.eq(stage.we),
                        rest.bank.eq(stage.bank),
                        rest.data.as_value().eq(stage.data.as_value()[cfg.weight_bits :]),
                    ]
                    stage = rest

        for r in range(rows):
            for c in range(cols):
                pe = pes[r][c]
                if c + 1 < cols:
                    m.d.comb += [
                        pes[r][c + 1].a_in.eq(pe.a_out),
                        pes[r][c + 1].sel_in.eq(pe.sel_out),
                        pes[r][c + 1].valid_in.eq(pe.valid_out),
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
