"""The layer sequencer: route → dispatch → experts (+ shared) → combine after one start.

`LayerSequencer` holds the datapath of `rtl.top.MoEAccel` except the
register file and the DMA: the GEMM engine, gate, dispatcher, combiner, the
on-chip buffers and the FSM that drives them through one layer, reading and
writing memory in the layout of `contract.layout` through the DMA's command and
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
beat is `weight_rows_per_beat` rows (`contract.layout.weight_stream`), so the
loads run at the bus rate.

Expert weight formats: the routed and shared experts' GEMM commands carry
the layer's `LAYER_MODE.weights` (int8/int4, dense/2:4) in builds with a
compressed weight path; their streams and row counts are the compressed
ones the expert table names; the router GEMM is always int8 dense. A 2:4
command's activation slices are 2R wide, one token- or H-buffer word each
(`activation_feeder.x_word_bytes`), so the array is fed a row a cycle.

Structure: every part of the datapath is a component with its own test
(`rtl.dma_channels`, `rtl.loaders`, `rtl.activation_feeder`,
`rtl.output_sink`, `rtl.logit_serialiser`, `rtl.routing_recorder`,
`rtl.dispatch_tables`, `rtl.y_writeback`, `rtl.combine_phase` with
`rtl.combine_feeder`, `rtl.phase_counters`, on the blocks of
`rtl.streams`); `rtl.layer_datapath` builds the buffers and connects the
parts; this module holds the FSM, one method per group of states, each
state issuing DMA transfers and engine commands through the datapath's
`read`, `write` and `gemm` helpers.
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from contract import layout
from contract.descriptor import WEIGHTS_INT4, WEIGHTS_SPARSE
from contract.regs import FFNKind
from pymodel.config import AccelConfig, ConfigError

from .activation_feeder import ActSource
from .descriptor import descriptor_layout
from .dma import dma_command_layout, read_beat_layout
from .layer_datapath import ReadSel, WriteSel, build_datapath, ceil_div_pow2
from .loaders import WordDest
from .output_sink import SinkKind
from .phase_counters import Phase, PhaseCounters, phase_counter_layout
from .postproc import Mode
from .tile_sequencer import CommandError, counter_layout

__all__ = ["LayerSequencer", "descriptor_layout", "phase_counter_layout"]


class LayerSequencer(wiring.Component):
    """Runs one MoE layer after `start`: the datapath of `rtl.layer_datapath` and its FSM.

    Parameters
    ----------
    cfg : AccelConfig
        The generated accelerator's limits and widths.

    Ports
    -----
    desc : In(descriptor_layout)
        The layer, held stable while busy.
    start : In(1)
        Start a layer (a pulse, while idle).
    done, error : Out(1)
        The layer finished (a pulse); an engine rejected a command (held until reset).
    rd_cmd, rd_data, rd_done, wr_cmd, wr_data, wr_done
        The DMA's read and write commands, beats and completions.
    engine_counters, phase_counters : Out
        The engine's and the phases' cycle counters, cleared by `counters_clear`.
    dropped : Out(32)
        Pairs dropped by the capacity limit.
    expert_index, expert_tokens
        The per-expert count window: kept pairs of expert `expert_index`.

    Raises
    ------
    ConfigError
        If `cfg` is not an `AccelConfig` or the top cannot be built for it.
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
                "rd_cmd": Out(stream.Signature(dma_command_layout(cfg.addr_bits))),
                "rd_data": In(stream.Signature(read_beat_layout(cfg))),
                "rd_done": In(1),
                "wr_cmd": Out(stream.Signature(dma_command_layout(cfg.addr_bits))),
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
        p = build_datapath(self, m)
        self._fsm_signals(m, p)
        with m.FSM(name="layer"):
            self._load_and_route_states(m, p)
            self._expert_states(m, p)
            self._combine_states(m, p)
        return m

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
        p.f_cur = Signal.like(desc.f)
        p.gated = Signal()
        p.nt_f = Signal(range(p.engine.param_rows + 1))
        m.d.comb += p.nt_f.eq(ceil_div_pow2(p.f_cur, cfg.cols))
        p.left = Signal.like(p.m0)
        m.d.comb += p.left.eq(p.rows_e - p.m0)
        # routed and shared expert commands' weight format (`format_layout`: sparse, int4),
        # in builds with a compressed weight path (the others have no `desc.weights`)
        p.expert_fmt = 0
        if cfg.sparse_2_4 or cfg.int4_weights:
            p.expert_fmt = Cat(
                (desc.weights & WEIGHTS_SPARSE) != 0, (desc.weights & WEIGHTS_INT4) != 0
            )
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
                    ReadSel.PARAMS,
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
                        ReadSel.WORDS,
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
            read(desc.tokens_addr, desc.t * p.ys, ReadSel.X, desc.t * p.x_words)
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
            m.d.sync += p.g_pad.eq(0)
            m.d.comb += [p.logits.start.eq(1), p.recorder.start.eq(1), p.tables.start.eq(1)]
            rlen = ((tk * layout.ROUTING_RECORD_BYTES + (B - 1)) >> exact_log2(B)) << exact_log2(B)
            p.write(desc.routing_addr, rlen, WriteSel.ROUTING, rlen >> exact_log2(B))
            m.next = "GATE_RUN"
        with m.State("GATE_RUN"):
            with m.If(p.recorder.slot == tk):
                m.d.sync += [p.g_pad.eq(1), p.phase.eq(Phase.DISPATCH)]
                m.next = "DISPATCH"
        with m.State("DISPATCH"):
            with m.If(p.wch.idle[WriteSel.ROUTING.value]):
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
                ReadSel.WORDS,
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
                ReadSel.PARAMS,
                (pc_words + (PW - 1)) >> exact_log2(PW),
            )
            m.next = "PARAMS_WAIT"
        with m.State("PARAMS_WAIT"):
            with m.If(self.rd_done):
                m.d.comb += p.lut.clear.eq(1)
                nlut = 2**cfg.act_bits // cfg.lut_entries_per_beat
                read(desc.lut_addr + e_cur * lut_stride, lut_stride, ReadSel.LUT, nlut)
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
                fmt=p.expert_fmt,
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
                    fmt=p.expert_fmt,
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
                        WriteSel.YBUF,
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
        """The combine phase (`rtl.combine_phase`) with the outputs' write to memory, then
        done; FAIL holds `error`."""
        desc, ys, phase = p.desc, p.ys, p.combine
        B, C = self.cfg.mem_bytes_per_cycle, self.cfg.cols
        with m.State("COMBINE"):
            with m.If(~p.wb_busy):
                m.d.sync += p.phase.eq(Phase.COMBINE)
                m.d.comb += phase.start.eq(1)
                p.write(
                    desc.output_addr,
                    desc.t * ys,
                    WriteSel.COMBINE,
                    (desc.t * ys) >> exact_log2(B),
                )
                m.next = "C_RUN"
        with m.State("C_RUN"):
            with m.If(phase.read):
                p.read(phase.read_addr, ys, ReadSel.TERM, ys >> exact_log2(C))
            with m.If(phase.done):
                m.next = "C_DRAIN"
        with m.State("C_DRAIN"):
            with m.If(~p.wb_busy):
                m.d.sync += [p.busy.eq(0), p.phase.eq(Phase.NONE), self.done.eq(1)]
                m.next = "IDLE"
        with m.State("FAIL"):
            m.d.comb += self.error.eq(1)
