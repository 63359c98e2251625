"""One `Device` protocol, several backends: the same driver code runs a layer anywhere.

- `GoldenDevice` — the NumPy golden model (`pymodel.layer.golden_layer`): the
  bit-exact reference every hardware backend must reproduce; it reports no
  cycles (the hardware's are measured, not modelled).
- `VerilatorDevice` — the generated accelerator (`rtl.top.MoEAccel`) compiled by
  Verilator with the C++ harness of `sim.fast` (memory model and clock in C++,
  no Python per cycle): load the compiled memory image, run the register
  program, wait for done, read outputs and performance counters back.

Both take a `QuantizedLayer` and int tokens and return a `DeviceResult`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from contract.regs import PARTITION_PHASES
from pymodel.config import AccelConfig, ConfigError
from pymodel.expert_cache import HostLink
from pymodel.layer import check_tokens, golden_layer, route
from pymodel.quantize import QuantizedLayer

from .compile import LayerImage, compile_layer, read_expert_counts, read_outputs

if TYPE_CHECKING:
    from sim.fast import FastSim


HOST_BASE = 1 << 30
"""Default first byte address of host memory (`VerilatorDevice(host_link=...)`): 1 GiB, far
above any layer image a test runs (the memory is sparse, so the gap costs nothing)."""

EXPERT_MODES = ("all", "demand", "routed")
"""`VerilatorDevice(experts=...)`: which routed experts' weights a run writes, and when."""


class DeviceError(RuntimeError):
    """The hardware stopped with an error status, or did not finish in time."""


@dataclass(frozen=True)
class DeviceResult:
    """Outputs and measurements of one layer on one backend."""

    backend: str
    y_q: np.ndarray  # [T, d_model] int at scale ql.s_y
    expert_ids: np.ndarray  # [T, k]
    gate_weights: np.ndarray  # [T, k] unsigned Q.gate_frac_bits
    tokens_per_expert: np.ndarray  # [E] kept pairs
    dropped: int
    counters: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    y: np.ndarray | None = None
    """The dequantised output `y_q · s_y` [T, d_model] float32."""

    def same_outputs(self, other: DeviceResult) -> bool:
        """Bit-exact against `other`: the same int outputs, experts and gate weights."""
        return bool(
            np.array_equal(self.y_q, other.y_q)
            and np.array_equal(self.expert_ids, other.expert_ids)
            and np.array_equal(self.gate_weights, other.gate_weights)
        )

    @property
    def cycles(self) -> dict[str, int]:
        """Total and per-phase cycles (empty for a backend without a clock)."""
        if "cycles_total" not in self.counters:
            return {}
        out = {"total": self.counters["cycles_total"]}
        out.update({p: self.counters[f"cycles_{p}"] for p in PARTITION_PHASES})
        return out

    @property
    def sim_cycles_per_s(self) -> float:
        total = self.counters.get("cycles_total", 0)
        return total / self.wall_s if self.wall_s > 0 else 0.0


class Device(Protocol):
    """Anything that runs a quantised MoE layer on int tokens."""

    name: str
    cfg: AccelConfig

    def run(self, ql: QuantizedLayer, x_q: np.ndarray) -> DeviceResult: ...


class GoldenDevice:
    """The NumPy golden model as a device."""

    name = "golden"

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg

    def run(self, ql: QuantizedLayer, x_q: np.ndarray) -> DeviceResult:
        res = golden_layer(ql, x_q, self.cfg)
        return DeviceResult(
            backend=self.name,
            y_q=res.y_q,
            expert_ids=res.routing.expert_ids,
            gate_weights=res.routing.gate_weights,
            tokens_per_expert=res.dispatch.counts,
            dropped=int(res.dispatch.dropped),
            y=(res.y_q * ql.s_y).astype(np.float32),
        )


