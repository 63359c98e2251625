"""Dispatcher RTL vs `pymodel.dispatch`, bit for bit, on Verilator through cocotb.

Three generated configurations: a small one with a power-of-two row tile, an
odd one (non-power-of-two expert count and row tile), and the largest expert
count and top-k `AccelConfig` allows (E = 256, k = 8). Each runs random cases
(random T, k, E, skewed expert choice, capacity on/off, random source gaps and
output backpressure) and the directed corner cases of issue #4 back to back
in one simulation; cases without backpressure also check the cycle formula
that `docs/units.md` documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from units_table import documented_rows

from contract.timing import dispatch_cycles
from pymodel.config import AccelConfig
from pymodel.dispatch import dispatch
from pymodel.families import family_spec
from pymodel.gate import gate
from rtl.dispatch import Dispatcher
from sim.amaranth_sim import run_simulation, stream_put
from sim.build import build_component, run_cocotb

HERE = Path(__file__).parent

CONFIGS = {
    "small": AccelConfig(max_tokens=64, max_top_k=4, max_experts=16, m_tile=4),
    "odd": AccelConfig(max_tokens=24, max_top_k=3, max_experts=12, m_tile=3, max_groups=4),
    "largest": AccelConfig(max_tokens=64, max_top_k=8, max_experts=256, m_tile=8),
}


def _case(name, ids, n_experts, capacity=None, idle_prob=0.0, ready_prob=1.0) -> dict:
    ids = np.asarray(ids, dtype=np.int64)
    return {
        "name": name,
        "ids": ids.tolist(),
        "n_experts": int(n_experts),
        "capacity": capacity,
        "idle_prob": idle_prob,
        "ready_prob": ready_prob,
    }


def _gate_like(rng: np.random.Generator, t: int, k: int, e: int, skew: float) -> np.ndarray:
    """k distinct experts per token, drawn with a Zipf-like skew (so some experts stay empty)."""
    p = 1.0 / np.arange(1, e + 1) ** skew
    p = rng.permutation(p / p.sum())
    return np.stack([rng.choice(e, size=k, replace=False, p=p) for _ in range(t)])


def random_cases(cfg: AccelConfig, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n):
        k = int(rng.integers(1, cfg.max_top_k + 1))
        e = int(rng.integers(k, min(cfg.max_experts, 16) + 1))
        t = int(rng.integers(1, cfg.max_tokens + 1))
        if i % 3 == 2:  # repeated ids inside a token are legal input too
            ids = rng.integers(0, e, size=(t, k))
        else:
            ids = _gate_like(rng, t, k, e, skew=float(rng.choice([0.0, 1.0, 2.5])))
        capacity = None if i % 2 else int(rng.integers(1, max(2, t * k // e + 2)))
        cases.append(
            _case(
                f"random{i}",
                ids,
                e,
                capacity,
                idle_prob=float(rng.choice([0.0, 0.3])),
                ready_prob=float(rng.choice([1.0, 0.6, 0.25])),
            )
        )
    return cases


def directed_cases(cfg: AccelConfig) -> list[dict]:
    """Issue #4's corner cases, sized to `cfg`; no backpressure, so cycles are checked too."""
    k = cfg.max_top_k
    e = cfg.max_experts
    t = cfg.max_tokens
    one_expert = np.full((t, 1), e - 1)
    ties = np.tile(np.arange(k), (t, 1))  # every token picks the same k experts
    empty = np.stack([np.array([0, e - 1] * k)[:k] if k > 1 else [e // 2] for _ in range(t)])
    k_eq_e = np.stack([np.random.default_rng(t).permutation(k) for _ in range(t)])
    return [
        _case("T1", [list(range(k))], e),
        _case("one_expert", one_expert, e),
        _case("all_same_k", ties, e),
        _case("empty_experts", empty if k > 1 else np.full((t, 1), e // 2), e),
        _case("k_eq_E", k_eq_e, k),
        _case("capacity_overflow", one_expert, e, capacity=3),
        _case("capacity_1_of_k", ties, e, capacity=1),
        _case("last_expert_only", np.full((1, 1), e - 1), e),
        _case("full_T", _gate_like(np.random.default_rng(5), t, k, e, 1.0), e),
        _case("switch_capacity", _switch_routing(cfg), min(e, 8), capacity=max(1, t // 8)),
    ]


def _switch_routing(cfg: AccelConfig) -> np.ndarray:
    """Expert ids of Switch routing (golden gate, top-1) with a popular expert, so that a
    capacity of T/8 overflows."""
    e = min(cfg.max_experts, 8)
    rng = np.random.default_rng(8)
    logits = rng.integers(-2000, 2000, size=(cfg.max_tokens, e))
    logits[:, 1] += 1500
    spec = family_spec("switch", n_experts=e, capacity=max(1, cfg.max_tokens // 8))
    return gate(spec, logits, cfg).expert_ids


def run_cases(tag: str, cfg: AccelConfig, cases: list[dict], tmp_path: Path) -> list[dict]:
    build = build_component(Dispatcher(cfg), name=f"dispatch_{tag}")
    cases_path = tmp_path / "cases.json"
    measure_path = tmp_path / "measured.json"
    cases_path.write_text(json.dumps(cases))
    run_cocotb(
        build,
        HERE / "cocotb_dispatch.py",
        test_dir=tmp_path / "sim",
        params={"cfg": cfg, "cases": cases_path, "measure": measure_path},
    )
    return json.loads(measure_path.read_text())


def expected_cycles(cfg: AccelConfig, case: dict) -> int:
    ids = np.asarray(case["ids"], dtype=np.int64)
    gold = dispatch(ids, case["n_experts"], cfg.m_tile, case["capacity"])
    nonempty = np.flatnonzero(gold.counts)
    return dispatch_cycles(
        n_pairs=ids.size,
        n_experts=case["n_experts"],
        last_expert=int(nonempty[-1]) if nonempty.size else -1,
        n_rows=gold.sorted_slots.size,
    )


def documented_cases(tag: str) -> list[dict]:
    """The examples of `docs/units.md` for this configuration (round-robin routing:
    pair (t, j) goes to expert (t·k + j) mod E), with their documented cycles."""
    cases = []
    for n, row in enumerate(r for r in documented_rows("dispatch") if r["config"] == tag):
        e, k, t = int(row["E"]), int(row["k"]), int(row["T"])
        ids = (np.arange(t * k) % e).reshape(t, k)
        case = _case(f"doc{n}", ids, e)
        case["documented_cycles"] = int(row["busy cycles"])
        cases.append(case)
    return cases


@pytest.mark.parametrize("tag", list(CONFIGS))
def test_dispatch_bit_exact(tag: str, tmp_path: Path) -> None:
    cfg = CONFIGS[tag]
    n_random = 4 if tag == "largest" else 10
    cases = directed_cases(cfg) + random_cases(cfg, n_random, seed=len(tag)) + documented_cases(tag)
    measured = run_cases(tag, cfg, cases, tmp_path)
    assert [m["name"] for m in measured] == [c["name"] for c in cases]
    for case, got in zip(cases, measured, strict=True):
        if case["idle_prob"] == 0.0 and case["ready_prob"] == 1.0:
            assert got["busy_cycles"] == expected_cycles(cfg, case), case["name"]
        if "documented_cycles" in case:
            assert got["busy_cycles"] == case["documented_cycles"], f"docs/units.md {case['name']}"


def _amaranth_dispatch(cfg: AccelConfig, ids: np.ndarray, n_experts: int, capacity: int | None):
    """Run one dispatch on Amaranth's simulator; return (counts, rows, tiles, status)."""
    dut = Dispatcher(cfg)
    flat = ids.reshape(-1)
    got: dict[str, list] = {"counts": [], "rows": [], "tiles": []}
    status: dict[str, int] = {}

    async def source(ctx):
        ctx.set(dut.n_experts, n_experts)
        ctx.set(dut.cap_en, capacity is not None)
        ctx.set(dut.capacity, capacity or 0)
        for i, e in enumerate(flat):
            await stream_put(ctx, dut.pairs, {"expert": int(e), "last": i == flat.size - 1})

    def sink(name):
        async def bench(ctx):
            port = getattr(dut, name)
            ctx.set(port.ready, 1)
            async for _, _, valid, payload in ctx.tick().sample(port.valid, port.payload):
                if valid:
                    got[name].append(payload)
                    if payload.last:
                        status.update(dropped=ctx.get(dut.dropped), bad_id=ctx.get(dut.bad_id))
                        return

        return bench

    run_simulation(dut, [source, sink("counts"), sink("rows"), sink("tiles")])
    counts = [beat.count for beat in got["counts"]]
    rows = [(beat.slot, beat.expert) for beat in got["rows"]]
    tiles = [beat.expert for beat in got["tiles"]]
    return counts, rows, tiles, status


@pytest.mark.parametrize("capacity", [None, 2])
def test_histogram_prefix_sum_padding_amaranth_sim(capacity: int | None) -> None:
    """Histogram, capped counts, exclusive prefix sum and row-tile padding on a tiny config."""
    cfg = AccelConfig(max_tokens=6, max_top_k=2, max_experts=5, m_tile=3, max_groups=1)
    rng = np.random.default_rng(0 if capacity is None else capacity)
    for t in (1, 3, 6):
        ids = np.stack([rng.permutation(5)[:2] for _ in range(t)])
        gold = dispatch(ids, 5, cfg.m_tile, capacity)
        counts, rows, tiles, status = _amaranth_dispatch(cfg, ids, 5, capacity)
        assert status == {"dropped": gold.dropped, "bad_id": 0}
        assert counts == list(gold.counts)
        assert [slot for slot, _ in rows] == list(gold.sorted_slots)
        assert tiles == list(gold.tile_experts)
        # The exclusive prefix sum of the padded groups: where each expert's rows start.
        starts = {e: i for i, (_, e) in reversed(list(enumerate(rows)))}
        for e in np.flatnonzero(gold.counts):
            assert starts[int(e)] == gold.offsets[e]


def test_out_of_range_expert_is_dropped_and_flagged() -> None:
    """An expert id >= n_experts (a producer bug) is dropped, counted and flagged, not sorted."""
    cfg = AccelConfig(max_tokens=4, max_top_k=2, max_experts=8, m_tile=2, max_groups=1)
    ids = np.array([[0, 6], [2, 0], [1, 2]])
    counts, rows, _, status = _amaranth_dispatch(cfg, ids, 4, None)
    assert counts == [2, 1, 2, 0]
    assert [slot for slot, _ in rows] == [0, 3, 4, 6, 2, 5]  # pad id = T·k = 6
    assert status == {"dropped": 1, "bad_id": 1}
