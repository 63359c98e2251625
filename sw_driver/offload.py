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

`CachedDevice` is the driver's expert cache on that system, one persistent
session of the Verilator model (`VerilatorDevice.session`): memory and model
survive between layer calls. Every layer's image is placed once at its own
device base, every expert of every layer in host memory (the host tier), and
S device-memory slots per layer after the images hold the cached experts. A
policy of `pymodel.expert_cache.LayerCache` (the same object the model's
`simulate_cache` replays a trace through) decides for both. Before each call
only what changed is rewritten: the layer's tokens and the descriptors of its
experts that moved (each points at its slot or its host copy). A call reads
its cached experts from device memory and its misses over the host link on
demand; a miss is then admitted read-through (the demand read's bytes land in
the slot, at no extra cycles, as the model charges). Per layer it counts hits,
misses, prefetched experts, prefetches used, bytes over the link and the
exposed copy wait.

Prefetch (`prefetch=True`, a build with `AccelConfig.copy_engine`): the
decode stream names layer l+1's pre-gated experts (`DecodeStack.predict`)
before it runs layer l; layer l's call admits them into layer l+1's cache
(never evicting another prediction; pinned caches have no free slot, so
fetch nothing ahead) and pushes their copies (host copy -> slot, one
descriptor an expert) on the copy engine just before `CTRL.start`, so they
share the bus with layer l (`rtl.axi_arbiter`). Before layer l+1 starts the
driver waits for the copy engine (bounded by `copy_timeout`, a `DeviceError`
beyond); the copies' cycles beyond layer l (from `COPY_BUSY_CYCLES`) are the
exposed prefetch cost, reported as the call's `prefetch_wait_cycles` and
counted in the stream's cycles per token.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from contract import layout
from contract.regs import COPY_QUEUE_DEPTH, REGISTER_MAP, ErrorCause
from pymodel.config import ConfigError, _check_int
from pymodel.expert_cache import POLICIES, LayerCache
from pymodel.quantize import QuantizedLayer

from .compile import PAGE, Chunk, LayerImage, Region, compile_layer
from .device import DeviceError, DeviceResult, VerilatorDevice

__all__ = ["CacheCounters", "CachedDevice", "expert_regions", "place_on_host"]

COPY_STATUS = REGISTER_MAP["COPY_STATUS"].register
COPY_CTRL = REGISTER_MAP["COPY_CTRL"].register

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
    raw = _descriptor(chunk.produce(), expert, moved, cfg)
    return dataclasses.replace(chunk, produce=lambda: raw)


def _descriptor(record: np.ndarray, expert: int, addrs: dict[str, int], cfg) -> np.ndarray:
    """Descriptor bytes `record` with expert `expert`'s address words naming `addrs`."""
    out = np.frombuffer(record.tobytes(), dtype=layout.EXPERT_DESCRIPTOR).copy()
    for field, part in zip(layout.ADDRESS_FIELDS, _PARTS, strict=True):
        name = f"expert{expert}.{part}"
        out[field] = layout.addr_word(cfg, addrs[name], name)
    return out.view(np.uint8).reshape(-1)


@dataclasses.dataclass
class CacheCounters:
    """Per layer: picks found in device memory (hits), picks read over the link (misses),
    experts copied ahead by the copy engine (prefetched) and picks those copies served
    (prefetch_used), bytes over the link (demand reads and copies), exposed copy wait."""

    hits: np.ndarray
    misses: np.ndarray
    link_bytes: np.ndarray
    prefetched: np.ndarray
    prefetch_used: np.ndarray
    wait_cycles: np.ndarray

    @classmethod
    def zeros(cls, layers: int) -> CacheCounters:
        return cls(*(np.zeros(layers, dtype=np.int64) for _ in range(6)))


@dataclasses.dataclass(frozen=True)
class _Layer:
    """Where one layer lives in the session: its placed image and its experts' host copies."""

    image: LayerImage
    host_start: tuple[int, ...]  # per expert: first byte of its regions in host memory
    offsets: dict[str, int]  # expert<e>.<part> -> offset from that expert's host_start
    records: tuple[np.ndarray, ...]  # per expert: its descriptor pointing at host memory
    span: int  # bytes from an expert's host_start to the end of its last region (a copy)
    device_end: int  # first byte above the layer's device-memory part


