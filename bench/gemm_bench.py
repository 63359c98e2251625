"""`make bench`: expert-GEMM MAC utilisation of the GemmEngine, measured on Verilator.

Runs dense GEMMs (sources always valid, sink always ready) on the default
8×8 `AccelConfig` (16-byte bus: two weight rows a beat) through cocotb,
reads the engine's own counters and writes `bench/results.json` and
`bench/results.md`.

    utilisation = mac_cycles / busy   (cycles a row entered the array / command cycles)
    efficiency  = macs / (R·C·busy)   (useful MACs, K/N padding excluded)

`busy` runs from command accept to the last output beat, so it includes the
first weight-tile load and the pipeline drain. Exit status 1 when a GEMM with
M ≥ 4·R and K, N ≥ 8·R, 8·C (an expert-sized group) falls below 95 %
utilisation; smaller points are reported, not judged.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.results import publish
from flow.paths import REPO_ROOT
from pymodel.config import AccelConfig
from rtl.gemm_engine import GemmEngine
from sim.build import build_component, run_cocotb

BOUND = 0.95
PARAM_ROWS = 64


def points(cfg: AccelConfig) -> list[list]:
    """M ∈ {1, R, 4R, 8R} × a few (K, N), REQUANT and SWIGLU."""
    r, c = cfg.rows, cfg.cols
    shapes = [(4 * r, 4 * c), (8 * r, 8 * c), (16 * r, 8 * c)]
    out = []
    for k, n in shapes:
        for m in (1, r, 4 * r, 8 * r):
            out.append([m, k, n, "REQUANT"])
        out.append([4 * r, k, n, "SWIGLU"])
    return out


def judged(cfg: AccelConfig, row: dict) -> bool:
    return row["m"] >= 4 * cfg.rows and row["k"] >= 8 * cfg.rows and row["n"] >= 8 * cfg.cols


def markdown(cfg: AccelConfig, rows: list[dict], command: str) -> str:
    head = (
        f"GemmEngine on a {cfg.rows}×{cfg.cols} array (m_block {rows[0]['m_block']}, "
        f"{cfg.weight_rows_per_beat} weight row(s) a beat on a {cfg.mem_bytes_per_cycle}-byte "
        f"bus), Verilator via cocotb, no backpressure. Command: `{command}`.\n\n"
        "| M | K | N | mode | busy cycles | MAC cycles | stall weight | stall act "
        "| stall out | drain | utilisation | MAC efficiency | judged (≥ 95 %) |\n"
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
    )
    lines = []
    for row in rows:
        c = row["counters"]
        verdict = ("pass" if row["utilisation"] >= BOUND else "FAIL") if row["judged"] else "—"
        lines.append(
            f"| {row['m']} | {row['k']} | {row['n']} | {row['mode']} | {c['busy']} "
            f"| {c['mac_cycles']} | {c['stall_weight']} | {c['stall_act']} | {c['stall_out']} "
            f"| {c['drain']} | {100 * row['utilisation']:.1f} % "
            f"| {100 * row['efficiency']:.1f} % | {verdict} |"
        )
    return head + "\n".join(lines) + "\n"


def measure(engine: GemmEngine, build: Any, commands: list[dict]) -> list[dict]:
    """Run `commands` (bench points) on `build` of `engine` under cocotb: a result row each."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.json"
        run_cocotb(
            build,
            REPO_ROOT / "bench" / "cocotb_gemm_bench.py",
            params={
                "cfg": engine.cfg,
                "m_block": engine.m_block,
                "param_rows": PARAM_ROWS,
                "points": commands,
                "bench_out": raw,
            },
        )
        return json.loads(raw.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cols", type=int, default=8)
    parser.add_argument(
        "--bus", type=int, default=16, help="mem_bytes_per_cycle (sets weight rows a beat)"
    )
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench")
    args = parser.parse_args(argv)
    cfg = AccelConfig(rows=args.rows, cols=args.cols, mem_bytes_per_cycle=args.bus)
    engine = GemmEngine(cfg, param_rows=PARAM_ROWS)
    start = time.monotonic()
    build = build_component(
        engine, f"gemm_engine_bench_{cfg.rows}x{cfg.cols}_b{cfg.mem_bytes_per_cycle}"
    )
    rows = measure(engine, build, points(cfg))
    macs_per_cycle = cfg.rows * cfg.cols
    for row in rows:
        c = row["counters"]
        row["m_block"] = engine.m_block
        row["utilisation"] = c["mac_cycles"] / c["busy"]
        row["efficiency"] = c["macs"] / (macs_per_cycle * c["busy"])
        row["judged"] = judged(cfg, row)
    command = "make bench" if (args.rows, args.cols) == (8, 8) else " ".join(sys.argv)
    result = {
        "config": cfg.to_dict(),
        "m_block": engine.m_block,
        "bound": BOUND,
        "build_cached": build.cached,
        "wall_seconds": round(time.monotonic() - start, 1),
        "points": rows,
    }
    failing = [r for r in rows if r["judged"] and r["utilisation"] < BOUND]
    failures = (
        [f"{len(failing)} expert-sized GEMM(s) below {BOUND:.0%} utilisation"] if failing else []
    )
    table = markdown(cfg, rows, command)
    status = publish(args.out_dir, "gemm", result, table, failures, first=True)
    if not failures:
        print(f"all expert-sized GEMMs (M ≥ 4R, K ≥ 8R, N ≥ 8C) at ≥ {BOUND:.0%} utilisation")
    return status


if __name__ == "__main__":
    sys.exit(main())
