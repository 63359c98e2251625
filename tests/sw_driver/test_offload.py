"""sw_driver.offload: experts placed in host memory run bit-exact over the slower link.

On the small top with a host tier (`VerilatorDevice(host_link=...)`): the same
decode layer with every expert in device memory and with every expert in host
memory gives the golden outputs bit for bit; the host tier reads exactly the
used experts' regions; the cycle model's prediction of the slowdown
(`pymodel.expert_cache.host_layer_cycles`) is printed beside the measurement
(its error is a bench result, bench/offload_bench.py). The expert cache
(`CachedDevice`, one persistent session) runs decode streams bit-exact with and
without prefetch on the copy engine, deciding exactly as the model's
`simulate_cache`; bad input (prefetch without a copy engine, a cache larger
than device memory, a descriptor outside both tiers, copies that never finish)
is a clear error, never a hang.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from contract import layout
from pymodel.config import ConfigError
from pymodel.expert_cache import HostLink, host_layer_cycles, simulate_cache
from pymodel.families import family_spec
from sim.tb.layer_cases import SMALL_TOP, make_case
from sw_driver.compile import compile_layer, unmapped_addr
from sw_driver.decode_stream import DecodeStack
from sw_driver.device import DeviceError, GoldenDevice, VerilatorDevice
from sw_driver.offload import CachedDevice, expert_regions, place_on_host

LINK = HostLink(bytes_per_cycle=4, latency=200)
SPEC = family_spec("mixtral", d_model=32, d_ff=64, n_experts=8)
SIZES = {"d_model": 32, "d_ff": 48, "n_experts": 8}
COPY_TOP = dataclasses.replace(SMALL_TOP, copy_engine=True)
"""The small top with the copy engine: every cached stream here runs on it (one build)."""


@pytest.fixture(scope="module")
def stream():
    """The 4-layer Mixtral stack and its 16-step stream with every expert in device memory."""
    stack = DecodeStack.build("mixtral", layers=4, seed=2, cfg=COPY_TOP, **SIZES)
    near = stack.run(VerilatorDevice(COPY_TOP, host_link=LINK), 16)
    assert near.all_bit_exact
    return stack, near


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


@pytest.mark.parametrize(
    ("policy", "slots", "prefetch"),
    [
        ("lru", 2, False),
        ("lfu", 4, False),
        ("pinned", 2, False),
        ("lru", 2, True),
        ("lfu", 1, True),
    ],
)
def test_a_cached_decode_stream_is_bit_exact_and_decides_as_the_model(
    stream, policy: str, slots: int, prefetch: bool
) -> None:
    """4 layers x 16 steps on the RTL with S slots per layer, with and without prefetch on
    the copy engine: every call bit-exact, the outputs those of the all-in-device run, hits,
    misses, prefetches and used prefetches those `simulate_cache` gives on the stream's
    trace and pre-gated predictions, and the link carries exactly the missed experts and
    the copies."""
    stack, near = stream
    popularity = np.stack(
        [np.bincount(near.trace.experts[:, i].ravel(), minlength=8) for i in range(4)]
    )
    layers = [layer.ql for layer in stack.layers]
    cached = CachedDevice(
        VerilatorDevice(COPY_TOP, host_link=LINK),
        layers,
        slots,
        policy,
        popularity,
        prefetch=prefetch,
    )
    far = stack.run(cached, 16)
    assert far.all_bit_exact
    assert np.array_equal(far.y_q, near.y_q) and far.tokens == near.tokens
    assert np.array_equal(far.predicted, near.predicted)
    model = simulate_cache(near.trace, slots, policy, prefetch=near.predicted if prefetch else None)
    c = cached.counters
    assert np.array_equal(c.hits, model.hits)
    assert np.array_equal(c.misses, model.misses)
    assert np.array_equal(c.prefetched, model.prefetched)
    assert np.array_equal(c.prefetch_used, model.prefetch_used)
    assert prefetch == bool(c.prefetched.sum())
    image = compile_layer(layers[0], np.zeros((1, 32), dtype=np.int64), COPY_TOP)
    expert_bytes = sum(r.size for _, r in expert_regions(image, 0))
    copy_bytes = cached.copy_bytes
    assert np.array_equal(c.link_bytes, model.misses * expert_bytes + c.prefetched * copy_bytes)
    assert (far.cycles.sum(axis=1) >= near.cycles.sum(axis=1)).all()
    print(
        f"{policy} S={slots} prefetch {prefetch}: hits {model.hits.tolist()} misses "
        f"{model.misses.tolist()} prefetched {c.prefetched.tolist()} used "
        f"{c.prefetch_used.tolist()} wait {c.wait_cycles.tolist()}, cycles/token "
        f"{far.cycles.sum() / 16:.0f} vs {near.cycles.sum() / 16:.0f} in device"
    )


def test_bad_cache_set_ups_are_refused(stream) -> None:
    """Prefetch on a build without the copy engine, a cache larger than device memory, a
    prediction of an expert that does not exist, a layer not of the stack, a session whose
    model another user reset."""
    stack, _ = stream
    layers = [layer.ql for layer in stack.layers]
    with pytest.raises(ConfigError, match="copy engine"):
        CachedDevice(VerilatorDevice(SMALL_TOP, host_link=LINK), layers, 2, "lru", prefetch=True)
    small = VerilatorDevice(COPY_TOP, host_link=LINK, host_base=1 << 17)
    with pytest.raises(ConfigError, match="device memory"):
        CachedDevice(small, layers, 8, "lru")
    device = VerilatorDevice(COPY_TOP, host_link=LINK)
    cached = CachedDevice(device, layers, 2, "lru", prefetch=True)
    with pytest.raises(ConfigError, match="not in"):
        cached.prefetch(layers[1], [8, 0])
    with pytest.raises(ConfigError, match="not one of the stack's"):
        cached.prefetch(dataclasses.replace(layers[1]), [0])
    off = CachedDevice(VerilatorDevice(COPY_TOP, host_link=LINK), layers, 2, "lru")
    with pytest.raises(ConfigError, match="without prefetch"):
        off.prefetch(layers[1], [0, 1])
    CachedDevice(device, layers, 2, "lru")  # takes the same model: the first lost its memory
    with pytest.raises(ConfigError, match="session was reset"):
        cached.run(layers[0], np.zeros((1, 32), dtype=np.int64))


def test_a_descriptor_outside_both_tiers_is_a_bus_error(stream) -> None:
    """An expert whose descriptor points above host memory (outside both tiers) stops the
    layer with a bus error, a `DeviceError`, never a hang or a silent read."""
    stack, _ = stream
    layers = [layer.ql for layer in stack.layers]
    cached = CachedDevice(VerilatorDevice(COPY_TOP, host_link=LINK), layers, 1, "lru")
    table = cached.layer_image(0).regions["expert_table"].addr
    size = layout.desc_bytes(COPY_TOP)
    assert unmapped_addr(COPY_TOP) >= cached.sim.mem.size
    nowhere = layout.addr_word(COPY_TOP, unmapped_addr(COPY_TOP), "nowhere")
    for e in range(8):
        at = table + e * size
        record = cached.sim.mem[at : at + layout.EXPERT_DESCRIPTOR.itemsize]
        record.view(layout.EXPERT_DESCRIPTOR)[0][layout.ADDRESS_FIELDS[0]] = nowhere
    x_q = np.zeros((1, 32), dtype=np.int64)
    with pytest.raises(DeviceError, match="BUS_READ_ERROR"):
        cached.run(layers[0], x_q)


def test_copies_that_outlast_the_timeout_are_a_device_error(stream) -> None:
    """Waiting for the copy engine is bounded: two copies (~3000 cycles) beside a layer
    whose experts are cached (~2300 cycles) still run after a `copy_timeout` of 64."""
    stack, _ = stream
    layers = [layer.ql for layer in stack.layers]
    cached = CachedDevice(
        VerilatorDevice(COPY_TOP, host_link=LINK), layers, 2, "lru", prefetch=True, copy_timeout=64
    )
    x_q = np.zeros((1, 32), dtype=np.int64)
    cached.run(layers[0], x_q)  # its experts now cached
    cached.prefetch(layers[1], [0, 1])
    cached.run(layers[0], x_q)
    with pytest.raises(DeviceError, match="still busy"):
        cached.run(layers[1], x_q)
