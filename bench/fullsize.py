"""`make fullsize`: one full-size MoE layer decode step (T = 1) through the RTL, bit-exact.

Two layers, on `configs/fullsize.json` (the default 8×8 array and 16-byte bus,
its width limits raised to full-size shapes):

- `mixtral_8x7b`: d 4096, f 14336, 8 experts, top-2 (softmax, renormalised);
- `deepseek_v3`: d 7168, f 2048, 256 routed experts + 1 shared (f 2048), top-8
  of sigmoid scores + correction bias inside the 4 best of 8 groups, × 2.5.

Weights are `pymodel.synthetic` layers (seeded int8, generated per expert on
demand). The config has 40-bit addresses, so every expert of the layer has
its real address (DeepSeek-V3's 257 experts span 11.3 GB of address space),
and the Verilator backend fills an expert's weight streams and parameter
words only when the hardware's DMA first reads them
(`VerilatorDevice(experts="demand")`, a sparse memory): the hardware's own
routing decides which experts are generated, no prediction is made. Each
step is checked bit for bit against the golden model (routing, gate weights,
per-expert counts, output), and for honesty: the experts the hardware filled
must be exactly the routed ones (and the shared one), and the DMA's
BYTES_READ counter must equal, byte for byte, the router, descriptors, LUTs,
parameters and weight streams of the routed experts (plus the tokens and the
expert outputs read back) — so the hardware read no other expert.
Prints the wall time, peak RSS, simulated cycles, the cycle model's
prediction and the roofline bound; exit status 1 if a check fails or a step
takes longer than `WALL_BOUND_S`.

    python bench/fullsize.py [mixtral_8x7b|deepseek_v3 ...] [--seed N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from contract import layout
from flow.paths import REPO_ROOT
from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.cycles import layer_cycles
from pymodel.layer import golden_layer
from pymodel.models import REAL_MODELS
from pymodel.perf import roofline
from pymodel.synthetic import synthetic_layer, synthetic_tokens
from sw_driver.compile import LayerImage
from sw_driver.device import VerilatorDevice

CONFIG = REPO_ROOT / "configs" / "fullsize.json"
WALL_BOUND_S = 600.0
"""Each decode step must finish in 10 minutes: weights, simulation, golden model and the
model build (a cold build of the fullsize model takes ~3 min of it)."""
DEFAULT_SEED = 2024

LAYERS: dict[str, MoESpec] = {
    "mixtral_8x7b": REAL_MODELS["Mixtral-8x7B"],
    "deepseek_v3": REAL_MODELS["DeepSeek-V3"],
}
"""The full-size layers, by the names `make fullsize` passes: `pymodel.models`' real models."""


def decode_read_bytes(image: LayerImage, counts: np.ndarray) -> int:
    """Bytes a decode step (T = 1) of `image` reads, from the regions the image holds.

    Route: the router's parameter words, the correction bias, the token row
    and the router weight stream; per expert with a kept row: its descriptor,
    parameter words, LUT and both weight streams; the shared expert likewise;
    combine: the expert output rows read back from scratch.
    """
    if image.tokens != 1:
        raise ConfigError(f"decode_read_bytes counts a decode step (T = 1), got T = {image.tokens}")
    spec, cfg, regions = image.spec, image.cfg, image.regions
    beat = cfg.mem_bytes_per_cycle
    ncol = spec.n_experts + (1 if spec.shared_gate else 0)
    ys = image.meta["row_bytes"]
    total = layout.align(4 * ncol, beat) + ys + regions["router_weights"].size
    if spec.correction_bias:
        total += layout.align(4 * spec.n_experts, beat)
    names = [f"expert{e}" for e in np.flatnonzero(counts)]
    if spec.has_shared:
        names.append("shared")
    for name in names:
        total += layout.desc_bytes(cfg) + layout.lut_bytes(cfg)
        total += sum(regions[f"{name}.{part}"].size for part in ("w1", "w2", "params"))
    total += int(np.sum(counts)) * ys + (ys if spec.has_shared else 0)
    return total


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def filled_bytes(image: LayerImage, filled: tuple[str, ...]) -> int:
    """Bytes written into the memory: the image's eager chunks and the lazy chunks of the
    experts the hardware read (`filled`)."""
    return sum(c.size for c in image.chunks if not c.lazy or c.region.partition(".")[0] in filled)


