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

from types import SimpleNamespace

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from pymodel.config import AccelConfig, ConfigError

from . import layout
from .activation_feeder import (
    ActivationFeeder,
    ActSource,
    max_sorted_rows,
    sorted_row_layout,
    token_bits,
)
from .combine import Combiner
from .combine_feeder import CombineFeeder
from .dispatch import Dispatcher
from .dispatch_tables import DispatchTables, inverse_layout
from .dma import dma_command_layout, read_beat_layout
from .dma_channels import ReadChannel, WriteChannel
from .gate import Gate
from .gemm_engine import GemmEngine
from .loaders import LutLoader, ParamLoader, RowLoader, WordDest, WordLoader
from .logit_serialiser import LogitSerialiser
from .output_sink import OutputSink, SinkKind
from .phase_counters import Phase, PhaseCounters, phase_counter_layout
from .postproc import Mode, wide_bits
from .regs import FFNKind, descriptor_layout
from .regs import SharedExpert as SharedMode
from .routing_recorder import RoutingRecorder
from .streams import CommandRegister
from .tile_sequencer import CommandError, counter_layout
from .y_writeback import YWriteBack

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
        p = self._units(m)
        self._buffers(m, p)
        self._reads(m, p)
        self._writes(m, p)
        self._engine_io(m, p)
        self._routing(m, p)
        self._combine_path(m, p)
        self._fsm_signals(m, p)
        with m.FSM(name="layer"):
            self._load_and_route_states(m, p)
            self._expert_states(m, p)
            self._combine_states(m, p)
        return m

    def _units(self, m: Module) -> SimpleNamespace:
        """The units, the buffer geometry and the per-layer sizes derived from `desc`."""
        cfg, desc = self.cfg, self.desc
        p = SimpleNamespace(cfg=cfg, desc=desc)
        p.engine = m.submodules.engine = GemmEngine(cfg)
        p.gate = gate = m.submodules.gate = Gate(cfg)
        p.disp = disp = m.submodules.dispatcher = Dispatcher(cfg)
        p.comb = comb = m.submodules.combiner = Combiner(cfg)
        p.mb = p.engine.m_block
        R, C, B = cfg.rows, cfg.cols, cfg.mem_bytes_per_cycle
        p.wx, p.wh, p.wy = max(R, B), max(R, C), max(C, B)
        p.xrow = layout.row_bytes(cfg, cfg.max_d_model) // p.wx
        p.hrow = layout.align(cfg.max_d_ff, p.wh) // p.wh
        p.yrow = layout.row_bytes(cfg, cfg.max_d_model) // p.wy
        p.trow = layout.row_bytes(cfg, cfg.max_d_model) // C
        p.lt = layout.n_tiles(cfg.max_experts + 1, C)
        p.pairs_max = cfg.max_tokens * cfg.max_top_k
        p.max_rows = max_sorted_rows(cfg)

        unit = layout.row_unit(cfg)
        p.ys = Signal(range(layout.row_bytes(cfg, cfg.max_d_model) + 1))
        m.d.comb += p.ys.eq(((desc.d + (unit - 1)) >> exact_log2(unit)) << exact_log2(unit))
        p.has_shared = desc.shared != SharedMode.NONE
        p.ncol = Signal(range(cfg.max_experts + 2))
        m.d.comb += p.ncol.eq(desc.e + (desc.shared == SharedMode.GATED))
        p.tk = Signal(range(p.pairs_max + 1))
        m.d.comb += p.tk.eq(desc.t * desc.k)
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
            self.dropped.eq(disp.dropped),
            self.engine_counters.eq(p.engine.counters),
            p.engine.counters_clear.eq(self.counters_clear),
        ]
        return p

    def _buffers(self, m: Module, p: SimpleNamespace) -> None:
        """The on-chip buffers and tables, and their ports (`p.<name>_wr`, `p.<name>_rd`)."""
        cfg, C = self.cfg, self.cfg.cols
        dshape = p.disp.shapes
        weight = unsigned(cfg.gate_weight_bits)
        buffers = {
            "x": (data.ArrayLayout(unsigned(8), p.wx), cfg.max_tokens * p.xrow, None),
            "h": (data.ArrayLayout(unsigned(8), p.wh), p.mb * p.hrow, C),
            "y": (data.ArrayLayout(unsigned(8), p.wy), p.mb * p.yrow, C),
            "logit": (
                data.ArrayLayout(unsigned(wide_bits(cfg)), C),
                cfg.max_tokens * p.lt,
                None,
            ),
            "term": (data.ArrayLayout(unsigned(8), C), (cfg.max_top_k + 1) * p.trow, None),
            "slot_tok": (unsigned(token_bits(cfg)), p.pairs_max, None),
            "weight": (weight, p.pairs_max, None),
            "inv": (inverse_layout(cfg), p.pairs_max, None),
            "sorted": (sorted_row_layout(cfg), p.max_rows, None),
            "shw": (weight, cfg.max_tokens, None),
            "count": (dshape.count, cfg.max_experts, None),
            "tiles": (dshape.count, cfg.max_experts, None),
        }
        p.mems = {}
        for name, (shape, depth, granularity) in buffers.items():
            mem = m.submodules[f"{name}_mem"] = Memory(shape=shape, depth=depth, init=[])
            p.mems[name] = mem
            setattr(p, f"{name}_wr", mem.write_port(granularity=granularity))
            setattr(p, f"{name}_rd", mem.read_port())
        count_window = p.mems["count"].read_port()
        m.d.comb += [
            count_window.addr.eq(self.expert_index),
            self.expert_tokens.eq(Mux(self.expert_index < p.desc.e, count_window.data, 0)),
        ]

    def _reads(self, m: Module, p: SimpleNamespace) -> None:
        """DMA reads (`p.read(addr, length, sel, count)` from an FSM state) into the loaders."""
        cfg, engine = self.cfg, p.engine
        C = cfg.cols
        p.rch = rch = m.submodules.read_channel = ReadChannel(
            cfg.mem_bytes_per_cycle,
            _ReadSel,
            {
                _ReadSel.WORDS: 4,
                _ReadSel.X: p.wx,
                _ReadSel.WEIGHT: cfg.weight_rows_per_beat * C,
                _ReadSel.LUT: cfg.lut_entries_per_beat,
                _ReadSel.TERM: C,
                _ReadSel.PARAMS: 4 * cfg.param_words_per_beat,
            },
        )
        wiring.connect(m, rch.cmd, wiring.flipped(self.rd_cmd))
        m.d.comb += [
            rch.data.valid.eq(self.rd_data.valid),
            rch.data.payload.eq(self.rd_data.payload.data),
            self.rd_data.ready.eq(rch.data.ready),
        ]

        def read(addr, length, sel, count):
            m.d.comb += [
                rch.issue.eq(1),
                rch.addr.eq(addr),
                rch.length.eq(length),
                rch.sel.eq(sel),
                rch.count.eq(count),
            ]

        p.read = read

        p.params = m.submodules.param_loader = ParamLoader(cfg, engine.param_rows)
        wiring.connect(m, rch.params, p.params.i)
        wiring.connect(m, p.params.o, engine.param_w)
        p.words = m.submodules.word_loader = WordLoader(cfg)
        wiring.connect(m, rch.words, p.words.i)
        m.d.comb += [
            p.gate.bias_addr.eq(p.words.bias_addr),
            p.gate.bias_data.eq(p.words.bias_data),
            p.gate.bias_we.eq(p.words.bias_we),
        ]
        p.lut = m.submodules.lut_loader = LutLoader(cfg)
        wiring.connect(m, rch.lut, p.lut.i)
        wiring.connect(m, p.lut.o, engine.lut_w)
        p.x_words = Signal(range(p.xrow + 1))
        m.d.comb += p.x_words.eq(p.ys >> exact_log2(p.wx))
        p.x_load = m.submodules.x_loader = RowLoader(
            len(p.x_wr.addr), p.mems["x"].shape, cfg.max_tokens, p.xrow
        )
        wiring.connect(m, rch.x, p.x_load.i)
        wiring.connect(m, p.x_load.wr, p.x_wr)
        m.d.comb += p.x_load.words.eq(p.x_words)
        m.d.comb += [
            engine.weight.valid.eq(rch.weight.valid),
            engine.weight.payload.eq(rch.weight.payload),
            rch.weight.ready.eq(engine.weight.ready),
        ]
        p.term_load = m.submodules.term_loader = RowLoader(
            len(p.term_wr.addr), p.mems["term"].shape, cfg.max_top_k + 1, p.trow
        )
        wiring.connect(m, rch.term, p.term_load.i)
        wiring.connect(m, p.term_load.wr, p.term_wr)
        m.d.comb += p.term_load.words.eq(p.ys >> exact_log2(C))

    def _writes(self, m: Module, p: SimpleNamespace) -> None:
        """DMA writes: `p.write(addr, length, sel, count)` from an FSM state; `p.wb_busy`
        is high from then until the DMA reports the write done."""
        cfg = self.cfg
        p.wch = wch = m.submodules.write_channel = WriteChannel(
            cfg.mem_bytes_per_cycle,
            _WriteSel,
            {
                _WriteSel.ROUTING: layout.ROUTING_RECORD_BYTES,
                _WriteSel.YBUF: p.wy,
                _WriteSel.COMBINE: cfg.cols,
            },
        )
        wiring.connect(m, wch.cmd, wiring.flipped(self.wr_cmd))
        wiring.connect(m, wch.data, wiring.flipped(self.wr_data))
        m.d.comb += wch.done.eq(self.wr_done)
        p.wb_busy = wch.busy

        def write(addr, length, sel, count):
            m.d.comb += [
                wch.issue.eq(1),
                wch.addr.eq(addr),
                wch.length.eq(length),
                wch.sel.eq(sel),
                wch.count.eq(count),
            ]

        p.write = write

    def _engine_io(self, m: Module, p: SimpleNamespace) -> None:
        """The engine's command register, activation feeder and output sink.

        `p.gemm(...)` issues one command from an FSM state: the command, its weight
        read, its activation feed and its sink.
        """
        cfg, engine = self.cfg, p.engine
        R, C, B = cfg.rows, cfg.cols, cfg.mem_bytes_per_cycle
        L = cfg.weight_rows_per_beat
        feeder = m.submodules.feeder = ActivationFeeder(cfg, p.mb, engine.param_rows)
        wiring.connect(m, feeder.sorted_rd, p.sorted_rd)
        wiring.connect(m, feeder.x_rd, p.x_rd)
        wiring.connect(m, feeder.h_rd, p.h_rd)
        wiring.connect(m, feeder.act, engine.act)
        m.d.comb += feeder.tokens.eq(p.desc.t)
        sink = m.submodules.sink = OutputSink(cfg, p.mb, engine.param_rows)
        wiring.connect(m, engine.out, sink.i)
        wiring.connect(m, sink.logit_wr, p.logit_wr)
        wiring.connect(m, sink.h_wr, p.h_wr)
        wiring.connect(m, sink.y_wr, p.y_wr)
        eng_cmd = m.submodules.eng_cmd = CommandRegister(engine.cmd.payload.shape())
        wiring.connect(m, eng_cmd.o, engine.cmd)
        cmd = eng_cmd.data

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
            p.read(
                w_addr,
                ((w_rows * C + (B - 1)) >> exact_log2(B)) << exact_log2(B),
                _ReadSel.WEIGHT,
                w_rows >> exact_log2(L),
            )
            m.d.comb += [
                feeder.start.eq(1),
                feeder.cmd.src.eq(src),
                feeder.cmd.row0.eq(row0),
                feeder.cmd.m.eq(mm),
                feeder.cmd.nt.eq(_ceil_div_pow2(n, C)),
                feeder.cmd.passes.eq(Mux(mode == Mode.SWIGLU, 2, 1)),
                feeder.cmd.kt_n.eq(_ceil_div_pow2(k, R)),
                sink.start.eq(1),
                sink.cmd.kind.eq(sink_kind),
                sink.cmd.row0.eq(sink_row0),
                sink.cmd.m.eq(mm),
            ]

        p.gemm = gemm

    def _routing(self, m: Module, p: SimpleNamespace) -> None:
        """Logits into the gate; its pairs into the dispatcher, records and tables."""
        cfg, desc, gate, disp = self.cfg, p.desc, p.gate, p.disp
        p.logits = m.submodules.logit_serialiser = LogitSerialiser(cfg)
        wiring.connect(m, p.logits.rd, p.logit_rd)
        wiring.connect(m, p.logits.o, gate.logits)
        m.d.comb += [p.logits.tokens.eq(desc.t), p.logits.columns.eq(p.ncol)]

        p.g_pad = Signal()  # feed zero records until the routing write is complete
        p.recorder = rec = m.submodules.routing_recorder = RoutingRecorder(cfg)
        wiring.connect(m, gate.pairs, rec.pairs)
        wiring.connect(m, gate.shared, rec.shared)
        wiring.connect(m, rec.disp_pairs, disp.pairs)
        wiring.connect(m, rec.records, p.wch.routing)
        wiring.connect(m, rec.slot_token_wr, p.slot_tok_wr)
        wiring.connect(m, rec.slot_weight_wr, p.weight_wr)
        wiring.connect(m, rec.shared_weight_wr, p.shw_wr)
        m.d.comb += rec.pad.eq(p.g_pad)

        p.tables = tables = m.submodules.dispatch_tables = DispatchTables(cfg)
        wiring.connect(m, disp.counts, tables.counts)
        wiring.connect(m, disp.tiles, tables.tiles)
        wiring.connect(m, disp.rows, tables.rows)
        wiring.connect(m, tables.count_wr, p.count_wr)
        wiring.connect(m, tables.tile_wr, p.tiles_wr)
        wiring.connect(m, tables.sorted_wr, p.sorted_wr)
        wiring.connect(m, tables.inverse_wr, p.inv_wr)
        wiring.connect(m, tables.slot_token_rd, p.slot_tok_rd)
        m.d.comb += [
            tables.pairs.eq(p.tk),
            tables.clear_en.eq(rec.fire),
            tables.clear_slot.eq(rec.slot),
        ]

    def _combine_path(self, m: Module, p: SimpleNamespace) -> None:
        """The Y write-back, the combine feeder (terms from the term buffer), the output."""
        cfg, desc, comb = self.cfg, p.desc, p.comb
        p.yb = m.submodules.y_writeback = YWriteBack(cfg, p.mb)
        wiring.connect(m, p.yb.rd, p.y_rd)
        wiring.connect(m, p.yb.o, p.wch.ybuf)
        m.d.comb += p.yb.words.eq(p.ys >> exact_log2(p.wy))

        p.kept = Array(Signal(name=f"kept_{j}") for j in range(cfg.max_top_k))
        p.wts = Array(Signal(cfg.gate_weight_bits, name=f"w_{j}") for j in range(cfg.max_top_k))
        p.sh_weight = Signal(cfg.gate_weight_bits)
        p.terms = terms = m.submodules.combine_feeder = CombineFeeder(cfg)
        wiring.connect(m, terms.rd, p.term_rd)
        wiring.connect(m, terms.o, comb.terms)
        m.d.comb += [
            terms.chunks.eq(p.ys >> exact_log2(cfg.cols)),
            terms.terms.eq(desc.k + p.has_shared),
            terms.k.eq(desc.k),
            terms.shared_weight.eq(p.sh_weight),
        ]
        for j in range(cfg.max_top_k):
            m.d.comb += [terms.kept[j].eq(p.kept[j]), terms.weights[j].eq(p.wts[j])]
        m.d.comb += [
            p.wch.combine.valid.eq(comb.out.valid),
            p.wch.combine.payload.eq(comb.out.payload.as_value()),
            comb.out.ready.eq(p.wch.combine.ready),
        ]

    def _fsm_signals(self, m: Module, p: SimpleNamespace) -> None:
        """The FSM's registers, the phase counters, and `done`/`error` defaults."""
        cfg, desc = self.cfg, p.desc
        p.phase = Signal(Phase)
        p.busy = Signal()
        phases = m.submodules.phase_counters = PhaseCounters()
        m.d.comb += [
            phases.busy.eq(p.busy),
            phases.phase.eq(p.phase),
            phases.clear.eq(self.counters_clear),
            self.phase_counters.eq(phases.counters),
        ]
        p.e_cur = Signal(range(cfg.max_experts + 1))
        p.is_shared = Signal()
        p.rows_e = Signal(range(p.max_rows + 1))  # real rows of the expert (pads are skipped)
        p.span_e = Signal(range(p.max_rows + 1))  # its padded group in the sorted list
        p.base_e = Signal(range(p.max_rows + 1))
        p.m0 = Signal(range(max(p.max_rows, cfg.max_tokens) + 1))
        p.mm = Signal(range(p.mb + 1))
        p.t_cur = Signal(range(cfg.max_tokens + 1))
        p.s_cur = Signal(range(p.pairs_max + 1))
        p.j_cur = Signal(range(cfg.max_top_k + 1))
        p.f_cur = Signal.like(desc.f)
        p.gated = Signal()
        p.nt_f = Signal(range(p.engine.param_rows + 1))
        m.d.comb += p.nt_f.eq(_ceil_div_pow2(p.f_cur, cfg.cols))
        p.left = Signal.like(p.m0)
        m.d.comb += p.left.eq(p.rows_e - p.m0)
        # defaults; FAIL and C_DRAIN override them
        m.d.comb += self.error.eq(0)
        m.d.sync += self.done.eq(0)

    def _load_and_route_states(self, m: Module, p: SimpleNamespace) -> None:
        """IDLE → load router parameters, bias and tokens → router GEMMs → gate → dispatch."""
        cfg, desc, engine, read = self.cfg, p.desc, p.engine, p.read
        B, C, L = cfg.mem_bytes_per_cycle, cfg.cols, cfg.weight_rows_per_beat
        PW = cfg.param_words_per_beat
        m0, mm, ncol, tk = p.m0, p.mm, p.ncol, p.tk
        with m.State("IDLE"):
            with m.If(self.start):
                m.d.sync += [p.busy.eq(1), p.phase.eq(Phase.ROUTE)]
                m.d.comb += p.params.clear.eq(1)
                read(
                    desc.rparam_addr,
                    ((ncol * 4 + (B - 1)) >> exact_log2(B)) << exact_log2(B),
                    _ReadSel.PARAMS,
                    (ncol + (PW - 1)) >> exact_log2(PW),
                )
                m.next = "LOAD_PARAMS"
        with m.State("LOAD_PARAMS"):
            with m.If(self.rd_done):
                with m.If(desc.bias_en):
                    m.d.comb += [p.words.start.eq(1), p.words.dest.eq(WordDest.BIAS)]
                    read(
                        desc.bias_addr,
                        ((desc.e * 4 + (B - 1)) >> exact_log2(B)) << exact_log2(B),
                        _ReadSel.WORDS,
                        desc.e,
                    )
                    m.next = "LOAD_BIAS"
                with m.Else():
                    m.next = "LOAD_X"
        with m.State("LOAD_BIAS"):
            with m.If(self.rd_done):
                m.next = "LOAD_X"
        with m.State("LOAD_X"):
            m.d.comb += p.x_load.start.eq(1)
            read(desc.tokens_addr, desc.t * p.ys, _ReadSel.X, desc.t * p.x_words)
            m.next = "WAIT_X"
        with m.State("WAIT_X"):
            with m.If(self.rd_done):
                m.d.sync += m0.eq(0)
                m.next = "ROUTE"
        with m.State("ROUTE"):
            blk = Mux(desc.t - m0 < p.mb, desc.t - m0, p.mb)
            m.d.sync += mm.eq(blk)
            p.gemm(
                mm=blk,
                k=desc.d,
                n=ncol,
                mode=Mode.WIDE,
                param_a=0,
                param_b=0,
                gate_mult=0,
                gate_shift=0,
                w_addr=desc.router_w_addr,
                w_rows=_ceil_div_pow2(ncol, C) * (_ceil_div_pow2(desc.d, L) << exact_log2(L)),
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
            m.d.sync += p.g_pad.eq(0)
            m.d.comb += [p.logits.start.eq(1), p.recorder.start.eq(1), p.tables.start.eq(1)]
            rlen = ((tk * layout.ROUTING_RECORD_BYTES + (B - 1)) >> exact_log2(B)) << exact_log2(B)
            p.write(desc.routing_addr, rlen, _WriteSel.ROUTING, rlen >> exact_log2(B))
            m.next = "GATE_RUN"
        with m.State("GATE_RUN"):
            with m.If(p.recorder.slot == tk):
                m.d.sync += [p.g_pad.eq(1), p.phase.eq(Phase.DISPATCH)]
                m.next = "DISPATCH"
        with m.State("DISPATCH"):
            with m.If(p.wch.idle[_WriteSel.ROUTING.value]):
                m.d.sync += p.g_pad.eq(0)
            with m.If(p.tables.done & ~p.disp.busy & ~p.gate.busy & ~p.wb_busy):
                m.d.sync += [
                    p.phase.eq(Phase.EXPERTS),
                    p.e_cur.eq(0),
                    p.base_e.eq(0),
                    p.is_shared.eq(0),
                ]
                m.next = "E_NEXT"

    def _expert_states(self, m: Module, p: SimpleNamespace) -> None:
        """Per expert with tokens, then the shared expert: descriptor, parameters, LUT,
        then per M-block GEMM1, GEMM2 and the Y write-back."""
        cfg, desc, read = self.cfg, p.desc, p.read
        B, PW = cfg.mem_bytes_per_cycle, cfg.param_words_per_beat
        e_cur, is_shared, m0 = p.e_cur, p.is_shared, p.m0
        cn_rd, ti_rd, dw = p.count_rd, p.tiles_rd, p.words.desc
        desc_stride = layout.desc_bytes(cfg)
        lut_stride = layout.lut_bytes(cfg)
        with m.State("E_NEXT"):
            m.d.comb += [cn_rd.addr.eq(e_cur), ti_rd.addr.eq(e_cur)]
            with m.If(e_cur == desc.e):
                with m.If(p.has_shared):
                    m.d.sync += [
                        is_shared.eq(1),
                        p.rows_e.eq(desc.t),
                        p.f_cur.eq(desc.fs),
                        p.gated.eq(1),
                        p.phase.eq(Phase.SHARED),
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
                    p.rows_e.eq(cn_rd.data),
                    p.span_e.eq(ti_rd.data * cfg.m_tile),
                    p.f_cur.eq(desc.f),
                    p.gated.eq(desc.ffn == FFNKind.SWIGLU),
                ]
                m.next = "DESC"
        with m.State("DESC"):
            m.d.sync += m0.eq(0)
            m.d.comb += [p.words.start.eq(1), p.words.dest.eq(WordDest.DESC)]
            read(
                desc.table_addr + e_cur * desc_stride,
                desc_stride,
                _ReadSel.WORDS,
                len(layout.DESC_FIELDS),
            )
            m.next = "DESC_WAIT"
        with m.State("DESC_WAIT"):
            with m.If(self.rd_done):
                m.next = "PARAMS"
        with m.State("PARAMS"):
            m.d.comb += p.params.clear.eq(1)
            pc_words = dw["param_count"]
            read(
                dw["param_addr"],
                ((pc_words * 4 + (B - 1)) >> exact_log2(B)) << exact_log2(B),
                _ReadSel.PARAMS,
                (pc_words + (PW - 1)) >> exact_log2(PW),
            )
            m.next = "PARAMS_WAIT"
        with m.State("PARAMS_WAIT"):
            with m.If(self.rd_done):
                m.d.comb += p.lut.clear.eq(1)
                nlut = 2**cfg.act_bits // cfg.lut_entries_per_beat
                read(desc.lut_addr + e_cur * lut_stride, lut_stride, _ReadSel.LUT, nlut)
                m.next = "LUT_WAIT"
        with m.State("LUT_WAIT"):
            with m.If(self.rd_done):
                m.next = "GEMM1"
        self._gemm_states(m, p)

    def _gemm_states(self, m: Module, p: SimpleNamespace) -> None:
        """One M-block of an expert: GEMM1 into H, GEMM2 into Y, Y written back."""
        desc, engine, dw = p.desc, p.engine, p.words.desc
        B, MB = self.cfg.mem_bytes_per_cycle, p.mb
        is_shared, m0, mm, left, ys = p.is_shared, p.m0, p.mm, p.left, p.ys
        with m.State("GEMM1"):
            # Blocks of MB rows; a remainder between MB and 2·MB is split in halves,
            # so no block is much shorter than MB/2 (short blocks are weight-bound).
            blk = Mux(left <= MB, left, Mux(left < 2 * MB, (left + 1) >> 1, MB))
            m.d.sync += mm.eq(blk)
            p.gemm(
                mm=blk,
                k=desc.d,
                n=p.f_cur,
                mode=Mux(p.gated, Mode.SWIGLU, Mode.REQUANT_LUT),
                param_a=0,
                param_b=p.nt_f,
                gate_mult=dw["gate_mult"],
                gate_shift=dw["gate_shift"],
                w_addr=dw["w1_addr"],
                w_rows=dw["w1_rows"],
                src=Mux(is_shared, ActSource.TOKENS, ActSource.SORTED),
                row0=Mux(is_shared, m0, p.base_e + m0),
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
            with m.If(~p.wb_busy):
                p.gemm(
                    mm=mm,
                    k=p.f_cur,
                    n=desc.d,
                    mode=Mode.REQUANT,
                    param_a=Mux(p.gated, 2 * p.nt_f, p.nt_f),
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
                    row = Mux(is_shared, m0, p.base_e + m0)
                    base = Mux(is_shared, desc.shared_scratch_addr, desc.scratch_addr)
                    p.write(
                        base + row * ys,
                        mm * ys,
                        _WriteSel.YBUF,
                        (mm * ys) >> exact_log2(B),
                    )
                    m.d.comb += [p.yb.start.eq(1), p.yb.rows.eq(mm)]
                    m.d.sync += m0.eq(m0 + mm)
                    with m.If(m0 + mm < p.rows_e):
                        m.next = "GEMM1"
                    with m.Elif(is_shared):
                        m.next = "COMBINE"
                    with m.Else():
                        m.d.sync += [p.base_e.eq(p.base_e + p.span_e), p.e_cur.eq(p.e_cur + 1)]
                        m.next = "E_NEXT"

    def _combine_states(self, m: Module, p: SimpleNamespace) -> None:
        """Per token: its kept slots' rows (and the shared row) into the term buffer,
        then fed to the combiner; the outputs stream to memory. FAIL holds `error`."""
        cfg, desc, read = self.cfg, p.desc, p.read
        B, C = cfg.mem_bytes_per_cycle, cfg.cols
        t_cur, s_cur, j_cur, ys = p.t_cur, p.s_cur, p.j_cur, p.ys
        inv_rd, wm_rd, sh_rd = p.inv_rd, p.weight_rd, p.shw_rd
        with m.State("COMBINE"):
            with m.If(~p.wb_busy):
                m.d.sync += [p.phase.eq(Phase.COMBINE), t_cur.eq(0), s_cur.eq(0), j_cur.eq(0)]
                p.write(
                    desc.output_addr,
                    desc.t * ys,
                    _WriteSel.COMBINE,
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
                p.kept[j_cur].eq(inv_rd.data.valid),
                p.wts[j_cur].eq(wm_rd.data),
                p.sh_weight.eq(sh_rd.data),
            ]
            m.d.comb += [p.term_load.start.eq(1), p.term_load.first_row.eq(j_cur)]
            with m.If(inv_rd.data.valid):
                read(
                    desc.scratch_addr + inv_rd.data.row * ys,
                    ys,
                    _ReadSel.TERM,
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
                with m.If(p.has_shared):
                    m.d.comb += [p.term_load.start.eq(1), p.term_load.first_row.eq(desc.k)]
                    read(
                        desc.shared_scratch_addr + t_cur * ys,
                        ys,
                        _ReadSel.TERM,
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
            m.d.comb += p.terms.start.eq(1)
            m.next = "C_FEEDING"
        with m.State("C_FEEDING"):
            with m.If(~p.terms.running & ~p.terms.o.valid):
                m.d.sync += [t_cur.eq(t_cur + 1), s_cur.eq(s_cur + desc.k), j_cur.eq(0)]
                with m.If(t_cur == desc.t - 1):
                    m.next = "C_DRAIN"
                with m.Else():
                    m.next = "C_SLOT"
        with m.State("C_DRAIN"):
            with m.If(~p.wb_busy):
                m.d.sync += [p.busy.eq(0), p.phase.eq(Phase.NONE), self.done.eq(1)]
                m.next = "IDLE"
        with m.State("FAIL"):
            m.d.comb += self.error.eq(1)


def _ceil_div_pow2(value, width: int):
    """`ceil(value / width)` for a power-of-two `width`."""
    return (value + (width - 1)) >> exact_log2(width)
