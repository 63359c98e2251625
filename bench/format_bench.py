"""`make bench`, part 2b: whole layers with compressed expert weights (issue 19), side by side.

Runs, on the fast Verilator backend (`sw_driver.device.VerilatorDevice`), one
build — the default 8×8 config (16-byte bus) with both compressed weight paths
(`sparse_2_4`, `int4_weights`) — on the Mixtral-style layer of
`bench/layer_bench.py` (d_model 128, d_ff 256, 8 experts, skewed routing):

- prefill (T = 256): int8 dense and int8 2:4; the experts phase's cycles, 2:4 over dense;
- decode (T = 4): int8 dense, int4 dense, int8 2:4 and int4 2:4; the layer's cycles,
  each over int8 dense.

Every layer is checked bit for bit against the golden model; each point lists
its counters beside `pymodel.cycles.layer_cycles(weight_format=...)`. The
issue's targets are `TARGETS`; the bench fails (exit 1) past `BOUNDS`, which
equal the targets. Writes the `formats` section
of `bench/results.json`, appends its table to `bench/results.md` and replaces
its section of `docs/benchmarks.md`.

    python bench/format_bench.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bench.calibrate import update_doc
from bench.layer_bench import skewed_tokens
from bench.results import publish
from flow.paths import REPO_ROOT
from pymodel.config import AccelConfig, MoESpec
from pymodel.cycles import MemoryTiming, layer_cycles
from pymodel.families import family_spec
from pymodel.layer import golden_layer, quantize_input
from pymodel.quantize import calibrate, quantize_layer
from pymodel.weight_formats import WeightFormat
from pymodel.weights import MoEWeights
from sw_driver.device import VerilatorDevice

CFG = AccelConfig(sparse_2_4=True, int4_weights=True)
"""The default config with both compressed weight paths."""
PREFILL_T, DECODE_T = 256, 4
DENSE = WeightFormat.DENSE_INT8
INT8_2_4 = WeightFormat.parse("int8", "2:4")
INT4 = WeightFormat.parse("int4", "dense")
INT4_2_4 = WeightFormat.parse("int4", "2:4")
TARGETS = {
    "prefill experts 2:4 / dense": 0.55,
    "decode int4 / int8": 0.60,
    "decode int4 2:4 / int8 dense": 0.50,
}
"""Issue 19's targets (ratios of cycles, at most)."""
BOUNDS = TARGETS
"""Where the bench fails: past the targets. int4 decode meets its target since int4 tiles
cover 2R K positions (two int4 × int8 products a PE and cycle, `rtl.systolic`): an int4
command makes half the row injections of int8, as 2:4 does (it was 0.747 with R-position
int4 tiles, whose M token rows bounded each tile as int8's)."""
DOC_BEGIN, DOC_END = "<!-- formats:begin -->", "<!-- formats:end -->"


def point(name: str, spec: MoESpec, tokens: int, fmt: WeightFormat, seed: int) -> dict:
    """One layer in `fmt` on the fast backend: counters, bit-exactness, the cycle model."""
    w = MoEWeights.random(spec, seed=seed)
    x = skewed_tokens(spec, w, tokens, seed + 1)
    ql = quantize_layer(spec, w, calibrate(spec, w, x, fmt), CFG, fmt)
    x_q = quantize_input(ql, x)
    golden = golden_layer(ql, x_q, CFG)
    device = VerilatorDevice(CFG)
    res = device.run(ql, x_q)
    model = layer_cycles(
        CFG,
        spec,
        tokens,
        res.tokens_per_expert,
        memory=MemoryTiming(read_latency=device.read_latency, write_latency=device.write_latency),
        weight_format=fmt,
    )
    c = res.counters
    return {
        "name": name,
        "format": fmt.name,
        "tokens": tokens,
        "bit_exact_vs_golden": bool(np.array_equal(res.y_q, golden.y_q)),
        "tokens_per_expert": [int(v) for v in res.tokens_per_expert],
        "counters": c,
        "model": {
            n: int(model[n][0])
            for n in ("cycles_total", "cycles_experts", "bytes_read", "mac_cycles")
        },
        "wall_s": res.wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench")
    parser.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    spec = family_spec("mixtral", d_model=128, d_ff=256, n_experts=8)
    pts = [
        point("prefill", spec, PREFILL_T, DENSE, seed=1),
        point("prefill", spec, PREFILL_T, INT8_2_4, seed=1),
        point("decode", spec, DECODE_T, DENSE, seed=2),
        point("decode", spec, DECODE_T, INT4, seed=2),
        point("decode", spec, DECODE_T, INT8_2_4, seed=2),
        point("decode", spec, DECODE_T, INT4_2_4, seed=2),
    ]
    c = [p["counters"] for p in pts]
    ratios = {
        "prefill experts 2:4 / dense": c[1]["cycles_experts"] / c[0]["cycles_experts"],
        "decode int4 / int8": c[3]["cycles_total"] / c[2]["cycles_total"],
        "decode int8 2:4 / int8 dense": c[4]["cycles_total"] / c[2]["cycles_total"],
        "decode int4 2:4 / int8 dense": c[5]["cycles_total"] / c[2]["cycles_total"],
    }
    failures = [
        f"{p['name']} {p['format']}: not bit-exact" for p in pts if not p["bit_exact_vs_golden"]
    ]
    failures += [
        f"{name}: {ratios[name]:.3f} > bound {bound}"
        for name, bound in BOUNDS.items()
        if ratios[name] > bound
    ]
    lines = [
        "## Compressed expert weights: whole layers (issue 19)",
        "",
        f"Default 8×8 config with `sparse_2_4` and `int4_weights` (one build), Mixtral-style "
        f"layer d_model {spec.d_model}, d_ff {spec.d_ff}, 8 experts, skewed routing; "
        "`python bench/format_bench.py`. Model: `pymodel.cycles.layer_cycles`.",
        "",
        "| shape | format | T | total cycles | experts cycles | bytes read | model total "
        "| model experts | model bytes | bit-exact |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in pts:
        k, mo = p["counters"], p["model"]
        lines.append(
            f"| {p['name']} | {p['format']} | {p['tokens']} | {k['cycles_total']:,} "
            f"| {k['cycles_experts']:,} | {k['bytes_read']:,} | {mo['cycles_total']:,} "
            f"| {mo['cycles_experts']:,} | {mo['bytes_read']:,} | {p['bit_exact_vs_golden']} |"
        )
    lines += [
        "",
        "| ratio | measured | target | target met | bound (fails past) |",
        "|---|---:|---:|---|---:|",
    ]
    for name, value in ratios.items():
        target = f"≤ {TARGETS[name]}" if name in TARGETS else "—"
        met = ("yes" if value <= TARGETS[name] else "**no**") if name in TARGETS else "—"
        bound = f"≤ {BOUNDS[name]}" if name in BOUNDS else "—"
        lines.append(f"| {name} | {value:.3f} | {target} | {met} | {bound} |")
    table = "\n".join(lines) + "\n"
    result = {
        "config": CFG.to_dict(),
        "spec": spec.to_dict(),
        "points": pts,
        "ratios": ratios,
        "targets": TARGETS,
        "bounds": BOUNDS,
    }
    status = publish(args.out_dir, "formats", result, table, failures)
    update_doc(args.doc, table, DOC_BEGIN, DOC_END)
    return status


if __name__ == "__main__":
    sys.exit(main())
