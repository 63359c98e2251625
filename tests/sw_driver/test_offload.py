"""sw_driver.offload: experts placed in host memory run bit-exact over the slower link.

On the small top with a host tier (`VerilatorDevice(host_link=...)`): the same
decode layer with every expert in device memory and with every expert in host
memory gives the golden outputs bit for bit; the host tier reads exactly the
used experts' regions; the cycle model's prediction of the slowdown
(`pymodel.expert_cache.host_layer_cycles`) is printed beside the measurement
(its error is a bench result, bench/offload_bench.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.config import ConfigError
from pymodel.expert_cache import HostLink, host_layer_cycles, simulate_cache
from pymodel.families import family_spec
from sim.tb.layer_cases import SMALL_TOP, make_case
from sw_driver.compile import compile_layer
from sw_driver.decode_stream import DecodeStack
from sw_driver.device import GoldenDevice, VerilatorDevice
from sw_driver.offload import CachedDevice, expert_regions, place_on_host

LINK = HostLink(bytes_per_cycle=4, latency=200)
SPEC = family_spec("mixtral", d_model=32, d_ff=64, n_experts=8)
SIZES = {"d_model": 32, "d_ff": 48, "n_experts": 8}


def test_experts_in_host_memory_run_bit_exact_and_slower() -> None:
    case = make_case("host", SPEC, SMALL_TOP, tokens=1, seed=3)
    golden = GoldenDevice(SMALL_TOP).run(case.ql, case.x_q)
    device = VerilatorDevice(SMALL_TOP, host_link=LINK)
    near = device.run(case.ql, case.x_q)
    assert device.last_tiers["host"]["bytes_read"] == 0
    device.host_experts = tuple(range(SPEC.n_experts))
    far = device.run(case.ql, case.x_q)
    for out in (near, far):
        assert np.array_equal(out.y_q, golden.y_q)
        assert np.array_equal(out.expert_ids, golden.expert_ids)
    used = np.unique(golden.expert_ids).tolist()
    image = device.last_image
    assert device.last_tiers["host"]["bytes_read"] == sum(
        r.size for e in used for _, r in expert_regions(image, e)
    )
    assert far.counters["bytes_read"] == near.counters["bytes_read"]
    slow, fast = far.counters["cycles_total"], near.counters["cycles_total"]
    assert slow > fast
    counts = golden.tokens_per_expert
    predicted = host_layer_cycles(SMALL_TOP, SPEC, 1, counts, LINK, tuple(range(8)))
    print(
        f"host experts: measured {slow} cycles, model {predicted:.0f} ({predicted / slow - 1:+.1%})"
    )


def test_placing_bad_experts_or_a_base_inside_the_image_is_refused() -> None:
    case = make_case("host_bad", SPEC, SMALL_TOP, tokens=1, seed=3)
    image = compile_layer(case.ql, case.x_q, SMALL_TOP)
    with pytest.raises(ConfigError, match="does not exist"):
        place_on_host(image, 1 << 20, [8])
    with pytest.raises(ConfigError, match="inside the device image"):
        place_on_host(image, 4096, [0])
    with pytest.raises(ConfigError, match="multiple of 4096"):
        place_on_host(image, (1 << 20) + 16, [0])
    routed = compile_layer(case.ql, case.x_q, SMALL_TOP, resident_experts=[0])
    with pytest.raises(ConfigError, match="no memory in this image"):
        place_on_host(routed, 1 << 20, [1])
    with pytest.raises(ConfigError, match="must be a HostLink"):
        VerilatorDevice(SMALL_TOP, host_link=(4, 200))


@pytest.mark.parametrize(("policy", "slots"), [("lru", 2), ("lfu", 4), ("pinned", 2)])
def test_a_cached_decode_stream_is_bit_exact_and_decides_as_the_model(
    policy: str, slots: int
) -> None:
    """4 layers x 16 steps on the RTL with S slots per layer: every call bit-exact, the
    outputs those of the all-in-device run, hits and misses those `simulate_cache` gives
    on the stream's trace, and the link carries exactly the missed experts."""
    stack = DecodeStack.build("mixtral", layers=4, seed=2, cfg=SMALL_TOP, **SIZES)
    near = stack.run(VerilatorDevice(SMALL_TOP, host_link=LINK), 16)
    popularity = np.stack(
        [np.bincount(near.trace.experts[:, i].ravel(), minlength=8) for i in range(4)]
    )
    layers = [layer.ql for layer in stack.layers]
    cached = CachedDevice(
        VerilatorDevice(SMALL_TOP, host_link=LINK), layers, slots, policy, popularity
    )
    far = stack.run(cached, 16)
    assert near.all_bit_exact and far.all_bit_exact
    assert np.array_equal(far.y_q, near.y_q) and far.tokens == near.tokens
    model = simulate_cache(near.trace, slots, policy)
    assert np.array_equal(cached.counters.hits, model.hits)
    assert np.array_equal(cached.counters.misses, model.misses)
    image = cached.device.last_image
    expert_bytes = sum(r.size for _, r in expert_regions(image, 0))
    assert np.array_equal(cached.counters.link_bytes, model.misses * expert_bytes)
    assert (far.cycles.sum(axis=1) >= near.cycles.sum(axis=1)).all()
    print(
        f"{policy} S={slots}: hits {model.hits.tolist()} misses {model.misses.tolist()}, "
        f"cycles/token {far.cycles.sum() / 16:.0f} vs {near.cycles.sum() / 16:.0f} in device"
    )
