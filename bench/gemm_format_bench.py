"""Engine cycles of one GEMM command per weight format (issue 19), measured on Verilator.

Runs a prefill-like (M = 64, 256) and a decode-like (M = 1) command in all
four formats — int8 dense, int8 2:4, int4 dense, int4 2:4 — on the default
8×8 array (16-byte bus) built with both compressed paths
(`sparse_2_4`, `int4_weights`), sources always valid and the sink always
ready, and reports each command's `busy` cycles (command accept to the last
output beat) and their ratio to int8 dense of the same shape. Every run is
checked bit for bit against the golden model. Writes `gemm_formats.json`
and `gemm_formats.md` into `--out-dir` (default `bench/`).

The issue's targets are for whole layers (`bench/format_bench.py` in `make
bench` judges them): 2:4 prefill ≤ 0.55× dense, int4 decode ≤ 0.60× int8,
int4 2:4 decode ≤ 0.50×. This script reports what the engine alone gives; it
judges nothing.

    python -m bench.gemm_format_bench
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.gemm_bench import PARAM_ROWS, measure
from flow.paths import REPO_ROOT
from pymodel.config import AccelConfig
from rtl.gemm_engine import GemmEngine
from sim.build import build_component

FORMATS = ("int8 dense", "int8 2:4", "int4 dense", "int4 2:4")
SHAPES = {
    "prefill": [(64, 128, 64), (256, 256, 256)],
    "decode": [(1, 128, 64), (1, 256, 256)],
}


def points() -> list[list]:
    """Every shape in every format (REQUANT: the post-processing is the same for all)."""
    return [
        [m, k, n, "REQUANT", fmt]
        for shapes in SHAPES.values()
        for m, k, n in shapes
        for fmt in FORMATS
    ]


def markdown(cfg: AccelConfig, rows: list[dict], command: str) -> str:
    head = (
        f"GemmEngine per weight format on a {cfg.rows}×{cfg.cols} array built with 2:4 and "
        f"int4 ({cfg.weight_rows_per_beat} weight rows a beat on a {cfg.mem_bytes_per_cycle}-byte "
        f"bus), Verilator via cocotb, no backpressure. Command: `{command}`.\n\n"
        "| M | K | N | format | busy cycles | MAC cycles | stall weight | ratio to int8 dense |\n"
        "|---:|---:|---:|---|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        c = row["counters"]
        lines.append(
            f"| {row['m']} | {row['k']} | {row['n']} | {row['format']} | {c['busy']} "
            f"| {c['mac_cycles']} | {c['stall_weight']} | {row['ratio']:.3f} |"
        )
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench")
    args = parser.parse_args(argv)
    cfg = AccelConfig(sparse_2_4=True, int4_weights=True)
    engine = GemmEngine(cfg, param_rows=PARAM_ROWS)
    build = build_component(engine, "gemm_engine_bench_formats")
    rows = measure(engine, build, points())
    dense = {
        (r["m"], r["k"], r["n"]): r["counters"]["busy"] for r in rows if r["format"] == FORMATS[0]
    }
    for row in rows:
        row["ratio"] = row["counters"]["busy"] / dense[row["m"], row["k"], row["n"]]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = {"config": cfg.to_dict(), "m_block": engine.m_block, "points": rows}
    (args.out_dir / "gemm_formats.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(cfg, rows, "python -m bench.gemm_format_bench")
    (args.out_dir / "gemm_formats.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
