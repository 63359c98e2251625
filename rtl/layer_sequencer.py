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

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from pymodel.config import AccelConfig, ConfigError

from . import layout
from .activation_feeder import ActivationFeeder, ActSource, max_sorted_rows, sorted_row_layout
from .combine import Combiner
from .dispatch import Dispatcher
from .dispatch_tables import DispatchTables, inverse_layout
from .dma import dma_command_layout, read_beat_layout
from .gate import Gate
from .gemm_engine import GemmEngine
from .loaders import LutLoader, ParamLoader, RowLoader, WordDest, WordLoader
from .output_sink import OutputSink, SinkKind
from .phase_counters import Phase, PhaseCounters, phase_counter_layout
from .postproc import Mode, wide_bits
from .regs import FFNKind, descriptor_layout
from .regs import SharedExpert as SharedMode
from .resize import Resizer
from .routing_recorder import RoutingRecorder
from .streams import CommandRegister, MemoryReader, StreamDemux, StreamMux
from .tile_sequencer import CommandError, counter_layout

__all__ = ["LayerSequencer", "descriptor_layout", "phase_counter_layout"]


class _ReadSel(enum.Enum, shape=3):
    """Which consumer takes the DMA's read beats."""

    WORDS = 0
    X = 1
    WEIGHT = 2
    LUT = 3
    TERM = 4
    PARAMS = 5


