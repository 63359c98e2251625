"""`make bench`, part 3: the cycle model (`pymodel.cycles`) against the RTL's own counters.

Draws ≥ 40 layer cases with a seeded RNG (the seed is printed; nothing is
picked by hand) over the array shapes the top admits (4×4, 8×8, 16×16 and
the non-square 4×8, 16×8), buses of 8/16/32 bytes a cycle, T from 1 to 256
(log-uniform), all six families' routing, balanced and skewed tokens and
shared experts; runs each on the Verilator fast backend
(`sw_driver.device.VerilatorDevice`, one cached build per configuration,
cases grouped so each configuration builds once), checks the outputs bit for
bit against the golden model, and compares every per-phase counter with the
model's prediction from the same routing (the golden dispatch's kept counts).

Writes the `calibration` section of `bench/results.json`, appends its table
to `bench/results.md`, replaces the calibration section of
`docs/benchmarks.md`, and exits 1 when a bound is broken: total cycles off by
more than 3 % on any case, median total error above 1 %, or any phase with
≥ 1,000 measured cycles off by more than 5 %. Also measures the model's
throughput (layer points a second, bound ≥ 10,000).

`--write-fixture` instead writes the small fixed set of measured cases that
`tests/pymodel/test_cycles.py` checks (`tests/pymodel/data/cycle_calibration.json`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from bench.results import publish
from flow.paths import REPO_ROOT
from pymodel.config import AccelConfig, MoESpec
from pymodel.cycles import COUNTERS, MemoryTiming, layer_cycles
from pymodel.families import FAMILIES, family_spec
from pymodel.layer import golden_layer, quantize_input
from pymodel.quantize import calibrate, quantize_layer
from pymodel.weights import MoEWeights

TOTAL_MAX_ERROR = 0.03
TOTAL_MEDIAN_ERROR = 0.01
PHASE_MAX_ERROR = 0.05
PHASE_MIN_CYCLES = 1000
POINTS_PER_S_MIN = 10_000
DEFAULT_SEED = 4242
DEFAULT_CASES = 48

_LIMITS = dict(
    max_experts=16, max_top_k=4, max_groups=4, max_tokens=256, max_d_model=64, max_d_ff=128
)
CONFIGS: dict[str, AccelConfig] = {
    "4x4_b8": AccelConfig(rows=4, cols=4, mem_bytes_per_cycle=8, **_LIMITS),
    "8x8_b16": AccelConfig(rows=8, cols=8, mem_bytes_per_cycle=16, **_LIMITS),
    "4x8_b32": AccelConfig(rows=4, cols=8, mem_bytes_per_cycle=32, **_LIMITS),
    "16x8_b16": AccelConfig(rows=16, cols=8, mem_bytes_per_cycle=16, **_LIMITS),
    "8x8_b8": AccelConfig(rows=8, cols=8, mem_bytes_per_cycle=8, **_LIMITS),
    "16x16_b32": AccelConfig(rows=16, cols=16, mem_bytes_per_cycle=32, **_LIMITS),
}
"""The calibration tops: every array shape and bus width the issue names, small buffers."""

PHASES = ("total", "route", "dispatch", "experts", "shared", "combine")
FIXTURE = REPO_ROOT / "tests" / "pymodel" / "data" / "cycle_calibration.json"
FIXTURE_CASES = 8


def draw_cases(seed: int, n: int) -> list[dict]:
    """`n` random cases (config, family, shapes, T, skew, seed), reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    names = list(CONFIGS)
    cases = []
    for i in range(n):
        # Every configuration and family appears: cycle through them, then shuffle draws.
        cfg_name = names[i % len(names)] if i < len(names) else str(rng.choice(names))
        family = FAMILIES[i % len(FAMILIES)] if i < 2 * len(FAMILIES) else str(rng.choice(FAMILIES))
        n_experts = int(rng.choice([4, 8, 16]))
        top_k = 1 if family == "switch" else int(rng.integers(1, min(4, n_experts) + 1))
        if family == "deepseek_v3":
            top_k = min(top_k, n_experts // 2)
        shared = None
        if family in ("qwen2_moe", "deepseek_v3"):
            shared = int(rng.integers(8, 129))
        case = {
            "name": f"c{i:02d}",
            "config": cfg_name,
            "family": family,
            "d_model": int(rng.integers(8, 65)),
            "d_ff": int(rng.integers(8, 129)),
            "n_experts": n_experts,
            "top_k": top_k,
            "shared_d_ff": shared,
            "tokens": round(math.exp(rng.uniform(0.0, math.log(256)))),
            "skewed": bool(rng.random() < 0.5),
            "seed": int(rng.integers(0, 2**31)),
        }
        cases.append(case)
    return cases


def case_spec(case: dict) -> MoESpec:
    """The `MoESpec` of a drawn case."""
    extra = {} if case["shared_d_ff"] is None else {"shared_d_ff": case["shared_d_ff"]}
    return family_spec(
        case["family"],
        d_model=case["d_model"],
        d_ff=case["d_ff"],
        n_experts=case["n_experts"],
        top_k=case["top_k"],
        **extra,
    )


def case_tokens(spec: MoESpec, w: MoEWeights, tokens: int, skewed: bool, seed: int) -> np.ndarray:
    """Gaussian tokens, or tokens pushed towards experts 0 and 1's router columns (skewed)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, spec.d_model)).astype(np.float32)
    if skewed:
        hot = w.router[:, :2].sum(axis=1)
        x = x + 1.5 * hot / np.linalg.norm(hot) * np.sqrt(spec.d_model) / 4
    return x.astype(np.float32)


def measure(cases: list[dict]) -> list[dict]:
    """Run every case on the fast backend, grouped by configuration; adds counters and routing."""
    from sw_driver.device import VerilatorDevice

    out = []
    for cfg_name in CONFIGS:
        group = [c for c in cases if c["config"] == cfg_name]
        if not group:
            continue
        cfg = CONFIGS[cfg_name]
        device = VerilatorDevice(cfg)
        start = time.monotonic()
        for case in group:
            spec = case_spec(case)
            w = MoEWeights.random(spec, seed=case["seed"])
            x = case_tokens(spec, w, case["tokens"], case["skewed"], case["seed"] + 1)
            ql = quantize_layer(spec, w, calibrate(spec, w, x), cfg)
            x_q = quantize_input(ql, x)
            golden = golden_layer(ql, x_q, cfg)
            res = device.run(ql, x_q)
            if not np.array_equal(res.y_q, golden.y_q):
                raise SystemExit(f"{case['name']}: RTL output differs from the golden model")
            out.append(
                {
                    **case,
                    "spec": spec.to_dict(),
                    "tokens_per_expert": [int(v) for v in golden.dispatch.counts],
                    "measured": {k: int(v) for k, v in res.counters.items()},
                }
            )
            print(
                f"  {case['name']} {cfg_name} {case['family']} T={case['tokens']}: "
                f"{res.counters['cycles_total']} cycles",
                flush=True,
            )
        print(f"{cfg_name}: {len(group)} cases in {time.monotonic() - start:.0f} s", flush=True)
    return out


def predict(point: dict, timing: MemoryTiming) -> dict[str, int]:
    """The model's counters for one measured case."""
    cfg = CONFIGS[point["config"]]
    spec = MoESpec.from_dict(point["spec"])
    est = layer_cycles(
        cfg, spec, point["tokens"], np.asarray(point["tokens_per_expert"]), memory=timing
    )
    return {name: int(est[name][0]) for name in COUNTERS}


def errors(points: list[dict], timing: MemoryTiming) -> list[dict]:
    """Per case: predicted and measured counters and the relative error of each phase."""
    rows = []
    for p in points:
        pred = predict(p, timing)
        meas = {name: int(p["measured"][name]) for name in COUNTERS}
        err = {
            ph: (pred[f"cycles_{ph}"] - meas[f"cycles_{ph}"]) / meas[f"cycles_{ph}"]
            for ph in PHASES
            if meas[f"cycles_{ph}"] > 0
        }
        rows.append({"name": p["name"], "predicted": pred, "measured": meas, "error": err})
    return rows


def judge(rows: list[dict]) -> tuple[dict, list[str]]:
    """Summary statistics and the list of broken bounds."""
    total = np.array([abs(r["error"]["total"]) for r in rows])
    failures = []
    worst_phase = {"case": None, "phase": None, "error": 0.0}
    for r in rows:
        if abs(r["error"]["total"]) > TOTAL_MAX_ERROR:
            failures.append(f"{r['name']}: total off by {r['error']['total']:+.2%}")
        for ph, e in r["error"].items():
            if ph == "total" or r["measured"][f"cycles_{ph}"] < PHASE_MIN_CYCLES:
                continue
            if abs(e) > abs(worst_phase["error"]):
                worst_phase = {"case": r["name"], "phase": ph, "error": e}
            if abs(e) > PHASE_MAX_ERROR:
                failures.append(f"{r['name']}: {ph} off by {e:+.2%}")
    if np.median(total) > TOTAL_MEDIAN_ERROR:
        failures.append(f"median total error {np.median(total):.2%} > {TOTAL_MEDIAN_ERROR:.0%}")
    summary = {
        "cases": len(rows),
        "max_total_error": float(total.max()),
        "median_total_error": float(np.median(total)),
        "worst_phase": worst_phase,
        "exact_counters": {
            name: sum(r["predicted"][name] == r["measured"][name] for r in rows)
            for name in ("mac_cycles", "useful_macs", "bytes_read", "bytes_written")
        },
    }
    return summary, failures


def model_speed(points: list[dict], timing: MemoryTiming, n: int = 20_000) -> dict:
    """Layer points a second: `n` routings of the largest calibration layer, one batched call."""
    p = max(points, key=lambda q: q["spec"]["n_experts"] * q["tokens"])
    cfg, spec = CONFIGS[p["config"]], MoESpec.from_dict(p["spec"])
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, cfg.max_tokens + 1, size=n)
    counts = np.zeros((n, spec.n_experts), dtype=np.int64)
    for _ in range(spec.top_k):  # one expert per slot (slots may repeat an expert here)
        experts = rng.integers(0, spec.n_experts, size=n)
        np.add.at(counts, (np.arange(n), experts), tokens)
    if spec.capacity is not None:
        counts = np.minimum(counts, spec.capacity)
    start = time.perf_counter()
    layer_cycles(cfg, spec, tokens, counts, memory=timing)
    wall = time.perf_counter() - start
    return {"points": n, "wall_s": wall, "points_per_s": n / wall, "layer": p["name"]}


