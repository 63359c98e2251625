"""The layer sequencer's datapath: its units, buffers and the connections between them.

Why: `rtl.layer_sequencer.LayerSequencer` is a datapath of components
(GEMM engine, gate, dispatcher, combiner, DMA channels, loaders, feeders,
sinks and the on-chip buffers) driven by one FSM. This module builds the
datapath and connects it (`build_datapath`), and hands the FSM what it
drives and watches as one namespace: the units, the buffer ports, the
per-layer sizes and the command helpers `read`, `write` and `gemm`, which
issue a DMA transfer or an engine command from an FSM state.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.memory import Memory
from amaranth.utils import exact_log2

from contract import layout
from contract.regs import SharedExpert

from .activation_feeder import (
    ActivationFeeder,
    h_word_bytes,
    max_sorted_rows,
    sorted_row_layout,
    token_bits,
    x_word_bytes,
)
from .combine import Combiner
from .combine_phase import CombinePhase
from .dispatch import Dispatcher
from .dispatch_tables import DispatchTables, inverse_layout
from .dma_channels import ReadChannel, WriteChannel
from .gate import Gate
from .gemm_engine import GemmEngine
from .loaders import LutLoader, ParamLoader, RowLoader, WordLoader
from .logit_serialiser import LogitSerialiser
from .output_sink import OutputSink
from .postproc import Mode, wide_bits
from .routing_recorder import RoutingRecorder
from .streams import CommandRegister
from .tile_sequencer import wide_tiles
from .y_writeback import YWriteBack

if TYPE_CHECKING:
    from .layer_sequencer import LayerSequencer

__all__ = ["ReadSel", "WriteSel", "build_datapath", "ceil_div_pow2"]


class ReadSel(enum.Enum, shape=3):
    """Which consumer takes the DMA's read beats."""

    WORDS = 0
    X = 1
    WEIGHT = 2
    LUT = 3
    TERM = 4
    PARAMS = 5


class WriteSel(enum.Enum, shape=2):
    """Which producer the DMA's write beats come from."""

    ROUTING = 0
    YBUF = 1
    COMBINE = 2


def build_datapath(seq: LayerSequencer, m: Module) -> SimpleNamespace:
    """Build and connect `seq`'s datapath in `m`; the namespace the FSM works on."""
    p = _units(seq, m)
    _buffers(seq, m, p)
    _reads(seq, m, p)
    _writes(seq, m, p)
    _engine_io(seq, m, p)
    _routing(seq, m, p)
    _combine_path(seq, m, p)
    return p


def ceil_div_pow2(value, width: int):
    """`ceil(value / width)` for a power-of-two `width`."""
    return (value + (width - 1)) >> exact_log2(width)


def _units(seq: LayerSequencer, m: Module) -> SimpleNamespace:
    """The units, the buffer geometry and the per-layer sizes derived from `desc`."""
    cfg, desc = seq.cfg, seq.desc
    p = SimpleNamespace(cfg=cfg, desc=desc)
    p.engine = m.submodules.engine = GemmEngine(cfg)
    p.gate = gate = m.submodules.gate = Gate(cfg)
    p.disp = disp = m.submodules.dispatcher = Dispatcher(cfg)
    p.comb = comb = m.submodules.combiner = Combiner(cfg)
    p.mb = p.engine.m_block
    C, B = cfg.cols, cfg.mem_bytes_per_cycle
    p.wx, p.wh, p.wy = x_word_bytes(cfg), h_word_bytes(cfg), max(C, B)
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
    p.has_shared = desc.shared != SharedExpert.NONE
    p.ncol = Signal(range(cfg.max_experts + 2))
    m.d.comb += p.ncol.eq(desc.e + (desc.shared == SharedExpert.GATED))
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
        seq.dropped.eq(disp.dropped),
        seq.engine_counters.eq(p.engine.counters),
        p.engine.counters_clear.eq(seq.counters_clear),
    ]
    return p


def _buffers(seq: LayerSequencer, m: Module, p: SimpleNamespace) -> None:
    """The on-chip buffers and tables, and their ports (`p.<name>_wr`, `p.<name>_rd`)."""
    cfg, C = seq.cfg, seq.cfg.cols
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
        count_window.addr.eq(seq.expert_index),
        seq.expert_tokens.eq(Mux(seq.expert_index < p.desc.e, count_window.data, 0)),
    ]


