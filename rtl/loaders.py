"""Loaders: the DMA's resized read items into parameter rows, the LUT, words and buffer rows.

Why: each item the layer sequencer reads from memory goes to one place,
at an index that counts items since the load started: the engine's
parameter memory (row, group), its activation LUT (row), the gate's bias
table or the expert-descriptor words (word), and the X and term buffers
(row, word). Every loader takes an item every cycle (its input is always
ready), and its `start`/`clear` wins over an item arriving in the same cycle
for the counters only: that item is still written at the old index.
"""

from __future__ import annotations

from amaranth import Array, Module, Shape, Signal, unsigned
from amaranth.hdl import ShapeLike
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from contract import layout
from pymodel.config import AccelConfig

from .postproc import lut_write_layout, param_write_layout

__all__ = ["LutLoader", "ParamLoader", "RowLoader", "WordDest", "WordLoader"]


class ParamLoader(wiring.Component):
    """`param_words_per_beat` (mult, shift) words a cycle into the engine's parameter rows.

    Parameters
    ----------
    cfg : AccelConfig
        Supplies the array's width and `param_words_per_beat`.
    param_rows : int
        The engine's parameter rows.

    Ports
    -----
    clear : In(1)
        Restart at row 0, group 0.
    i : In(stream), always ready
        32-bit words, `param_words_per_beat` an item (`contract.layout` word format).
    o : Out(stream)
        The engine's parameter writes (taken every cycle).
    """

    def __init__(self, cfg: AccelConfig, param_rows: int) -> None:
        self.cfg, self.param_rows = cfg, param_rows
        pw = cfg.param_words_per_beat
        super().__init__(
            {
                "clear": In(1),
                "i": In(stream.Signature(unsigned(32 * pw), always_ready=True)),
                "o": Out(stream.Signature(param_write_layout(cfg, param_rows))),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        pw = cfg.param_words_per_beat
        groups = cfg.cols // pw
        row = Signal(range(self.param_rows + 1))
        group = Signal(range(groups))
        m.d.comb += [
            self.o.valid.eq(self.i.valid),
            self.o.payload.row.eq(row),
            self.o.payload.group.eq(group),
        ]
        shift = slice(layout.PARAM_SHIFT_LSB, layout.PARAM_SHIFT_LSB + 6)
        for j in range(pw):
            word = self.i.payload.word_select(j, 32)
            m.d.comb += [
                self.o.payload.words[j].mult.eq(word[: cfg.mult_bits]),
                self.o.payload.words[j].shift.eq(word[shift]),
            ]
        with m.If(self.clear):
            m.d.sync += [row.eq(0), group.eq(0)]
        with m.Elif(self.i.valid):
            m.d.sync += group.eq(group + 1)
            with m.If(group == groups - 1):
                m.d.sync += [group.eq(0), row.eq(row + 1)]
        return m


class LutLoader(wiring.Component):
    """`lut_entries_per_beat` LUT entries a cycle into the engine's activation LUT.

    Parameters
    ----------
    cfg : AccelConfig
        Supplies `act_bits` and `lut_entries_per_beat`.

    Ports
    -----
    clear : In(1)
        Restart at row 0.
    i : In(stream), always ready
        One byte per entry.
    o : Out(stream)
        The engine's LUT writes (taken every cycle).
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        super().__init__(
            {
                "clear": In(1),
                "i": In(
                    stream.Signature(unsigned(8 * cfg.lut_entries_per_beat), always_ready=True)
                ),
                "o": Out(stream.Signature(lut_write_layout(self.cfg))),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        row = Signal(range(2**cfg.act_bits // cfg.lut_entries_per_beat + 1))
        m.d.comb += [
            self.o.valid.eq(self.i.valid),
            self.o.payload.row.eq(row),
            self.o.payload.values.eq(self.i.payload),
        ]
        with m.If(self.clear):
            m.d.sync += row.eq(0)
        with m.Elif(self.i.valid):
            m.d.sync += row.eq(row + 1)
        return m


class WordDest(enum.Enum, shape=1):
    """Where `WordLoader`'s words go."""

    BIAS = 0
    DESC = 1


class WordLoader(wiring.Component):
    """32-bit words into the gate's bias table or the expert-descriptor registers.

    Parameters
    ----------
    cfg : AccelConfig
        Supplies `max_experts` (bias words of one load at most).

    Ports
    -----
    start : In(1)
        Restart at word 0, with `dest`.
    dest : In(WordDest)
        Where the words of this load go.
    i : In(stream), always ready
        The words.
    bias_addr, bias_data, bias_we : Out
        The gate's bias table write.
    desc : Out(StructLayout)
        The expert descriptor's words (`contract.layout.DESC_FIELDS`), as loaded;
        its address words (`layout.ADDRESS_FIELDS`) as `cfg.addr_bits`-bit byte
        addresses (shifted left by `layout.addr_shift`).
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        n_words = cfg.max_experts + len(layout.DESC_FIELDS)
        widths = {
            n: cfg.addr_bits if n in layout.ADDRESS_FIELDS else 32 for n in layout.DESC_FIELDS
        }
        super().__init__(
            {
                "start": In(1),
                "dest": In(WordDest),
                "i": In(stream.Signature(32, always_ready=True)),
                "bias_addr": Out(range(n_words + 1)),
                "bias_data": Out(32),
                "bias_we": Out(1),
                "desc": Out(data.StructLayout({n: unsigned(w) for n, w in widths.items()})),
            }
        )

    def elaborate(self, platform):
        m = Module()
        dest = Signal(WordDest)
        index = Signal.like(self.bias_addr)
        words = Array(Signal(32, name=f"dw_{n}") for n in layout.DESC_FIELDS)
        m.d.comb += [self.bias_addr.eq(index), self.bias_data.eq(self.i.payload)]
        shift = layout.addr_shift(self.cfg)
        for name, word in zip(layout.DESC_FIELDS, words, strict=True):
            value = word << shift if name in layout.ADDRESS_FIELDS else word
            m.d.comb += self.desc[name].eq(value)
        with m.If(self.i.valid):
            with m.Switch(dest):
                with m.Case(WordDest.BIAS):
                    m.d.comb += self.bias_we.eq(1)
                with m.Case(WordDest.DESC):
                    m.d.sync += words[index].eq(self.i.payload)
        with m.If(self.start):
            m.d.sync += [dest.eq(self.dest), index.eq(0)]
        with m.Elif(self.i.valid):
            m.d.sync += index.eq(index + 1)
        return m


class RowLoader(wiring.Component):
    """Items into a buffer row by row: item `w` of row `r` at `r · row_words + w`.

    Parameters
    ----------
    addr_width : int
        The buffer's address width.
    shape : ShapeLike
        The buffer's word shape (one item a word).
    rows, row_words : int
        The buffer's rows and words a row.

    Ports
    -----
    start : In(1)
        Restart at row `first_row`, word 0.
    first_row : In
        The first row of this load.
    words : In
        Items a row in this load (held stable while loading).
    i : In(stream), always ready
        The items, as bits of a buffer word.
    wr : In(WritePort.Signature)
        To the buffer's write port.
    """

    def __init__(self, addr_width: int, shape: ShapeLike, rows: int, row_words: int) -> None:
        self.row_words = row_words
        super().__init__(
            {
                "start": In(1),
                "first_row": In(range(rows + 1)),
                "words": In(range(row_words + 1)),
                "i": In(stream.Signature(Shape.cast(shape).width, always_ready=True)),
                "wr": In(WritePort.Signature(addr_width=addr_width, shape=shape)),
            }
        )

    def elaborate(self, platform):
        m = Module()
        row = Signal.like(self.first_row)
        word = Signal.like(self.words)
        m.d.comb += [
            self.wr.en.eq(self.i.valid),
            self.wr.addr.eq(row * self.row_words + word),
            self.wr.data.eq(self.i.payload),
        ]
        with m.If(self.start):
            m.d.sync += [row.eq(self.first_row), word.eq(0)]
        with m.Elif(self.i.valid):
            m.d.sync += word.eq(word + 1)
            with m.If(word == self.words - 1):
                m.d.sync += [word.eq(0), row.eq(row + 1)]
        return m
