# amaranth: UnusedElaboratable=no
"""Combiner RTL vs `pymodel.combine.combine`, bit for bit, on Verilator through cocotb.

Cases are built from real dispatches (`pymodel.dispatch`, capacity drops
included): the term stream is what the expert-output gather sends, one
(token, chunk) at a time — each of the token's k pairs with its gate weight
and `ye` row chunk (weight 0 for a dropped pair), then the shared expert's
term. Shared experts gated (Qwen2-MoE), ungated (DeepSeek-V3, weight
2^gate_frac_bits) and absent; random output requantisation parameters,
saturating extremes, shifts 0 and 63, a partial last chunk, random source
gaps and output backpressure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from units_table import documented_rows

from pymodel.combine import combine, slot_rows
from pymodel.config import AccelConfig
from pymodel.dispatch import dispatch
from rtl.combine import LATENCY, Combiner, combine_cycles
from sim.build import build_component, run_cocotb

HERE = Path(__file__).parent

CONFIGS = {
    # (config, lanes): the default widths with the largest top-k, and a narrow odd one.
    "k8": (AccelConfig(max_top_k=8, max_experts=16), 4),
    "odd": (AccelConfig(max_top_k=3, max_experts=8, gate_weight_bits=18, mult_bits=20), 3),
}


def make_case(
    name: str,
    cfg: AccelConfig,
    lanes: int,
    rng: np.random.Generator,
    *,
    t: int,
    k: int,
    e: int,
    d: int,
    capacity: int | None = None,
    shared: str = "none",
    extreme: bool = False,
    small: bool = False,
    out_mult: int | None = None,
    out_shift: int | None = None,
    ids: np.ndarray | None = None,
    idle_prob: float = 0.0,
    ready_prob: float = 1.0,
) -> dict:
    g = cfg.gate_frac_bits
    if ids is None:
        ids = np.stack([rng.permutation(e)[:k] for _ in range(t)])
    disp = dispatch(ids, e, cfg.m_tile, capacity)
    wmax = 2**cfg.gate_weight_bits - 1
    if extreme:
        weights = np.full((t, k), wmax, dtype=np.int64)
        ye = rng.choice([-128, 127], size=(disp.sorted_slots.size, d))
    elif small:  # small sums, so a small shift leaves them unsaturated with exact halves
        weights = rng.integers(0, 4, size=(t, k))
        ye = rng.integers(-20, 21, size=(disp.sorted_slots.size, d))
    else:
        weights = rng.integers(0, 2**g + 1, size=(t, k))
        ye = rng.integers(-128, 128, size=(disp.sorted_slots.size, d))
    shared_w = shared_y = None
    if shared != "none":
        shared_w = (
            np.full(t, 2**g, dtype=np.int64)
            if shared == "ungated"
            else rng.integers(0, 2**g + 1, size=t)
        )
        shared_y = np.full((t, d), -128) if extreme else rng.integers(-128, 128, size=(t, d))
    if out_mult is None:
        out_mult = int(rng.integers(2 ** (cfg.mult_bits - 1), 2**cfg.mult_bits))
    if out_shift is None:
        out_shift = int(rng.integers(g + cfg.mult_bits - 4, g + cfg.mult_bits + 6))
    gold = combine(weights, disp, ye, out_mult, out_shift, cfg, shared_w, shared_y)
    rows = slot_rows(disp)
    chunks = -(-d // lanes)
    pad = chunks * lanes - d
    ye_p = np.pad(ye, ((0, 0), (0, pad)))
    y_p = np.pad(gold.y, ((0, 0), (0, pad)))
    terms, outputs = [], []
    for tok in range(t):
        for c in range(chunks):
            cols = slice(c * lanes, (c + 1) * lanes)
            beats = []
            for j in range(k):
                if rows[tok, j] >= 0:
                    beats.append((int(weights[tok, j]), ye_p[rows[tok, j], cols]))
                else:  # dropped: weight 0, values are don't-care
                    beats.append((0, rng.integers(-128, 128, size=lanes)))
            if shared_y is not None:
                sy = np.pad(shared_y[tok], (0, pad))[cols]
                beats.append((int(shared_w[tok]), sy))
            for n, (w, v) in enumerate(beats):
                terms.append(
                    {"weight": w, "values": [int(x) for x in v], "last": int(n == len(beats) - 1)}
                )
            outputs.append([int(x) for x in y_p[tok, cols]])
    return {
        "name": name,
        "terms": terms,
        "outputs": outputs,
        "out_mult": out_mult,
        "out_shift": out_shift,
        "idle_prob": idle_prob,
        "ready_prob": ready_prob,
    }


def all_cases(cfg: AccelConfig, lanes: int) -> list[dict]:
    rng = np.random.default_rng(cfg.max_top_k)
    kmax, emax = cfg.max_top_k, cfg.max_experts
    one = np.zeros((6, 1), dtype=np.int64)
    cases = [
        make_case("T1", cfg, lanes, rng, t=1, k=kmax, e=emax, d=lanes),
        make_case("k_eq_E", cfg, lanes, rng, t=5, k=kmax, e=kmax, d=2 * lanes, shared="gated"),
        make_case(
            "all_dropped_but_one",
            cfg,
            lanes,
            rng,
            t=6,
            k=1,
            e=emax,
            d=lanes + 1,
            capacity=1,
            ids=one,
        ),
        make_case(
            "all_dropped_shared",
            cfg,
            lanes,
            rng,
            t=6,
            k=1,
            e=emax,
            d=lanes,
            capacity=1,
            ids=one,
            shared="ungated",
        ),
        make_case(
            "saturate",
            cfg,
            lanes,
            rng,
            t=4,
            k=kmax,
            e=emax,
            d=lanes,
            shared="ungated",
            extreme=True,
        ),
        make_case(
            "shift0",
            cfg,
            lanes,
            rng,
            t=3,
            k=kmax,
            e=emax,
            d=lanes,
            out_mult=1,
            out_shift=0,
        ),
        make_case(
            "round_half_away_ties",
            cfg,
            lanes,
            rng,
            t=8,
            k=kmax,
            e=emax,
            d=2 * lanes,
            small=True,
            out_mult=3,
            out_shift=2,
        ),
        make_case(
            "shift63",
            cfg,
            lanes,
            rng,
            t=3,
            k=kmax,
            e=emax,
            d=lanes,
            extreme=True,
            shared="gated",
            out_mult=2**cfg.mult_bits - 1,
            out_shift=63,
        ),
    ]
    for i in range(8):
        k = int(rng.integers(1, kmax + 1))
        e = int(rng.integers(k, emax + 1))
        t = int(rng.integers(1, 33))
        cases.append(
            make_case(
                f"random{i}",
                cfg,
                lanes,
                rng,
                t=t,
                k=k,
                e=e,
                d=int(rng.integers(1, 3 * lanes)),
                capacity=None if i % 2 else int(rng.integers(1, t + 1)),
                shared=("none", "gated", "ungated")[i % 3],
                idle_prob=float(rng.choice([0.0, 0.3])),
                ready_prob=float(rng.choice([1.0, 0.5, 0.2])),
            )
        )
    return cases


def documented_cases(tag: str, cfg: AccelConfig, lanes: int) -> list[dict]:
    """The examples of `docs/units.md` for this configuration, with their documented cycles."""
    rng = np.random.default_rng(42)
    cases = []
    for n, row in enumerate(r for r in documented_rows("combine") if r["config"] == tag):
        assert int(row["lanes"]) == lanes, "docs/units.md: lanes differ from the test's build"
        k, t, d = int(row["k"]), int(row["T"]), int(row["d"])
        case = make_case(
            f"doc{n}", cfg, lanes, rng, t=t, k=k, e=max(k, 8), d=d, shared=row["shared"]
        )
        case["documented_cycles"] = int(row["cycles"])
        cases.append(case)
    return cases


@pytest.mark.parametrize("tag", list(CONFIGS))
def test_combine_bit_exact(tag: str, tmp_path: Path) -> None:
    cfg, lanes = CONFIGS[tag]
    cases = all_cases(cfg, lanes) + documented_cases(tag, cfg, lanes)
    build = build_component(Combiner(cfg, lanes), name=f"combine_{tag}")
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    run_cocotb(
        build,
        HERE / "cocotb_combine.py",
        test_dir=tmp_path / "sim",
        params={
            "cfg": cfg,
            "lanes": lanes,
            "cases": tmp_path / "cases.json",
            "measure": tmp_path / "measured.json",
        },
    )
    measured = json.loads((tmp_path / "measured.json").read_text())
    assert [m["name"] for m in measured] == [c["name"] for c in cases]
    for case, got in zip(cases, measured, strict=True):
        if case["idle_prob"] == 0.0 and case["ready_prob"] == 1.0:
            assert got["cycles"] == combine_cycles(len(case["terms"])), case["name"]
            assert got["cycles"] - len(case["terms"]) == LATENCY
        if "documented_cycles" in case:
            assert got["cycles"] == case["documented_cycles"], f"docs/units.md {case['name']}"


def test_combiner_rejects_bad_lanes() -> None:
    with pytest.raises(ValueError, match="lanes"):
        Combiner(AccelConfig(), 0)