def _reads(seq: LayerSequencer, m: Module, p: SimpleNamespace) -> None:
    """DMA reads (`p.read(addr, length, sel, count)` from an FSM state) into the loaders."""
    cfg, engine = seq.cfg, p.engine
    C = cfg.cols
    p.rch = rch = m.submodules.read_channel = ReadChannel(
        cfg.mem_bytes_per_cycle,
        ReadSel,
        {
            ReadSel.WORDS: 4,
            ReadSel.X: p.wx,
            ReadSel.WEIGHT: cfg.weight_rows_per_beat * C,
            ReadSel.LUT: cfg.lut_entries_per_beat,
            ReadSel.TERM: C,
            ReadSel.PARAMS: 4 * cfg.param_words_per_beat,
        },
        addr_bits=cfg.addr_bits,
    )
    wiring.connect(m, rch.cmd, wiring.flipped(seq.rd_cmd))
    m.d.comb += [
        rch.data.valid.eq(seq.rd_data.valid),
        rch.data.payload.eq(seq.rd_data.payload.data),
        seq.rd_data.ready.eq(rch.data.ready),
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


def _writes(seq: LayerSequencer, m: Module, p: SimpleNamespace) -> None:
    """DMA writes: `p.write(addr, length, sel, count)` from an FSM state; `p.wb_busy`
    is high from then until the DMA reports the write done."""
    cfg = seq.cfg
    p.wch = wch = m.submodules.write_channel = WriteChannel(
        cfg.mem_bytes_per_cycle,
        WriteSel,
        {
            WriteSel.ROUTING: layout.ROUTING_RECORD_BYTES,
            WriteSel.YBUF: p.wy,
            WriteSel.COMBINE: cfg.cols,
        },
        addr_bits=cfg.addr_bits,
    )
    wiring.connect(m, wch.cmd, wiring.flipped(seq.wr_cmd))
    wiring.connect(m, wch.data, wiring.flipped(seq.wr_data))
    m.d.comb += wch.done.eq(seq.wr_done)
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


def _engine_io(seq: LayerSequencer, m: Module, p: SimpleNamespace) -> None:
    """The engine's command register, activation feeder and output sink.

    `p.gemm(...)` issues one command from an FSM state: the command, its weight
    read, its activation feed and its sink. `fmt` (a `format_layout` value) is the
    command's weight format in a build with a compressed weight path: a 2:4
    command's k-tiles are 2R K positions, fed as 2R-lane slices.
    """
    cfg, engine = seq.cfg, p.engine
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
    compressed = cfg.sparse_2_4 or cfg.int4_weights

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
        fmt=0,
    ):
        if compressed:
            m.d.comb += cmd.fmt.eq(fmt)
        kt_n = ceil_div_pow2(k, R)
        wide = wide_tiles(cfg, cmd)
        if wide is not None:
            kt_n = Mux(wide, ceil_div_pow2(k, 2 * R), kt_n)
            m.d.comb += feeder.cmd.sparse.eq(wide)
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
            ReadSel.WEIGHT,
            w_rows >> exact_log2(L),
        )
        m.d.comb += [
            feeder.start.eq(1),
            feeder.cmd.src.eq(src),
            feeder.cmd.row0.eq(row0),
            feeder.cmd.m.eq(mm),
            feeder.cmd.nt.eq(ceil_div_pow2(n, C)),
            feeder.cmd.passes.eq(Mux(mode == Mode.SWIGLU, 2, 1)),
            feeder.cmd.kt_n.eq(kt_n),
            sink.start.eq(1),
            sink.cmd.kind.eq(sink_kind),
            sink.cmd.row0.eq(sink_row0),
            sink.cmd.m.eq(mm),
        ]

    p.gemm = gemm


def _routing(seq: LayerSequencer, m: Module, p: SimpleNamespace) -> None:
    """Logits into the gate; its pairs into the dispatcher, records and tables."""
    cfg, desc, gate, disp = seq.cfg, p.desc, p.gate, p.disp
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


def _combine_path(seq: LayerSequencer, m: Module, p: SimpleNamespace) -> None:
    """The Y write-back, the combine phase (terms into the combiner), the output."""
    cfg, desc, comb = seq.cfg, p.desc, p.comb
    p.yb = m.submodules.y_writeback = YWriteBack(cfg, p.mb)
    wiring.connect(m, p.yb.rd, p.y_rd)
    wiring.connect(m, p.yb.o, p.wch.ybuf)
    m.d.comb += p.yb.words.eq(p.ys >> exact_log2(p.wy))

    p.combine = phase = m.submodules.combine_phase = CombinePhase(cfg)
    wiring.connect(m, phase.inverse_rd, p.inv_rd)
    wiring.connect(m, phase.weight_rd, p.weight_rd)
    wiring.connect(m, phase.shared_weight_rd, p.shw_rd)
    wiring.connect(m, phase.term_rd, p.term_rd)
    wiring.connect(m, phase.terms, comb.terms)
    m.d.comb += [
        phase.tokens.eq(desc.t),
        phase.k.eq(desc.k),
        phase.shared.eq(p.has_shared),
        phase.row_bytes.eq(p.ys),
        phase.scratch_addr.eq(desc.scratch_addr),
        phase.shared_scratch_addr.eq(desc.shared_scratch_addr),
        phase.rd_done.eq(seq.rd_done),
        p.term_load.start.eq(phase.term_start),
        p.term_load.first_row.eq(phase.term_row),
    ]
    m.d.comb += [
        p.wch.combine.valid.eq(comb.out.valid),
        p.wch.combine.payload.eq(comb.out.payload.as_value()),
        comb.out.ready.eq(p.wch.combine.ready),
    ]
