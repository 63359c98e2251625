"""The layer sequencer: route → dispatch → experts (+ shared) → combine after one start.

`LayerSequencer` holds the datapath of `rtl.top.MoEAccel` except the
register file and the DMA: the GEMM engine, gate, dispatcher, combiner, the
on-chip buffers and the FSM that drives them through one layer, reading and
writing memory in the layout of `rtl.layout` through the DMA's command and
data streams. `docs/architecture.md` describes the data flow; in short:

1. load: router (mult, shift) words into the engine's parameter memory,
   the correction bias into the gate, all T token rows into the on-chip
   token buffer X (read once, reused by the router, every expert and the
   shared expert: no gather traffic);
2. route: the router GEMM in WIDE mode per M-block of tokens into the
   logit buffer, then the logits serialised into the gate; the gate's pairs
   go to the dispatcher, the slot tables (token, gate weight) and the
   routing records written back to memory; shared weights to a table;
3. dispatch: counts, sorted rows (token or pad) and each kept slot's row
   (its inverse position) into on-chip tables;
4. experts: for each expert with a kept pair (and then the shared expert
   over all tokens): descriptor, parameters and LUT into the engine (at
   the bus rate: `param_words_per_beat` words and `lut_entries_per_beat`
   entries a cycle), then
   per M-block GEMM1 (SwiGLU or LUT mode; act rows gathered on chip from X
   through the sorted table) into the H buffer and GEMM2 (REQUANT) into the
   Y buffer, written back to the scratch rows while the next block runs;
5. combine: per token its kept expert-output rows (and the shared row) are
   read into a term buffer and fed to the combiner; outputs stream to Y.

Weight streams flow DMA → resizer → engine weight port while the engine
computes (double-buffered tiles), so weight loads overlap compute; a weight
beat is `weight_rows_per_beat` rows (`rtl.layout.weight_stream`), so the
loads run at the bus rate.
"""

from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from pymodel.config import AccelConfig, ConfigError

from . import layout
from .axi import ADDR_WIDTH
from .combine import Combiner
from .dispatch import Dispatcher
from .dma import dma_command_layout, read_beat_layout
from .gate import Gate, SharedMode
from .gemm_engine import GemmEngine
from .postproc import Mode, wide_bits
from .regs import COUNTER_BITS, FFNKind, descriptor_layout
from .resize import Resizer
from .tile_sequencer import CommandError, counter_layout

__all__ = ["LayerSequencer", "descriptor_layout", "phase_counter_layout"]


PHASES = ("total", "route", "dispatch", "experts", "shared", "combine")


def phase_counter_layout() -> data.StructLayout:
    """Cycle counters per phase (`shared` lies within `experts`)."""
    return data.StructLayout({name: unsigned(COUNTER_BITS) for name in PHASES})


class _ReadSel(enum.Enum, shape=3):
    """Which consumer takes the DMA's read beats."""

    WORDS = 0
    X = 1
    WEIGHT = 2
    LUT = 3
    TERM = 4
    PARAMS = 5


class _WordDest(enum.Enum, shape=1):
    BIAS = 0
    DESC = 1


class _WriteSel(enum.Enum, shape=2):
    ROUTING = 0
    YBUF = 1
    COMBINE = 2


class _ActSrc(enum.Enum, shape=2):
    TOKENS = 0
    SORTED = 1
    HBUF = 2


class _Sink(enum.Enum, shape=2):
    LOGIT = 0
    HBUF = 1
    YBUF = 2