class _WriteSel(enum.Enum, shape=2):
    ROUTING = 0
    YBUF = 1
    COMBINE = 2


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
        inv_mem = mem("inv_mem", inverse_layout(cfg), pairs_max)
        max_rows = max_sorted_rows(cfg)
        sorted_mem = mem("sorted_mem", sorted_row_layout(cfg), max_rows)
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
        rd_cmd = m.submodules.rd_cmd = CommandRegister(dma_command_layout())
        wr_cmd = m.submodules.wr_cmd = CommandRegister(dma_command_layout())
        wiring.connect(m, rd_cmd.o, wiring.flipped(self.rd_cmd))
        wiring.connect(m, wr_cmd.o, wiring.flipped(self.wr_cmd))

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
        rd_demux = m.submodules.rd_demux = StreamDemux(unsigned(8 * B), _ReadSel)
        m.d.comb += [
            rd_demux.sel.eq(rsel),
            rd_demux.i.valid.eq(self.rd_data.valid),
            rd_demux.i.payload.eq(self.rd_data.payload.data),
            self.rd_data.ready.eq(rd_demux.i.ready),
        ]
        for sel, rz in readers.items():
            m.submodules[f"rz_{sel.name.lower()}"] = rz
            wiring.connect(m, getattr(rd_demux, sel.name.lower()), rz.i)

        def read(addr, length, sel, rz, count):
            m.d.comb += [
                rd_cmd.load.eq(1),
                rd_cmd.data.addr.eq(addr),
                rd_cmd.data.length.eq(length),
            ]
            m.d.sync += rsel.eq(sel)
            m.d.comb += [rz.start.eq(1), rz.count.eq(count)]

        # Loaders: parameter rows, bias or descriptor words, LUT rows, token rows.
        params = m.submodules.param_loader = ParamLoader(cfg, engine.param_rows)
        wiring.connect(m, rz_params.o, params.i)
        wiring.connect(m, params.o, engine.param_w)
        words = m.submodules.word_loader = WordLoader(cfg)
        wiring.connect(m, rz_words.o, words.i)
        m.d.comb += [
            gate.bias_addr.eq(words.bias_addr),
            gate.bias_data.eq(words.bias_data),
            gate.bias_we.eq(words.bias_we),
        ]
        dw = words.desc
        lut = m.submodules.lut_loader = LutLoader(cfg)
        wiring.connect(m, rz_lut.o, lut.i)
        wiring.connect(m, lut.o, engine.lut_w)
        x_words = Signal(range(XROW + 1))
        m.d.comb += x_words.eq(ys >> exact_log2(WX))
        x_load = m.submodules.x_loader = RowLoader(
            len(x_wr.addr), x_mem.shape, cfg.max_tokens, XROW
        )
        wiring.connect(m, rz_x.o, x_load.i)
        wiring.connect(m, x_load.wr, x_wr)
        m.d.comb += x_load.words.eq(x_words)

        # Weights into the engine.
        m.d.comb += [
            engine.weight.valid.eq(rz_w.o.valid),
            engine.weight.payload.eq(rz_w.o.payload),
            rz_w.o.ready.eq(engine.weight.ready),
        ]

        # Expert-output rows into the term buffer.
        term_load = m.submodules.term_loader = RowLoader(
            len(tm_wr.addr), term_mem.shape, cfg.max_top_k + 1, TROW
        )
        wiring.connect(m, rz_term.o, term_load.i)
        wiring.connect(m, term_load.wr, tm_wr)
        m.d.comb += term_load.words.eq(ys >> exact_log2(C))

        # ---------------- write-side resizers ----------------
        wsel = Signal(_WriteSel)
        rz_route = Resizer(layout.ROUTING_RECORD_BYTES, B)
        rz_y = Resizer(WY, B)
        rz_comb = Resizer(C, B)
        wr_mux = m.submodules.wr_mux = StreamMux(unsigned(8 * B), _WriteSel)
        m.d.comb += wr_mux.sel.eq(wsel)
        wiring.connect(m, wr_mux.o, wiring.flipped(self.wr_data))
        for sel, rz in (
            (_WriteSel.ROUTING, rz_route),
            (_WriteSel.YBUF, rz_y),
            (_WriteSel.COMBINE, rz_comb),
        ):
            m.submodules[f"rz_{sel.name.lower()}"] = rz
            wiring.connect(m, rz.o, getattr(wr_mux, sel.name.lower()))

        # No write command outstanding once wb_busy is low (cleared by wr_done; set below
        # by `write`, which comes later in the file and so wins in the same cycle).
        wb_busy = Signal()
        with m.If(self.wr_done):
            m.d.sync += wb_busy.eq(0)

        def write(addr, length, sel, rz, count):
            m.d.comb += [
                wr_cmd.load.eq(1),
                wr_cmd.data.addr.eq(addr),
                wr_cmd.data.length.eq(length),
            ]
            m.d.sync += [wsel.eq(sel), wb_busy.eq(1)]
            m.d.comb += [rz.start.eq(1), rz.count.eq(count)]

        # ---------------- engine activation feeder ----------------
        feeder = m.submodules.feeder = ActivationFeeder(cfg, MB, engine.param_rows)
        wiring.connect(m, feeder.sorted_rd, so_rd)
        wiring.connect(m, feeder.x_rd, x_rd)
        wiring.connect(m, feeder.h_rd, h_rd)
        wiring.connect(m, feeder.act, engine.act)
        m.d.comb += feeder.tokens.eq(desc.t)

        def feed(src, row0, mm, nt, passes, kt_n):
            m.d.comb += [
                feeder.start.eq(1),
                feeder.cmd.src.eq(src),
                feeder.cmd.row0.eq(row0),
                feeder.cmd.m.eq(mm),
                feeder.cmd.nt.eq(nt),
                feeder.cmd.passes.eq(passes),
                feeder.cmd.kt_n.eq(kt_n),
            ]

        # ---------------- engine output sink ----------------
        sink_unit = m.submodules.sink = OutputSink(cfg, MB, engine.param_rows)
        wiring.connect(m, engine.out, sink_unit.i)
        wiring.connect(m, sink_unit.logit_wr, lg_wr)
        wiring.connect(m, sink_unit.h_wr, h_wr)
        wiring.connect(m, sink_unit.y_wr, y_wr)

        def sink(kind, row0, mm):
            m.d.comb += [
                sink_unit.start.eq(1),
                sink_unit.cmd.kind.eq(kind),
                sink_unit.cmd.row0.eq(row0),
                sink_unit.cmd.m.eq(mm),
            ]

        # ---------------- engine command ----------------
        eng_cmd = m.submodules.eng_cmd = CommandRegister(engine.cmd.payload.shape())
        wiring.connect(m, eng_cmd.o, engine.cmd)
        cmd = eng_cmd.data
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
            m.d.comb += [
                eng_cmd.load.eq(1),
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
        z = m.submodules.logit_reader = MemoryReader(
            len(lg_rd.addr),
            logit_mem.shape,
            outer=cfg.max_tokens,
            inner=cfg.max_experts + 1,
            side=data.StructLayout({"lane": range(C), "last": 1}),
        )
        wiring.connect(m, z.rd, lg_rd)
        m.d.comb += [
            z.outer_count.eq(desc.t),
            z.inner_count.eq(ncol),
            z.addr.eq(z.outer * LT + (z.inner >> exact_log2(C))),
            z.side_in.lane.eq(z.inner[: exact_log2(C)] if C > 1 else 0),
            z.side_in.last.eq(z.last_outer & z.last_inner),
            gate.logits.valid.eq(z.o.valid),
            gate.logits.payload.logit.eq(z.o.payload.data[z.o.payload.side.lane]),
            gate.logits.payload.last.eq(z.o.payload.side.last),
            z.o.ready.eq(gate.logits.ready),
        ]

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

        # Gate pairs → dispatcher, slot tables, routing records; shared weights.
        g_pad = Signal()  # feed zero records until the routing write is complete
        recorder = m.submodules.routing_recorder = RoutingRecorder(cfg)
        wiring.connect(m, gate.pairs, recorder.pairs)
        wiring.connect(m, gate.shared, recorder.shared)
        wiring.connect(m, recorder.disp_pairs, disp.pairs)
        wiring.connect(m, recorder.records, rz_route.i)
        wiring.connect(m, recorder.slot_token_wr, st_wr)
        wiring.connect(m, recorder.slot_weight_wr, wm_wr)
        wiring.connect(m, recorder.shared_weight_wr, sh_wr)
        m.d.comb += recorder.pad.eq(g_pad)

        # Dispatcher outputs → count/tile tables, sorted rows, inverse positions.
        tables = m.submodules.dispatch_tables = DispatchTables(cfg)
        wiring.connect(m, disp.counts, tables.counts)
        wiring.connect(m, disp.tiles, tables.tiles)
        wiring.connect(m, disp.rows, tables.rows)
        wiring.connect(m, tables.count_wr, cn_wr)
        wiring.connect(m, tables.tile_wr, ti_wr)
        wiring.connect(m, tables.sorted_wr, so_wr)
        wiring.connect(m, tables.inverse_wr, inv_wr)
        wiring.connect(m, tables.slot_token_rd, st_rd)
        m.d.comb += [
            tables.pairs.eq(tk),
            tables.clear_en.eq(recorder.fire),
            tables.clear_slot.eq(recorder.slot),
        ]

        # ---------------- Y buffer write-back ----------------
        yb = m.submodules.y_reader = MemoryReader(
            len(y_rd.addr), y_mem.shape, outer=MB, inner=YROW, side=unsigned(0)
        )
        wiring.connect(m, yb.rd, y_rd)
        m.d.comb += [
            yb.inner_count.eq(ys >> exact_log2(WY)),
            yb.addr.eq(yb.outer * YROW + yb.inner),
            rz_y.i.valid.eq(yb.o.valid),
            rz_y.i.payload.eq(yb.o.payload.data),
            yb.o.ready.eq(rz_y.i.ready),
        ]
        # ---------------- combine feeder ----------------
        n_terms = Signal(range(cfg.max_top_k + 2))
        m.d.comb += n_terms.eq(desc.k + has_shared)
        kept = Array(Signal(name=f"kept_{j}") for j in range(cfg.max_top_k))
        wts = Array(Signal(cfg.gate_weight_bits, name=f"w_{j}") for j in range(cfg.max_top_k))
        sh_weight = Signal(cfg.gate_weight_bits)
        ct = m.submodules.term_reader = MemoryReader(
            len(tm_rd.addr),
            term_mem.shape,
            outer=TROW,
            inner=cfg.max_top_k + 1,
            side=data.StructLayout({"weight": unsigned(cfg.gate_weight_bits), "last": 1}),
        )
        wiring.connect(m, ct.rd, tm_rd)
        c_j = ct.inner
        m.d.comb += [
            ct.outer_count.eq(ys >> exact_log2(C)),
            ct.inner_count.eq(n_terms),
            ct.addr.eq(c_j * TROW + ct.outer),
            ct.side_in.last.eq(ct.last_inner),
            ct.side_in.weight.eq(Mux(c_j == desc.k, sh_weight, Mux(kept[c_j], wts[c_j], 0))),
            comb.terms.valid.eq(ct.o.valid),
            comb.terms.payload.weight.eq(ct.o.payload.side.weight),
            comb.terms.payload.last.eq(ct.o.payload.side.last),
            ct.o.ready.eq(comb.terms.ready),
        ]
        for lane in range(C):
            m.d.comb += comb.terms.payload.values[lane].eq(ct.o.payload.data[lane])
        m.d.comb += [
            rz_comb.i.valid.eq(comb.out.valid),
            rz_comb.i.payload.eq(comb.out.payload.as_value()),
            comb.out.ready.eq(rz_comb.i.ready),
        ]

        # ---------------- phase counters ----------------
        phase = Signal(Phase)
        busy = Signal()
        phases = m.submodules.phase_counters = PhaseCounters()
        m.d.comb += [
            phases.busy.eq(busy),
            phases.phase.eq(phase),
            phases.clear.eq(self.counters_clear),
            self.phase_counters.eq(phases.counters),
        ]

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
                        phase.eq(Phase.ROUTE),
                        eng_error.eq(0),
                    ]
                    m.d.comb += params.clear.eq(1)
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
                        m.d.comb += [words.start.eq(1), words.dest.eq(WordDest.BIAS)]
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
                m.d.comb += x_load.start.eq(1)
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
                    src=ActSource.TOKENS,
                    row0=m0,
                    sink_kind=SinkKind.LOGIT,
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
                m.d.comb += z.start.eq(1)
                m.d.sync += g_pad.eq(0)
                m.d.comb += [recorder.start.eq(1), tables.start.eq(1)]
                rlen = (
                    (tk * layout.ROUTING_RECORD_BYTES + (B - 1)) >> exact_log2(B)
                ) << exact_log2(B)
                write(desc.routing_addr, rlen, _WriteSel.ROUTING, rz_route, rlen >> exact_log2(B))
                m.next = "GATE_RUN"
            with m.State("GATE_RUN"):
                with m.If(recorder.slot == tk):
                    m.d.sync += [g_pad.eq(1), phase.eq(Phase.DISPATCH)]
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):
                with m.If(rz_route.idle):
                    m.d.sync += g_pad.eq(0)
                with m.If(tables.done & ~disp.busy & ~gate.busy & ~wb_busy):
                    m.d.sync += [
                        phase.eq(Phase.EXPERTS),
                        e_cur.eq(0),
                        base_e.eq(0),
                        is_shared.eq(0),
                    ]
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
                            phase.eq(Phase.SHARED),
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
                m.d.sync += m0.eq(0)
                m.d.comb += [words.start.eq(1), words.dest.eq(WordDest.DESC)]
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
                m.d.comb += params.clear.eq(1)
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
                    m.d.comb += lut.clear.eq(1)
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
                    src=Mux(is_shared, ActSource.TOKENS, ActSource.SORTED),
                    row0=Mux(is_shared, m0, base_e + m0),
                    sink_kind=SinkKind.HBUF,
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
                        src=ActSource.HBUF,
                        row0=0,
                        sink_kind=SinkKind.YBUF,
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
                        m.d.comb += [yb.start.eq(1), yb.outer_count.eq(mm)]
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
                    m.d.sync += [phase.eq(Phase.COMBINE), t_cur.eq(0), s_cur.eq(0), j_cur.eq(0)]
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
                m.d.comb += [term_load.start.eq(1), term_load.first_row.eq(j_cur)]
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
                        m.d.comb += [term_load.start.eq(1), term_load.first_row.eq(desc.k)]
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
                m.d.comb += ct.start.eq(1)
                m.next = "C_FEEDING"
            with m.State("C_FEEDING"):
                with m.If(~ct.running & ~ct.o.valid):
                    m.d.sync += [t_cur.eq(t_cur + 1), s_cur.eq(s_cur + desc.k), j_cur.eq(0)]
                    with m.If(t_cur == desc.t - 1):
                        m.next = "C_DRAIN"
                    with m.Else():
                        m.next = "C_SLOT"
            with m.State("C_DRAIN"):
                with m.If(~wb_busy):
                    m.d.sync += [busy.eq(0), phase.eq(Phase.NONE), self.done.eq(1)]
                    m.next = "IDLE"
            with m.State("FAIL"):
                m.d.comb += self.error.eq(1)
        return m
