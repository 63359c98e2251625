"""An expert cache over a host link at full size, model only (docs/codesign.md's Mixtral table).

Mixtral-8x7B (32 layers) decodes 64 steps of `synthetic_trace` (skew 1.0,
reuse 0.3, seed 0) on a 16 × 4 array with a 64 B/cycle device bus and a host
link of 8 B/cycle and 1,000 cycles a fetch; each policy and slot count is
priced by `decode_cost` with and without a temporal prefetch (each layer's
experts predicted as the previous token's). Prints the Markdown table.

    python bench/offload_model.py
"""

from __future__ import annotations

import numpy as np

from pymodel.config import AccelConfig
from pymodel.expert_cache import POLICIES, DecodeCost, HostLink, decode_cost, simulate_cache
from pymodel.expert_traces import synthetic_trace
from pymodel.models import REAL_MODELS

CFG = AccelConfig(rows=16, cols=4, mem_bytes_per_cycle=64, max_d_model=4096, max_d_ff=14336)
LINK = HostLink(bytes_per_cycle=8, latency=1000)
NAMES = {"lru": "LRU", "lfu": "LFU", "pinned": "pinned"}


def hidden(cost: DecodeCost) -> float:
    """Share of the all-over-link penalty the cache hides."""
    span = cost.all_over_link - cost.all_in_device
    return float((cost.all_over_link - cost.cycles_per_token) / span)


def main() -> None:
    spec = REAL_MODELS["Mixtral-8x7B"]
    trace = synthetic_trace(layers=32, steps=64, n_experts=8, top_k=2, skew=1.0, reuse=0.3, seed=0)
    previous = np.concatenate([np.full((1, 32, 2), -1), trace.experts[:-1]])
    print(f"measured reuse {trace.reuse_rate():.2f}")
    rows = []
    for policy in POLICIES:
        for slots in (1, 2, 4):
            plain = simulate_cache(trace, slots, policy)
            cost = decode_cost(CFG, spec, trace, plain, LINK)
            fetched = simulate_cache(trace, slots, policy, prefetch=previous)
            ahead = decode_cost(CFG, spec, trace, fetched, LINK)
            rows.append(
                f"| {NAMES[policy]} | {slots} | {plain.hit_rate:.2f} | "
                f"{cost.cycles_per_token / 1e6:,.0f} | {hidden(cost):.2f} | "
                f"{cost.link_bytes_per_token / 1e9:.2f} | "
                f"{ahead.cycles_per_token / 1e6:,.0f} ({hidden(ahead):.2f}) |"
            )
    print(
        f"bounds: {cost.all_in_device / 1e6:,.0f} M cycles a token in device memory, "
        f"{cost.all_over_link / 1e6:,.0f} M over the link"
    )
    print(
        "| policy | S | hit rate | M cycles / token | hidden | GB over the link / token "
        "| with prefetch: M cycles / token (hidden) |"
    )
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