class LayerSequencer(wiring.Component):
    """Datapath and FSM of one MoE layer (see the module docstring).

    Ports: `desc` (held stable while busy), `start` (pulse), `done` (pulse),
    `error` (pulse: an engine rejected a command), the DMA streams, engine
    and phase counters, `dropped`, and the per-expert count window
    (`expert_index` → `expert_tokens`).
    """

    def __init__(self, cfg: AccelConfig) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"LayerSequencer needs an AccelConfig, got {type(cfg).__name__}")
        layout.check_top_config(cfg)
        self.cfg = cfg
        super().__init__(
            {
                "desc": In(descriptor_layout(cfg)),
                "start": In(1),
                "done": Out(1),
                "error": Out(1),
                "rd_cmd": Out(stream.Signature(dma_command_layout())),
                "rd_data": In(stream.Signature(read_beat_layout(cfg))),
                "rd_done": In(1),
                "wr_cmd": Out(stream.Signature(dma_command_layout())),
                "wr_data": Out(stream.Signature(unsigned(8 * cfg.mem_bytes_per_cycle))),
                "wr_done": In(1),
                "engine_counters": Out(counter_layout()),
                "phase_counters": Out(phase_counter_layout()),
                "counters_clear": In(1),
                "dropped": Out(32),
                "expert_index": In(ceil_log2(cfg.max_experts + 1)),
                "expert_tokens": Out(32),
            }
        )

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C, B = cfg.rows, cfg.cols, cfg.mem_bytes_per_cycle
        L = cfg.weight_rows_per_beat
        A = cfg.act_bits
        desc = self.desc

        engine = GemmEngine(cfg)
        gate = Gate(cfg)
        disp = Dispatcher(cfg)
        comb = Combiner(cfg)
        m.submodules.engine = engine
        m.submodules.gate = gate
        m.submodules.dispatcher = disp
        m.submodules.combiner = comb
        MB = engine.m_block

        # ---------------- geometry ----------------
        unit = layout.row_unit(cfg)
        WX, WH, WY = max(R, B), max(R, C), max(C, B)
        XROW = layout.row_bytes(cfg, cfg.max_d_model) // WX
        HROW = layout.align(cfg.max_d_ff, WH) // WH
        YROW = layout.row_bytes(cfg, cfg.max_d_model) // WY
        TROW = layout.row_bytes(cfg, cfg.max_d_model) // C
        LT = layout.n_tiles(cfg.max_experts + 1, C)
        pairs_max = cfg.max_tokens * cfg.max_top_k
        dshape = disp.shapes

        def ceil_div_pow2(value, width):
            return (value + (width - 1)) >> exact_log2(width)

        ys = Signal(range(layout.row_bytes(cfg, cfg.max_d_model) + 1))
        m.d.comb += ys.eq(((desc.d + (unit - 1)) >> exact_log2(unit)) << exact_log2(unit))
        gated_shared = desc.shared == SharedMode.GATED
        has_shared = desc.shared != SharedMode.NONE
        ncol = Signal(range(cfg.max_experts + 2))
        m.d.comb += ncol.eq(desc.e + gated_shared)
        tk = Signal(range(pairs_max + 1))
        m.d.comb += tk.eq(desc.t * desc.k)

        # ---------------- memories ----------------
        def mem(name, shape, depth):
            mm = Memory(shape=shape, depth=depth, init=[])
            m.submodules[name] = mm
            return mm

        x_mem = mem("x_mem", data.ArrayLayout(unsigned(8), WX), cfg.max_tokens * XROW)
        h_mem = mem("h_mem", data.ArrayLayout(unsigned(8), WH), MB * HROW)
        y_mem = mem("y_mem", data.ArrayLayout(unsigned(8), WY), MB * YROW)
        logit_mem = mem(
            "logit_mem", data.ArrayLayout(unsigned(wide_bits(cfg)), C), cfg.max_tokens * LT
        )
        term_mem = mem("term_mem", data.ArrayLayout(unsigned(8), C), (cfg.max_top_k + 1) * TROW)
        tok_bits = ceil_log2(cfg.max_tokens) or 1
        slot_tok = mem("slot_tok", unsigned(tok_bits), pairs_max)
        weight_mem = mem("weight_mem", unsigned(cfg.gate_weight_bits), pairs_max)
        inv_layout = data.StructLayout({"row": dshape.rows, "valid": 1})
        inv_mem = mem("inv_mem", inv_layout, pairs_max)
        sorted_layout = data.StructLayout({"token": unsigned(tok_bits), "pad": 1})
        max_rows = pairs_max + cfg.max_experts * (cfg.m_tile - 1)
        sorted_mem = mem("sorted_mem", sorted_layout, max_rows)
        shw_mem = mem("shw_mem", unsigned(cfg.gate_weight_bits), cfg.max_tokens)
        count_mem = mem("count_mem", dshape.count, cfg.max_experts)
        tiles_mem = mem("tiles_mem", dshape.count, cfg.max_experts)

        x_wr, x_rd = x_mem.write_port(), x_mem.read_port()
        h_wr, h_rd = h_mem.write_port(granularity=C), h_mem.read_port()
        y_wr, y_rd = y_mem.write_port(granularity=C), y_mem.read_port()
        lg_wr, lg_rd = logit_mem.write_port(), logit_mem.read_port()
        tm_wr, tm_rd = term_mem.write_port(), term_mem.read_port()
        st_wr, st_rd = slot_tok.write_port(), slot_tok.read_port()
        wm_wr, wm_rd = weight_mem.write_port(), weight_mem.read_port()
        inv_wr, inv_rd = inv_mem.write_port(), inv_mem.read_port()
        so_wr, so_rd = sorted_mem.write_port(), sorted_mem.read_port()
        sh_wr, sh_rd = shw_mem.write_port(), shw_mem.read_port()
        cn_wr, cn_rd, cn_win = count_mem.write_port(), count_mem.read_port(), count_mem.read_port()
        ti_wr, ti_rd = tiles_mem.write_port(), tiles_mem.read_port()
        m.d.comb += [
            cn_win.addr.eq(self.expert_index),
            self.expert_tokens.eq(Mux(self.expert_index < desc.e, cn_win.data, 0)),
            self.dropped.eq(disp.dropped),
        ]

        # ---------------- DMA command registers ----------------
        rd_pending, wr_pending = Signal(), Signal()
        rd_addr, rd_len = Signal(ADDR_WIDTH), Signal(32)
        wr_addr, wr_len = Signal(ADDR_WIDTH), Signal(32)
        m.d.comb += [
            self.rd_cmd.valid.eq(rd_pending),
            self.rd_cmd.payload.addr.eq(rd_addr),
            self.rd_cmd.payload.length.eq(rd_len),
            self.wr_cmd.valid.eq(wr_pending),
            self.wr_cmd.payload.addr.eq(wr_addr),
            self.wr_cmd.payload.length.eq(wr_len),
        ]
        with m.If(self.rd_cmd.ready):
            m.d.sync += rd_pending.eq(0)
        with m.If(self.wr_cmd.ready):
            m.d.sync += wr_pending.eq(0)

        # ---------------- read-side resizers ----------------
        rsel = Signal(_ReadSel)
        PW = cfg.param_words_per_beat
        LV = cfg.lut_entries_per_beat
        rz_words = Resizer(B, 4)
        rz_x = Resizer(B, WX)
        rz_w = Resizer(B, L * C)
        rz_lut = Resizer(B, LV)
        rz_term = Resizer(B, C)
        rz_params = Resizer(B, 4 * PW)
        readers = {
            _ReadSel.WORDS: rz_words,
            _ReadSel.X: rz_x,
            _ReadSel.WEIGHT: rz_w,
            _ReadSel.LUT: rz_lut,
            _ReadSel.TERM: rz_term,
            _ReadSel.PARAMS: rz_params,
        }
        for name, rz in zip(
            ("rz_words", "rz_x", "rz_w", "rz_lut", "rz_term", "rz_params"),
            readers.values(),
            strict=True,
        ):
            m.submodules[name] = rz
        for sel, rz in readers.items():
            m.d.comb += [
                rz.i.valid.eq(self.rd_data.valid & (rsel == sel)),
                rz.i.payload.eq(self.rd_data.payload.data),
            ]
            with m.If(rsel == sel):
                m.d.comb += self.rd_data.ready.eq(rz.i.ready)

        def read(addr, length, sel, rz, count):
            m.d.sync += [
                rd_pending.eq(1),
                rd_addr.eq(addr),
                rd_len.eq(length),
                rsel.eq(sel),
            ]
            m.d.comb += [rz.start.eq(1), rz.count.eq(count)]

        # Parameter words: PW channels' (m, s) a cycle into one parameter row.
        p_row = Signal(range(engine.param_rows + 1))
        p_group = Signal(range(C // PW))
        m.d.comb += [
            rz_params.o.ready.eq(1),
            engine.param_w.valid.eq(rz_params.o.valid),
            engine.param_w.payload.row.eq(p_row),
            engine.param_w.payload.group.eq(p_group),
        ]
        for j in range(PW):
            pword = rz_params.o.payload.word_select(j, 32)
            m.d.comb += [
                engine.param_w.payload.words[j].mult.eq(pword[: cfg.mult_bits]),
                engine.param_w.payload.words[j].shift.eq(
                    pword[layout.PARAM_SHIFT_LSB : layout.PARAM_SHIFT_LSB + 6]
                ),
            ]
        with m.If(rz_params.o.valid):
            m.d.sync += p_group.eq(p_group + 1)
            with m.If(p_group == C // PW - 1):
                m.d.sync += [p_group.eq(0), p_row.eq(p_row + 1)]

        # Words: bias writes, descriptor capture.
        wdest = Signal(_WordDest)
        w_idx = Signal(range(cfg.max_experts + len(layout.DESC_FIELDS) + 1))
        desc_words = Array(Signal(32, name=f"dw_{n}") for n in layout.DESC_FIELDS)
        dw = {n: desc_words[i] for i, n in enumerate(layout.DESC_FIELDS)}
        word = rz_words.o.payload
        m.d.comb += rz_words.o.ready.eq(1)
        m.d.comb += [
            gate.bias_addr.eq(w_idx),
            gate.bias_data.eq(word),
        ]
        with m.If(rz_words.o.valid):
            with m.Switch(wdest):
                with m.Case(_WordDest.BIAS):
                    m.d.comb += gate.bias_we.eq(1)
                with m.Case(_WordDest.DESC):
                    m.d.sync += desc_words[w_idx].eq(word)
            m.d.sync += w_idx.eq(w_idx + 1)

        # LUT bytes, LV entries a cycle.
        lut_row = Signal(range(2**A // LV + 1))
        m.d.comb += [
            rz_lut.o.ready.eq(1),
            engine.lut_w.valid.eq(rz_lut.o.valid),
            engine.lut_w.payload.row.eq(lut_row),
            engine.lut_w.payload.values.eq(rz_lut.o.payload),
        ]
        with m.If(rz_lut.o.valid):
            m.d.sync += lut_row.eq(lut_row + 1)

        # Token rows into the X buffer.
        xl_tok = Signal(range(cfg.max_tokens + 1))
        xl_word = Signal(range(XROW + 1))
        x_words = Signal(range(XROW + 1))
        m.d.comb += x_words.eq(ys >> exact_log2(WX))
        m.d.comb += [
            rz_x.o.ready.eq(1),
            x_wr.en.eq(rz_x.o.valid),
            x_wr.addr.eq(xl_tok * XROW + xl_word),
            x_wr.data.eq(rz_x.o.payload),
        ]
        with m.If(rz_x.o.valid):
            m.d.sync += xl_word.eq(xl_word + 1)
            with m.If(xl_word == x_words - 1):
                m.d.sync += [xl_word.eq(0), xl_tok.eq(xl_tok + 1)]

        # Weights into the engine.
        m.d.comb += [
            engine.weight.valid.eq(rz_w.o.valid),
            engine.weight.payload.eq(rz_w.o.payload),
            rz_w.o.ready.eq(engine.weight.ready),
        ]

        # Expert-output rows into the term buffer.
        tm_base = Signal(range((cfg.max_top_k + 1) * TROW + 1))
        tm_idx = Signal(range(TROW + 1))
        m.d.comb += [
            rz_term.o.ready.eq(1),
            tm_wr.en.eq(rz_term.o.valid),
            tm_wr.addr.eq(tm_base + tm_idx),
            tm_wr.data.eq(rz_term.o.payload),
        ]
        with m.If(rz_term.o.valid):
            m.d.sync += tm_idx.eq(tm_idx + 1)

        # ---------------- write-side resizers ----------------
        wsel = Signal(_WriteSel)
        rz_route = Resizer(layout.ROUTING_RECORD_BYTES, B)
        rz_y = Resizer(WY, B)
        rz_comb = Resizer(C, B)
        m.submodules.rz_route = rz_route
        m.submodules.rz_y = rz_y
        m.submodules.rz_comb = rz_comb
        for sel, rz in (
            (_WriteSel.ROUTING, rz_route),
            (_WriteSel.YBUF, rz_y),
            (_WriteSel.COMBINE, rz_comb),
        ):
            m.d.comb += rz.o.ready.eq(self.wr_data.ready & (wsel == sel))
            with m.If(wsel == sel):
                m.d.comb += [
                    self.wr_data.valid.eq(rz.o.valid),
                    self.wr_data.payload.eq(rz.o.payload),
                ]

        # No write command outstanding once wb_busy is low (cleared by wr_done; set below
        # by `write`, which comes later in the file and so wins in the same cycle).
        wb_busy = Signal()
        with m.If(self.wr_done):
            m.d.sync += wb_busy.eq(0)

        def write(addr, length, sel, rz, count):
            m.d.sync += [
                wr_pending.eq(1),
                wr_addr.eq(addr),
                wr_len.eq(length),
                wsel.eq(sel),
                wb_busy.eq(1),
            ]
            m.d.comb += [rz.start.eq(1), rz.count.eq(count)]

        # ---------------- engine activation feeder ----------------
        f_run = Signal()
        f_src = Signal(_ActSrc)
        f_row0 = Signal(range(max_rows + 1))
        f_m = Signal(range(MB + 1))
        f_nt = Signal(range(engine.param_rows + 1))
        f_passes = Signal(range(3))
        f_kt_n = Signal(range(layout.n_tiles(max(cfg.max_d_model, cfg.max_d_ff), R) + 1))
        f_n, f_p, f_kt, f_i = (
            Signal.like(f_nt, name="f_n"),
            Signal(range(2), name="f_p"),
            Signal.like(f_kt_n, name="f_kt"),
            Signal(range(MB), name="f_i"),
        )
        adv = Signal()
        a_valid, b_valid = Signal(), Signal()
        a_i = Signal.like(f_i)
        a_kt = Signal.like(f_kt)
        b_pad = Signal()
        b_sub = Signal(range(max(WX, WH) // R + 1))
        b_src = Signal(_ActSrc)
        m.d.comb += adv.eq(~b_valid | engine.act.ready)
        fire0 = f_run & adv
        m.d.comb += [
            so_rd.en.eq(adv),
            so_rd.addr.eq(f_row0 + f_i),
            x_rd.en.eq(adv),
            h_rd.en.eq(adv),
        ]
        with m.If(fire0):
            m.d.sync += f_i.eq(f_i + 1)
            with m.If(f_i == f_m - 1):
                m.d.sync += [f_i.eq(0), f_kt.eq(f_kt + 1)]
                with m.If(f_kt == f_kt_n - 1):
                    m.d.sync += [f_kt.eq(0), f_p.eq(f_p + 1)]
                    with m.If(f_p == f_passes - 1):
                        m.d.sync += [f_p.eq(0), f_n.eq(f_n + 1)]
                        with m.If(f_n == f_nt - 1):
                            m.d.sync += f_run.eq(0)
        with m.If(adv):
            m.d.sync += [a_valid.eq(fire0), a_i.eq(f_i), a_kt.eq(f_kt)]
        token_a = Signal(tok_bits + 1)
        pad_a = Signal()
        row_tok = f_row0 + a_i
        with m.If(f_src == _ActSrc.SORTED):
            m.d.comb += [token_a.eq(so_rd.data.token), pad_a.eq(so_rd.data.pad)]
        with m.Else():
            m.d.comb += [token_a.eq(row_tok), pad_a.eq(row_tok >= desc.t)]
        x_sub_bits = exact_log2(WX // R)
        h_sub_bits = exact_log2(WH // R)
        m.d.comb += [
            x_rd.addr.eq(token_a * XROW + (a_kt >> x_sub_bits)),
            h_rd.addr.eq(a_i * HROW + (a_kt >> h_sub_bits)),
        ]
        with m.If(adv):
            m.d.sync += [
                b_valid.eq(a_valid),
                b_pad.eq(pad_a & (f_src != _ActSrc.HBUF)),
                b_sub.eq(Mux(f_src == _ActSrc.HBUF, a_kt[:h_sub_bits], a_kt[:x_sub_bits])),
                b_src.eq(f_src),
            ]
        x_slice = x_rd.data.as_value().word_select(b_sub[:x_sub_bits] if x_sub_bits else 0, 8 * R)
        h_slice = h_rd.data.as_value().word_select(b_sub[:h_sub_bits] if h_sub_bits else 0, 8 * R)
        m.d.comb += [
            engine.act.valid.eq(b_valid),
            engine.act.payload.eq(Mux(b_pad, 0, Mux(b_src == _ActSrc.HBUF, h_slice, x_slice))),
        ]

        def feed(src, row0, mm, nt, passes, kt_n):
            m.d.sync += [
                f_run.eq(1),
                f_src.eq(src),
                f_row0.eq(row0),
                f_m.eq(mm),
                f_nt.eq(nt),
                f_passes.eq(passes),
                f_kt_n.eq(kt_n),
                f_n.eq(0),
                f_p.eq(0),
                f_kt.eq(0),
                f_i.eq(0),
            ]

        # ---------------- engine output sink ----------------
        s_kind = Signal(_Sink)
        s_row0 = Signal(range(cfg.max_tokens + 1))
        s_m = Signal(range(MB + 1))
        s_n = Signal(range(engine.param_rows + 1))
        s_i = Signal(range(MB))
        out = engine.out
        m.d.comb += out.ready.eq(1)
        hw_sub, yw_sub = exact_log2(WH // C), exact_log2(WY // C)
        m.d.comb += [
            lg_wr.addr.eq((s_row0 + s_i) * LT + s_n),
            lg_wr.data.eq(out.payload.wide),
            h_wr.addr.eq(s_i * HROW + (s_n >> hw_sub)),
            y_wr.addr.eq(s_i * YROW + (s_n >> yw_sub)),
        ]
        for lane in range(WH):
            m.d.comb += h_wr.data[lane].eq(out.payload.data[lane % C])
        for lane in range(WY):
            m.d.comb += y_wr.data[lane].eq(out.payload.data[lane % C])
        h_group = s_n[:hw_sub] if hw_sub else Const(0, 1)
        y_group = s_n[:yw_sub] if yw_sub else Const(0, 1)
        with m.If(out.valid):
            with m.Switch(s_kind):
                with m.Case(_Sink.LOGIT):
                    m.d.comb += lg_wr.en.eq(1)
                with m.Case(_Sink.HBUF):
                    m.d.comb += h_wr.en.eq(Const(1, WH // C) << h_group)
                with m.Case(_Sink.YBUF):
                    m.d.comb += y_wr.en.eq(Const(1, WY // C) << y_group)
            m.d.sync += s_i.eq(s_i + 1)
            with m.If(s_i == s_m - 1):
                m.d.sync += [s_i.eq(0), s_n.eq(s_n + 1)]

        def sink(kind, row0, mm):
            m.d.sync += [s_kind.eq(kind), s_row0.eq(row0), s_m.eq(mm), s_n.eq(0), s_i.eq(0)]

        # ---------------- engine command ----------------
        cmd_pending = Signal()
        cmd = engine.cmd.payload
        m.d.comb += engine.cmd.valid.eq(cmd_pending)
        with m.If(engine.cmd.ready):
            m.d.sync += cmd_pending.eq(0)
        eng_error = Signal()
        with m.If(engine.done & (engine.error != CommandError.NONE)):
            m.d.sync += eng_error.eq(1)
        m.d.comb += [
            self.engine_counters.eq(engine.counters),
            engine.counters_clear.eq(self.counters_clear),
        ]

        def gemm(
            *,
            mm,
            k,
            n,
            mode,
            param_a,
            param_b,
            gate_mult,
            gate_shift,
            w_addr,
            w_rows,
            src,
            row0,
            sink_kind,
            sink_row0,
        ):
            passes = Mux(mode == Mode.SWIGLU, 2, 1)
            nt = ceil_div_pow2(n, C)
            m.d.sync += [
                cmd_pending.eq(1),
                cmd.m.eq(mm),
                cmd.k.eq(k),
                cmd.n.eq(n),
                cmd.mode.eq(mode),
                cmd.param_a.eq(param_a),
                cmd.param_b.eq(param_b),
                cmd.gate_mult.eq(gate_mult),
                cmd.gate_shift.eq(gate_shift),
            ]
            read(
                w_addr,
                ((w_rows * C + (B - 1)) >> exact_log2(B)) << exact_log2(B),
                _ReadSel.WEIGHT,
                rz_w,
                w_rows >> exact_log2(L),
            )
            feed(src, row0, mm, nt, passes, ceil_div_pow2(k, R))
            sink(sink_kind, sink_row0, mm)

        # ---------------- logit serialiser → gate ----------------
        z_run = Signal()
        z_t = Signal(range(cfg.max_tokens + 1))
        z_c = Signal(range(cfg.max_experts + 2))
        z_valid = Signal()
        z_lane = Signal(range(C))
        z_last = Signal()
        z_adv = ~z_valid | gate.logits.ready
        m.d.comb += [
            lg_rd.en.eq(z_adv),
            lg_rd.addr.eq(z_t * LT + (z_c >> exact_log2(C))),
            gate.logits.valid.eq(z_valid),
            gate.logits.payload.logit.eq(lg_rd.data[z_lane]),
            gate.logits.payload.last.eq(z_last),
        ]
        with m.If(z_adv):
            m.d.sync += [
                z_valid.eq(z_run),
                z_lane.eq(z_c[: exact_log2(C)] if C > 1 else 0),
                z_last.eq((z_t == desc.t - 1) & (z_c == ncol - 1)),
            ]
            with m.If(z_run):
                m.d.sync += z_c.eq(z_c + 1)
                with m.If(z_c == ncol - 1):
                    m.d.sync += [z_c.eq(0), z_t.eq(z_t + 1)]
                    with m.If(z_t == desc.t - 1):
                        m.d.sync += z_run.eq(0)

        # Gate configuration.
        m.d.comb += [
            gate.n_experts.eq(desc.e),
            gate.top_k.eq(desc.k),
            gate.sigmoid.eq(desc.sigmoid),
            gate.renormalize.eq(desc.renorm),
            gate.group_size.eq(desc.group_size),
            gate.topk_group.eq(desc.topk_group),
            gate.bias_en.eq(desc.bias_en),
            gate.scale.eq(desc.scale),
            gate.shared_mode.eq(desc.shared),
            disp.n_experts.eq(desc.e),
            disp.capacity.eq(desc.capacity),
            disp.cap_en.eq(desc.cap_en),
            comb.out_mult.eq(desc.out_mult),
            comb.out_shift.eq(desc.out_shift),
        ]

        # Gate pairs → dispatcher, slot tables, routing records.
        pairs = gate.pairs
        g_slot = Signal(range(pairs_max + 1))
        g_pad = Signal()  # feed zero records until the routing write is complete
        pair_fire = pairs.valid & disp.pairs.ready & rz_route.i.ready
        m.d.comb += [
            pairs.ready.eq(disp.pairs.ready & rz_route.i.ready),
            disp.pairs.valid.eq(pairs.valid & rz_route.i.ready),
            disp.pairs.payload.expert.eq(pairs.payload.expert),
            disp.pairs.payload.last.eq(pairs.payload.last),
            rz_route.i.valid.eq((pairs.valid & disp.pairs.ready) | g_pad),
            rz_route.i.payload.eq(
                Mux(
                    g_pad,
                    0,
                    Cat(
                        pairs.payload.expert,
                        Const(0, 32 - len(pairs.payload.expert)),
                        pairs.payload.weight,
                        Const(0, 32 - cfg.gate_weight_bits),
                    ),
                )
            ),
            st_wr.addr.eq(g_slot),
            st_wr.data.eq(pairs.payload.token),
            wm_wr.addr.eq(g_slot),
            wm_wr.data.eq(pairs.payload.weight),
            st_wr.en.eq(pair_fire),
            wm_wr.en.eq(pair_fire),
        ]
        with m.If(pair_fire):
            m.d.sync += g_slot.eq(g_slot + 1)
        # Shared weights.
        sh_tok = Signal(range(cfg.max_tokens + 1))
        m.d.comb += [
            gate.shared.ready.eq(1),
            sh_wr.en.eq(gate.shared.valid),
            sh_wr.addr.eq(sh_tok),
            sh_wr.data.eq(gate.shared.payload.weight),
        ]
        with m.If(gate.shared.valid):
            m.d.sync += sh_tok.eq(sh_tok + 1)

        # Dispatcher outputs → count/tile tables, sorted rows, inverse positions.
        cn_idx = Signal(range(cfg.max_experts + 1))
        m.d.comb += [
            disp.counts.ready.eq(1),
            cn_wr.en.eq(disp.counts.valid),
            cn_wr.addr.eq(cn_idx),
            cn_wr.data.eq(disp.counts.payload.count),
        ]
        with m.If(disp.counts.valid):
            m.d.sync += cn_idx.eq(cn_idx + 1)
        ti_prev = Signal(dshape.expert)
        ti_run = Signal(dshape.count)
        ti_first = Signal()
        ti_next = Mux(~ti_first & (disp.tiles.payload.expert == ti_prev), ti_run + 1, 1)
        m.d.comb += [
            disp.tiles.ready.eq(1),
            ti_wr.en.eq(disp.tiles.valid),
            ti_wr.addr.eq(disp.tiles.payload.expert),
            ti_wr.data.eq(ti_next),
        ]
        with m.If(disp.tiles.valid):
            m.d.sync += [ti_prev.eq(disp.tiles.payload.expert), ti_run.eq(ti_next), ti_first.eq(0)]
        r_row = Signal(dshape.rows)
        r1_valid, r1_pad = Signal(), Signal()
        r1_slot = Signal(dshape.slot)
        r1_row = Signal(dshape.rows)
        disp_done = Signal()
        rows = disp.rows
        m.d.comb += [rows.ready.eq(1), st_rd.en.eq(1), st_rd.addr.eq(rows.payload.slot)]
        m.d.sync += [
            r1_valid.eq(rows.valid),
            r1_pad.eq(rows.payload.slot >= tk),
            r1_slot.eq(rows.payload.slot),
            r1_row.eq(r_row),
        ]
        with m.If(rows.valid):
            m.d.sync += r_row.eq(r_row + 1)
            with m.If(rows.payload.last):
                m.d.sync += disp_done.eq(1)
        m.d.comb += [
            so_wr.en.eq(r1_valid),
            so_wr.addr.eq(r1_row),
            so_wr.data.token.eq(st_rd.data),
            so_wr.data.pad.eq(r1_pad),
        ]
        # inv_mem: invalidated per slot as the gate emits it, then set by dispatch.
        with m.If(r1_valid):
            m.d.comb += [
                inv_wr.en.eq(~r1_pad),
                inv_wr.addr.eq(r1_slot),
                inv_wr.data.row.eq(r1_row),
                inv_wr.data.valid.eq(1),
            ]
        with m.Else():
            m.d.comb += [inv_wr.en.eq(pair_fire), inv_wr.addr.eq(g_slot), inv_wr.data.valid.eq(0)]

        # ---------------- Y buffer write-back ----------------
        yb_run = Signal()
        yb_i = Signal(range(MB + 1))
        yb_w = Signal(range(YROW + 1))
        yb_m = Signal(range(MB + 1))
        yb_valid = Signal()
        y_words = Signal(range(YROW + 1))
        m.d.comb += y_words.eq(ys >> exact_log2(WY))
        yb_adv = ~yb_valid | rz_y.i.ready
        m.d.comb += [
            y_rd.en.eq(yb_adv),
            y_rd.addr.eq(yb_i * YROW + yb_w),
            rz_y.i.valid.eq(yb_valid),
            rz_y.i.payload.eq(y_rd.data),
        ]
        with m.If(yb_adv):
            m.d.sync += yb_valid.eq(yb_run)
            with m.If(yb_run):
                m.d.sync += yb_w.eq(yb_w + 1)
                with m.If(yb_w == y_words - 1):
                    m.d.sync += [yb_w.eq(0), yb_i.eq(yb_i + 1)]
                    with m.If(yb_i == yb_m - 1):
                        m.d.sync += yb_run.eq(0)
        # ---------------- combine feeder ----------------
        c_run = Signal()
        c_c = Signal(range(TROW + 1))
        c_j = Signal(range(cfg.max_top_k + 2))
        c_chunks = Signal(range(TROW + 1))
        m.d.comb += c_chunks.eq(ys >> exact_log2(C))
        n_terms = Signal(range(cfg.max_top_k + 2))
        m.d.comb += n_terms.eq(desc.k + has_shared)
        kept = Array(Signal(name=f"kept_{j}") for j in range(cfg.max_top_k))
        wts = Array(Signal(cfg.gate_weight_bits, name=f"w_{j}") for j in range(cfg.max_top_k))
        sh_weight = Signal(cfg.gate_weight_bits)
        ct_valid, ct_last = Signal(), Signal()
        ct_w = Signal(cfg.gate_weight_bits)
        ct_adv = ~ct_valid | comb.terms.ready
        m.d.comb += [
            tm_rd.en.eq(ct_adv),
            tm_rd.addr.eq(c_j * TROW + c_c),
            comb.terms.valid.eq(ct_valid),
            comb.terms.payload.weight.eq(ct_w),
            comb.terms.payload.last.eq(ct_last),
        ]
        for lane in range(C):
            m.d.comb += comb.terms.payload.values[lane].eq(tm_rd.data[lane])
        with m.If(ct_adv):
            m.d.sync += [
                ct_valid.eq(c_run),
                ct_last.eq(c_j == n_terms - 1),
                ct_w.eq(Mux(c_j == desc.k, sh_weight, Mux(kept[c_j], wts[c_j], 0))),
            ]
            with m.If(c_run):
                m.d.sync += c_j.eq(c_j + 1)
                with m.If(c_j == n_terms - 1):
                    m.d.sync += [c_j.eq(0), c_c.eq(c_c + 1)]
                    with m.If(c_c == c_chunks - 1):
                        m.d.sync += c_run.eq(0)
        m.d.comb += [
            rz_comb.i.valid.eq(comb.out.valid),
            rz_comb.i.payload.eq(comb.out.payload.as_value()),
            comb.out.ready.eq(rz_comb.i.ready),
        ]

        # ---------------- phase counters ----------------
        phase = Signal(range(len(PHASES)))  # 0: none, else index into PHASES
        busy = Signal()
        pc = self.phase_counters
        with m.If(self.counters_clear):
            m.d.sync += pc.eq(0)
        with m.Else():
            with m.If(busy):
                m.d.sync += pc.total.eq(pc.total + 1)
            for i, name in enumerate(PHASES[1:], start=1):
                with m.If(busy & (phase == i)):
                    m.d.sync += pc[name].eq(pc[name] + 1)
            with m.If(busy & (phase == PHASES.index("shared"))):
                m.d.sync += pc.experts.eq(pc.experts + 1)

        # ---------------- the layer FSM ----------------
        e_cur = Signal(range(cfg.max_experts + 1))
        is_shared = Signal()
        rows_e = Signal(range(max_rows + 1))  # real rows of the expert (pads are skipped)
        span_e = Signal(range(max_rows + 1))  # its padded group in the sorted list
        base_e = Signal(range(max_rows + 1))
        m0 = Signal(range(max(max_rows, cfg.max_tokens) + 1))
        mm = Signal(range(MB + 1))
        t_cur = Signal(range(cfg.max_tokens + 1))
        s_cur = Signal(range(pairs_max + 1))
        j_cur = Signal(range(cfg.max_top_k + 1))
        f_cur = Signal.like(desc.f)
        gated = Signal()
        nt_f = Signal(range(engine.param_rows + 1))
        m.d.comb += nt_f.eq(ceil_div_pow2(f_cur, C))
        left = Signal.like(m0)
        m.d.comb += left.eq(rows_e - m0)
        m.d.comb += self.error.eq(0)
        m.d.sync += self.done.eq(0)
        desc_stride = layout.desc_bytes(cfg)
        lut_stride = layout.lut_bytes(cfg)
        nlut = 2**A // LV

        with m.FSM(name="layer"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        busy.eq(1),
                        phase.eq(1),
                        eng_error.eq(0),
                        p_row.eq(0),
                        p_group.eq(0),
                    ]
                    read(
                        desc.rparam_addr,
                        ((ncol * 4 + (B - 1)) >> exact_log2(B)) << exact_log2(B),
                        _ReadSel.PARAMS,
                        rz_params,
                        (ncol + (PW - 1)) >> exact_log2(PW),
                    )
                    m.next = "LOAD_PARAMS"
            with m.State("LOAD_PARAMS"):
                with m.If(self.rd_done):
                    with m.If(desc.bias_en):
                        m.d.sync += [wdest.eq(_WordDest.BIAS), w_idx.eq(0)]
                        read(
                            desc.bias_addr,
                            ((desc.e * 4 + (B - 1)) >> exact_log2(B)) << exact_log2(B),
                            _ReadSel.WORDS,
                            rz_words,
                            desc.e,
                        )
                        m.next = "LOAD_BIAS"
                    with m.Else():
                        m.next = "LOAD_X"
            with m.State("LOAD_BIAS"):
                with m.If(self.rd_done):
                    m.next = "LOAD_X"
            with m.State("LOAD_X"):
                m.d.sync += [xl_tok.eq(0), xl_word.eq(0)]
                read(desc.tokens_addr, desc.t * ys, _ReadSel.X, rz_x, desc.t * x_words)
                m.next = "WAIT_X"
            with m.State("WAIT_X"):
                with m.If(self.rd_done):
                    m.d.sync += m0.eq(0)
                    m.next = "ROUTE"
            with m.State("ROUTE"):
                blk = Mux(desc.t - m0 < MB, desc.t - m0, MB)
                m.d.sync += mm.eq(blk)
                gemm(
                    mm=blk,
                    k=desc.d,
                    n=ncol,
                    mode=Mode.WIDE,
                    param_a=0,
                    param_b=0,
                    gate_mult=0,
                    gate_shift=0,
                    w_addr=desc.router_w_addr,
                    w_rows=ceil_div_pow2(ncol, C) * (ceil_div_pow2(desc.d, L) << exact_log2(L)),
                    src=_ActSrc.TOKENS,
                    row0=m0,
                    sink_kind=_Sink.LOGIT,
                    sink_row0=m0,
                )
                m.next = "ROUTE_WAIT"
            with m.State("ROUTE_WAIT"):
                with m.If(engine.done):
                    m.d.sync += m0.eq(m0 + mm)
                    with m.If(engine.error != CommandError.NONE):
                        m.next = "FAIL"
                    with m.Elif(m0 + mm < desc.t):
                        m.next = "ROUTE"
                    with m.Else():
                        m.next = "GATE"
            with m.State("GATE"):
                m.d.sync += [
                    z_run.eq(1),
                    z_t.eq(0),
                    z_c.eq(0),
                    g_slot.eq(0),
                    sh_tok.eq(0),
                    g_pad.eq(0),
                ]
                m.d.sync += [cn_idx.eq(0), ti_first.eq(1), r_row.eq(0), disp_done.eq(0)]
                rlen = (
                    (tk * layout.ROUTING_RECORD_BYTES + (B - 1)) >> exact_log2(B)
                ) << exact_log2(B)
                write(desc.routing_addr, rlen, _WriteSel.ROUTING, rz_route, rlen >> exact_log2(B))
                m.next = "GATE_RUN"
            with m.State("GATE_RUN"):
                with m.If(g_slot == tk):
                    m.d.sync += [g_pad.eq(1), phase.eq(2)]
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.If(rz_route.idle):
                    m.d.sync += g_pad.eq(0)
                with m.If(disp_done & ~disp.busy & ~gate.busy & ~wb_busy):
                    m.d.sync += [phase.eq(3), e_cur.eq(0), base_e.eq(0), is_shared.eq(0)]
                    m.next = "E_NEXT"
            with m.State("E_NEXT"):
                m.d.comb += [cn_rd.addr.eq(e_cur), ti_rd.addr.eq(e_cur)]
                with m.If(e_cur == desc.e):
                    with m.If(has_shared):
                        m.d.sync += [
                            is_shared.eq(1),
                            rows_e.eq(desc.t),
                            f_cur.eq(desc.fs),
                            gated.eq(1),
                            phase.eq(4),
                        ]
                        m.next = "DESC"
                    with m.Else():
                        m.next = "COMBINE"
                with m.Else():
                    m.next = "E_CHECK"
            with m.State("E_CHECK"):
                m.d.comb += [cn_rd.addr.eq(e_cur), ti_rd.addr.eq(e_cur)]
                with m.If(cn_rd.data == 0):
                    m.d.sync += e_cur.eq(e_cur + 1)
                    m.next = "E_NEXT"
                with m.Else():
                    m.d.sync += [
                        rows_e.eq(cn_rd.data),
                        span_e.eq(ti_rd.data * cfg.m_tile),
                        f_cur.eq(desc.f),
                        gated.eq(desc.ffn == FFNKind.SWIGLU),
                    ]
                    m.next = "DESC"
            with m.State("DESC"):
                m.d.sync += [wdest.eq(_WordDest.DESC), w_idx.eq(0), m0.eq(0)]
                read(
                    desc.table_addr + e_cur * desc_stride,
                    desc_stride,
                    _ReadSel.WORDS,
                    rz_words,
                    len(layout.DESC_FIELDS),
                )
                m.next = "DESC_WAIT"
            with m.State("DESC_WAIT"):
                with m.If(self.rd_done):
                    m.next = "PARAMS"
            with m.State("PARAMS"):
                m.d.sync += [p_row.eq(0), p_group.eq(0)]
                pc_words = dw["param_count"]
                read(
                    dw["param_addr"],
                    ((pc_words * 4 + (B - 1)) >> exact_log2(B)) << exact_log2(B),
                    _ReadSel.PARAMS,
                    rz_params,
                    (pc_words + (PW - 1)) >> exact_log2(PW),
                )
                m.next = "PARAMS_WAIT"
            with m.State("PARAMS_WAIT"):
                with m.If(self.rd_done):
                    m.d.sync += lut_row.eq(0)
                    read(desc.lut_addr + e_cur * lut_stride, lut_stride, _ReadSel.LUT, rz_lut, nlut)
                    m.next = "LUT_WAIT"
            with m.State("LUT_WAIT"):
                with m.If(self.rd_done):
                    m.next = "GEMM1"
            with m.State("GEMM1"):
                # Blocks of MB rows; a remainder between MB and 2·MB is split in halves,
                # so no block is much shorter than MB/2 (short blocks are weight-bound).
                blk = Mux(left <= MB, left, Mux(left < 2 * MB, (left + 1) >> 1, MB))
                m.d.sync += mm.eq(blk)
                gemm(
                    mm=blk,
                    k=desc.d,
                    n=f_cur,
                    mode=Mux(gated, Mode.SWIGLU, Mode.REQUANT_LUT),
                    param_a=0,
                    param_b=nt_f,
                    gate_mult=dw["gate_mult"],
                    gate_shift=dw["gate_shift"],
                    w_addr=dw["w1_addr"],
                    w_rows=dw["w1_rows"],
                    src=Mux(is_shared, _ActSrc.TOKENS, _ActSrc.SORTED),
                    row0=Mux(is_shared, m0, base_e + m0),
                    sink_kind=_Sink.HBUF,
                    sink_row0=0,
                )
                m.next = "GEMM1_WAIT"
            with m.State("GEMM1_WAIT"):
                with m.If(engine.done):
                    with m.If(engine.error != CommandError.NONE):
                        m.next = "FAIL"
                    with m.Else():
                        m.next = "GEMM2_READY"
            with m.State("GEMM2_READY"):
                with m.If(~wb_busy):
                    gemm(
                        mm=mm,
                        k=f_cur,
                        n=desc.d,
                        mode=Mode.REQUANT,
                        param_a=Mux(gated, 2 * nt_f, nt_f),
                        param_b=0,
                        gate_mult=0,
                        gate_shift=0,
                        w_addr=dw["w2_addr"],
                        w_rows=dw["w2_rows"],
                        src=_ActSrc.HBUF,
                        row0=0,
                        sink_kind=_Sink.YBUF,
                        sink_row0=0,
                    )
                    m.next = "GEMM2_WAIT"
            with m.State("GEMM2_WAIT"):
                with m.If(engine.done):
                    with m.If(engine.error != CommandError.NONE):
                        m.next = "FAIL"
                    with m.Else():
                        row = Mux(is_shared, m0, base_e + m0)
                        base = Mux(is_shared, desc.shared_scratch_addr, desc.scratch_addr)
                        write(
                            base + row * ys,
                            mm * ys,
                            _WriteSel.YBUF,
                            rz_y,
                            (mm * ys) >> exact_log2(B),
                        )
                        m.d.sync += [yb_run.eq(1), yb_i.eq(0), yb_w.eq(0), yb_m.eq(mm)]
                        m.d.sync += m0.eq(m0 + mm)
                        with m.If(m0 + mm < rows_e):
                            m.next = "GEMM1"
                        with m.Elif(is_shared):
                            m.next = "COMBINE"
                        with m.Else():
                            m.d.sync += [base_e.eq(base_e + span_e), e_cur.eq(e_cur + 1)]
                            m.next = "E_NEXT"
            with m.State("COMBINE"):
                with m.If(~wb_busy):
                    m.d.sync += [phase.eq(5), t_cur.eq(0), s_cur.eq(0), j_cur.eq(0)]
                    write(
                        desc.output_addr,
                        desc.t * ys,
                        _WriteSel.COMBINE,
                        rz_comb,
                        (desc.t * ys) >> exact_log2(B),
                    )
                    m.next = "C_SLOT"
            with m.State("C_SLOT"):
                m.d.comb += [
                    inv_rd.addr.eq(s_cur + j_cur),
                    wm_rd.addr.eq(s_cur + j_cur),
                    sh_rd.addr.eq(t_cur),
                ]
                m.next = "C_GOT"
            with m.State("C_GOT"):
                m.d.comb += [
                    inv_rd.addr.eq(s_cur + j_cur),
                    wm_rd.addr.eq(s_cur + j_cur),
                    sh_rd.addr.eq(t_cur),
                ]
                m.d.sync += [
                    kept[j_cur].eq(inv_rd.data.valid),
                    wts[j_cur].eq(wm_rd.data),
                    sh_weight.eq(sh_rd.data),
                ]
                m.d.sync += [tm_base.eq(j_cur * TROW), tm_idx.eq(0)]
                with m.If(inv_rd.data.valid):
                    read(
                        desc.scratch_addr + inv_rd.data.row * ys,
                        ys,
                        _ReadSel.TERM,
                        rz_term,
                        ys >> exact_log2(C),
                    )
                    m.next = "C_FETCH"
                with m.Else():
                    m.next = "C_STEP"
            with m.State("C_FETCH"):
                with m.If(self.rd_done):
                    m.next = "C_STEP"
            with m.State("C_STEP"):
                m.d.sync += j_cur.eq(j_cur + 1)
                with m.If(j_cur == desc.k - 1):
                    with m.If(has_shared):
                        m.d.sync += [tm_base.eq(desc.k * TROW), tm_idx.eq(0)]
                        read(
                            desc.shared_scratch_addr + t_cur * ys,
                            ys,
                            _ReadSel.TERM,
                            rz_term,
                            ys >> exact_log2(C),
                        )
                        m.next = "C_SHARED"
                    with m.Else():
                        m.next = "C_FEED"
                with m.Else():
                    m.next = "C_SLOT"
            with m.State("C_SHARED"):
                with m.If(self.rd_done):
                    m.next = "C_FEED"
            with m.State("C_FEED"):
                m.d.sync += [c_run.eq(1), c_c.eq(0), c_j.eq(0)]
                m.next = "C_FEEDING"
            with m.State("C_FEEDING"):
                with m.If(~c_run & ~ct_valid):
                    m.d.sync += [t_cur.eq(t_cur + 1), s_cur.eq(s_cur + desc.k), j_cur.eq(0)]
                    with m.If(t_cur == desc.t - 1):
                        m.next = "C_DRAIN"
                    with m.Else():
                        m.next = "C_SLOT"
            with m.State("C_DRAIN"):
                with m.If(~wb_busy):
                    m.d.sync += [busy.eq(0), phase.eq(0), self.done.eq(1)]
                    m.next = "IDLE"
            with m.State("FAIL"):
                m.d.comb += self.error.eq(1)
        return m
