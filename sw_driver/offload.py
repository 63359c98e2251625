"""Expert offloading in the driver: where each expert's weights live (device or host memory).

Why: a real MoE model's experts do not fit next to the accelerator. The hardware
reads every expert through the descriptor in its expert table, so an expert
lives wherever its descriptor points: device memory, or host memory behind the
slower link of the simulated system (`sim.fast.FastSim.set_host_tier`, the same
`pymodel.expert_cache.HostLink` the cycle model charges).

`place_on_host` moves chosen experts of a compiled layer image (their weight
streams and parameter words; the LUTs stay in the device's LUT table, which
`LUT_TABLE_ADDR` indexes by expert number) to host memory from `host_base` up
and rewrites their descriptors. Nothing else of the image changes, so the
layer's outputs cannot depend on where an expert lives: only its cycles do.

`CachedDevice` is the driver's expert cache on that system: S slots per layer
in device memory under a policy of `pymodel.expert_cache.LayerCache` (the same
object the model's `simulate_cache` replays a trace through), every other
expert in host memory. A layer call reads its cached experts from device
memory and its misses over the host link on demand; a miss is then admitted
(read-through: the demand read fills the slot). Per layer it counts hits,
misses and the bytes read over the link. Prefetch (copies of the next layer's
pre-gated experts on the copy engine while a layer runs) is not driven yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from contract import layout
from pymodel.config import ConfigError, _check_int
from pymodel.expert_cache import POLICIES, LayerCache
from pymodel.quantize import QuantizedLayer

from .compile import PAGE, Chunk, LayerImage, Region
from .device import DeviceResult, VerilatorDevice

__all__ = ["CacheCounters", "CachedDevice", "expert_regions", "place_on_host"]

_PARTS = ("w1", "w2", "params")
"""The regions of one expert that its descriptor addresses (`layout.ADDRESS_FIELDS` order)."""


def expert_regions(image: LayerImage, expert: int) -> list[tuple[str, Region]]:
    """Expert `expert`'s addressed regions in `image` (name, region), in descriptor order."""
    names = [f"expert{expert}.{part}" for part in _PARTS]
    missing = [n for n in names if n not in image.regions]
    if missing:
        raise ConfigError(
            f"expert {expert} has no memory in this image (regions {missing} missing): "
            "only resident experts can be placed"
        )
    return [(n, image.regions[n]) for n in names]


def _check_experts(image: LayerImage, experts: Iterable[int]) -> list[int]:
    n = image.spec.n_experts
    out = []
    for e in experts:
        if isinstance(e, bool) or not isinstance(e, int | np.integer) or not 0 <= e < n:
            raise ConfigError(f"expert {e!r} does not exist; experts are ints in [0, {n})")
        out.append(int(e))
    return sorted(set(out))


def place_on_host(image: LayerImage, host_base: int, experts: Iterable[int]) -> LayerImage:
    """`image` with `experts`' weights and parameters moved to host memory at `host_base` up.

    The experts keep their region sizes and alignment; their descriptors in the
    expert table point at the new addresses. `host_base` must be page-aligned,
    above the whole image, and its regions must stay inside the address space.
    """
    cfg = image.cfg
    chosen = _check_experts(image, experts)
    end = image.base + image.size
    if isinstance(host_base, bool) or not isinstance(host_base, int) or host_base % PAGE:
        raise ConfigError(f"host_base = {host_base!r} must be an int multiple of {PAGE}")
    if host_base < end:
        raise ConfigError(
            f"host_base = {host_base:#x} lies inside the device image (it ends at {end:#x})"
        )
    if not chosen:
        return image
    moved: dict[str, int] = {}  # region name -> new address
    at = host_base
    for e in chosen:
        for name, region in expert_regions(image, e):
            at = layout.align(at, layout.region_align(cfg))
            moved[name] = at
            at += region.size
    top = 2**cfg.addr_bits - max(PAGE, layout.addr_granule(cfg))
    if at > top:
        raise ConfigError(
            f"host memory from {host_base:#x} cannot hold experts {chosen}: they end at "
            f"{at:#x}, beyond the {cfg.addr_bits}-bit address space"
        )
    table = image.regions["expert_table"].addr
    desc_addrs = {table + e * layout.desc_bytes(cfg): e for e in chosen}
    chunks: list[Chunk] = []
    for chunk in image.chunks:
        if chunk.region in moved:
            offset = chunk.addr - image.regions[chunk.region].addr
            chunk = dataclasses.replace(chunk, addr=moved[chunk.region] + offset)
        elif chunk.region == "expert_table" and chunk.addr in desc_addrs:
            chunk = _redirected(chunk, desc_addrs[chunk.addr], moved, cfg)
        chunks.append(chunk)
    regions = dict(image.regions)
    for name, addr in moved.items():
        regions[name] = Region(addr, image.regions[name].size)
    size = layout.align(at - image.base, PAGE)
    return dataclasses.replace(image, chunks=tuple(chunks), regions=regions, size=size)