def available_memory_bytes() -> int | None:
    """Memory the OS can give this process now (`MemAvailable`), None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def image_bytes_estimate(image: LayerImage, *, demand: bool = False) -> int:
    """Host bytes a run of `image` touches: the pages it writes, not its address span.

    The simulated memory is a lazily zero allocation, so only the written
    chunks, the hardware-written regions and one chunk in flight cost RAM
    (`LayerImage.touched_bytes`); experts that are not resident cost nothing.
    With `demand` (lazy chunks filled when the hardware reads them) the routed
    experts are not known before the run: it counts the lazy chunks of the
    T·k largest experts (no more can be routed) and the shared expert's.
    """
    if not demand:
        return image.touched_bytes
    eager = sum(c.size for c in image.chunks if not c.lazy)
    per_expert: dict[str, int] = {}
    for c in image.chunks:
        if c.lazy:
            owner = c.region.partition(".")[0]
            per_expert[owner] = per_expert.get(owner, 0) + c.size
    shared = per_expert.pop("shared", 0)
    routable = image.tokens * image.spec.top_k
    largest = sorted(per_expert.values(), reverse=True)[:routable]
    hw = image.touched_bytes - image.written_bytes
    return eager + shared + sum(largest) + hw


def check_host_memory(image: LayerImage, *, demand: bool = False) -> None:
    """`ConfigError` when the memory a run of `image` touches cannot fit in available RAM."""
    need = image_bytes_estimate(image, demand=demand)
    have = available_memory_bytes()
    if have is not None and need > have:
        e = image.spec.n_experts
        held = (
            f"at most {min(e, image.tokens * image.spec.top_k)} of {e} routed experts filled"
            if demand
            else f"{len(image.resident)} of {e} routed experts resident"
        )
        raise ConfigError(
            f"the layer's memory image needs about {need / 2**30:.1f} GiB of host memory "
            f"({held}, {image.mem_bytes / 2**30:.1f} GiB of address space), more than the "
            f"{have / 2**30:.1f} GiB this machine has available; shrink the layer "
            "(d_model, d_ff, n_experts, tokens) or write only the experts the hardware "
            "reads (VerilatorDevice(experts='demand') or 'routed')"
        )


class VerilatorDevice:
    """The accelerator RTL under Verilator with the C++ memory/clock harness.

    One model instance serves every `run` (elaborating the top and hashing
    its Verilog costs seconds, the cached build is shared on disk by
    `sim.fast`); it is created on the first run and again only when an image
    needs more memory. Each run resets the accelerator and loads a fresh
    memory image; `session` and `execute` instead keep memory and model between
    calls (the expert cache's persistent session, `sw_driver.offload.CachedDevice`).
    `read_latency`/`write_latency` are the memory model's latencies in cycles;
    `max_cycles` bounds a run (a timeout is a `DeviceError`, never a hang);
    `trace` is a `.vcd`/`.fst` waveform path,
    `trace_window` (start, end) keeps only those cycles of each run (counted
    from the accelerator's reset, register writes included) and
    `trace_scope` only one instance's signals (e.g. `core.dispatcher`);
    `build_dir` is the folder of cached Verilator models (default
    `flow.paths.FAST_BUILD_ROOT`: `build/fast` of the checkout, or
    `$MOE_ACCEL_BUILD_DIR/fast`, see docs/simulation.md). A model whose image
    outgrows the memory gets a larger memory, not a new build: the memory size
    is an argument of the C++ harness, not of the build. `threads` evaluates
    the model with Verilator's `--threads` (default `sim.fast.DEFAULT_THREADS`).

    `experts` chooses which routed experts' weights a run writes: "all"
    (before the run); "demand" — every expert has its real address, but its
    weight streams and parameter words are produced and written only when
    the hardware's DMA first reads them (`sim.fast.FastSim.add_lazy_region`),
    so the hardware's own routing decides what is generated, and
    `last_filled` lists the experts it asked for; or "routed" — only those the
    golden router selects for the tokens (one d × E GEMM), as an expert cache
    would hold them. With "routed" the others point at unmapped memory, so a
    hardware read of one stops the run with a bus error (a `DeviceError`),
    never a silent read of zeros. A whole full-size layer (DeepSeek-V3: 11.3 GB
    of experts) needs `AccelConfig.addr_bits` > 32 to be placed ("all" or
    "demand"); with 32-bit addresses it runs only with "routed"
    (docs/simulation.md). The memory is a sparse zero mapping: only pages the
    image or the hardware writes cost host RAM.

    `host_link` adds host memory from `host_base` up behind that link (two
    memory tiers, `sim.fast.FastSim.set_host_tier`): the experts in
    `host_experts` are placed there and read over the link, bit-exact and
    slower; `last_tiers` reports each tier's bytes and busy cycles.
    """

    name = "verilator"

    def __init__(
        self,
        cfg: AccelConfig,
        *,
        read_latency: int = 8,
        write_latency: int = 4,
        max_cycles: int = 50_000_000,
        trace: Path | str | None = None,
        trace_window: tuple[int, int] | None = None,
        trace_scope: str | None = None,
        build_dir: Path | str | None = None,
        threads: int | None = None,
        experts: str = "all",
        host_link: HostLink | None = None,
        host_base: int = HOST_BASE,
    ) -> None:
        from contract import layout
        from flow.paths import FAST_BUILD_ROOT
        from sim.fast import DEFAULT_THREADS

        if trace is None and (trace_window is not None or trace_scope is not None):
            raise ConfigError("trace_window and trace_scope need a trace path")
        if trace_window is not None and not 0 <= trace_window[0] < trace_window[1]:
            raise ConfigError(f"trace_window {trace_window} must be (start, end), 0 ≤ start < end")

        if experts not in EXPERT_MODES:
            raise ConfigError(f"experts = {experts!r} is not one of {list(EXPERT_MODES)}")
        if host_link is not None and not isinstance(host_link, HostLink):
            raise ConfigError(f"host_link must be a HostLink, got {type(host_link).__name__}")
        if host_link is not None and experts == "demand":
            raise ConfigError("host memory (host_link) and experts='demand' do not combine")
        layout.check_top_config(cfg)
        self.cfg = cfg
        self.experts = experts
        self.read_latency = read_latency
        self.write_latency = write_latency
        self.max_cycles = max_cycles
        self.trace = trace
        self.trace_window = trace_window
        self.trace_scope = trace_scope
        self.build_dir = Path(FAST_BUILD_ROOT if build_dir is None else build_dir)
        self.threads = DEFAULT_THREADS if threads is None else threads
        self.host_link = host_link
        self.host_base = host_base
        self.host_experts: tuple[int, ...] = ()
        """With a `host_link`: the routed experts whose weights the next runs place in host
        memory (`sw_driver.offload.place_on_host`); the others stay in device memory."""
        self.last_tiers: dict[str, dict[str, int]] = {}
        """With a `host_link`: the last run's bytes and busy cycles per memory tier."""
        self._sim: FastSim | None = None
        self.resets = 0
        """How often the model was reset or remade with a cleared memory (a `session` whose
        count has moved on lost its memory)."""
        self.last_image: LayerImage | None = None
        """The image of the last run (its regions and resident experts explain the counters)."""
        self.last_filled: tuple[str, ...] = ()
        """With experts="demand": the experts ("expert<e>", "shared") the last run's hardware
        read, so their lazy regions were filled, in the order it first reached them."""

    def _model(self, mem_bytes: int) -> FastSim:
        from sim.accelerator import accelerator_top
        from sim.fast import FastSim

        self.resets += 1
        if self._sim is None or self._sim.mem.size < mem_bytes:
            if self._sim is not None:
                self._sim.close()
            self.last_image = None
            self._sim = FastSim(
                accelerator_top(self.cfg),
                self.cfg,
                mem_bytes,
                read_latency=self.read_latency,
                write_latency=self.write_latency,
                trace=self.trace,
                trace_scope=self.trace_scope,
                name="moe_accel",
                build_root=self.build_dir,
                threads=self.threads,
            )
            if self.host_link is not None:
                self._sim.set_host_tier(self.host_base, self.host_link)
        else:
            self._sim.reset()
            self._sim.clear_memory()
        if self.trace_window is not None:
            now = self._sim.cycles
            self._sim.set_trace_window(now + self.trace_window[0], now + self.trace_window[1])
        return self._sim

    def run(self, ql: QuantizedLayer, x_q: np.ndarray) -> DeviceResult:
        check_tokens(ql, x_q, self.cfg)
        self.last_filled = ()
        resident = None
        if self.experts == "routed":
            resident = np.unique(route(ql, x_q, self.cfg).expert_ids).tolist()
        image = compile_layer(ql, x_q, self.cfg, resident_experts=resident)
        if self.host_link is not None:
            from .offload import place_on_host

            image = place_on_host(image, self.host_base, self.host_experts)
        demand = self.experts == "demand"
        check_host_memory(image, demand=demand)
        end = image.base + image.mem_bytes
        # With a host tier the memory reaches past its base even while no expert is there.
        sim = self._model(end if self.host_link is None else max(end, self.host_base + 4096))
        self.last_image = image
        sim.clear_lazy_regions()
        image.write_into(sim.mem, lazy=not demand)
        lazy = [c for c in image.chunks if c.lazy] if demand else []
        for chunk in lazy:
            sim.add_lazy_region(
                chunk.addr,
                chunk.addr + chunk.size,
                functools.partial(image.write_chunk, chunk, sim.mem),
            )
        result = self.execute(sim, ql, image)
        filled = dict.fromkeys(lazy[i].region.partition(".")[0] for i in sim.filled)
        self.last_filled = tuple(filled)
        return result

    def session(self, mem_bytes: int) -> FastSim:
        """The model, reset with a zero memory of at least `mem_bytes`, for a driver that
        keeps memory and model between `execute` calls (`sw_driver.offload.CachedDevice`)."""
        if self.experts != "all":
            raise ConfigError(
                f"a session places its own images (experts='all', not {self.experts!r})"
            )
        self.last_image = None
        return self._model(mem_bytes)

    def execute(
        self,
        sim: FastSim,
        ql: QuantizedLayer,
        image: LayerImage,
        before_start: Callable[[], None] | None = None,
    ) -> DeviceResult:
        """Run `image` (already in `sim.mem`): its register program, `before_start()` just
        before its `CTRL.start` (e.g. queue copies), then outputs and counters read back."""
        from contract.regs import COUNTER_BLOCK
        from sim.fast import RunStatus, SimulationError

        *program, start = image.program
        for reg, value in program:
            sim.write_reg(reg, value)
        sim.tier_counters(clear=True)
        if before_start is not None:
            before_start()
        sim.write_reg(*start)
        try:
            result = sim.run(self.max_cycles)
        except SimulationError as exc:
            raise DeviceError(f"accelerator run failed: {exc}") from exc
        if result.status is not RunStatus.DONE:
            partial = ""
            if len(image.resident) < ql.spec.n_experts:
                partial = (
                    f" (only experts {list(image.resident)} were resident; the others point "
                    "at unmapped memory)"
                )
            raise DeviceError(
                f"accelerator stopped with status {result.status.name}, cause "
                f"{result.cause.name}{partial}"
            )
        self.last_tiers = sim.tier_counters() if self.host_link is not None else {}
        outputs = read_outputs(sim.mem, image)
        counts = read_expert_counts(sim.write_reg, sim.read_reg, image)
        counters = {
            reg.name.lower(): int(sim.read_reg(reg.name)) for reg in COUNTER_BLOCK.registers
        }
        if self.trace is not None:
            sim.flush_trace()
        return DeviceResult(
            backend=self.name,
            y_q=outputs.y_q,
            expert_ids=outputs.expert_ids,
            gate_weights=outputs.gate_weights,
            tokens_per_expert=counts,
            dropped=counters["dropped_tokens"],
            counters=counters,
            wall_s=result.wall_s,
            y=(outputs.y_q * ql.s_y).astype(np.float32),
        )


def make_device(name: str, cfg: AccelConfig, **options: object) -> Device:
    """The backend called `name` ("golden" or "verilator") for `cfg`."""
    if name == "golden":
        return GoldenDevice(cfg)
    if name == "verilator":
        return VerilatorDevice(cfg, **options)  # type: ignore[arg-type]
    raise ConfigError(f"unknown backend {name!r}; allowed: ['golden', 'verilator']")
