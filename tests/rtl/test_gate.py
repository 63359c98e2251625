"""Gate-unit RTL vs `pymodel.gate.gate`, bit for bit, on Verilator through cocotb.

Every routing mode: softmax top-k with and without renormalisation (Mixtral,
Qwen3-MoE, OLMoE), Qwen2-MoE's gated shared expert, DeepSeek-V3's sigmoid +
correction bias + group-limited top-k + routed scaling with an ungated shared
expert, and Switch's top-1 (its capacity drops are the dispatcher's: `test_dispatch.py`
feeds it the golden gate's Switch routing with a capacity, and a small
Amaranth-simulator test here runs the gate RTL into the dispatcher RTL).
Directed corner cases: exact ties, every token to one expert, k = E, T = 1,
saturating logits (a zero renormalisation sum), extreme biases; random cases
with source gaps and output backpressure. Three generated configurations: a
small one, one with odd fixed-point formats and non-power-of-two sizes, and
the largest E and k `AccelConfig` allows (E = 256, k = 8). Cases without
backpressure also check `gate_cycles`, the formula `docs/units.md` documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module
from gate_configs import CONFIGS
from units_table import documented_rows

from contract.regs import SharedExpert
from contract.timing import gate_cycles
from pymodel.config import AccelConfig, MoESpec
from pymodel.dispatch import dispatch
from pymodel.families import family_spec
from pymodel.gate import gate, quantize_scaling
from rtl.dispatch import Dispatcher
from rtl.gate import Gate
from sim.amaranth_sim import run_simulation, stream_put
from sim.build import build_component, run_cocotb

HERE = Path(__file__).parent


def make_case(
    name: str,
    cfg: AccelConfig,
    spec: MoESpec,
    logits: np.ndarray,
    rng: np.random.Generator,
    *,
    bias: np.ndarray | None = None,
    idle_prob: float = 0.0,
    ready_prob: float = 1.0,
) -> dict:
    """One gate run: golden outputs, the stream beats, and the expected cycle count."""
    t, e = logits.shape
    lo, hi = -(2 ** (cfg.logit_bits - 1)), 2 ** (cfg.logit_bits - 1)
    shared_logit = rng.integers(lo, hi, size=t) if spec.shared_gate else None
    if spec.correction_bias and bias is None:
        bias = rng.integers(-(2 ** (cfg.gate_frac_bits - 2)), 2 ** (cfg.gate_frac_bits - 2), e)
    gold = gate(spec, logits, cfg, bias_q=bias, shared_logit=shared_logit)
    mode = SharedExpert.of(spec)
    beats = []
    for tok in range(t):
        row = list(logits[tok]) + ([shared_logit[tok]] if spec.shared_gate else [])
        beats += [
            {"logit": int(v), "last": int(tok == t - 1 and i == len(row) - 1)}
            for i, v in enumerate(row)
        ]
    k = spec.top_k
    pairs = [
        {
            "token": tok,
            "slot": j,
            "expert": int(gold.expert_ids[tok, j]),
            "weight": int(gold.gate_weights[tok, j]),
            "last": int(tok == t - 1 and j == k - 1),
        }
        for tok in range(t)
        for j in range(k)
    ]
    shared = (
        []
        if gold.shared_weight is None
        else [{"weight": int(w), "last": int(i == t - 1)} for i, w in enumerate(gold.shared_weight)]
    )
    sigmoid = spec.scoring == "sigmoid"
    cycles = gate_cycles(
        cfg,
        n_tokens=t,
        n_experts=e,
        top_k=k,
        sigmoid=sigmoid,
        renormalize=spec.renormalize,
        grouped=spec.n_group > 1,
        shared=mode,
    )
    return {
        "name": name,
        "config": {
            "n_experts": e,
            "top_k": k,
            "sigmoid": int(sigmoid),
            "renormalize": int(spec.renormalize),
            "group_size": e // spec.n_group,
            "topk_group": spec.topk_group,
            "bias_en": int(spec.correction_bias),
            "scale": quantize_scaling(spec.routed_scaling_factor),
            "shared_mode": mode.value,
        },
        "bias": [] if bias is None else [int(b) for b in bias],
        "beats": beats,
        "pairs": pairs,
        "shared": shared,
        "idle_prob": idle_prob,
        "ready_prob": ready_prob,
        "expect_cycles": cycles if idle_prob == 0.0 and ready_prob == 1.0 else None,
        "expert_ids": gold.expert_ids.tolist(),
    }


def _spec(e: int, k: int, **kw) -> MoESpec:
    return MoESpec(d_model=8, d_ff=8, n_experts=e, top_k=k, **kw)


def _deepseek(cfg: AccelConfig, e: int, k: int) -> MoESpec:
    n_group = max(g for g in range(1, min(cfg.max_groups, e // 2) + 1) if e % g == 0)
    per = e // n_group
    topk_group = max(1, -(-k // per), n_group // 2)
    return family_spec("deepseek_v3", n_experts=e, top_k=k, n_group=n_group, topk_group=topk_group)


def all_cases(cfg: AccelConfig, tag: str) -> list[dict]:
    rng = np.random.default_rng(len(tag))
    lo, hi = -(2 ** (cfg.logit_bits - 1)), 2 ** (cfg.logit_bits - 1)
    emax, kmax = cfg.max_experts, cfg.max_top_k
    big = tag == "largest"
    t_small = 2 if big else 6
    # A spread of ~±8.0 in the logit's real value (as a trained router gives).
    spread = min(hi - 1, 8 << cfg.logit_frac_bits)

    def logits(t: int, e: int) -> np.ndarray:
        return rng.integers(-spread, spread + 1, size=(t, e))

    e_fam = min(emax, 8)
    k_fam = min(kmax, 2)
    cases = [
        make_case(
            f"family_{name}",
            cfg,
            family_spec(name, n_experts=e_fam, top_k=1 if name == "switch" else k_fam),
            logits(t_small, e_fam),
            rng,
        )
        for name in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "switch")
    ]
    cases.append(
        make_case(
            "family_deepseek_v3",
            cfg,
            _deepseek(cfg, e_fam, k_fam),
            logits(t_small, e_fam),
            rng,
        )
    )
    ties = np.tile(rng.integers(-2, 3, size=(1, emax)), (3, 1))
    ties[1] = 5  # every logit equal
    one_hot = np.full((t_small, emax), -spread)
    one_hot[:, emax // 3] = spread
    cases += [
        make_case("ties_softmax", cfg, _spec(emax, kmax, renormalize=True), ties, rng),
        make_case(
            "ties_sigmoid",
            cfg,
            _spec(emax, kmax, scoring="sigmoid", correction_bias=True),
            ties,
            rng,
            bias=np.zeros(emax, dtype=np.int64),
        ),
        make_case("one_expert", cfg, _spec(emax, 1), one_hot, rng),
        make_case("k_eq_E", cfg, _spec(kmax, kmax, renormalize=True), logits(t_small, kmax), rng),
        make_case("T1_switch", cfg, family_spec("switch", n_experts=emax), logits(1, emax), rng),
        make_case(
            "saturating_logits",
            cfg,
            _spec(emax, kmax, shared_d_ff=8, shared_gate=True),
            rng.choice([lo, hi - 1], size=(t_small, emax)),
            rng,
        ),
        make_case(
            "zero_renorm_sum",
            cfg,
            _spec(emax, kmax, scoring="sigmoid", renormalize=True, routed_scaling_factor=15.0),
            np.full((2, emax), lo),
            rng,
        ),
        make_case(
            "extreme_bias_scaling",
            cfg,
            _spec(emax, kmax, scoring="sigmoid", correction_bias=True, routed_scaling_factor=15.0),
            logits(t_small, emax),
            rng,
            bias=rng.choice([-(2**cfg.gate_weight_bits), 2**cfg.gate_weight_bits - 1], size=emax),
        ),
        make_case(
            "largest_deepseek",
            cfg,
            _deepseek(cfg, emax, kmax),
            logits(2 if big else t_small, emax),
            rng,
        ),
    ]
    for i in range(2 if big else 8):
        e = int(rng.integers(2, min(emax, 16) + 1))
        k = int(rng.integers(1, min(kmax, e) + 1))
        t = int(rng.integers(1, 4 if big else 12))
        if i % 2:
            spec = _spec(e, k, renormalize=bool(i % 4 == 1), shared_d_ff=8, shared_gate=i % 3 == 0)
        else:
            spec = _deepseek(cfg, e - e % 2 if e > 3 else 4, min(k, 2))
            e = spec.n_experts
        cases.append(
            make_case(
                f"random{i}",
                cfg,
                spec,
                logits(t, e),
                rng,
                idle_prob=float(rng.choice([0.0, 0.3])),
                ready_prob=float(rng.choice([1.0, 0.5, 0.2])),
            )
        )
    return cases


def documented_cases(cfg: AccelConfig, tag: str) -> list[dict]:
    """The examples of `docs/units.md` for this configuration, with their documented cycles."""
    rng = np.random.default_rng(99)
    cases = []
    for n, row in enumerate(r for r in documented_rows("gate") if r["config"] == tag):
        e, k, t = int(row["E"]), int(row["k"]), int(row["T"])
        routing = row["routing"]
        spec = (
            _deepseek(cfg, e, k)
            if routing == "deepseek_v3"
            else family_spec(routing, n_experts=e, top_k=k)
        )
        spread = 8 << cfg.logit_frac_bits
        case = make_case(f"doc{n}_{routing}", cfg, spec, rng.integers(-spread, spread, (t, e)), rng)
        case["documented_cycles"] = int(row["busy cycles"])
        cases.append(case)
    return cases


@pytest.mark.parametrize("tag", list(CONFIGS))
def test_gate_bit_exact(tag: str, tmp_path: Path) -> None:
    cfg = CONFIGS[tag]
    cases = all_cases(cfg, tag) + documented_cases(cfg, tag)
    build = build_component(Gate(cfg), name=f"gate_{tag}")
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    run_cocotb(
        build,
        HERE / "cocotb_gate.py",
        test_dir=tmp_path / "sim",
        params={
            "cfg": cfg,
            "cases": tmp_path / "cases.json",
            "measure": tmp_path / "measured.json",
        },
    )
    measured = json.loads((tmp_path / "measured.json").read_text())
    assert [m["name"] for m in measured] == [c["name"] for c in cases]
    for case, got in zip(cases, measured, strict=True):
        if case["expect_cycles"] is not None:
            assert got["busy_cycles"] == case["expect_cycles"], case["name"]
        if "documented_cycles" in case:
            assert got["busy_cycles"] == case["documented_cycles"], f"docs/units.md {case['name']}"


class _GateIntoDispatcher(Elaboratable):
    """The gate's pairs stream feeding the dispatcher, as the top level wires them."""

    def __init__(self, cfg: AccelConfig) -> None:
        self.gate = Gate(cfg)
        self.disp = Dispatcher(cfg)

    def elaborate(self, platform):
        m = Module()
        m.submodules.gate = gate_unit = self.gate
        m.submodules.disp = disp = self.disp
        m.d.comb += [
            disp.pairs.valid.eq(gate_unit.pairs.valid),
            disp.pairs.payload.expert.eq(gate_unit.pairs.payload.expert),
            disp.pairs.payload.last.eq(gate_unit.pairs.payload.last),
            gate_unit.pairs.ready.eq(disp.pairs.ready),
        ]
        return m


