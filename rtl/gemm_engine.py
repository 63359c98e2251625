"""The grouped-GEMM engine: sequencer + systolic array + accumulators + post-processing.

One command computes one expert group's `Y[M, N] = post(X[M, K] · W[K, N])`
(or SwiGLU's `gated(lut(requant(X·W1)), requant(X·W3))`) bit-exact with
`pymodel.gemm.matmul_int` and `pymodel.numerics`. Data path:

    act, weight ──► TileSequencer ──► SystolicArray ──► accumulators ──┐
                                                     (int32, RMW)       │
                    out ◄── PostProc (requant / LUT / gated multiply) ◄─┘

Streams (all `lib.stream`, valid never waits on ready; beat orders follow
`TileSequencer`'s loop nest, for m-block, N-tile, pass, K-tile):

- `cmd`: `gemm_command_layout` — M, K, N, mode, parameter rows, SwiGLU gate (m, s);
  accepted only when the engine is idle.
- `weight`: L = `cfg.weight_rows_per_beat` weight rows of C int8 per beat
  (`weight_beat_layout`), row i of beat j being `W[k0+j·L+i, n0:n0+C]`, for
  ⌈min(R, K−k0)/L⌉ beats per tile; rows past the tile and lanes ≥ N−n0 are
  don't-care. SwiGLU sends W1's tiles then W3's for each N-tile.
- `act`: one activation row K-slice of R int8 per beat, `X[m0+i, k0:k0+R]`
  for each row i of the block; lanes ≥ K−k0 are don't-care (zeroed inside).
- `out`: one row of C int8 per beat, `Y[m0+i, n0:n0+C]`, lanes ≥ N−n0 are 0;
  `last` marks the command's final beat.
- `param_w`/`lut_w`: write per-channel (m, s) and the activation LUT.

Compressed weights (builds with `AccelConfig.sparse_2_4` / `int4_weights`;
`pymodel.gemm_engine` defines the streams, `TileSequencer` how they are
walked): the command's `fmt` picks int8/int4 and dense/2:4; a 2:4 build's
`act` beats are 2R int8 wide (a 2:4 tile's 2R K positions; a dense command
uses the first R), and the `weight` beats of a compressed tile are its value
rows then, for 2:4, its index rows. A format the build lacks is refused
(`BAD_MODE`). With both switches off the engine is exactly the dense one.

Activation rows enter the array through a register. Accumulators: two int32
row memories (W/W1 and W3) of `m_block` rows, read-modify-write in three
registered stages (read data beside the sums, add, write back) with the two
previous rows' sums forwarded, so K-steps of the same row on consecutive
cycles (M = 1) are exact. Rows whose sums are final go, through one
register, straight into `PostProc`, whose output FIFO holds every row in
flight: the sequencer's credits (`GemmEngine.credits`) cover the round trip
from injection to the `out` handshake and the credit's registered way back,
and `PostProc.buffer_depth` equals them, so output backpressure stalls
injection instead of overflowing, and the array never stalls. Every stage
holds at most one adder, multiplier or memory access (docs/fpga.md).
"""

from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from contract.timing import (
    CREDIT_RETURN_STAGES,
    default_m_block,
    default_param_rows,
    gemm_drain,
)
from pymodel.config import AccelConfig, ConfigError
from pymodel.gemm_engine import activation_lanes

from .postproc import (
    PostProc,
    lut_write_layout,
    output_layout,
    param_write_layout,
    postproc_input_layout,
)
from .systolic import SystolicArray
from .tile_sequencer import (
    TileSequencer,
    gemm_command_layout,
    status_members,
    tag_layout,
    weight_beat_layout,
)

__all__ = ["GemmEngine", "default_m_block", "default_param_rows"]

_SELECT_BITS = 8
"""Sum bits behind one copy of an accumulator select register (see stage B)."""


