"""The GEMM engine's activation feeder: rows of A gathered on chip, one R-wide slice a beat.

Why: the engine takes A as `rows`-byte slices in (n-tile, pass, k-tile,
row) order and refetches them for every n-tile and pass; the rows live on
chip (the token buffer X, gathered through the dispatcher's sorted table or
taken in order, or the H buffer), so the feeder walks that order and reads
the buffers itself: no memory traffic for activations.

A command (`start` with `cmd`) feeds `m` rows from `row0`: for each of `nt`
n-tiles, `passes` passes and `kt_n` k-tiles, the k-tile's slice of each row.
The source decides where row `i` comes from:

- `TOKENS`: token `row0 + i` of X (rows past `tokens` are zero padding);
- `SORTED`: the token in entry `row0 + i` of the sorted table (or zero
  padding where the entry is a pad);
- `HBUF`: row `i` of H.

The pipeline has two stages (the sorted table's read, then the buffers'
read), both under one advance enable, so a slice a cycle flows when the
engine takes one a cycle.
"""

from __future__ import annotations

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from contract import layout
from pymodel.config import AccelConfig
from pymodel.gemm_engine import activation_lanes

__all__ = [
    "ActSource",
    "ActivationFeeder",
    "feed_command_layout",
    "h_word_bytes",
    "sorted_row_layout",
    "x_word_bytes",
]


class ActSource(enum.Enum, shape=2):
    """Where the feeder's rows come from (see the module docstring)."""

    TOKENS = 0
    SORTED = 1
    HBUF = 2


def x_word_bytes(cfg: AccelConfig) -> int:
    """Bytes of one token-buffer word: a bus beat, or an `act` beat where that is wider
    (the 2R lanes of a 2:4 or int4 build), so one read gives the slice of any command."""
    return max(activation_lanes(cfg), cfg.mem_bytes_per_cycle)


def h_word_bytes(cfg: AccelConfig) -> int:
    """Bytes of one H-buffer word: an output row's C, or an `act` beat where that is wider."""
    return max(activation_lanes(cfg), cfg.cols)


def token_bits(cfg: AccelConfig) -> int:
    """Width of a token index (at least 1)."""
    return ceil_log2(cfg.max_tokens) or 1


def max_sorted_rows(cfg: AccelConfig) -> int:
    """Entries of the sorted table: every pair, plus each expert's padding to `m_tile`."""
    return cfg.max_tokens * cfg.max_top_k + cfg.max_experts * (cfg.m_tile - 1)


def sorted_row_layout(cfg: AccelConfig) -> data.StructLayout:
    """One entry of the sorted table: a token, or a pad row."""
    return data.StructLayout({"token": unsigned(token_bits(cfg)), "pad": 1})


def feed_command_layout(cfg: AccelConfig, m_block: int, param_rows: int) -> data.StructLayout:
    """One feed: source, first row, rows, n-tiles, passes and k-tiles (of `tile_k` K
    positions: 2R where `sparse` is set, which a build with 2:4 or int4 adds: a 2:4 or
    int4 command; the field keeps the 2:4 build's name, so that build's Verilog is
    unchanged)."""
    kt_max = layout.n_tiles(max(cfg.max_d_model, cfg.max_d_ff), cfg.rows)
    sparse = {"sparse": 1} if cfg.sparse_2_4 or cfg.int4_weights else {}
    return data.StructLayout(
        {
            "src": ActSource,
            "row0": range(max_sorted_rows(cfg) + 1),
            "m": range(m_block + 1),
            "nt": range(param_rows + 1),
            "passes": range(3),
            "kt_n": range(kt_max + 1),
            **sparse,
        }
    )


