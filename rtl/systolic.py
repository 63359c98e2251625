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

Compressed weights (built only when `AccelConfig` asks; a build without them
is the array above, unchanged):

- `int4_weights`: each PE also holds a `pair` bit per bank (`w_pair`,
  written with the weight): a pair bank's byte is two int4 weights, K
  positions 2r (low nibble) and 2r + 1, so an int4 dense tile covers 2R K
  positions and the activation input is 2R lanes (PE row r: lanes 2r and
  2r + 1). The low nibble, sign-extended, goes through the DSP multiplier
  with lane 2r; the high nibble meets lane 2r + 1 in logic
  (`int4_halves`); a bank without the bit holds one weight (lane 2r) and
  the logic product is zero. Two stages more (`PAIR_STAGES`: the products
  copied into fabric registers, then added) before the partial sum, in
  every PE, so every sum takes two cycles more; the skew argument is the
  same (each PE's partial-sum input is due five cycles after its
  activation, with the operand stage below). Where int4 2:4 tiles are
  built too (`nibble_rows`), the weight port takes `weight_lanes` = 2L rows a beat (the sequencer
  sign-extends an int4 2:4 byte's two kept nibbles, one a PE), so the write
  skew is `r − r//(2L)`; a byte beat of L rows uses half the lanes. The
  timing argument above holds for both: a write still reaches PE(r, c) no
  earlier than s₀ + r + c (the beat index of row r is at least r//(2L))
  and no later than the cycle after the tile's last beat (the delay is at
  most r).
- `sparse_2_4`: each PE also holds a 2-bit position per bank (`idx`), and
  the activation input is 2R lanes (a 2:4 tile's 2R K positions). PE(r, c)
  multiplies its kept weight by activation `4·(r//2) + idx[sel]`: the 4:1
  mux sits inside the PE, in front of a fabric operand register
  (`OPERAND_STAGES`, in every PE of a build with a compressed path: the
  select and the route into the DSP block in one cycle made 98.7 MHz), so
  every activation keeps its dense wavefront (it still reaches PE(r, c) at
  t + r + c) and every sum takes one cycle more. Rows 2g and 2g+1 choose
  from the same four lanes; the lanes enter row 2g (skewed 2g cycles) and move
  right, and PE(2g+1, c) takes them from PE(2g, c)'s output register —
  exactly one cycle later, so odd rows need no skew or activation
  registers of their own. Positions are written `index_lanes` = 4L rows a
  beat (L index rows of four 2-bit positions a byte) through the weight
  write skew (the same delay, the position in the low two bits of the
  stage's byte): after a tile's value beats, so the timing argument above
  holds. A weight write sets its PE's position to r mod 2, so a dense
  tile (the issuer puts x[2g+j] on lane 4g+j) needs no index beats; a pair
  write (both switches) sets it to 2·(r mod 2), the lane of K position 2r
  in the group, whose next lane is 2r + 1.
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from contract.timing import MULTIPLIER_LATENCY, PAIR_STAGES, systolic_latency
from pymodel.config import AccelConfig
from pymodel.gemm_engine import activation_lanes

from .multiplier import PipelinedMultiplier, int4_halves

__all__ = [
    "ProcessingElement",
    "SystolicArray",
    "act_layout",
    "index_lanes",
    "nibble_rows",
    "weight_lanes",
]

IDX_BITS = 2
"""Bits of a 2:4 position (which of a group's four K positions a kept weight sits at)."""


def act_layout(cfg: AccelConfig) -> data.StructLayout:
    """An activation as it moves through the array: value, weight bank, valid bit.

    In a 2:4 build the value is the four activations of the row's group of K.
    """
    if cfg.sparse_2_4 or cfg.int4_weights:
        value = data.ArrayLayout(signed(cfg.act_bits), 4 if cfg.sparse_2_4 else 2)
        return data.StructLayout({"a": value, "sel": 1, "valid": 1})
    return data.StructLayout({"a": signed(cfg.act_bits), "sel": 1, "valid": 1})


def weight_lanes(cfg: AccelConfig) -> int:
    """Array rows one weight beat may write: 2L where int4 2:4 tiles are built (two kept
    nibbles a byte, one a PE), else L (an int4 dense byte is one PE's pair)."""
    return 2 * cfg.weight_rows_per_beat if nibble_rows(cfg) else cfg.weight_rows_per_beat


def nibble_rows(cfg: AccelConfig) -> bool:
    """Whether the build loads int4 2:4 tiles: one sign-extended nibble an array row."""
    return cfg.sparse_2_4 and cfg.int4_weights


def index_lanes(cfg: AccelConfig) -> int:
    """Array rows one index beat writes in a 2:4 build: L index rows of four positions a byte."""
    return 4 * cfg.weight_rows_per_beat


class ProcessingElement(wiring.Component):
    """One MAC cell, three stages: `a_in` and `w[sel_in]` into the multiplier's
    operand registers, their product, then `psum_out <= psum_in + product`;
    `a`/`sel`/`valid` pass right.

    The cell's partial-sum input must therefore arrive two cycles after its
    activation, which the array's skew provides (see the module docstring).
    Each stage loads only for a valid row (`valid_in`, then its delayed copies).
    Weights are written through `w_we`/`w_bank`/`w_data` (registered; the new
    value is used from the next cycle on).

    In a 2:4 build (`row` gives the PE's array row) `a_in` is the four
    activations of the row's K group, `i_we` writes the bank's position from
    the low bits of `w_data` (a weight write sets it to `row` mod 2), and the
    PE multiplies `a_in[idx[sel_in]]`; PEs of odd rows pass nothing on
    (their activations come from the row above). In an int4 build `w_pair`
    marks a bank holding an int4 pair, and the PE has six stages
    (`_pair_elaborate`). In every build with a compressed path the selected
    operands are registered in the fabric first (`OPERAND_STAGES`: one stage
    more than the dense PE's three).
    """

    def __init__(self, cfg: AccelConfig, row: int = 0) -> None:
        self.cfg, self.row = cfg, row
        value = act_layout(cfg).members["a"]
        forwards = not (cfg.sparse_2_4 and row % 2)
        sparse = {"i_we": In(1)} if cfg.sparse_2_4 else {}
        if cfg.int4_weights:
            sparse["w_pair"] = In(1)
        passing = {"a_out": Out(value), "sel_out": Out(1)} if forwards else {}
        super().__init__(
            {
                "a_in": In(value),
                "sel_in": In(1),
                "valid_in": In(1, init=1),
                "psum_in": In(signed(cfg.acc_bits)),
                **passing,
                "valid_out": Out(1),
                "psum_out": Out(signed(cfg.acc_bits)),
                "w_we": In(1),
                "w_bank": In(1),
                "w_data": In(signed(cfg.weight_bits)),
                **sparse,
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        # One register each for both weight banks and for the passing activation
        # (see the module docstring: a software model pays per variable).
        w = Signal(data.ArrayLayout(signed(cfg.weight_bits), 2))
        with m.If(self.w_we):
            with m.If(self.w_bank):
                m.d.sync += w[1].eq(self.w_data)
            with m.Else():
                m.d.sync += w[0].eq(self.w_data)
        if cfg.int4_weights:
            return self._pair_elaborate(m, w)
        if "a_out" in self.signature.members:
            act = Signal(act_layout(cfg))
            m.d.sync += [act.a.eq(self.a_in), act.sel.eq(self.sel_in), act.valid.eq(self.valid_in)]
            m.d.comb += [
                self.a_out.eq(act.a),
                self.sel_out.eq(act.sel),
                self.valid_out.eq(act.valid),
            ]
        else:
            act = Signal(data.StructLayout({"valid": 1}))
            m.d.sync += act.valid.eq(self.valid_in)
            m.d.comb += self.valid_out.eq(act.valid)
        m.submodules.mul = mul = PipelinedMultiplier(signed(cfg.act_bits), signed(cfg.weight_bits))
        weight = Mux(self.sel_in, w[1], w[0])
        if cfg.sparse_2_4:
            (operand, weight), valid = self._operand_stage(m, self._select(m), weight)
            m.d.comb += [mul.a.eq(operand), mul.b.eq(weight), mul.en.eq(valid)]
            product_valid = Signal(MULTIPLIER_LATENCY)
            m.d.sync += product_valid.eq(Cat(valid, product_valid[:-1]))
            with m.If(product_valid[-1]):
                m.d.sync += self.psum_out.eq(self.psum_in + mul.p)
            return m
        m.d.comb += [mul.a.eq(self.a_in), mul.b.eq(weight), mul.en.eq(self.valid_in)]
        # The product of the row that entered two cycles ago is ready: add it.
        product_valid = Signal()
        m.d.sync += product_valid.eq(act.valid)
        with m.If(product_valid):
            m.d.sync += self.psum_out.eq(self.psum_in + mul.p)
        return m

    def _operand_stage(self, m: Module, *values):
        """Fabric registers for a compressed build's selected operands (`OPERAND_STAGES`).

        The activation select (2:4), the bank and pair muxes and the route into
        the DSP block would otherwise share one cycle (98.7 MHz for the array
        alone). Loaded with the row (`valid_in`); returns the registers and their
        valid bit, which the multiplier's operand registers then take.
        """
        regs = [Signal(v.shape(), name=f"operand_{i}") for i, v in enumerate(values)]
        with m.If(self.valid_in):
            m.d.sync += [r.eq(v) for r, v in zip(regs, values, strict=True)]
        valid = Signal(name="operand_valid")
        m.d.sync += valid.eq(self.valid_in)
        return regs, valid

    def _pair_elaborate(self, m: Module, w) -> Module:
        """An int4 build's PE: one or (`pair` bank) two products a row, six stages.

        A pair bank holds an int4 dense byte: the low nibble meets the row's K
        position 2r (lane 0, or in a 2:4 build lane 2·(r mod 2) of the group,
        through `idx`) on the DSP multiplier, the high nibble K position 2r + 1
        (the next lane) in logic (`int4_halves`, its two halves a stage, their
        sum the next, beside the DSP's two). Any other bank holds one int8 (or
        sign-extended int4) weight and the logic product is zero. The operands
        are selected into fabric registers first (`OPERAND_STAGES`); both
        products are copied off the multiplier into fabric registers, then
        added, then added to the partial sum (`PAIR_STAGES` more than the dense
        PE: the DSP-to-adder route limited the build to 90.8 MHz).
        """
        cfg, row = self.cfg, self.row
        pair = Signal(2)
        with m.If(self.w_we):
            m.d.sync += pair.bit_select(self.w_bank, 1).eq(self.w_pair)
        if "a_out" in self.signature.members:
            act = Signal(act_layout(cfg))
            m.d.sync += [act.a.eq(self.a_in), act.sel.eq(self.sel_in)]
            m.d.comb += [self.a_out.eq(act.a), self.sel_out.eq(act.sel)]
        else:
            act = Signal(data.StructLayout({"valid": 1}))
        m.d.sync += act.valid.eq(self.valid_in)
        m.d.comb += self.valid_out.eq(act.valid)
        if cfg.sparse_2_4:
            low, high = self._select(m), self.a_in[2 * (row % 2) + 1]
        else:
            low, high = self.a_in[0], self.a_in[1]
        weight = Mux(self.sel_in, w[1], w[0])
        paired = pair.bit_select(self.sel_in, 1)
        (low, low_w, high, high_w), valid = self._operand_stage(
            m,
            low,
            Mux(paired, weight[:4].as_signed(), weight),
            high,
            Mux(paired, weight[4:], 0),
        )
        m.submodules.mul = mul = PipelinedMultiplier(signed(cfg.act_bits), signed(cfg.weight_bits))
        m.d.comb += [mul.a.eq(low), mul.b.eq(low_w), mul.en.eq(valid)]
        # The logic product in two stages beside the DSP's (its halves, their sum), then
        # both products copied, their sum, the partial sum: one valid bit per stage.
        stages = Signal(MULTIPLIER_LATENCY + PAIR_STAGES)
        m.d.sync += stages.eq(Cat(valid, stages[:-1]))
        halves = [Signal(signed(cfg.act_bits + 4), name=f"high_half_{i}") for i in range(2)]
        with m.If(valid):
            m.d.sync += [h.eq(v) for h, v in zip(halves, int4_halves(high, high_w), strict=True)]
        high_p = Signal(signed(cfg.act_bits + 4))
        with m.If(stages[0]):
            m.d.sync += high_p.eq(halves[0] + halves[1])
        products = Signal(data.StructLayout({"low": mul.p.shape(), "high": high_p.shape()}))
        with m.If(stages[MULTIPLIER_LATENCY - 1]):
            m.d.sync += [products.low.eq(mul.p), products.high.eq(high_p)]
        both = Signal(signed(len(mul.p) + 1))
        with m.If(stages[MULTIPLIER_LATENCY]):
            m.d.sync += both.eq(products.low + products.high)
        with m.If(stages[-1]):
            m.d.sync += self.psum_out.eq(self.psum_in + both)
        return m

    def _select(self, m: Module):
        """2:4: the double-banked positions and the activation of `a_in` they pick."""
        idx = Signal(data.ArrayLayout(IDX_BITS, 2))
        dense = self.row % 2
        if self.cfg.int4_weights:
            # An int4 pair's low K position: lane 2·(row mod 2) of the group.
            dense = Mux(self.w_pair, 2 * (self.row % 2), self.row % 2)
        with m.If(self.w_we):
            with m.If(self.w_bank):
                m.d.sync += idx[1].eq(dense)
            with m.Else():
                m.d.sync += idx[0].eq(dense)
        with m.If(self.i_we):
            position = self.w_data[:IDX_BITS]
            with m.If(self.w_bank):
                m.d.sync += idx[1].eq(position)
            with m.Else():
                m.d.sync += idx[0].eq(position)
        operand = Signal(signed(self.cfg.act_bits))
        m.d.comb += operand.eq(self.a_in[Mux(self.sel_in, idx[1], idx[0])])
        return operand


class SystolicArray(wiring.Component):
    """The R×C grid plus input skew, weight-write skew and output deskew registers.

    Ports: `a_in` (one unskewed activation row, R lanes) with its bank `sel_in`
    and `valid_in` (clear: no row this cycle; tied to 1 when left unconnected);
    `w_row` (L weight rows of C lanes, L = `cfg.weight_rows_per_beat`): row i
    is written to array row `w_addr + i` of bank `w_bank` when bit i of `w_we`
    is set (`w_addr` is a multiple of L; rows past R are ignored); `psum_out`
    (C aligned int32 sums), `latency` cycles after a valid row entered (stale otherwise).
    An int4 build has `weight_lanes` = 2L lanes; a 2:4 build 2R activation
    lanes and the position port `i_row` (`index_lanes` rows of C positions,
    row i to array row `i_addr + i` of bank `w_bank` when bit i of `i_we` is
    set, never in the same cycle as a weight write).
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        rows, cols = cfg.rows, cfg.cols
        lanes = weight_lanes(cfg)
        sparse = {}
        if cfg.sparse_2_4:
            positions = data.ArrayLayout(unsigned(IDX_BITS), cols)
            sparse = {
                "i_row": In(data.ArrayLayout(positions, index_lanes(cfg))),
                "i_addr": In(range(rows)),
                "i_we": In(index_lanes(cfg)),
            }
        if cfg.int4_weights:
            sparse["w_pair"] = In(1)
        super().__init__(
            {
                "a_in": In(data.ArrayLayout(signed(cfg.act_bits), activation_lanes(cfg))),
                "sel_in": In(1),
                "valid_in": In(1, init=1),
                "w_row": In(
                    data.ArrayLayout(data.ArrayLayout(signed(cfg.weight_bits), cols), lanes)
                ),
                "w_addr": In(range(rows)),
                "w_bank": In(1),
                "w_we": In(lanes),
                "psum_out": Out(data.ArrayLayout(signed(cfg.acc_bits), cols)),
                **sparse,
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
        return row - row // weight_lanes(self.cfg)

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        rows, cols = cfg.rows, cfg.cols
        lanes = weight_lanes(cfg)
        pes = [[ProcessingElement(cfg, r) for _ in range(cols)] for r in range(rows)]
        for r in range(rows):
            for c in range(cols):
                m.submodules[f"pe_{r}_{c}"] = pes[r][c]

        # Input skew: row r's activation, bank bit and valid bit are delayed r cycles
        # (2:4: group g's four lanes are delayed 2g cycles into row 2g; row 2g + 1 takes
        # them from row 2g, see the module docstring).
        fed = range(0, rows, 2) if cfg.sparse_2_4 else range(rows)
        width = 4 if cfg.sparse_2_4 else 2 if cfg.int4_weights else 1
        for r in fed:
            act = Signal(act_layout(cfg), name=f"skew_{r}")
            first = r * width // (2 if cfg.sparse_2_4 else 1)
            a = self.a_in[first : first + width]
            m.d.comb += [
                act.a.eq(a if width > 1 else self.a_in[r]),
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
            index = {"iwe": 1} if cfg.sparse_2_4 else {}
            if cfg.int4_weights:
                index["pair"] = 1
            return data.StructLayout(
                {
                    "we": 1,
                    **index,
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
            ]
            if cfg.int4_weights:
                m.d.comb += stage.pair.eq(self.w_pair)
            if cfg.sparse_2_4:
                self._index_input(m, stage, r)
            else:
                m.d.comb += stage.data.eq(self.w_row[lane])
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
                if cfg.sparse_2_4:
                    m.d.comb += pe.i_we.eq(stage.iwe)
                if cfg.int4_weights:
                    m.d.comb += pe.w_pair.eq(stage.pair)
                if c + 1 < cols:
                    # Stage c + 1 carries only the bytes of columns c + 1 … C − 1.
                    rest = Signal(write_stage(cols - 1 - c), name=f"wcol_{r}_{c}")
                    m.d.sync += [
                        rest.we.eq(stage.we),
                        rest.bank.eq(stage.bank),
                        rest.data.as_value().eq(stage.data.as_value()[cfg.weight_bits :]),
                    ]
                    if cfg.sparse_2_4:
                        m.d.sync += rest.iwe.eq(stage.iwe)
                    if cfg.int4_weights:
                        m.d.sync += rest.pair.eq(stage.pair)
                    stage = rest

        for r in range(rows):
            for c in range(cols):
                pe = pes[r][c]
                if cfg.sparse_2_4 and r % 2:
                    # An odd row's activations: the row above's, one PE further on.
                    above = pes[r - 1][c]
                    m.d.comb += [
                        pe.a_in.eq(above.a_out),
                        pe.sel_in.eq(above.sel_out),
                        pe.valid_in.eq(above.valid_out),
                    ]
                elif c + 1 < cols:
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

    def _index_input(self, m: Module, stage, r: int) -> None:
        """2:4: row r's write-skew input takes a weight beat or, from `i_row`, its positions.

        A position rides in the low bits of its column's byte (the sequencer never
        sends a weight and an index beat in the same cycle).
        """
        cfg = self.cfg
        lane, ilane = r % weight_lanes(cfg), r % index_lanes(cfg)
        m.d.comb += stage.iwe.eq(self.i_we[ilane] & (self.i_addr == r - ilane))
        byte = cfg.weight_bits
        weights = self.w_row[lane].as_value()
        m.d.comb += stage.data.as_value().eq(
            Cat(
                *(
                    Cat(
                        Mux(
                            stage.iwe, self.i_row[ilane][c], weights[c * byte : c * byte + IDX_BITS]
                        ),
                        weights[c * byte + IDX_BITS : (c + 1) * byte],
                    )
                    for c in range(cfg.cols)
                )
            )
        )
