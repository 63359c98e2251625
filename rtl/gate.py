"""Gate unit: router logits → k (expert, weight) pairs per token, bit-exact with `pymodel.gate`.

Every routing mode of the golden `gate()`:

- softmax scoring, top-k on the integer logits, weights `div_round(e_i, Σ_E e)`
  or, renormalised, `div_round(e_i, Σ_topk e)` with `e = exp_fx(l - max l)`
  (Mixtral, Qwen2/3-MoE, OLMoE; Switch is top-1, its capacity is the
  dispatcher's);
- sigmoid scoring `s = sigmoid_fx(l)`, selection on `s + bias` inside the
  `topk_group` best of the expert groups (group score: the sum of a group's
  two best), weights `s` or `div_round(s_i, Σ_topk s)` (0 when the sum is 0),
  times the routed scaling factor (DeepSeek-V3);
- the shared expert's weight: `sigmoid_fx` of one extra logit per token
  (Qwen2-MoE), exactly `2^gate_frac_bits` (ungated), or none.

Ties always go to the lower index (`TopK`). The logits of one token are
buffered in a `max_experts`-entry memory and the token is processed in
passes over it, one logit per cycle, through one shared `ExpFx` pipeline and
one `PipelinedDivider` (one exact division per cycle, `gate_frac_bits + 2`
cycles deep); a token's outputs leave before the next token's logits are
accepted. `gate_cycles` gives the exact cycle count, `docs/units.md`
tabulates it.

Output pairs leave in token order, each token's k pairs in rank order (best
first), which is the order `pymodel.gate` lists `expert_ids` in and the order
the dispatcher takes them in.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from contract.descriptor import ROUTED_SCALING_BITS
from contract.regs import SharedExpert
from pymodel.config import AccelConfig, ConfigError
from pymodel.gate import RSF_FRAC_BITS

from .checks import sent_stream_invariants
from .divider import PipelinedDivider
from .exp_fx import ExpFx
from .topk import TopK

__all__ = ["Gate", "GateShapes"]


def _bits(n: int) -> int:
    """Width of an index 0 … n-1 (at least 1)."""
    return max(1, (n - 1).bit_length())


class GateShapes:
    """Widths and stream layouts of a gate unit generated for one `AccelConfig`."""

    def __init__(self, cfg: AccelConfig) -> None:
        if not isinstance(cfg, AccelConfig):
            raise ConfigError(f"GateShapes needs an AccelConfig, got {type(cfg).__name__}")
        g, gwb = cfg.gate_frac_bits, cfg.gate_weight_bits
        self.expert = unsigned(_bits(cfg.max_experts))
        self.n_experts = unsigned(cfg.max_experts.bit_length())
        self.top_k = unsigned(cfg.max_top_k.bit_length())
        self.slot = unsigned(_bits(cfg.max_top_k))
        self.group = unsigned(_bits(cfg.max_groups))
        self.n_groups = unsigned(cfg.max_groups.bit_length())
        self.token = unsigned(_bits(cfg.max_tokens))
        self.logit = signed(cfg.logit_bits)
        self.score = unsigned(g + 1)  # exp_fx / sigmoid_fx values, at most 2^g
        self.bias = signed(gwb + 1)
        self.select = signed(max(cfg.logit_bits, gwb + 2))  # logit, or score + bias
        self.group_score = signed(self.select.width + 1)
        self.weight = unsigned(gwb)
        self.scale = unsigned(ROUTED_SCALING_BITS)  # routed scaling factor < 16
        self.sum = unsigned(g + 1 + cfg.max_experts.bit_length())  # Σ of scores
        self.logit_beat = data.StructLayout({"logit": self.logit, "last": 1})
        self.pair = data.StructLayout(
            {
                "token": self.token,
                "slot": self.slot,
                "expert": self.expert,
                "weight": self.weight,
                "last": 1,
            }
        )
        self.shared_beat = data.StructLayout({"weight": self.weight, "last": 1})


class Gate(wiring.Component):
    """The gate unit (see the module docstring for the routing modes).

    Parameters
    ----------
    cfg : AccelConfig
        `max_experts`, `max_top_k`, `max_groups`, `max_tokens`, the logit and
        gate-weight fixed-point formats.

    Ports
    -----
    logits : In(stream)
        Per token `n_experts` logits in expert order, then the shared-gate
        logit when `shared_mode` is GATED; `last` on the final beat of the run.
    n_experts, top_k : In
        Experts scored and pairs emitted per token.
    sigmoid : In(1)
        0: softmax scoring; 1: sigmoid scoring with routed scaling.
    renormalize : In(1)
        Renormalise the k weights over the selected experts.
    group_size, topk_group : In
        Experts per group (`n_experts` for no grouping; otherwise sigmoid
        scoring only and ≥ 2) and groups kept.
    bias_en : In(1)
        Add the correction bias (sigmoid scoring).
    scale : In
        Routed scaling factor, unsigned with `RSF_FRAC_BITS` fraction bits.
    shared_mode : In(SharedExpert)
    bias_we, bias_addr, bias_data : In
        Write port of the correction-bias memory (signed Q.gate_frac_bits).
    pairs : Out(stream)
        {token, slot, expert, weight, last}: k beats per token, best first.
    shared : Out(stream)
        {weight, last}: one beat per token unless `shared_mode` is NONE.
    busy : Out(1)
        From the first logit until the last output beat of the run is accepted.

    All configuration inputs must be held stable while `busy`.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        self.shapes = s = GateShapes(cfg)
        super().__init__(
            {
                "logits": In(stream.Signature(s.logit_beat)),
                "n_experts": In(s.n_experts),
                "top_k": In(s.top_k),
                "sigmoid": In(1),
                "renormalize": In(1),
                "group_size": In(s.n_experts),
                "topk_group": In(s.n_groups),
                "bias_en": In(1),
                "scale": In(s.scale),
                "shared_mode": In(SharedExpert),
                "bias_we": In(1),
                "bias_addr": In(s.expert),
                "bias_data": In(s.bias),
                "pairs": Out(stream.Signature(s.pair)),
                "shared": Out(stream.Signature(s.shared_beat)),
                "busy": Out(1),
            }
        )

    def elaborate(self, platform):
        cfg, s = self.cfg, self.shapes
        g = cfg.gate_frac_bits
        one = 1 << g
        m = Module()
        sent_stream_invariants(m, self)
        n_experts = cfg.max_experts

        m.submodules.logit_mem = logit_mem = Memory(shape=s.logit, depth=n_experts, init=[])
        m.submodules.score_mem = score_mem = Memory(shape=s.score, depth=n_experts, init=[])
        m.submodules.bias_mem = bias_mem = Memory(shape=s.bias, depth=n_experts, init=[])
        lw, lr = logit_mem.write_port(), logit_mem.read_port()
        sw, sr = score_mem.write_port(), score_mem.read_port()
        bw, br = bias_mem.write_port(), bias_mem.read_port()
        m.d.comb += [
            lr.en.eq(0),
            sr.en.eq(0),
            br.en.eq(0),
            bw.en.eq(self.bias_we),
            bw.addr.eq(self.bias_addr),
            bw.data.eq(self.bias_data),
        ]

        m.submodules.exp = exp = ExpFx(cfg)
        tag = data.StructLayout({"index": s.n_experts, "neg": 1})
        m.submodules.div = div = PipelinedDivider(2 * g + 2, s.sum.width, g + 1, tag)
        m.submodules.topk = topk = TopK(cfg.max_top_k, s.select, s.expert.width)
        m.submodules.top2 = top2 = TopK(2, s.select, s.expert.width)
        m.submodules.topg = topg = TopK(cfg.max_groups, s.group_score, s.group.width)

        gated = self.shared_mode == SharedExpert.GATED
        grouped = self.group_size < self.n_experts

        # ---- per-token state ----
        li = Signal(s.n_experts)  # logit beat index inside the token
        mx = Signal(s.logit)  # running maximum logit (softmax)
        shared_logit = Signal(s.logit)
        final = Signal()  # this token is the run's last
        token = Signal(s.token)
        total = Signal(s.sum)  # Σ_E e (softmax)
        den = Signal(s.sum)  # the weights' divisor
        group_mask = Signal(cfg.max_groups)
        shared_w = Signal(s.weight)

        # ---- pass pipelines ----
        ia = Signal(s.n_experts)  # next index to read
        v1 = Signal()  # memory read data valid for index i1
        i1 = Signal(s.n_experts)
        gpos = Signal(s.n_experts)  # position inside the group of index ia
        gidx = Signal(s.n_groups)  # group of index ia
        gpos1 = Signal(s.n_experts)
        gidx1 = Signal(s.n_groups)
        gend2 = Signal()  # the group gidx2 has all its candidates in top2
        gidx2 = Signal(s.n_groups)
        done_cnt = Signal(s.n_experts)  # results written back in this pass

        # Index and sign travel beside the ExpFx pipeline (no stall: always shift).
        x_tag = Signal(s.n_experts)
        x_neg = Signal()
        x_tag1, x_tag2 = Signal(s.n_experts), Signal(s.n_experts)
        x_neg1, x_neg2 = Signal(), Signal()
        m.d.sync += [x_tag1.eq(x_tag), x_tag2.eq(x_tag1), x_neg1.eq(x_neg), x_neg2.eq(x_neg1)]

        def sigmoid_front(valid, logit, index):
            """Start sigmoid_fx(logit): exp_fx(-|logit|) now, its division when e arrives."""
            mag = Mux(logit[-1], -logit, logit)
            m.d.comb += [
                exp.z.eq(-mag),
                exp.z_valid.eq(valid),
                x_tag.eq(index),
                x_neg.eq(logit[-1]),
            ]
            den_s = one + exp.e
            m.d.comb += [
                div.i_valid.eq(exp.e_valid),
                div.i_num.eq((one << g) + (den_s >> 1)),
                div.i_den.eq(den_s),
                div.i_tag.index.eq(x_tag2),
                div.i_tag.neg.eq(x_neg2),
            ]

        sig_out = Mux(div.o_tag.neg, one - div.o_quotient, div.o_quotient)

        m.d.comb += div.en.eq(1)  # only the weights pass stalls the divider

        # ---- output registers ----
        with m.If(self.pairs.ready):
            m.d.sync += self.pairs.valid.eq(0)
        with m.If(self.shared.ready):
            m.d.sync += self.shared.valid.eq(0)

        sel = Signal(s.select)
        m.d.comb += sel.eq(sr.data + Mux(self.bias_en, br.data, 0))

        def ranked_index(rank):
            """The expert index of entry `rank` of the top-k list.

            A mux over the k narrow index fields: indexing the whole entries array
            with a variable would shift all its bits (a multi-word shift that
            Verilator evaluates every cycle).
            """
            picked = Signal(s.expert)
            with m.Switch(rank):
                for j in range(cfg.max_top_k):
                    with m.Case(j):
                        m.d.comb += picked.eq(topk.entries[j].index)
            return picked

        def start_pass():
            return [ia.eq(0), v1.eq(0), gpos.eq(0), gidx.eq(0), gend2.eq(0), done_cnt.eq(0)]

        def issue(mem_ports, count):
            """Read index `ia` (< count) this cycle; its data is valid next cycle (v1, i1)."""
            more = ia < count
            for port in mem_ports:
                m.d.comb += [port.en.eq(more), port.addr.eq(ia)]
            last_in_group = gpos == self.group_size - 1
            m.d.sync += [
                v1.eq(more),
                i1.eq(ia),
                gpos1.eq(gpos),
                gidx1.eq(gidx),
                ia.eq(ia + more),
                gpos.eq(Mux(last_in_group, 0, gpos + 1)),
                gidx.eq(gidx + last_in_group),
            ]
            return more

        def after_weights():
            """Where a token goes once its k pairs are out."""
            with m.If(self.shared_mode == SharedExpert.GATED):
                m.next = "SHARED_SIG"
            with m.Elif(self.shared_mode == SharedExpert.UNGATED):
                m.d.sync += shared_w.eq(one)
                m.next = "SHARED_OUT"
            with m.Else():
                m.next = "NEXT"

        with m.FSM(name="phase"):
            with m.State("INGEST"):
                m.d.comb += self.logits.ready.eq(1)
                with m.If(self.logits.valid):
                    logit = self.logits.payload.logit
                    is_expert = li < self.n_experts
                    m.d.sync += self.busy.eq(1)
                    with m.If(is_expert):
                        m.d.comb += [lw.en.eq(1), lw.addr.eq(li), lw.data.eq(logit)]
                        with m.If((li == 0) | (logit > mx)):
                            m.d.sync += mx.eq(logit)
                    with m.Else():
                        m.d.sync += shared_logit.eq(logit)
                    with m.If(li == self.n_experts - 1 + gated):
                        m.d.sync += [li.eq(0), final.eq(self.logits.payload.last), total.eq(0)]
                        m.d.sync += start_pass()
                        with m.If(self.sigmoid):
                            m.next = "SIGMOID"
                        with m.Else():
                            m.next = "EXP"
                    with m.Else():
                        m.d.sync += li.eq(li + 1)

            with m.State("EXP"):
                # Softmax: e_i = exp_fx(l_i - max) into the score memory, Σ e, and
                # top-k on the logits, all in one pass.
                m.d.comb += topk.clear.eq(ia == 0)
                issue([lr], self.n_experts)
                with m.If(v1):
                    m.d.comb += [
                        exp.z.eq(lr.data - mx),
                        exp.z_valid.eq(1),
                        x_tag.eq(i1),
                        topk.cand.valid.eq(1),
                        topk.cand.payload.value.eq(lr.data),
                        topk.cand.payload.index.eq(i1),
                    ]
                with m.If(exp.e_valid):
                    m.d.comb += [sw.en.eq(1), sw.addr.eq(x_tag2), sw.data.eq(exp.e)]
                    m.d.sync += [total.eq(total + exp.e), done_cnt.eq(done_cnt + 1)]
                    with m.If(done_cnt == self.n_experts - 1):
                        m.d.sync += den.eq(Mux(self.renormalize, 0, total + exp.e))
                        m.d.sync += start_pass()
                        with m.If(self.renormalize):
                            m.next = "WSUM"
                        with m.Else():
                            m.next = "WEIGHTS"

            with m.State("SIGMOID"):
                # s_i = sigmoid_fx(l_i) into the score memory, one expert per cycle
                # through ExpFx and the pipelined divider.
                issue([lr], self.n_experts)
                sigmoid_front(v1, lr.data, i1)
                with m.If(div.o_valid):
                    m.d.comb += [sw.en.eq(1), sw.addr.eq(div.o_tag.index), sw.data.eq(sig_out)]
                    m.d.sync += done_cnt.eq(done_cnt + 1)
                    with m.If(done_cnt == self.n_experts - 1):
                        m.d.sync += start_pass()
                        with m.If(grouped):
                            m.next = "GROUPS"
                        with m.Else():
                            m.d.sync += group_mask.eq(-1)
                            m.next = "SELECT"

            with m.State("GROUPS"):
                # Group score = sum of the group's two best (score + bias); keep the
                # topk_group best groups.
                more = issue([sr, br], self.n_experts)
                with m.If(v1):
                    m.d.comb += [
                        top2.clear.eq(gpos1 == 0),
                        top2.cand.valid.eq(1),
                        top2.cand.payload.value.eq(sel),
                        top2.cand.payload.index.eq(i1),
                    ]
                m.d.sync += [gend2.eq(v1 & (gpos1 == self.group_size - 1)), gidx2.eq(gidx1)]
                with m.If(gend2):
                    m.d.comb += [
                        topg.clear.eq(gidx2 == 0),
                        topg.cand.valid.eq(1),
                        topg.cand.payload.value.eq(top2.entries[0].value + top2.entries[1].value),
                        topg.cand.payload.index.eq(gidx2),
                    ]
                with m.If(~more & ~v1 & gend2):
                    m.next = "GROUP_MASK"

            with m.State("GROUP_MASK"):
                for grp in range(cfg.max_groups):
                    hits = [
                        (j < self.topk_group)
                        & topg.entries[j].valid
                        & (topg.entries[j].index == grp)
                        for j in range(cfg.max_groups)
                    ]
                    m.d.sync += group_mask[grp].eq(Cat(*hits).any())
                m.d.sync += start_pass()
                m.next = "SELECT"

            with m.State("SELECT"):
                # Sigmoid: top-k of score + bias over the experts of the kept groups.
                m.d.comb += topk.clear.eq(ia == 0)
                more = issue([sr, br], self.n_experts)
                with m.If(v1):
                    m.d.comb += [
                        topk.cand.valid.eq(group_mask.bit_select(gidx1, 1)),
                        topk.cand.payload.value.eq(sel),
                        topk.cand.payload.index.eq(i1),
                    ]
                with m.If(~more & ~v1):
                    m.d.sync += den.eq(0)
                    m.d.sync += start_pass()
                    with m.If(self.renormalize):
                        m.next = "WSUM"
                    with m.Else():
                        m.next = "WEIGHTS"

            with m.State("WSUM"):
                # Renormalisation divisor: Σ of the selected experts' scores.
                more = ia < self.top_k
                m.d.comb += [sr.en.eq(more), sr.addr.eq(ranked_index(ia[: s.slot.width]))]
                m.d.sync += [v1.eq(more), ia.eq(ia + more)]
                with m.If(v1):
                    m.d.sync += den.eq(den + sr.data)
                with m.If(~more & ~v1):
                    m.d.sync += start_pass()
                    m.next = "WEIGHTS"

            with m.State("WEIGHTS"):
                # One weight per selected expert, one per cycle through the divider; the
                # whole pipeline stalls while the pairs output register is full. Pairs
                # needing no division pass through it as x / 1 (or 0 / 1 for a zero sum).
                wen = ~self.pairs.valid | self.pairs.ready
                m.d.comb += div.en.eq(wen)
                with m.If(wen):
                    more = ia < self.top_k
                    m.d.comb += [
                        sr.en.eq(more),
                        sr.addr.eq(ranked_index(ia[: s.slot.width])),
                    ]
                    m.d.sync += [v1.eq(more), i1.eq(ia), ia.eq(ia + more)]
                divide = self.renormalize | ~self.sigmoid
                use_div = divide & (den != 0)
                m.d.comb += [
                    div.i_valid.eq(v1),
                    div.i_num.eq(
                        Mux(use_div, (sr.data << g) + (den >> 1), Mux(divide, 0, sr.data))
                    ),
                    div.i_den.eq(Mux(use_div, den, 1)),
                    div.i_tag.index.eq(i1),
                ]
                q = div.o_quotient
                scaled = (q * self.scale + (1 << (RSF_FRAC_BITS - 1))) >> RSF_FRAC_BITS
                weight = Mux(self.sigmoid, scaled, q)
                top = 2**cfg.gate_weight_bits - 1
                slot = div.o_tag.index
                last_pair = slot == self.top_k - 1
                with m.If(wen & div.o_valid):
                    m.d.sync += [
                        self.pairs.valid.eq(1),
                        self.pairs.payload.token.eq(token),
                        self.pairs.payload.slot.eq(slot),
                        self.pairs.payload.expert.eq(ranked_index(slot[: s.slot.width])),
                        self.pairs.payload.weight.eq(Mux(weight > top, top, weight)),
                        self.pairs.payload.last.eq(final & last_pair),
                    ]
                    with m.If(last_pair):
                        after_weights()

            with m.State("SHARED_SIG"):
                # Qwen2-MoE's shared gate: sigmoid_fx of the extra logit.
                sigmoid_front(~done_cnt.any(), shared_logit, 0)
                m.d.sync += done_cnt.eq(1)
                with m.If(div.o_valid):
                    m.d.sync += shared_w.eq(sig_out)
                    m.next = "SHARED_OUT"

            with m.State("SHARED_OUT"):
                with m.If(~self.shared.valid | self.shared.ready):
                    m.d.sync += [
                        self.shared.valid.eq(1),
                        self.shared.payload.weight.eq(shared_w),
                        self.shared.payload.last.eq(final),
                    ]
                    m.next = "NEXT"

            with m.State("NEXT"):
                drained = (~self.pairs.valid | self.pairs.ready) & (
                    ~self.shared.valid | self.shared.ready
                )
                with m.If(~final):
                    m.d.sync += token.eq(token + 1)
                    m.next = "INGEST"
                with m.Elif(drained):
                    m.d.sync += [token.eq(0), self.busy.eq(0)]
                    m.next = "INGEST"

        return m
