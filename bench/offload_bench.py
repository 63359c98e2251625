"""Expert cache over a host link: measured on the RTL beside the cycle model (issue 20).

A 4-layer Mixtral stack (d 32, f 48, 8 experts, top-2) decodes 16 tokens on the
Verilator backend of the small top with a host tier (`HostLink` below): first
with every expert in device memory (the lower bound), then with every expert in
host memory (the upper bound), then with an expert cache of S slots per layer
(`sw_driver.offload.CachedDevice`) for LRU / LFU / pinned × S ∈ {1, 2, 4}.
Every layer call is checked bit for bit against the golden model and the
outputs must equal the all-in-device run's.

The model side replays the same routing trace through `simulate_cache` (the
same `LayerCache` decisions) and prices each layer call with
`host_layer_cycles` (its demand misses over the link). The bench fails loudly
when a configuration's predicted cycles per token differ from the measured by
more than 5 %. Prefetch (copies of pre-gated experts on the copy engine) is
not driven by the driver yet, so only prefetch off is measured.

Writes `offload.json` and `offload.md` into `--out-dir` (default `bench/`).

    python bench/offload_bench.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from flow.paths import REPO_ROOT
from pymodel.expert_cache import POLICIES, HostLink, host_layer_cycles, simulate_cache
from sim.tb.layer_cases import SMALL_TOP
from sw_driver.decode_stream import DecodeStack
from sw_driver.device import VerilatorDevice
from sw_driver.offload import CachedDevice, expert_regions

LINK = HostLink(bytes_per_cycle=4, latency=200)
LAYERS, STEPS, SEED = 4, 16, 2
SIZES = {"d_model": 32, "d_ff": 48, "n_experts": 8}
SLOTS = (1, 2, 4)
BOUND = 0.05


def predicted_per_token(stack: DecodeStack, trace, miss_mask: np.ndarray) -> float:
    """Model cycles per token: every call priced with its demand misses over the link."""
    total = 0.0
    for step in range(trace.experts.shape[0]):
        for layer, sl in enumerate(stack.layers):
            picks = trace.experts[step, layer]
            counts = np.bincount(picks, minlength=sl.spec.n_experts)
            host = tuple(int(e) for e in picks[miss_mask[step, layer]])
            total += host_layer_cycles(SMALL_TOP, sl.spec, 1, counts, LINK, host)
    return total / trace.experts.shape[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench")
    args = parser.parse_args(argv)
    stack = DecodeStack.build("mixtral", layers=LAYERS, seed=SEED, cfg=SMALL_TOP, **SIZES)
    layers = [sl.ql for sl in stack.layers]
    device = VerilatorDevice(SMALL_TOP, host_link=LINK)
    near = stack.run(device, STEPS)
    trace = near.trace
    n = SIZES["n_experts"]
    rows = []

    def record(name: str, slots: int | None, run, hits, misses, link_bytes, miss_mask):
        measured = run.cycles.sum() / STEPS
        predicted = predicted_per_token(stack, trace, miss_mask)
        ok = bool(run.all_bit_exact) and np.array_equal(run.y_q, near.y_q)
        rows.append(
            {
                "policy": name,
                "slots": slots,
                "hits": int(hits),
                "misses": int(misses),
                "link_bytes_per_token": float(link_bytes) / STEPS,
                "measured_cycles_per_token": float(measured),
                "predicted_cycles_per_token": float(predicted),
                "error": float(predicted / measured - 1),
                "bit_exact_and_identical": ok,
            }
        )
        print(f"{name:>13} S={slots}: measured {measured:,.0f}, model {predicted:,.0f}")

    none = np.zeros(trace.experts.shape, dtype=bool)
    record("all in device", None, near, trace.experts.size, 0, 0, none)
    device.host_experts = tuple(range(n))
    far = stack.run(device, STEPS)
    everything = np.ones(trace.experts.shape, dtype=bool)
    expert_bytes = sum(r.size for _, r in expert_regions(device.last_image, 0))
    far_bytes = trace.experts.size * expert_bytes
    record("all over link", None, far, 0, trace.experts.size, far_bytes, everything)
    popularity = np.stack(
        [np.bincount(trace.experts[:, i].ravel(), minlength=n) for i in range(LAYERS)]
    )
    for policy in POLICIES:
        for slots in SLOTS:
            cached = CachedDevice(
                VerilatorDevice(SMALL_TOP, host_link=LINK), layers, slots, policy, popularity
            )
            run = stack.run(cached, STEPS)
            model = simulate_cache(trace, slots, policy)
            c = cached.counters
            if not (np.array_equal(c.hits, model.hits) and np.array_equal(c.misses, model.misses)):
                raise SystemExit(f"{policy} S={slots}: the driver's cache left the model's")
            record(
                policy,
                slots,
                run,
                c.hits.sum(),
                c.misses.sum(),
                c.link_bytes.sum(),
                model.miss_mask,
            )
    lo, hi = rows[0]["measured_cycles_per_token"], rows[1]["measured_cycles_per_token"]
    for row in rows:
        row["hidden"] = (hi - row["measured_cycles_per_token"]) / (hi - lo)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "offload.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [
        f"Host link {LINK.bytes_per_cycle} B/cycle, {LINK.latency} cycles a burst; "
        f"{LAYERS} layers × {STEPS} steps, Mixtral d 32 f 48 E 8 top-2, small top.",
        "",
        "| policy | S | hits | misses | link B / token | measured cycles / token | "
        "model | error | hidden |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['slots'] or ''} | {r['hits']} | {r['misses']} | "
            f"{r['link_bytes_per_token']:,.0f} | {r['measured_cycles_per_token']:,.0f} | "
            f"{r['predicted_cycles_per_token']:,.0f} | {r['error']:+.1%} | {r['hidden']:.2f} |"
        )
    (args.out_dir / "offload.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    bad = [r for r in rows if abs(r["error"]) > BOUND or not r["bit_exact_and_identical"]]
    if bad:
        print(
            f"FAILED: {len(bad)} rows off by more than {BOUND:.0%} or not bit-exact",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