class ActivationFeeder(wiring.Component):
    """Feeds the engine's `act` stream from the on-chip buffers (see the module docstring).

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the array's rows, the bus width and the buffer limits.
    m_block : int
        The engine's M-block (rows of one command at most).
    param_rows : int
        The engine's parameter rows (n-tiles of one command at most).

    Ports
    -----
    start : In(1)
        Start `cmd` (it wins over a feed in progress).
    cmd : In(feed_command_layout)
        The feed.
    tokens : In
        Tokens of the layer (rows at or past it are padding for `TOKENS`).
    sorted_rd, x_rd, h_rd : In(ReadPort.Signature)
        To the sorted table's, X's and H's read ports.
    act : Out(stream)
        To the engine.
    """

    def __init__(self, cfg: AccelConfig, m_block: int, param_rows: int) -> None:
        self.cfg, self.m_block = cfg, m_block
        self.wx, self.wh = x_word_bytes(cfg), h_word_bytes(cfg)
        self.x_row = layout.row_bytes(cfg, cfg.max_d_model) // self.wx
        self.h_row = layout.align(cfg.max_d_ff, self.wh) // self.wh
        byte_row = data.ArrayLayout(unsigned(8), self.wx)
        super().__init__(
            {
                "start": In(1),
                "cmd": In(feed_command_layout(cfg, m_block, param_rows)),
                "tokens": In(range(cfg.max_tokens + 1)),
                "sorted_rd": In(
                    ReadPort.Signature(
                        addr_width=ceil_log2(max_sorted_rows(cfg)), shape=sorted_row_layout(cfg)
                    )
                ),
                "x_rd": In(
                    ReadPort.Signature(
                        addr_width=ceil_log2(cfg.max_tokens * self.x_row), shape=byte_row
                    )
                ),
                "h_rd": In(
                    ReadPort.Signature(
                        addr_width=ceil_log2(m_block * self.h_row),
                        shape=data.ArrayLayout(unsigned(8), self.wh),
                    )
                ),
                "act": Out(
                    stream.Signature(data.ArrayLayout(signed(cfg.act_bits), activation_lanes(cfg)))
                ),
            }
        )

    def elaborate(self, platform):
        m = Module()
        R = self.cfg.rows
        cmd = Signal.like(self.cmd)
        run = Signal()
        n, p = Signal.like(cmd.nt), Signal(range(2))
        kt, i = Signal.like(cmd.kt_n), Signal(range(self.m_block))
        # stage a: the sorted table's read; stage b: the buffers' read
        a_valid, b_valid = Signal(), Signal()
        a_i, a_kt = Signal.like(i), Signal.like(kt)
        b_pad = Signal()
        b_sub = Signal(range(max(self.wx, self.wh) // R + 1))
        b_src = Signal(ActSource)
        adv = Signal()
        m.d.comb += adv.eq(~b_valid | self.act.ready)
        fire = run & adv
        m.d.comb += [
            self.sorted_rd.en.eq(adv),
            self.sorted_rd.addr.eq(cmd.row0 + i),
            self.x_rd.en.eq(adv),
            self.h_rd.en.eq(adv),
        ]
        with m.If(self.start):
            m.d.sync += [cmd.eq(self.cmd), run.eq(1), n.eq(0), p.eq(0), kt.eq(0), i.eq(0)]
        with m.Elif(fire):
            m.d.sync += i.eq(i + 1)
            with m.If(i == cmd.m - 1):
                m.d.sync += [i.eq(0), kt.eq(kt + 1)]
                with m.If(kt == cmd.kt_n - 1):
                    m.d.sync += [kt.eq(0), p.eq(p + 1)]
                    with m.If(p == cmd.passes - 1):
                        m.d.sync += [p.eq(0), n.eq(n + 1)]
                        with m.If(n == cmd.nt - 1):
                            m.d.sync += run.eq(0)
        with m.If(adv):
            m.d.sync += [a_valid.eq(fire), a_i.eq(i), a_kt.eq(kt)]

        token = Signal(token_bits(self.cfg) + 1)
        pad = Signal()
        row_tok = cmd.row0 + a_i
        with m.If(cmd.src == ActSource.SORTED):
            m.d.comb += [token.eq(self.sorted_rd.data.token), pad.eq(self.sorted_rd.data.pad)]
        with m.Else():
            m.d.comb += [token.eq(row_tok), pad.eq(row_tok >= self.tokens)]
        x_sub_bits = exact_log2(self.wx // R)
        h_sub_bits = exact_log2(self.wh // R)
        # `a_kt` in R-slices of K: a 2:4 or int4 command's k-tile is two of them
        kpos = a_kt
        if self.cfg.sparse_2_4 or self.cfg.int4_weights:
            kpos = Signal(len(a_kt) + 1)
            m.d.comb += kpos.eq(Mux(cmd.sparse, a_kt << 1, a_kt))
        m.d.comb += [
            self.x_rd.addr.eq(token * self.x_row + (kpos >> x_sub_bits)),
            self.h_rd.addr.eq(a_i * self.h_row + (kpos >> h_sub_bits)),
        ]
        with m.If(adv):
            m.d.sync += [
                b_valid.eq(a_valid),
                b_pad.eq(pad & (cmd.src != ActSource.HBUF)),
                b_sub.eq(Mux(cmd.src == ActSource.HBUF, kpos[:h_sub_bits], kpos[:x_sub_bits])),
                b_src.eq(cmd.src),
            ]
        x_word = self.x_rd.data.as_value()
        h_word = self.h_rd.data.as_value()
        lanes = activation_lanes(self.cfg)
        if lanes == R:
            x_slice = x_word.word_select(b_sub[:x_sub_bits] if x_sub_bits else 0, 8 * R)
            h_slice = h_word.word_select(b_sub[:h_sub_bits] if h_sub_bits else 0, 8 * R)
        else:
            # 2R lanes from the slice on: a 2:4 or int4 slice starts on an even R-slice, so
            # it lies within the word; an int8 dense command's upper R lanes are don't-care
            x_slice = x_word.bit_select(b_sub[:x_sub_bits] * (8 * R), 8 * lanes)
            h_slice = h_word.bit_select(b_sub[:h_sub_bits] * (8 * R), 8 * lanes)
        m.d.comb += [
            self.act.valid.eq(b_valid),
            self.act.payload.eq(Mux(b_pad, 0, Mux(b_src == ActSource.HBUF, h_slice, x_slice))),
        ]
        return m