class CachedDevice:
    """A `VerilatorDevice` with a host tier behind an expert cache per layer (module doc).

    `layers` are the stack's quantised layers (a call is matched to its layer by
    identity); `popularity[layer]` ranks experts for the pinned policy. With
    `prefetch` (a build with `AccelConfig.copy_engine`), `prefetch(ql, experts)`
    names the experts of the layer after the next call; that call queues their
    copies on the copy engine before it starts. Waiting for copies is bounded by
    `copy_timeout` cycles (a `DeviceError` beyond).
    """

    name = "verilator"

    def __init__(
        self,
        device: VerilatorDevice,
        layers: list[QuantizedLayer],
        slots: int,
        policy: str,
        popularity: np.ndarray | None = None,
        *,
        prefetch: bool = False,
        copy_timeout: int = 1_000_000,
    ) -> None:
        if not isinstance(device, VerilatorDevice) or device.host_link is None:
            raise ConfigError("CachedDevice needs a VerilatorDevice with a host_link")
        if policy not in POLICIES:
            raise ConfigError(f"unknown cache policy {policy!r}; allowed: {list(POLICIES)}")
        if prefetch and not device.cfg.copy_engine:
            raise ConfigError(
                "prefetch needs the copy engine: build with AccelConfig.copy_engine=True"
            )
        if not layers:
            raise ConfigError("CachedDevice needs at least one layer")
        n_experts = layers[0].spec.n_experts
        if any(ql.spec.n_experts != n_experts for ql in layers):
            raise ConfigError("every layer of a CachedDevice must have the same n_experts")
        _check_int("CachedDevice", "slots", slots, 0, n_experts)
        _check_int("CachedDevice", "copy_timeout", copy_timeout, 1)
        if popularity is None:
            popularity = np.zeros((len(layers), n_experts), dtype=np.int64)
        popularity = np.asarray(popularity)
        if popularity.shape != (len(layers), n_experts):
            raise ConfigError(
                f"popularity has shape {popularity.shape}, expected {(len(layers), n_experts)}"
            )
        self.device, self.cfg = device, device.cfg
        self.slots, self.prefetching, self.copy_timeout = slots, prefetch, copy_timeout
        self._index = {id(ql): i for i, ql in enumerate(layers)}
        self.caches = [LayerCache(policy, slots, popularity[i]) for i in range(len(layers))]
        self.counters = CacheCounters.zeros(len(layers))
        self._layers = self._place(layers)
        self._stride = layout.align(max(p.span for p in self._layers), PAGE)
        self._slot_base = self._layers[-1].device_end
        device_end = self._slot_base + len(layers) * slots * self._stride
        if device_end > device.host_base:
            raise ConfigError(
                f"a cache of {slots} slots x {len(layers)} layers ({self._stride} bytes a slot) "
                f"beside the layers' images needs {device_end:#x} bytes of device memory, more "
                f"than the {device.host_base:#x} below host memory (VerilatorDevice.host_base)"
            )
        self.sim = device.session(self._layers[-1].image.base + self._layers[-1].image.size)
        self._resets = device.resets
        self._slot_of: list[dict[int, int]] = [{} for _ in layers]
        self._written: list[list[int | None]] = [[None] * n_experts for _ in layers]
        for p in self._layers:
            p.image.write_into(self.sim.mem)
        for layer, cache in enumerate(self.caches):
            for e in sorted(cache.contents):  # pinned experts: in device memory from the start
                self._fill_slot(layer, e, None)
        self._ahead: tuple[int, list[int]] | None = None
        self._ahead_of: list[set[int]] = [set() for _ in layers]
        self._copies: dict[str, int] | None = None

    def _place(self, layers: list[QuantizedLayer]) -> list[_Layer]:
        """Every layer's image at its own device base, every expert in host memory."""
        placed = []
        base, host = 0, self.device.host_base
        for ql in layers:
            x_q = np.zeros((1, ql.spec.d_model), dtype=np.int64)
            image = compile_layer(ql, x_q, self.cfg, base=base)
            size, n = image.size, ql.spec.n_experts
            image = place_on_host(image, host, range(n))
            starts = tuple(image.regions[f"expert{e}.w1"].addr for e in range(n))
            offsets = {
                f"expert{e}.{part}": image.regions[f"expert{e}.{part}"].addr - starts[e]
                for e in range(n)
                for part in _PARTS
            }
            table = image.regions["expert_table"].addr
            by_addr = {c.addr: c for c in image.chunks if c.region == "expert_table"}
            records = tuple(
                by_addr[table + e * layout.desc_bytes(self.cfg)].produce() for e in range(n)
            )
            spans = [
                image.regions[f"expert{e}.{part}"].addr
                + image.regions[f"expert{e}.{part}"].size
                - starts[e]
                for e in range(n)
                for part in _PARTS
            ]
            span = layout.align(max(spans), self.cfg.mem_bytes_per_cycle)
            device_end = layout.align(base + size, PAGE)
            placed.append(_Layer(image, starts, offsets, records, span, device_end))
            base = device_end
            host = layout.align(image.base + image.size, PAGE)
        return placed

    def _slot_addr(self, layer: int, slot: int) -> int:
        return self._slot_base + (layer * self.slots + slot) * self._stride

    def _take_slot(self, layer: int, expert: int, victim: int | None) -> int:
        slot_of = self._slot_of[layer]
        if victim is not None:
            slot = slot_of.pop(victim)
        else:
            slot = min(set(range(self.slots)) - set(slot_of.values()))
        slot_of[expert] = slot
        return slot

    def _fill_slot(self, layer: int, expert: int, victim: int | None) -> None:
        """Read-through admission: the demand read's bytes land in the slot (no cycles)."""
        slot = self._take_slot(layer, expert, victim)
        placed = self._layers[layer]
        n = placed.span
        src, dst = placed.host_start[expert], self._slot_addr(layer, slot)
        self.sim.mem[dst : dst + n] = self.sim.mem[src : src + n]

    def _sync_table(self, layer: int) -> None:
        """Rewrite the descriptors of layer `layer`'s experts that moved since its last call."""
        placed = self._layers[layer]
        table = placed.image.regions["expert_table"].addr
        size = layout.desc_bytes(self.cfg)
        for e, record in enumerate(placed.records):
            slot = self._slot_of[layer].get(e)
            if self._written[layer][e] == slot:
                continue
            if slot is None:
                raw = record
            else:
                at = self._slot_addr(layer, slot)
                parts = {f"expert{e}.{p}": at + placed.offsets[f"expert{e}.{p}"] for p in _PARTS}
                raw = _descriptor(record, e, parts, self.cfg)
            self.sim.mem[table + e * size : table + e * size + raw.size] = raw
            self._written[layer][e] = slot

    @property
    def copy_bytes(self) -> int:
        """Bytes of one expert's copy (its regions, from its first to its last byte)."""
        return max(p.span for p in self._layers)

    def layer_image(self, layer: int) -> LayerImage:
        """Layer `layer`'s image as placed in the session (every expert in host memory)."""
        return self._layers[layer].image

    def prefetch(self, ql: QuantizedLayer, experts: Iterable[int]) -> None:
        """Name layer `ql`'s predicted experts (-1 pads): the next `run` (of the layer
        before it) queues their copies on the copy engine before it starts."""
        if not self.prefetching:
            raise ConfigError("this CachedDevice was made without prefetch")
        layer = self._layer(ql)
        n = ql.spec.n_experts
        wanted = [int(e) for e in experts]
        if any(not -1 <= e < n for e in wanted):
            raise ConfigError(f"predicted experts {wanted} are not in [0, {n}) (or -1)")
        if len({e for e in wanted if e >= 0}) > COPY_QUEUE_DEPTH:
            raise ConfigError(
                f"{len(wanted)} predicted experts exceed the copy queue ({COPY_QUEUE_DEPTH})"
            )
        self._ahead = (layer, wanted)

    def _layer(self, ql: QuantizedLayer) -> int:
        layer = self._index.get(id(ql))
        if layer is None:
            raise ConfigError("CachedDevice: this layer is not one of the stack's")
        return layer

    def settle(self) -> int:
        """Wait for the copy engine's queued copies; the cycles they took beyond the layer
        that ran beside them (exposed prefetch cost), 0 when none were queued."""
        if self._copies is None:
            return 0
        copies, self._copies = self._copies, None
        sim, waited = self.sim, 0
        status = COPY_STATUS.unpack(sim.read_reg("COPY_STATUS"))
        while status["busy"]:
            if waited >= self.copy_timeout:
                raise DeviceError(
                    f"the copy engine is still busy {waited} cycles after the layer "
                    f"(copy_timeout = {self.copy_timeout}): {status}"
                )
            sim.step(64)
            waited += 64
            status = COPY_STATUS.unpack(sim.read_reg("COPY_STATUS"))
        if status["error"]:
            cause = ErrorCause(sim.read_reg("COPY_ERROR_CAUSE"))
            addr = sim.read_reg("COPY_ERROR_ADDR")
            raise DeviceError(f"a prefetch copy failed: {cause.name} at {addr:#x}")
        copied = int(sim.read_reg("COPY_BYTES"))
        if copied != copies["bytes"]:
            raise DeviceError(f"the copy engine wrote {copied} bytes, {copies['bytes']} queued")
        host = sim.tier_counters()["host"]["bytes_read"]
        self.counters.link_bytes[copies["layer"]] += host - copied
        self.counters.link_bytes[copies["target"]] += copied
        busy = int(sim.read_reg("COPY_BUSY_CYCLES"))
        return max(0, busy - copies["head"] - copies["cycles"])

    def _queue_copies(self, layer: int) -> None:
        """Before layer `layer` starts: copy the predicted experts of the next layer."""
        if self._ahead is None:
            return
        target, wanted = self._ahead
        self._ahead = None
        if target == layer:
            raise ConfigError("a layer's experts are prefetched while the layer before it runs")
        fetched = self.caches[target].prefetch(wanted)
        if not fetched:
            return
        sim, placed = self.sim, self._layers[target]
        sim.write_reg("COPY_CTRL", COPY_CTRL.pack(clear_counters=1))
        first = last = 0
        for e, victim in fetched:
            slot = self._take_slot(target, e, victim)
            words = (
                ("COPY_SRC", placed.host_start[e]),
                ("COPY_DST", self._slot_addr(target, slot)),
            )
            for reg, addr in words:
                sim.write_reg(reg, layout.addr_word(self.cfg, addr, f"copy of expert {e}"))
            sim.write_reg("COPY_LENGTH", placed.span)
            last = sim.cycles
            sim.write_reg("COPY_CTRL", COPY_CTRL.pack(push=1))
            first = first or sim.cycles
        self._ahead_of[target] = {e for e, _ in fetched}
        self.counters.prefetched[target] += len(fetched)
        # Copies run from the first push; the layer from CTRL.start, one more write later.
        head = 2 * sim.cycles - last - first
        bytes_ = len(fetched) * placed.span
        self._copies = {"layer": layer, "target": target, "bytes": bytes_, "head": head}

    def run(self, ql: QuantizedLayer, x_q: np.ndarray) -> DeviceResult:
        """Run layer `ql`: its cached experts from device memory, the others over the link;
        the next layer's predicted experts copied beside it; its cache updated."""
        layer = self._layer(ql)
        if self.device.resets != self._resets:
            raise ConfigError(
                "this CachedDevice's session was reset (its VerilatorDevice ran something "
                "else, or another CachedDevice took it): make a new CachedDevice"
            )
        wait = self.settle()
        self.counters.wait_cycles[layer] += wait
        placed = self._layers[layer]
        image = compile_layer(ql, x_q, self.cfg, base=placed.image.base)
        for chunk in image.chunks:
            if chunk.region == "tokens":
                LayerImage.write_chunk(chunk, self.sim.mem)
        self._sync_table(layer)
        cache = self.caches[layer]
        result = self.device.execute(self.sim, ql, placed.image, lambda: self._queue_copies(layer))
        result.counters["prefetch_wait_cycles"] = wait
        if self._copies is None:
            self.counters.link_bytes[layer] += self.device.last_tiers["host"]["bytes_read"]
        else:
            self._copies["cycles"] = result.counters["cycles_total"]
        picks = result.expert_ids.reshape(-1).tolist()
        hit, admitted = cache.call(picks)
        self.counters.hits[layer] += sum(hit)
        self.counters.misses[layer] += len(hit) - sum(hit)
        self.counters.prefetch_used[layer] += sum(
            h and e in self._ahead_of[layer] for e, h in zip(picks, hit, strict=True)
        )
        self._ahead_of[layer] = set()
        for e, victim in admitted:
            self._fill_slot(layer, e, victim)
        return result