def _redirected(chunk: Chunk, expert: int, moved: dict[str, int], cfg) -> Chunk:
    """Expert `expert`'s descriptor chunk with its address words pointing at `moved`."""
    record = np.frombuffer(chunk.produce().tobytes(), dtype=layout.EXPERT_DESCRIPTOR).copy()
    for field, part in zip(layout.ADDRESS_FIELDS, _PARTS, strict=True):
        name = f"expert{expert}.{part}"
        record[field] = layout.addr_word(cfg, moved[name], name)
    raw = record.view(np.uint8).reshape(-1)
    return dataclasses.replace(chunk, produce=lambda: raw)


@dataclasses.dataclass
class CacheCounters:
    """Per layer: picks found in device memory, picks read over the link, bytes over it."""

    hits: np.ndarray
    misses: np.ndarray
    link_bytes: np.ndarray


class CachedDevice:
    """A `VerilatorDevice` with a host tier behind an expert cache per layer (module doc).

    `layers` are the stack's quantised layers (a call is matched to its layer by
    identity); `popularity[layer]` ranks experts for the pinned policy.
    """

    name = "verilator"

    def __init__(
        self,
        device: VerilatorDevice,
        layers: list[QuantizedLayer],
        slots: int,
        policy: str,
        popularity: np.ndarray | None = None,
    ) -> None:
        if not isinstance(device, VerilatorDevice) or device.host_link is None:
            raise ConfigError("CachedDevice needs a VerilatorDevice with a host_link")
        if policy not in POLICIES:
            raise ConfigError(f"unknown cache policy {policy!r}; allowed: {list(POLICIES)}")
        n_experts = layers[0].spec.n_experts
        _check_int("CachedDevice", "slots", slots, 0, n_experts)
        if popularity is None:
            popularity = np.zeros((len(layers), n_experts), dtype=np.int64)
        popularity = np.asarray(popularity)
        if popularity.shape != (len(layers), n_experts):
            raise ConfigError(
                f"popularity has shape {popularity.shape}, expected {(len(layers), n_experts)}"
            )
        self.device, self.cfg = device, device.cfg
        self._index = {id(ql): i for i, ql in enumerate(layers)}
        self.caches = [LayerCache(policy, slots, popularity[i]) for i in range(len(layers))]
        zeros = np.zeros(len(layers), dtype=np.int64)
        self.counters = CacheCounters(zeros.copy(), zeros.copy(), zeros.copy())

    def run(self, ql: QuantizedLayer, x_q: np.ndarray) -> DeviceResult:
        """Run layer `ql` with its uncached experts in host memory; update its cache."""
        layer = self._index.get(id(ql))
        if layer is None:
            raise ConfigError("CachedDevice.run: this layer is not one of the stack's")
        cache = self.caches[layer]
        resident = cache.contents
        self.device.host_experts = tuple(e for e in range(ql.spec.n_experts) if e not in resident)
        result = self.device.run(ql, x_q)
        self.counters.link_bytes[layer] += self.device.last_tiers["host"]["bytes_read"]
        picks = result.expert_ids.reshape(-1).tolist()
        for e in picks:
            if cache.present(e):
                self.counters.hits[layer] += 1
            else:
                self.counters.misses[layer] += 1
                cache.admit(e, keep=frozenset(picks))
            cache.use(e)
        return result