def test_switch_gate_into_dispatcher_amaranth_sim() -> None:
    """Switch end to end: gate RTL top-1 into dispatcher RTL with a capacity that overflows."""
    cfg = AccelConfig(max_tokens=12, max_top_k=2, max_experts=4, max_groups=1, m_tile=2)
    spec = family_spec("switch", n_experts=4, capacity=3)
    rng = np.random.default_rng(12)
    logits = rng.integers(-600, 600, size=(12, 4))
    logits[:, 2] += 500  # a popular expert, so its capacity overflows
    gold = dispatch(gate(spec, logits, cfg).expert_ids, 4, cfg.m_tile, spec.capacity)
    assert gold.dropped > 0
    top = _GateIntoDispatcher(cfg)
    g, d = top.gate, top.disp
    rows: list[int] = []

    async def source(ctx):
        for port, value in (
            (g.n_experts, 4),
            (g.top_k, 1),
            (g.group_size, 4),
            (g.topk_group, 1),
            (g.shared_mode, SharedExpert.NONE),
            (d.n_experts, 4),
            (d.capacity, spec.capacity),
            (d.cap_en, 1),
        ):
            ctx.set(port, value)
        flat = logits.ravel()
        for i, v in enumerate(flat):
            await stream_put(ctx, g.logits, {"logit": int(v), "last": i == flat.size - 1})

    async def sink(ctx):
        ctx.set(d.rows.ready, 1)
        ctx.set(d.tiles.ready, 1)
        ctx.set(d.counts.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(d.rows.valid, d.rows.payload):
            if valid:
                rows.append(payload.slot)
                if payload.last:
                    return

    run_simulation(top, [source, sink])
    assert rows == list(gold.sorted_slots)