def decode_step(name: str, cfg: AccelConfig, seed: int) -> dict:
    """Run layer `name` for one token on Verilator and the golden model; measure and check."""
    spec = LAYERS[name]
    start = time.perf_counter()
    ql = synthetic_layer(spec, cfg, seed)
    x_q = synthetic_tokens(spec, cfg, 1, seed)
    device = VerilatorDevice(cfg, experts="demand", max_cycles=200_000_000)
    hw = device.run(ql, x_q)
    hw_s = time.perf_counter() - start
    golden_start = time.perf_counter()
    ref = golden_layer(ql, x_q, cfg)
    golden_s = time.perf_counter() - golden_start
    image = device.last_image
    assert image is not None
    counts = ref.dispatch.counts
    routed = [f"expert{e}" for e in np.flatnonzero(counts)]
    shared = ["shared"] if spec.has_shared else []
    checks = {
        "expert ids": np.array_equal(hw.expert_ids, ref.routing.expert_ids),
        "gate weights": np.array_equal(hw.gate_weights, ref.routing.gate_weights),
        "tokens per expert": np.array_equal(hw.tokens_per_expert, counts),
        "output y_q": np.array_equal(hw.y_q, ref.y_q),
        "every expert addressed": len(image.resident) == spec.n_experts,
        "filled = routed": sorted(device.last_filled) == sorted(routed + shared),
        "bytes_read = written": hw.counters["bytes_read"] == decode_read_bytes(image, counts),
    }
    predicted = layer_cycles(cfg, spec, 1, counts)
    bound = roofline(spec, cfg, 1, counts)
    return {
        "name": name,
        "seed": seed,
        "experts": [int(e) for e in np.flatnonzero(counts)],
        "filled": list(device.last_filled),
        "wall_s": time.perf_counter() - start,
        "hw_s": hw_s,
        "sim_s": hw.wall_s,
        "golden_s": golden_s,
        "peak_rss": peak_rss_bytes(),
        "written_bytes": filled_bytes(image, device.last_filled),
        "address_span": image.mem_bytes,
        "cycles": hw.counters["cycles_total"],
        "predicted": int(predicted.cycles_total[0]),
        "bytes_read": hw.counters["bytes_read"],
        "predicted_bytes_read": int(predicted.bytes_read[0]),
        "roofline": bound.bound_cycles,
        "bound_by": bound.bound_by,
        "checks": checks,
    }


def report(r: dict) -> str:
    """One decode step as text."""
    gib = 2**30
    lines = [
        f"{r['name']} (seed {r['seed']}): routed experts {r['experts']}; "
        f"filled on demand, in the hardware's order: {', '.join(r['filled'])}",
        f"  wall {r['wall_s']:.1f} s (build lookup + weights + Verilator {r['hw_s']:.1f} s, "
        f"of it simulation {r['sim_s']:.1f} s; golden {r['golden_s']:.1f} s), "
        f"peak RSS {r['peak_rss'] / gib:.2f} GiB",
        f"  image: {r['written_bytes'] / gib:.3f} GiB written of a "
        f"{r['address_span'] / gib:.3f} GiB address span",
        f"  cycles {r['cycles']:,} ({r['cycles'] / max(r['sim_s'], 1e-9) / 1e6:.2f} M/s); "
        f"cycle model {r['predicted']:,} ({r['cycles'] / r['predicted']:.4f}×); "
        f"roofline {r['roofline']:,.0f} ({r['bound_by']}-bound, measured "
        f"{r['cycles'] / r['roofline']:.3f}×)",
        f"  bytes read {r['bytes_read']:,} (cycle model {r['predicted_bytes_read']:,})",
    ]
    lines += [f"  {'ok  ' if ok else 'FAIL'} {what}" for what, ok in r["checks"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("layers", nargs="*", help=f"any of {list(LAYERS)} (default: all)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.layers) - set(LAYERS))
    if unknown:
        parser.error(f"unknown layer(s) {unknown}; allowed: {list(LAYERS)}")
    cfg = AccelConfig.from_json(CONFIG.read_text())
    failed = False
    for name in args.layers or list(LAYERS):
        r = decode_step(name, cfg, args.seed)
        print(report(r), flush=True)
        if not all(r["checks"].values()) or r["wall_s"] > WALL_BOUND_S:
            failed = True
            print(f"  FAIL: checks {r['checks']}, wall {r['wall_s']:.1f} s (bound {WALL_BOUND_S})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
