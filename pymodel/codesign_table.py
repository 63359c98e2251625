"""The real-model table of docs/codesign.md: latency, tokens/s, energy/token and bound.

`python -m pymodel.codesign_table` prints it (Markdown); `--write docs/codesign.md`
replaces the table between the markers in that file. For each model of
`pymodel.models.REAL_MODELS`, each configuration of `CONFIGS` and each token
count of `TOKENS`, the routing is drawn with `uniform_routing` (seed printed),
cycles come from `pymodel.cycles.layer_cycles`, energy from
`pymodel.energy.layer_energy`, and the bound (compute or memory) from the
roofline of `pymodel.perf.roofline`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from .config import AccelConfig
from .cycles import layer_cycles
from .energy import layer_energy
from .models import REAL_MODELS, uniform_routing
from .perf import roofline

__all__ = ["CONFIGS", "TOKENS", "markdown", "rows"]

CONFIGS: dict[str, AccelConfig] = {
    "8×8, 16 B/cycle (default)": AccelConfig(),
    "16×16, 32 B/cycle": AccelConfig(rows=16, cols=16, mem_bytes_per_cycle=32),
    "32×32, 64 B/cycle": AccelConfig(rows=32, cols=32, mem_bytes_per_cycle=64),
}
"""The configurations of the table (all at the default 100 MHz clock, m_tile 8)."""

TOKENS: tuple[int, ...] = (1, 8, 64, 2048)
"""Decode batches of 1, 8 and 64 tokens, and a 2048-token prefill."""

SEED = 17
BEGIN, END = "<!-- codesign-table:begin -->", "<!-- codesign-table:end -->"


def rows(seed: int = SEED) -> list[dict]:
    """One row per (model, config, T)."""
    out = []
    for model, spec in REAL_MODELS.items():
        for cname, cfg in CONFIGS.items():
            rng = np.random.default_rng(seed)
            for t in TOKENS:
                counts = uniform_routing(spec, t, rng)
                est = layer_cycles(cfg, spec, t, counts)
                energy = layer_energy(cfg, est)
                bound = roofline(spec, cfg, t, counts)
                cycles = int(est.cycles_total[0])
                seconds = cycles / (cfg.clock_mhz * 1e6)
                out.append(
                    {
                        "model": model,
                        "config": cname,
                        "tokens": t,
                        "cycles": cycles,
                        "latency_ms": seconds * 1e3,
                        "tokens_per_s": t / seconds,
                        "energy_uj_per_token": float(energy.total_pj[0]) / t / 1e6,
                        "dram_share": float(energy.dram_pj[0] / energy.total_pj[0]),
                        "bound": bound.bound_by,
                        "vs_roofline": cycles / bound.bound_cycles,
                    }
                )
    return out


def markdown(table: list[dict], seed: int) -> str:
    lines = [
        f"Command: `python -m pymodel.codesign_table --seed {seed}` (routing seed {seed}: "
        "each token's experts uniform at random, groups first for DeepSeek-V3). "
        "Latency of one MoE layer at 100 MHz; *bound* is the roofline's (compute or memory); "
        "*× roofline* is modelled cycles ÷ that bound.",
        "",
        "| model | config | T | latency (ms) | tokens/s | energy/token (µJ) | DRAM share | "
        "bound | × roofline |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['model']} | {r['config']} | {r['tokens']} | {r['latency_ms']:,.3f} | "
            f"{r['tokens_per_s']:,.1f} | {r['energy_uj_per_token']:,.1f} | "
            f"{r['dram_share']:.0%} | {r['bound']} | {r['vs_roofline']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--write", type=Path, help="replace the table in this Markdown file")
    args = parser.parse_args(argv)
    print(f"routing seed {args.seed}", file=sys.stderr)
    text = markdown(rows(args.seed), args.seed)
    if args.write is None:
        print(text)
        return 0
    doc = args.write.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{args.write} has no {BEGIN} … {END} markers", file=sys.stderr)
        return 2
    head, rest = doc.split(BEGIN, 1)
    args.write.write_text(head + BEGIN + "\n" + text + END + rest.split(END, 1)[1])
    print(f"wrote the table into {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
