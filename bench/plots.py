"""Plots of the last `make bench` run: GEMM utilisation, layers vs the roofline, cycle model.

Reads `bench/results.json` (written by `gemm_bench.py`, `layer_bench.py` and `calibrate.py`)
and writes PNGs that `docs/benchmarks.md` shows beside its tables, so the
numbers people compare across changes are also seen at a glance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parent.parent
PHASES = ("route", "dispatch", "experts", "combine")


def gemm_plot(gemm: dict, out: Path) -> None:
    """Utilisation against M, one line per (K, N, mode) shape; the bound as a dashed line."""
    shapes: dict[str, list[tuple[int, float]]] = {}
    for p in gemm["points"]:
        shapes.setdefault(f"K={p['k']}, N={p['n']}, {p['mode']}", []).append(
            (p["m"], 100 * p["utilisation"])
        )
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, pts in shapes.items():
        pts.sort()
        ax.plot([m for m, _ in pts], [u for _, u in pts], marker="o", label=label)
    ax.axhline(100 * gemm["bound"], color="grey", ls="--", label=f"bound {gemm['bound']:.0%}")
    rows = gemm["config"]["rows"]
    ax.set(
        xscale="log",
        xlabel="M (token rows of one expert)",
        ylabel="MAC utilisation (%)",
        title=f"Expert GEMM on the {rows}×{gemm['config']['cols']} engine",
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def layer_plot(layer: dict, out: Path) -> None:
    """Each layer point's cycles by phase, normalised to its roofline bound (1.0 = the bound)."""
    points = layer["points"]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.7 * len(points)))
    colours = plt.cm.tab10.colors
    for i, p in enumerate(points):
        left = 0.0
        for phase, colour in zip(PHASES, colours[: len(PHASES)], strict=True):
            width = p["cycles"][phase] / p["roofline_bound_cycles"]
            ax.barh(i, width, left=left, color=colour, label=phase if i == 0 else None)
            left += width
    ax.axvline(1.0, color="black", lw=1.5, label="roofline bound")
    limit = layer["bounds"]["cycles_vs_roofline_max"]
    ax.axvline(limit, color="red", ls="--", label=f"target ≤ {limit}×")
    ax.set(
        yticks=range(len(points)),
        yticklabels=[f"{p['name']} (T={p['tokens']})" for p in points],
        xlabel="cycles ÷ roofline bound",
        title="Whole layers on the fast backend",
    )
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def calibration_plot(calibration: dict, out: Path) -> None:
    """Predicted against measured cycles per phase for every calibration case, with y = x."""
    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    lo, hi = float("inf"), 0.0
    for phase, marker in zip(("total", *PHASES), "o^sDv", strict=True):
        pairs = [
            (r["measured"][f"cycles_{phase}"], r["predicted"][f"cycles_{phase}"])
            for r in calibration["rows"]
            if r["measured"][f"cycles_{phase}"] > 0
        ]
        xs, ys = zip(*pairs, strict=True)
        lo, hi = min(lo, *xs, *ys), max(hi, *xs, *ys)
        ax.scatter(xs, ys, marker=marker, s=18, alpha=0.8, label=phase)
    ax.plot([lo, hi], [lo, hi], color="black", lw=1, label="y = x")
    summary = calibration["summary"]
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="measured cycles (RTL counters)",
        ylabel="predicted cycles (pymodel.cycles)",
        title=f"Cycle model, {summary['cases']} cases: max total error "
        f"{summary['max_total_error']:.2%}",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "img")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"{args.results} does not exist: run `make bench` first", file=sys.stderr)
        return 2
    results = json.loads(args.results.read_text())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "gemm" in results:
        written.append(args.out_dir / "gemm_utilisation.png")
        gemm_plot(results["gemm"], written[-1])
    if "layer" in results:
        written.append(args.out_dir / "layer_vs_roofline.png")
        layer_plot(results["layer"], written[-1])
    if "calibration" in results:
        written.append(args.out_dir / "cycle_model_calibration.png")
        calibration_plot(results["calibration"], written[-1])
    for path in written:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