class GemmEngine(wiring.Component):
    """Weight-stationary grouped-GEMM engine (see the module docstring for its streams).

    `m_block` is the accumulator depth (rows per M-block), `param_rows` the
    parameter-memory depth in rows of C channels.
    """

    def __init__(
        self, cfg: AccelConfig, *, m_block: int | None = None, param_rows: int | None = None
    ) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"GemmEngine needs an AccelConfig, got {type(cfg).__name__}")
        if cfg.weight_buffers != 2:
            raise ConfigError(
                f"GemmEngine is double-buffered: AccelConfig.weight_buffers = "
                f"{cfg.weight_buffers} is not supported (use 2)"
            )
        if (cfg.sparse_2_4 or cfg.int4_weights) and cfg.weight_bits != 8:
            raise ConfigError(
                f"GemmEngine's compressed weight paths need weight_bits = 8 (a byte carries two "
                f"int4 weights or four 2:4 positions), got weight_bits = {cfg.weight_bits}"
            )
        self.cfg = cfg
        self.m_block = default_m_block(cfg) if m_block is None else m_block
        self.param_rows = default_param_rows(cfg) if param_rows is None else param_rows
        if not isinstance(self.m_block, int) or not 1 <= self.m_block <= cfg.max_tokens:
            raise ConfigError(
                f"GemmEngine.m_block = {self.m_block!r} must be an int in [1, {cfg.max_tokens}]"
            )
        if not isinstance(self.param_rows, int) or self.param_rows < 1:
            raise ConfigError(f"GemmEngine.param_rows = {self.param_rows!r} must be an int >= 1")
        # Credits cover the round trip injection → input register → array →
        # accumulate (3) → PostProc input register → PostProc → `out` handshake →
        # credit registers → count (1), which is the command's drain, with 2 to spare,
        # so the array runs at one row per cycle when the output is never backpressured.
        self.credits = gemm_drain(cfg) + 2
        super().__init__(
            {
                "cmd": In(stream.Signature(gemm_command_layout(cfg, self.param_rows))),
                "act": In(
                    stream.Signature(data.ArrayLayout(signed(cfg.act_bits), activation_lanes(cfg)))
                ),
                "weight": In(stream.Signature(weight_beat_layout(cfg))),
                "param_w": In(stream.Signature(param_write_layout(cfg, self.param_rows))),
                "lut_w": In(stream.Signature(lut_write_layout(cfg))),
                "out": Out(stream.Signature(output_layout(cfg))),
                **status_members(),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        array = SystolicArray(cfg)
        seq = TileSequencer(
            cfg,
            m_block=self.m_block,
            param_rows=self.param_rows,
            credits=self.credits,
            cooldown=array.bank_cooldown + 1,
        )
        post = PostProc(cfg, self.param_rows, buffer_depth=self.credits)
        pp_layout = postproc_input_layout(cfg, self.param_rows)
        m.submodules.sequencer = seq
        m.submodules.array = array
        m.submodules.postproc = post

        wiring.connect(m, wiring.flipped(self.cmd), seq.cmd)
        wiring.connect(m, wiring.flipped(self.act), seq.act)
        wiring.connect(m, wiring.flipped(self.weight), seq.weight)
        wiring.connect(m, wiring.flipped(self.param_w), post.param_w)
        wiring.connect(m, wiring.flipped(self.lut_w), post.lut_w)
        wiring.connect(m, post.out, wiring.flipped(self.out))
        # Activation rows enter the array through a register (the issue logic and the
        # first PE's multiplier do not fit one cycle); weight writes do not, so a bank
        # waits one cycle more before it is rewritten (the cooldown above).
        m.d.sync += [array.a_in.eq(seq.a_row), array.sel_in.eq(seq.sel)]
        writes = [
            array.w_row.eq(seq.w_row),
            array.w_addr.eq(seq.w_addr),
            array.w_bank.eq(seq.w_bank),
            array.w_we.eq(seq.w_we),
        ]
        if cfg.sparse_2_4:
            writes += [
                array.i_row.eq(seq.i_row),
                array.i_addr.eq(seq.i_addr),
                array.i_we.eq(seq.i_we),
            ]
        if cfg.int4_weights:
            writes.append(array.w_pair.eq(seq.w_pair))
        if cfg.sparse_2_4 or cfg.int4_weights:
            # The compressed paths' unpacking and lane steering take the cycle: their
            # writes enter the array through a register too. A write then reaches
            # PE(r, c) one cycle later, still before the first row of its tile (which
            # also enters through a register, and the write delay is at most r) and
            # after the bank's last row of the previous tile: no cycle changes.
            m.d.sync += writes
            writes = []
        m.d.comb += [
            *writes,
            self.busy.eq(seq.busy),
            self.done.eq(seq.done),
            self.error.eq(seq.error),
            self.counters.eq(seq.counters),
            seq.counters_clear.eq(self.counters_clear),
            seq.pp_busy.eq(post.busy),
        ]

        # The tag rides a delay line matching the input register and the array; the accumulator
        # read address leaves one stage early so its data arrives with the sums.
        tags = tag_layout(cfg, self.m_block, self.param_rows)
        tag_line = [seq.tag]
        for i in range(1 + array.latency):
            delayed = Signal(tags, name=f"tag_d{i}")
            m.d.sync += delayed.eq(tag_line[-1])
            tag_line.append(delayed)
        tag, early = tag_line[-1], tag_line[-2]
        # The PEs compute only rows with a valid tag (registered with `a_in`): no result
        # changes, and a software model skips the idle multiply-adds.
        m.d.comb += array.valid_in.eq(tag_line[1].valid)

        # Accumulate in three registered stages, one adder per cycle:
        #   A: sums arrive, memory data for the row arrives; register both (B);
        #   B: old + new, the old value forwarded from C or D when one of the two
        #      previous rows is the same row (writes land only in C);
        #   C: write back; final rows are registered for PostProc.
        acc_row = data.ArrayLayout(signed(cfg.acc_bits), cfg.cols)
        writes, reads = [], []
        for p in range(2):
            mem = Memory(shape=acc_row, depth=self.m_block, init=[])
            m.submodules[f"acc_{p}"] = mem
            wr = mem.write_port()
            rd = mem.read_port(transparent_for=(wr,))
            m.d.comb += rd.addr.eq(early.row)
            writes.append(wr)
            reads.append(rd)
        b_tag, c_tag, d_tag = Signal(tags), Signal(tags), Signal(tags)
        b_psum = Signal(acc_row)
        b_read = [Signal(acc_row, name=f"b_read_{p}") for p in range(2)]
        c_total, d_total, c_acc_a = Signal(acc_row), Signal(acc_row), Signal(acc_row)
        m.d.sync += [b_tag.eq(tag), b_psum.eq(array.psum_out), c_tag.eq(b_tag), d_tag.eq(c_tag)]
        for p in range(2):
            m.d.sync += b_read[p].eq(reads[p].data)

        # Stage B's selects, registered once per column and byte of the sums: one
        # register would drive the muxes of all C · acc_bits sum bits, too far to reach
        # in a cycle (one per column still took 5.7 ns of routing on ECP5). They are
        # decided a cycle ahead (from the rows one stage earlier) in one register each,
        # copied to the columns the next cycle, so placement can put the copies beside
        # their columns. `keep` stops yosys from merging the identical copies again
        # (`flow.runs`' synthesis script).
        # hit_{c,d}[p]: the row in B was last written to memory p by the row now in C / D.
        def matches(older, newer, p: int):
            return older.valid & (older.second_pass == p) & (older.row == newer.row)

        ahead = {}
        for p in range(2):
            ahead[f"hit_c_{p}"], ahead[f"hit_d_{p}"] = (
                matches(tag, early, p),
                matches(b_tag, early, p),
            )
        ahead["second_pass"], ahead["first"] = early.second_pass, early.first
        decided = {name: Signal(name=f"{name}_ahead") for name in ahead}
        m.d.sync += [decided[name].eq(value) for name, value in ahead.items()]
        total = Signal(acc_row)
        acc_a = Signal(acc_row)
        for c in range(cfg.cols):
            prior, old_a = [], []
            for lo in range(0, cfg.acc_bits, _SELECT_BITS):
                bits = slice(lo, min(lo + _SELECT_BITS, cfg.acc_bits))
                sel = {name: Signal(name=f"{name}_{c}_{lo}", attrs={"keep": 1}) for name in ahead}
                m.d.sync += [sel[name].eq(decided[name]) for name in ahead]
                old = [
                    Mux(
                        sel[f"hit_c_{p}"],
                        c_total[c][bits],
                        Mux(sel[f"hit_d_{p}"], d_total[c][bits], b_read[p][c][bits]),
                    )
                    for p in range(2)
                ]
                prior.append(Mux(sel["first"], 0, Mux(sel["second_pass"], old[1], old[0])))
                old_a.append((sel["second_pass"], old[0], bits))
            # A first K-tile adds to zero: the select sits in front of the carry chain
            # (one LUT4 with the pass select), none behind it.
            m.d.comb += total[c].eq(Cat(*prior).as_signed() + b_psum[c])
            m.d.comb += acc_a[c].eq(
                Cat(*(Mux(second, old0, total[c][bits]) for second, old0, bits in old_a))
            )
        m.d.sync += [
            c_total.eq(total),
            c_acc_a.eq(acc_a),
            d_total.eq(c_total),
        ]
        for p, wr in enumerate(writes):
            m.d.comb += [
                wr.addr.eq(c_tag.row),
                wr.data.eq(c_total),
                wr.en.eq(c_tag.valid & (c_tag.second_pass == p)),
            ]

        entry, entry_valid = Signal(pp_layout), Signal()
        current = seq.current
        m.d.sync += [
            entry.acc_a.eq(c_acc_a),
            entry.acc_b.eq(c_total),
            entry.param_a.eq(current.param_a + c_tag.n_tile),
            entry.param_b.eq(current.param_b + c_tag.n_tile),
            entry.n_valid.eq(c_tag.n_valid),
            entry.mode.eq(current.mode),
            entry.gate_mult.eq(current.gate_mult),
            entry.gate_shift.eq(current.gate_shift),
            entry.last.eq(c_tag.last),
            entry_valid.eq(c_tag.valid & c_tag.final),
        ]
        # The credits guarantee `post.inp.ready` whenever a row arrives (PostProc admits
        # `credits` beats); a credit comes back when a row leaves through `out`, through
        # `CREDIT_RETURN_STAGES` registers (the sequencer sits across the chip from
        # post-processing's output: one register free to sit at each end).
        m.d.comb += [post.inp.valid.eq(entry_valid), post.inp.payload.eq(entry)]
        credit = post.out.valid & post.out.ready
        for stage in range(CREDIT_RETURN_STAGES):
            returning = Signal(name=f"credit_return_{stage}")
            m.d.sync += returning.eq(credit)
            credit = returning
        m.d.comb += seq.credit_return.eq(credit)
        return m
