"""Accuracy of the expert weight formats: golden model vs the float HF block, per family.

For each family (`pymodel.families.FAMILIES`) and seed, the family's HF block is
built with `sw_driver.hf.build_hf_block` (weights as `reinit_block` draws them)
and imported; standard-normal tokens (`rng(1000 + seed)`) are run through the HF
block itself (fp32) and through the golden model in every format of `FORMATS`
(calibrated on the same tokens, `pymodel.layer.run_golden`). Reported per family
and format: the relative L2 error ‖y_golden − y_HF‖ / ‖y_HF‖ over all tokens
(mean, median, max over seeds), the error against the *pruned* float block
(`pymodel.reference.pruned_weights`: what the quantised weights approximate) and,
for 2:4, the pruned float block's own error against the HF block (pruning alone),
and the error against the pruned block on the tokens whose expert set (and
capacity fate) equals the float router's ("agreeing": arithmetic error, without
the near-tie routing flips). `pymodel.families.rel_l2_bounds` are derived from
these maxima.

    .venv/bin/python bench/format_accuracy.py        # writes bench/format_accuracy.{json,md}

docs/numerics.md §7.1 holds the table this writes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from pymodel.config import AccelConfig
from pymodel.families import FAMILIES
from pymodel.layer import run_golden
from pymodel.reference import moe_forward_float, pruned_weights
from pymodel.weight_formats import WeightFormat

FORMATS: tuple[WeightFormat, ...] = (
    WeightFormat.DENSE_INT8,
    WeightFormat(8, True),
    WeightFormat(4),
    WeightFormat(4, False, 32),
    WeightFormat(4, False, 128),
    WeightFormat(4, True),
)
"""The formats measured: int8 dense, int8 2:4, int4 per-channel, int4 g32, int4 g128, int4 2:4."""


def measure(
    families: tuple[str, ...], seeds: int, tokens: int, d_model: int, d_ff: int, experts: int
) -> dict[str, dict[str, dict[str, list[float]]]]:
    """errors[family][format name][metric] = one value per seed."""
    from sw_driver.hf import build_hf_block, import_hf_block
    from sw_driver.reference import run_hf_block
    from sw_driver.report import expert_set_agreement, rel_l2

    cfg = AccelConfig()
    errors: dict[str, dict[str, dict[str, list[float]]]] = {}
    for family in families:
        per_format: dict[str, dict[str, list[float]]] = {
            f.name: {"vs_hf": [], "vs_pruned": [], "vs_pruned_agreeing": [], "pruning_alone": []}
            for f in FORMATS
        }
        for seed in range(seeds):
            block = build_hf_block(family, seed=seed, d_model=d_model, d_ff=d_ff, n_experts=experts)
            spec, weights = import_hf_block(block)
            x = np.random.default_rng(1000 + seed).standard_normal((tokens, d_model))
            x = x.astype(np.float32)
            hf_y = run_hf_block(block, x)
            for fmt in FORMATS:
                res = run_golden(spec, weights, x, cfg, weight_format=fmt)
                ref = moe_forward_float(spec, pruned_weights(weights, fmt), x)
                same = expert_set_agreement(res.routing.expert_ids, ref.expert_ids)
                agree = same & np.all(res.dispatch.kept == ref.kept, axis=1)
                row = per_format[fmt.name]
                row["vs_hf"].append(rel_l2(res.y, hf_y))
                row["vs_pruned"].append(rel_l2(res.y, ref.y))
                row["vs_pruned_agreeing"].append(rel_l2(res.y[agree], ref.y[agree]))
                row["pruning_alone"].append(rel_l2(ref.y, hf_y))
        errors[family] = per_format
    return errors


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "max": float(a.max())}


def markdown(result: dict, command: str) -> str:
    """Three tables: error vs the HF block (mean / max), vs the pruned float block (mean;
    pruning alone), and the maxima the documented bounds come from."""
    p = result["parameters"]
    names = [f.name for f in FORMATS]
    head = "| family | " + " | ".join(names) + " |\n|---|" + "---:|" * len(names) + "\n"
    out = [
        f"Relative L2 error of the golden model vs the float HF block, all tokens: mean / max "
        f"over seeds 0–{p['seeds'] - 1}; T = {p['tokens']}, d = {p['d_model']}, f = {p['d_ff']}, "
        f"E = {p['experts']} (`{command}`).\n\n" + head
    ]
    for family, per_format in result["errors"].items():
        cells = [f"{c['vs_hf']['mean']:.4f} / {c['vs_hf']['max']:.4f}" for c in per_format.values()]
        out.append(f"| {family} | " + " | ".join(cells) + " |\n")
    out.append(
        "\nThe same runs against the pruned float block (the float weights with the 2:4 mask "
        "applied: what the integer weights approximate; the unpruned block for dense formats), "
        "mean; and, for 2:4, the pruned float block's own error vs the HF block (pruning "
        "alone), mean:\n\n"
    )
    sparse = [f.name for f in FORMATS if f.sparse]
    out.append(
        "| family | "
        + " | ".join(names)
        + " | "
        + " | ".join(f"pruning alone ({n})" for n in sparse)
        + " |\n|---|"
        + "---:|" * (len(names) + len(sparse))
        + "\n"
    )
    for family, per_format in result["errors"].items():
        cells = [f"{c['vs_pruned']['mean']:.4f}" for c in per_format.values()]
        cells += [f"{per_format[n]['pruning_alone']['mean']:.4f}" for n in sparse]
        out.append(f"| {family} | " + " | ".join(cells) + " |\n")
    out.append(
        "\nMaximum over seeds of the error against the pruned float block: all tokens / "
        "agreeing tokens:\n\n" + head
    )
    for family, per_format in result["errors"].items():
        cells = [
            f"{c['vs_pruned']['max']:.4f} / {c['vs_pruned_agreeing']['max']:.4f}"
            for c in per_format.values()
        ]
        out.append(f"| {family} | " + " | ".join(cells) + " |\n")
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0 … N−1 per family")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--d-ff", type=int, default=256)
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--family", choices=FAMILIES, action="append", help="default: all six")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="output folder")
    args = parser.parse_args(argv)
    families = tuple(args.family) if args.family else FAMILIES
    start = time.monotonic()
    errors = measure(families, args.seeds, args.tokens, args.d_model, args.d_ff, args.experts)
    result = {
        "parameters": {
            "seeds": args.seeds,
            "tokens": args.tokens,
            "d_model": args.d_model,
            "d_ff": args.d_ff,
            "experts": args.experts,
            "token_seed": "numpy default_rng(1000 + seed), standard normal",
            "weights": "sw_driver.hf.build_hf_block(family, seed=seed)",
        },
        "formats": [f.name for f in FORMATS],
        "errors": {
            family: {
                name: {metric: summary(v) for metric, v in metrics.items()}
                for name, metrics in per_format.items()
            }
            for family, per_format in errors.items()
        },
        "seconds": round(time.monotonic() - start, 1),
    }
    command = "python bench/format_accuracy.py" + (
        " " + " ".join(sys.argv[1:] if argv is None else argv)
        if (sys.argv[1:] if argv is None else argv)
        else ""
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "format_accuracy.json").write_text(json.dumps(result, indent=1) + "\n")
    table = markdown(result, command)
    (args.out / "format_accuracy.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