def markdown(rows: list[dict], points: list[dict], summary: dict, speed: dict, seed: int) -> str:
    """The calibration table (case, predicted, measured, error per phase)."""
    by_name = {p["name"]: p for p in points}
    lines = [
        "## Cycle model vs RTL counters (issue #17)",
        "",
        f"Produced by `make bench` (`.venv/bin/python bench/calibrate.py --seed {seed}`): "
        f"{summary['cases']} cases drawn by a seeded RNG over the configurations "
        f"{', '.join(CONFIGS)} (rows×cols, bus bytes/cycle; limits T ≤ 256, d ≤ 64, f ≤ 128, "
        "E ≤ 16, k ≤ 4), run on the Verilator fast backend (read latency 8, write latency 4, "
        "the `VerilatorDevice` defaults), bit-exact against the golden model; predictions by "
        "`pymodel.cycles.layer_cycles` from the golden dispatch's kept counts per expert. "
        "Error = (predicted − measured) / measured; phases under 1,000 measured cycles are "
        "shown but not judged.",
        "",
        f"- max |total error| **{summary['max_total_error']:.2%}** (bound 3 %), median "
        f"**{summary['median_total_error']:.2%}** (bound 1 %); worst judged phase: "
        f"{summary['worst_phase']['phase']} of {summary['worst_phase']['case']}, "
        f"{summary['worst_phase']['error']:+.2%} (bound 5 %).",
        "- counters predicted exactly: "
        + ", ".join(
            f"{name} on {count}/{summary['cases']} cases"
            for name, count in summary["exact_counters"].items()
        )
        + ".",
        f"- model speed: {speed['points']:,} layer points in {speed['wall_s'] * 1e3:.1f} ms = "
        f"**{speed['points_per_s']:,.0f} points/s** (bound ≥ 10,000).",
        "- the model's terms were set on two earlier draws (seeds 20261206 and 1717) and "
        "their Verilator runs; after this draw's first run one rule was corrected (the router "
        "GEMM's split into M-blocks), so it is no longer a pure hold-out.",
        "",
        "![predicted vs measured cycles per phase](img/cycle_model_calibration.png)",
        "",
        "| case | config | family | T | d | f | E | k | shared f | skew | measured total | "
        "predicted | total | route | dispatch | experts | shared | combine |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = by_name[r["name"]]
        s = p["spec"]
        errs = [
            f"{r['error'][ph]:+.2%}" if ph in r["error"] else "—"
            for ph in ("total", "route", "dispatch", "experts", "shared", "combine")
        ]
        lines.append(
            f"| {r['name']} | {p['config']} | {p['family']} | {p['tokens']} | {s['d_model']} | "
            f"{s['d_ff']} | {s['n_experts']} | {s['top_k']} | {s['shared_d_ff'] or '—'} | "
            f"{'yes' if p['skewed'] else 'no'} | {r['measured']['cycles_total']:,} | "
            f"{r['predicted']['cycles_total']:,} | " + " | ".join(errs) + " |"
        )
    return "\n".join(lines) + "\n"


DOC_BEGIN = "<!-- calibration:begin -->"
DOC_END = "<!-- calibration:end -->"


def update_doc(path: Path, table: str, begin: str = DOC_BEGIN, end: str = DOC_END) -> None:
    """Replace (or append) the section between `begin` and `end` of `docs/benchmarks.md`."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{begin}\n{table}{end}\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def write_fixture(points: list[dict], path: Path) -> None:
    """The fixed measured subset `tests/pymodel/test_cycles.py` checks (no Verilator there)."""
    keep = ("name", "config", "family", "tokens", "skewed", "seed", "spec", "tokens_per_expert")
    data = {
        "about": "Measured RTL counters (Verilator fast backend, read latency 8, write "
        "latency 4) of the first cases of bench/calibrate.py's draw; regenerate with "
        "`python bench/calibrate.py --write-fixture`.",
        "configs": {
            name: CONFIGS[name].to_dict() for name in sorted({p["config"] for p in points})
        },
        "cases": [
            {**{k: p[k] for k in keep}, "measured": {n: p["measured"][n] for n in COUNTERS}}
            for p in points
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES)
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench")
    parser.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument(
        "--measured",
        type=Path,
        help="reuse the measured counters of an earlier run's results.json (no Verilator)",
    )
    parser.add_argument("--write-fixture", action="store_true", help=f"write {FIXTURE} and stop")
    args = parser.parse_args(argv)
    print(f"calibration draw: seed {args.seed}, {args.cases} cases")
    timing = MemoryTiming()
    start = time.monotonic()
    if args.measured is not None:
        measured = json.loads(args.measured.read_text())["calibration"]["points"]
    if args.write_fixture:
        # One case per configuration (the 16×16 build is the slowest, so not it), then more
        # 8×8 cases, in draw order: the same draw as the bench, not picked by hand.
        cases = draw_cases(args.seed, args.cases)
        chosen, seen = [], set()
        for c in cases:
            if c["config"] != "16x16_b32" and c["config"] not in seen:
                chosen.append(c)
                seen.add(c["config"])
        chosen += [c for c in cases if c not in chosen and c["config"] == "8x8_b16"]
        chosen = chosen[:FIXTURE_CASES]
        if args.measured is not None:
            names = {c["name"] for c in chosen}
            points = [p for p in measured if p["name"] in names]
        else:
            points = measure(chosen)
        write_fixture(points, FIXTURE)
        print(f"wrote {FIXTURE} ({len(points)} cases)")
        return 0
    points = measured if args.measured is not None else measure(draw_cases(args.seed, args.cases))
    rows = errors(points, timing)
    summary, failures = judge(rows)
    speed = model_speed(points, timing)
    print(
        f"model: {speed['points']:,} layer points in {speed['wall_s']:.4f} s = "
        f"{speed['points_per_s']:,.0f} points/s"
    )
    if speed["points_per_s"] < POINTS_PER_S_MIN:
        failures.append(f"model speed {speed['points_per_s']:,.0f} < {POINTS_PER_S_MIN:,} points/s")
    table = markdown(rows, points, summary, speed, args.seed)
    result = {
        "seed": args.seed,
        "memory": {"read_latency": timing.read_latency, "write_latency": timing.write_latency},
        "configs": {name: cfg.to_dict() for name, cfg in CONFIGS.items()},
        "bounds": {
            "total_max_error": TOTAL_MAX_ERROR,
            "total_median_error": TOTAL_MEDIAN_ERROR,
            "phase_max_error": PHASE_MAX_ERROR,
            "phase_min_cycles": PHASE_MIN_CYCLES,
            "points_per_s_min": POINTS_PER_S_MIN,
        },
        "summary": summary,
        "speed": speed,
        "points": points,
        "rows": rows,
        "failures": failures,
        "wall_seconds": round(time.monotonic() - start, 1),
    }
    update_doc(args.doc, table)
    return publish(args.out_dir, "calibration", result, table, failures)


if __name__ == "__main__":
    sys.exit(main())
