"""The fast simulation backend: a Verilated top + C++ memory/bus/clock harness, via ctypes.

Why: cocotb with `cocotbext-axi` simulates a DMA-heavy design at ~12 k
cycles/s, far too slow for whole MoE layers; with the AXI4 memory model, the
AXI4-Lite master and the clock loop in C++ (`sim/harness/harness.cpp`) and
Python only starting runs and touching registers, the same design runs at
millions of cycles/s (docs/simulation.md measures it).

The top is any `lib.wiring.Component` with an `s_axil` AXI4-Lite slave port
(`In(rtl.axi.AXILiteSignature())`), an `m_axi` AXI4 master port
(`Out(rtl.axi.AXI4Signature(cfg))`) and the `sync` domain (`clk`, `rst`).
For speed it is wrapped in `RegisteredPorts` (every input reaches the top
through a flop, so Verilator evaluates nothing but the clocked logic: no
input-combinational region) and its all-zero memory initialisers are
dropped (`strip_zero_memory_init`); docs/simulation.md has the measurements.
It is compiled with `verilator --cc --exe` and `make` into a shared library
that exports only `fastsim_*` (hidden symbols + version script: two models
in one process stay separate; one `VerilatedContext` per instance).

Caches (under `build/fast/`):

- `<name>-<key>/`: one model; `key` hashes the Verilog emitted with
  `emit_src=False`, the harness source and version script, every flag, the
  trace setting and the Verilator version;
- `index/<name>-<quick key>.json`: the `key` of the model built from the same
  top class and parameters, config, source files, flags and tool versions, so
  a cached model is found without emitting Verilog (~13 s for the default top);
- `runtime-<key>/`: Verilator's own runtime objects (`verilated*.o`, most of
  a first build's time), keyed on the compiler flags and Verilator version
  only, copied into each new model's build so it compiles just the model.

Typical use::

    sim = FastSim(lambda: MyTop(cfg), cfg, mem_bytes=1 << 20, read_latency=20)
    sim.mem[0:64] = data                    # zero-copy numpy view of the memory
    sim.write_reg("TOKENS_ADDR", 0)
    sim.write_reg("CTRL", REGISTER_MAP["CTRL"].register.pack(start=1))
    result = sim.run(max_cycles=1_000_000)  # RunResult(cycles, status, wall_s, cause)

The environment fixes of `sim.build.setup_environment` are reused.
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import inspect
import json
import logging
import mmap
import os
import re
import shutil
import subprocess
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal
from amaranth.lib import wiring

from contract.regs import REGISTER_MAP, ErrorCause, RegisterMap
from flow.paths import FAST_BUILD_ROOT, REPO_ROOT
from pymodel.config import AccelConfig, ConfigError
from pymodel.expert_cache import HostLink
from rtl.axi import BOUNDARY_BYTES, AXI4Signature, AXILiteSignature, Resp, burst_beats
from rtl.checks import checks_enabled

from .build import (
    WAIVED_WARNINGS,
    SimulationError,
    _fst_supported,
    coverage_flags,
    emit_verilog,
    file_lock,
    setup_environment,
)

__all__ = [
    "BusError",
    "FastBuild",
    "FastSim",
    "FastSimTimeout",
    "ProtocolViolation",
    "RegisteredPorts",
    "RunResult",
    "RunStatus",
    "build_fast",
    "sparse_mapping",
    "strip_zero_memory_init",
]

HARNESS_DIR = Path(__file__).resolve().parent / "harness"
LIBRARY = "libfastsim.so"
PREFIX = "Vtop"

VERILATOR_ARGS: tuple[str, ...] = (
    "-O3",
    "--x-assign",
    "fast",
    "--x-initial",
    "fast",
    "--noassert",
    "-Wno-fatal",
    *(f"-Wno-{name}" for name in WAIVED_WARNINGS),
)
"""Model generation flags: fast X handling; never `--public-flat-rw` (it halves the speed)."""

MAKE_VARS: tuple[str, ...] = ("OPT_FAST=-O3",)
"""`make` variables: -O3 for the model's hot code (Verilator's default is -Os)."""

DEFAULT_THREADS = 1
"""Threads evaluating a model (`--threads`): one. `make bench` measures two against one on
the same layer (docs/benchmarks.md); on this 2-core machine two did not win."""

logger = logging.getLogger(__name__)

LITE_TIMEOUT = 1000
"""Cycles a register access may take before it is reported as a hung bus."""

_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
"""Linux's MAP_NORESERVE (the same bit on x86-64 and arm64; Python's mmap lacks the name)."""

TIERS = ("device", "host")
"""The harness's memory tiers, in its numbering (`set_host_tier`, `tier_counters`)."""

FILL_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_uint32)
"""The harness's lazy-region fill callback: region id -> 0 (filled) or non-zero (failed)."""


def sparse_mapping(nbytes: int) -> mmap.mmap:
    """`nbytes` of zeroed memory whose pages cost host memory only once written.

    An anonymous private mapping without swap reservation: the kernel hands
    out zero pages on first touch, so a memory spanning a whole full-size
    layer's address space (tens of GiB) costs only what a run writes, and
    the heuristic overcommit check does not refuse a span larger than RAM.
    """
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | _MAP_NORESERVE)


class FastSimTimeout(SimulationError):
    """`FastSim.run` reached its cycle limit before the top signalled done or error."""


class BusError(SimulationError):
    """A register access got SLVERR/DECERR or no response."""


class ProtocolViolation(SimulationError):
    """The top broke an AXI4 rule the harness's protocol checker watches (the first one), or,
    in a build with the design's invariants (`rtl.checks`), one of those failed."""


class RunStatus(enum.Enum):
    DONE = "done"
    ERROR = "error"


@dataclass(frozen=True)
class RunResult:
    """How one `FastSim.run` ended."""

    cycles: int
    """Cycles simulated by this run (the last STATUS poll included)."""
    status: RunStatus
    wall_s: float
    cause: ErrorCause
    """`ERROR_CAUSE` when `status` is ERROR (and the map has it), else NONE."""

    @property
    def cycles_per_second(self) -> float:
        return self.cycles / self.wall_s if self.wall_s > 0 else float("inf")


@dataclass(frozen=True)
class FastBuild:
    """A compiled harness library for one top."""

    library: Path
    key: str
    cached: bool
    build_seconds: float
    beat_bytes: int
    trace: str | None
    """None, "vcd" or "fst": the waveform format compiled in."""


def _digest(material: object) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def _check_top(top: wiring.Component, cfg: AccelConfig) -> None:
    if not isinstance(top, wiring.Component):
        raise TypeError(f"the fast backend needs a lib.wiring.Component, got {type(top).__name__}")
    members = top.signature.members
    for name, flow, sig in (
        ("s_axil", wiring.In, AXILiteSignature()),
        ("m_axi", wiring.Out, AXI4Signature(cfg)),
    ):
        if name not in members or not members[name].is_signature:
            raise TypeError(f"{type(top).__name__} has no {name!r} interface port")
        member = members[name]
        if member.flow != flow or member.signature != sig:
            raise TypeError(
                f"{type(top).__name__}.{name} must be {flow.name}({sig!r}), "
                f"got {member.flow.name}({member.signature!r})"
            )


class RegisteredPorts(wiring.Component):
    """`top` behind one flop on every input port, its `sync` reset behind two.

    Why: whatever logic reads a model input directly sits in Verilator's
    input-combinational region, evaluated on every `eval()` (twice a cycle) on
    top of the clocked evaluation; Amaranth folds `rst` into the next-state
    logic of every register, so a bare `rst` put the whole design there, and
    the bus inputs put the DMA, the weight loaders and the register file
    there. Behind flops every input is model state and that region is empty.
    The harness writes each cycle's inputs before the clock edge that starts
    the cycle (`sim/harness/harness.cpp`), so the top sees the same inputs in
    the same cycles as without the flops. `rst` passes one more flop: the top's
    reset in a cycle is the port's value of the cycle before, and one extra
    cycle after `rst` falls gives it exactly as many reset edges as cycles
    `rst` was held. Outputs are wired straight through.
    """

    def __init__(self, top: wiring.Component) -> None:
        self._top = top
        super().__init__(top.signature)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.domains.core = core = ClockDomain("core", local=True)
        rst_in = Signal(init=1, reset_less=True)
        rst_q = Signal(init=1, reset_less=True)
        m.d.sync += [rst_in.eq(ResetSignal("sync")), rst_q.eq(rst_in)]
        m.d.comb += [core.clk.eq(ClockSignal("sync")), core.rst.eq(rst_q)]
        m.submodules.top = top = DomainRenamer({"sync": "core"})(self._top)
        ports = zip(self.signature.flatten(self), top.signature.flatten(top), strict=True)
        for (path, member, outer), (_, _, inner) in ports:
            if member.flow == wiring.In:
                held = Signal.like(inner, name="in__" + "__".join(map(str, path)), reset_less=True)
                m.d.sync += held.eq(outer)
                m.d.comb += inner.eq(held)
            else:
                m.d.comb += outer.eq(inner)
        return m


_ZERO_MEMORY_INIT = re.compile(
    r"^  initial begin\n(?:    \\?[\w$.]+ ?\[\d+\] = \d+'[hdb]0+;\n)+  end\n", re.MULTILINE
)


def strip_zero_memory_init(verilog_text: str) -> str:
    """Drop the `initial` blocks that set every word of a memory to zero.

    Why: Amaranth spells out every word's initial value; for the default top
    that is ~57 k assignments, most of the Verilated C++ and of its build time.
    With `--x-initial fast` Verilator zeroes every variable when the model is
    constructed, so an all-zero memory needs no initial block.
    """
    return _ZERO_MEMORY_INIT.sub("", verilog_text)


def _run_logged(cmd: list[str], cwd: Path, log: Path, stage: str) -> None:
    """Run one build stage into `log`, logging its progress every `HEARTBEAT_S` seconds."""
    start = time.monotonic()
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        while True:
            try:
                returncode = proc.wait(timeout=HEARTBEAT_S)
                break
            except subprocess.TimeoutExpired:
                logger.info("%s: %.0f s elapsed", stage, time.monotonic() - start)
    if returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise SimulationError(f"fast build step failed ({cmd[0]}); log {log}:\n{tail}")


HEARTBEAT_S = 15.0
"""Seconds between the progress lines of a running build stage."""

_SOURCE_DIRS = ("pymodel", "rtl", "sim")
"""Python packages whose sources can change the emitted Verilog (hashed for the quick key)."""


def _simple_attrs(top: wiring.Component) -> list[tuple[str, str]]:
    """The top's plain-valued attributes (its construction parameters, in practice)."""
    plain = (int, float, str, bool, type(None), AccelConfig)
    return sorted(
        (name, repr(value))
        for name, value in vars(top).items()
        if isinstance(value, plain) and not name.startswith("_MustUse__")  # Amaranth's flag
    )


def _quick_key(top: wiring.Component, cfg: AccelConfig, material: dict[str, object]) -> str:
    """A key known without elaborating `top`: its class, parameters and every source file.

    Same key ⇒ same Verilog (the design is a pure function of these), so a
    build found through it needs no `emit_verilog` (~13 s for the default top).
    """
    files = {p for d in _SOURCE_DIRS for p in (REPO_ROOT / d).rglob("*.py")}
    top_file = inspect.getsourcefile(type(top))
    if top_file is not None:
        files.add(Path(top_file).resolve())
    sources = hashlib.sha256()
    for path in sorted(files):
        sources.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
    return _digest(
        {
            **material,
            "top": f"{type(top).__module__}.{type(top).__qualname__}",
            "attrs": _simple_attrs(top),
            "cfg": cfg.to_json(),
            "sources": sources.hexdigest(),
            "amaranth": version("amaranth"),
        }
    )


def _last_build_seconds(build_root: Path, name: str) -> float | None:
    """Build time of the newest finished build of `name` under `build_root` (None if none)."""
    stamps = sorted(build_root.glob(f"{name}-*/build.json"), key=lambda p: p.stat().st_mtime)
    for stamp in reversed(stamps):
        try:
            return float(json.loads(stamp.read_text())["build_seconds"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def _cached_build(build_dir: Path, key: str, beat: int, trace: str | None) -> FastBuild | None:
    """The finished build in `build_dir` (its library and stamp both there), or None."""
    stamp, library = build_dir / "build.json", build_dir / "obj" / LIBRARY
    if not (stamp.is_file() and library.is_file()):
        return None
    seconds = json.loads(stamp.read_text())["build_seconds"]
    return FastBuild(library, key, True, seconds, beat, trace)


def _write_index(index: Path, key: str) -> None:
    index.parent.mkdir(parents=True, exist_ok=True)
    staging = index.with_name(f"{index.name}.tmp{os.getpid()}")
    staging.write_text(json.dumps({"key": key}))
    staging.replace(index)


def _verilator_args(random_init: bool, threads: int = 1) -> tuple[str, ...]:
    """`VERILATOR_ARGS`, with `--x-initial unique` for a random power-up build,
    `--threads N` for a model evaluated by N threads, `sim.build.coverage_flags()`
    and `--assert` when the design is elaborated with its invariants (`rtl.checks`)."""
    args = (*VERILATOR_ARGS, *coverage_flags(), *(("--assert",) if checks_enabled() else ()))
    if random_init:
        at = args.index("--x-initial")
        args = (*args[: at + 1], "unique", *args[at + 2 :])
    return (*args, "--threads", str(threads)) if threads > 1 else args


def build_fast(
    top: wiring.Component,
    cfg: AccelConfig,
    *,
    name: str = "fast_top",
    trace: str | None = None,
    random_init: bool = False,
    build_root: Path = FAST_BUILD_ROOT,
    threads: int = DEFAULT_THREADS,
) -> FastBuild:
    """Compile (or reuse) the harness library for `top` (see the module docstring).

    `trace` compiles in waveform dumping: "vcd", or "fst" (needs the lz4
    development headers, Debian `liblz4-dev`); tracing slows the model.
    `random_init` builds with `--x-initial unique`: every variable without an
    initial value (the memories) powers up with the random contents seeded
    by `FastSim`'s `random_init_seed` instead of zeros. `threads` > 1 builds
    a model that Verilator evaluates with that many threads (`--threads`).
    A build is found first by a quick key (top class and parameters, `cfg`,
    the hash of every source file, flags, tool versions) that needs no
    Verilog; only when that misses is the top elaborated and its Verilog
    hashed. Progress goes to the `sim.fast` logger.
    """
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"build_fast needs an AccelConfig, got {type(cfg).__name__}")
    if trace not in (None, "vcd", "fst"):
        raise ValueError(f"trace = {trace!r} must be None, 'vcd' or 'fst'")
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 16:
        raise ConfigError(f"threads = {threads!r} must be an int in [1, 16]")
    if trace == "fst" and not _fst_supported():
        raise SimulationError(
            "FST waveforms need the lz4 development headers (Debian: liblz4-dev); "
            "trace to a .vcd file instead"
        )
    _check_top(top, cfg)
    setup_environment()
    beat = cfg.mem_bytes_per_cycle
    harness = (HARNESS_DIR / "harness.cpp").read_text()
    version_map = (HARNESS_DIR / "version.map").read_text()
    cflags = ["-fPIC", "-fvisibility=hidden", f"-DFASTSIM_BEAT_BYTES={beat}"]
    if checks_enabled():
        cflags.append("-DFASTSIM_CHECKS")
    tools = version("verilator")
    material: dict[str, object] = {
        "name": name,
        "harness": harness,
        "map": version_map,
        "args": _verilator_args(random_init, threads),
        "cflags": cflags,
        "make": MAKE_VARS,
        "trace": trace,
        "verilator": tools,
    }
    build_root = Path(build_root)
    index = build_root / "index" / f"{name}-{_quick_key(top, cfg, material)}.json"
    if index.is_file():
        key = json.loads(index.read_text())["key"]
        cached = _cached_build(build_root / f"{name}-{key}", key, beat, trace)
        if cached is not None:
            logger.debug("%s: cached Verilator model %s (sources unchanged)", name, key)
            # The cached build stands for the top's elaboration: no UnusedElaboratable warning.
            top._MustUse__used = True  # type: ignore[attr-defined]
            return cached
    logger.info("%s: elaborating the design and emitting Verilog …", name)
    start = time.monotonic()
    verilog_text = strip_zero_memory_init(emit_verilog(RegisteredPorts(top), name))
    logger.info(
        "%s: %.1f MB of Verilog in %.1f s",
        name,
        len(verilog_text) / 1e6,
        time.monotonic() - start,
    )
    runtime_key = _digest(
        {"cflags": cflags[:2], "make": MAKE_VARS, "trace": trace, "v": tools, "threads": threads}
    )
    key = _digest({**material, "verilog": verilog_text})
    build_dir = build_root / f"{name}-{key}"
    library = build_dir / "obj" / LIBRARY
    stamp = build_dir / "build.json"
    with file_lock(build_root / f".{name}-{key}.lock"):
        cached = _cached_build(build_dir, key, beat, trace)
        if cached is not None:
            _write_index(index, key)
            logger.info("%s: the Verilog is unchanged; cached Verilator model %s", name, key)
            return cached
        last = _last_build_seconds(build_root, name)
        logger.info(
            "%s: Verilator build%s (%s) …",
            name,
            f" with {trace.upper()} tracing" if trace else "",
            f"the last one took {last:.0f} s" if last else "about 1–5 min on 2 cores",
        )
        if build_dir.exists():
            shutil.rmtree(build_dir)
        obj = build_dir / "obj"
        obj.mkdir(parents=True)
        (build_dir / f"{name}.v").write_text(verilog_text)
        (build_dir / "harness.cpp").write_text(harness)
        (build_dir / "version.map").write_text(version_map)
        log = build_dir / "build.log"
        start = time.monotonic()
        ldflags = ["-shared", "-Wl,--version-script=../version.map", "-Wl,--exclude-libs,ALL"]
        logger.info("%s: stage 1/2, Verilator translates the Verilog to C++ (log %s)", name, log)
        _run_logged(
            [
                "verilator",
                "--cc",
                "--exe",
                *_verilator_args(random_init, threads),
                *({"vcd": ["--trace"], "fst": ["--trace-fst"]}.get(trace or "", [])),
                "--top-module",
                name,
                "--prefix",
                PREFIX,
                "-Mdir",
                "obj",
                "-o",
                LIBRARY,
                "-CFLAGS",
                " ".join(cflags),
                "-LDFLAGS",
                " ".join(ldflags),
                f"{name}.v",
                "harness.cpp",
            ],
            build_dir,
            log,
            f"{name}: stage 1/2 (verilator)",
        )
        runtime = build_root / f"runtime-{runtime_key}"
        runtime_lock = build_root / f".runtime-{runtime_key}.lock"
        with file_lock(runtime_lock):
            if (runtime / "ok").is_file():
                now = time.time()
                for cached in runtime.glob("verilated*"):
                    target = obj / cached.name
                    shutil.copyfile(cached, target)
                    # newer than the freshly generated Vtop.mk they depend on
                    os.utime(target, (now + 1, now + 1))
        logger.info("%s: stage 2/2, compiling the C++ model (make -j2) …", name)
        _run_logged(
            ["make", "-j2", "-f", f"{PREFIX}.mk", *MAKE_VARS],
            obj,
            log,
            f"{name}: stage 2/2 (C++ compile)",
        )
        with file_lock(runtime_lock):
            if not (runtime / "ok").is_file():
                runtime.mkdir(parents=True, exist_ok=True)
                for made in obj.glob("verilated*.[od]"):
                    shutil.copyfile(made, runtime / made.name)
                (runtime / "ok").write_text(tools)
        if not library.is_file():
            raise SimulationError(f"fast build of {name} produced no {LIBRARY}; log {log}")
        seconds = time.monotonic() - start
        stamp.write_text(json.dumps({"name": name, "build_seconds": seconds}, indent=1))
        _write_index(index, key)
        logger.info("%s: Verilator model built in %.0f s", name, seconds)
        return FastBuild(library, key, False, seconds, beat, trace)


def _trace_scopes(build: FastBuild, name: str, scope: str) -> str:
    """The harness's `dumpvars` lines for `scope`, checked against the built design's modules.

    Amaranth names each Verilog module by its instance path (`<name>.top.core.dispatcher`
    under `RegisteredPorts`), so an unknown scope is an error here, not an empty trace.
    """
    verilog = build.library.parent.parent / f"{name}.v"
    modules = re.findall(r"^module \\?(\S+)", verilog.read_text(), re.MULTILINE)
    prefix = f"{name}.top."
    known = sorted(m[len(prefix) :] for m in modules if m.startswith(prefix))
    if scope not in known:
        near = [k for k in known if k.count(".") <= scope.count(".") + 1][:12]
        raise ConfigError(f"trace scope {scope!r} is not an instance of {name}; e.g. {near}")
    return f"1 top.{name}\n99 top.{prefix}{scope}"


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    vp, u32, u64, i32 = ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint64, ctypes.c_int
    signatures: dict[str, tuple[object, list[object]]] = {
        "fastsim_beat_bytes": (u32, []),
        "fastsim_has_trace": (i32, []),
        "fastsim_create": (
            vp,
            [
                ctypes.POINTER(ctypes.c_uint8),
                u64,
                u32,
                u32,
                u32,
                ctypes.c_char_p,
                u32,
                ctypes.c_char_p,
            ],
        ),
        "fastsim_destroy": (None, [vp]),
        "fastsim_flush_trace": (None, [vp]),
        "fastsim_set_trace_window": (None, [vp, u64, u64]),
        "fastsim_reset": (None, [vp, u32]),
        "fastsim_cycles": (u64, [vp]),
        "fastsim_step": (None, [vp, u64]),
        "fastsim_bare_step": (None, [vp, u64]),
        "fastsim_add_error_range": (None, [vp, u64, u64, i32, i32]),
        "fastsim_clear_error_ranges": (None, [vp]),
        "fastsim_set_fill_callback": (None, [vp, FILL_CALLBACK]),
        "fastsim_add_lazy_region": (i32, [vp, u64, u64, u32]),
        "fastsim_clear_lazy_regions": (None, [vp]),
        "fastsim_set_bus_chaos": (None, [vp, u64, u32, u32]),
        "fastsim_set_max_burst": (None, [vp, u32]),
        "fastsim_set_host_tier": (None, [vp, u64, u32, u32]),
        "fastsim_tier_counters": (i32, [vp, u32, ctypes.POINTER(u64), i32]),
        "fastsim_protocol_error": (i32, [vp, ctypes.c_char_p, u32]),
        "fastsim_reg_write": (i32, [vp, u32, u32, u32]),
        "fastsim_reg_read": (i32, [vp, u32, ctypes.POINTER(u32), u32]),
        "fastsim_run": (
            i32,
            [vp, u64, u32, u32, u32, u32, ctypes.POINTER(u32), ctypes.POINTER(u64)],
        ),
    }
    for fn, (restype, argtypes) in signatures.items():
        func = getattr(lib, fn)
        func.restype = restype
        func.argtypes = argtypes
    return lib


class FastSim:
    """One instance of a top in the fast backend, with its own memory.

    `top_factory` is the top Component or a zero-argument callable making it.
    `mem_bytes` of memory start at bus address 0 (beyond it: DECERR), up to
    2^`cfg.addr_bits`; it is a sparse mapping (`sparse_mapping`), so only
    written pages cost host memory, and parts of it can be filled on demand
    (`add_lazy_region`);
    `read_latency` is cycles from an accepted AR to the first R beat,
    `write_latency` cycles from a burst's last W beat to its B;
    `bytes_per_cycle` (default: the bus width) limits the bandwidth of reads and,
    separately, of writes.
    `regmap` resolves register names and must have `STATUS` (fields `done`,
    `error`); `trace` writes a waveform of the whole run to that path, VCD or
    (for a `.fst` suffix) FST, from a separate traced build.
    `trace_scope` (a dotted instance path inside the top, e.g. `core.dispatcher`)
    limits the trace to the top's ports and everything below that instance.
    `random_init_seed` (a positive int below 2^31) powers the model up with
    random memory contents from that seed, from a separate build
    (`build_fast`'s `random_init`); None: zeros. `threads` is Verilator's
    `--threads` for the model (a separate build when not `DEFAULT_THREADS`).
    """

    def __init__(
        self,
        top_factory: wiring.Component | Callable[[], wiring.Component],
        cfg: AccelConfig,
        mem_bytes: int,
        *,
        read_latency: int = 8,
        write_latency: int = 4,
        bytes_per_cycle: int | None = None,
        regmap: RegisterMap = REGISTER_MAP,
        trace: Path | str | None = None,
        name: str = "fast_top",
        reset_cycles: int = 4,
        random_init_seed: int | None = None,
        max_burst_beats: int | None = None,
        trace_scope: str | None = None,
        build_root: Path = FAST_BUILD_ROOT,
        threads: int = DEFAULT_THREADS,
    ) -> None:
        if trace_scope is not None and trace is None:
            raise ConfigError("FastSim trace_scope needs a trace path")
        if random_init_seed is not None and (
            isinstance(random_init_seed, bool)
            or not isinstance(random_init_seed, int)
            or not 0 < random_init_seed < 2**31
        ):
            raise ConfigError(
                f"FastSim random_init_seed = {random_init_seed!r} must be an int in [1, 2^31)"
            )
        top = top_factory if isinstance(top_factory, wiring.Component) else top_factory()
        beat = cfg.mem_bytes_per_cycle if isinstance(cfg, AccelConfig) else 1
        if isinstance(mem_bytes, bool) or not isinstance(mem_bytes, int):
            raise ConfigError(f"FastSim mem_bytes must be an int, got {mem_bytes!r}")
        addr_bits = cfg.addr_bits if isinstance(cfg, AccelConfig) else 32
        if not beat <= mem_bytes <= 2**addr_bits or mem_bytes % beat:
            raise ConfigError(
                f"FastSim mem_bytes = {mem_bytes} must be a multiple of the {beat}-byte beat "
                f"in [beat, 2^{addr_bits}] (AccelConfig.addr_bits)"
            )
        for what, value in (("read_latency", read_latency), ("write_latency", write_latency)):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10**6:
                raise ConfigError(f"FastSim {what} = {value!r} must be an int in [0, 10^6]")
        if bytes_per_cycle is None:
            bytes_per_cycle = beat
        if not isinstance(bytes_per_cycle, int) or not 1 <= bytes_per_cycle <= 4096:
            raise ConfigError(f"FastSim bytes_per_cycle = {bytes_per_cycle!r} not in [1, 4096]")
        if max_burst_beats is None and isinstance(cfg, AccelConfig):
            max_burst_beats = burst_beats(cfg)
        if max_burst_beats is not None and (
            isinstance(max_burst_beats, bool)
            or not isinstance(max_burst_beats, int)
            or not 1 <= max_burst_beats <= 256
        ):
            raise ConfigError(f"FastSim max_burst_beats = {max_burst_beats!r} not in [1, 256]")
        if "STATUS" not in regmap:
            raise ConfigError("FastSim's register map has no STATUS register to poll")
        status = regmap["STATUS"].register
        self._done_mask = status.pack(done=1)
        self._error_mask = status.pack(error=1)
        trace_format = None
        if trace is not None:
            trace_format = {".vcd": "vcd", ".fst": "fst"}.get(Path(trace).suffix)
            if trace_format is None:
                raise ValueError(f"trace path {trace} must end in .vcd or .fst")
        self.cfg = cfg
        self.regmap = regmap
        self.build = build_fast(
            top,
            cfg,
            name=name,
            trace=trace_format,
            random_init=random_init_seed is not None,
            build_root=build_root,
            threads=threads,
        )
        self._lib = _bind(ctypes.CDLL(str(self.build.library)))
        if self._lib.fastsim_beat_bytes() != beat or bool(self._lib.fastsim_has_trace()) != (
            trace_format is not None
        ):
            raise SimulationError(f"harness library {self.build.library} does not match its key")
        self._mapping = sparse_mapping(mem_bytes)
        self.mem = np.frombuffer(self._mapping, dtype=np.uint8)
        """The memory, shared with the C++ model (writes either side are seen by the other)."""
        self._lazy: dict[int, Callable[[], None]] = {}
        self._fill_error: BaseException | None = None
        self.filled: list[int] = []
        """Ids of the lazy regions filled since the last `clear_lazy_regions`, in fill order."""
        self._fill_callback = FILL_CALLBACK(self._fill)
        trace_arg = str(Path(trace).resolve()).encode() if trace is not None else None
        scopes = _trace_scopes(self.build, name, trace_scope) if trace_scope is not None else ""
        self._handle = self._lib.fastsim_create(
            self.mem.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)),
            mem_bytes,
            read_latency,
            write_latency,
            bytes_per_cycle,
            trace_arg,
            random_init_seed or 0,
            scopes.encode(),
        )
        self._finalizer = weakref.finalize(self, self._lib.fastsim_destroy, self._handle)
        self._lib.fastsim_set_max_burst(self._handle, max_burst_beats or 256)
        self._lib.fastsim_set_fill_callback(self._handle, self._fill_callback)
        self.reset(reset_cycles)

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Destroy the model (flushing any trace); `mem` stays valid as a plain array."""
        self._finalizer()

    def __enter__(self) -> FastSim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _h(self) -> int:
        if not self._finalizer.alive:
            raise SimulationError("this FastSim is closed")
        return self._handle

    # -- clock and reset --------------------------------------------------------------
    def reset(self, cycles: int = 4) -> None:
        """Hold `rst` for `cycles` cycles (the memory keeps its contents).

        The protocol checker starts afresh: a violation raised before is forgotten.
        """
        self._lib.fastsim_reset(self._h, max(1, cycles))

    def step(self, cycles: int) -> None:
        """Free-run `cycles` cycles."""
        self._lib.fastsim_step(self._h, cycles)
        self._check_protocol()

    def bare_step(self, cycles: int) -> float:
        """Run the bare Verilator loop `cycles` cycles; return its wall seconds.

        The clock and the model's evaluation only, no memory model or bus
        checks: what the harness costs is measured against it (`make bench`).
        The bus stands still meanwhile, so a run is not meaningful after it:
        reset the model first.
        """
        start = time.perf_counter()
        self._lib.fastsim_bare_step(self._h, cycles)
        return time.perf_counter() - start

    # -- the bus: random behaviour and the protocol checker ---------------------------
    def set_bus_chaos(
        self, *, seed: int, stall_probability: float = 0.0, max_extra_latency: int = 0
    ) -> None:
        """Seeded random memory timing, so tests meet the stalls a real interconnect makes.

        Each cycle, with `stall_probability`, ARREADY, AWREADY or WREADY drops, or
        the next R beat or B response is held back, for 1–16 cycles; every burst
        waits up to `max_extra_latency` cycles longer for its first R beat or its B.
        The same seed gives the same cycles; all zero (the default) is no chaos.
        `stall_probability` has a resolution of 1/1000 and stays below 1 (at 1 the
        bus would never move).
        """
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
            raise ConfigError(f"bus chaos seed = {seed!r} must be an int in [0, 2^64)")
        if (
            isinstance(stall_probability, bool)
            or not isinstance(stall_probability, int | float)
            or not 0.0 <= stall_probability < 1.0
        ):
            raise ConfigError(f"stall_probability = {stall_probability!r} must be in [0, 1)")
        if (
            isinstance(max_extra_latency, bool)
            or not isinstance(max_extra_latency, int)
            or not 0 <= max_extra_latency <= 10**4
        ):
            raise ConfigError(f"max_extra_latency = {max_extra_latency!r} not an int in [0, 10^4]")
        permille = round(stall_probability * 1000)
        self._lib.fastsim_set_bus_chaos(self._h, seed, permille, max_extra_latency)

    # -- memory tiers -----------------------------------------------------------------
    def set_host_tier(self, base: int, link: HostLink) -> None:
        """Serve bursts at or above byte address `base` as host memory behind `link`.

        Why: expert weights that do not fit device memory live on the host; a burst
        there waits `link.latency` cycles for its first beat (or its B) and moves at
        `link.bytes_per_cycle`, on a credit of its own beside the device tier's.
        `base` must be 4 KiB-aligned (a burst never straddles the tiers) and inside
        the memory; the same `HostLink` parameterises the cycle model
        (`pymodel.expert_cache`). Tier counters restart at zero.
        """
        if not isinstance(link, HostLink):
            raise ConfigError(f"set_host_tier needs a HostLink, got {type(link).__name__}")
        if (
            isinstance(base, bool)
            or not isinstance(base, int)
            or not 0 < base < self.mem.size
            or base % BOUNDARY_BYTES
        ):
            raise ConfigError(
                f"host tier base = {base!r} must be a {BOUNDARY_BYTES}-byte-aligned address "
                f"inside the memory (0, {self.mem.size:#x})"
            )
        if link.latency > 10**6:
            raise ConfigError(f"HostLink.latency = {link.latency} exceeds the harness's 10^6")
        self._lib.fastsim_set_host_tier(self._h, base, link.millibytes_per_cycle, link.latency)
        self.tier_counters(clear=True)

    def tier_counters(self, *, clear: bool = False) -> dict[str, dict[str, int]]:
        """Per tier ("device", "host"): bytes read, bytes written, busy cycles.

        Busy cycles (a burst of the tier queued or in flight) are counted while a
        host tier is set. `clear` zeroes the counters after reading them.
        """
        out = (ctypes.c_uint64 * 3)()
        result = {}
        for tier, name in enumerate(TIERS):
            self._lib.fastsim_tier_counters(self._h, tier, out, int(clear))
            keys = ("bytes_read", "bytes_written", "busy_cycles")
            result[name] = dict(zip(keys, out, strict=True))
        return result

    @property
    def protocol_error(self) -> str | None:
        """The first AXI4 protocol violation since the last reset, or None."""
        text = ctypes.create_string_buffer(512)
        if not self._lib.fastsim_protocol_error(self._h, text, len(text)):
            return None
        return text.value.decode(errors="replace")

    def _check_protocol(self) -> None:
        if self._fill_error is not None:
            exc, self._fill_error = self._fill_error, None
            raise SimulationError(f"filling a lazy region failed: {exc!r}") from exc
        error = self.protocol_error
        if error is not None:
            raise ProtocolViolation(error)

    @property
    def cycles(self) -> int:
        """Cycles simulated since creation."""
        return self._lib.fastsim_cycles(self._h)

    def flush_trace(self) -> None:
        self._lib.fastsim_flush_trace(self._h)

    def set_trace_window(self, start: int, end: int) -> None:
        """Dump only cycles [start, end) (counted like `cycles`) into the trace."""
        if not 0 <= start < end:
            raise ValueError(f"trace window [{start}, {end}) is empty or negative")
        self._lib.fastsim_set_trace_window(self._h, start, min(end, 2**64 - 1))

    # -- memory errors ----------------------------------------------------------------
    def inject_error(
        self, lo: int, hi: int, *, write: bool = False, resp: Resp = Resp.SLVERR
    ) -> None:
        """Answer beats touching [lo, hi) with `resp` (reads, or writes if `write`)."""
        if not 0 <= lo < hi:
            raise ValueError(f"error range [{lo}, {hi}) is empty or negative")
        if Resp(resp) not in (Resp.SLVERR, Resp.DECERR):
            raise ValueError(f"injected response must be SLVERR or DECERR, got {resp!r}")
        self._lib.fastsim_add_error_range(self._h, lo, hi, int(write), int(resp))

    def clear_errors(self) -> None:
        self._lib.fastsim_clear_error_ranges(self._h)

    # -- demand-filled memory ---------------------------------------------------------
    def clear_memory(self) -> None:
        """Zero the whole memory at no cost: its pages go back to the OS, zero when touched."""
        self._mapping.madvise(mmap.MADV_DONTNEED)

    def add_lazy_region(self, lo: int, hi: int, fill: Callable[[], None]) -> int:
        """Call `fill()` when the top's first burst touching [lo, hi) is accepted; return its id.

        `fill` writes the region's contents into `mem` (the harness calls it
        from inside the run, before any beat of that burst moves), so data the
        hardware never reads is never produced. Regions must not overlap a
        region not yet filled. An exception from `fill` stops the run; the
        call that ran it raises `SimulationError` from that exception.
        """
        if not 0 <= lo < hi <= self.mem.size:
            raise ValueError(f"lazy region [{lo:#x}, {hi:#x}) is not inside the memory")
        rid = len(self._lazy)
        if self._lib.fastsim_add_lazy_region(self._h, lo, hi, rid) != 0:
            raise ValueError(f"lazy region [{lo:#x}, {hi:#x}) overlaps one not filled yet")
        self._lazy[rid] = fill
        return rid

    def clear_lazy_regions(self) -> None:
        """Forget the lazy regions not filled yet, and the list of those filled."""
        self._lib.fastsim_clear_lazy_regions(self._h)
        self._lazy.clear()
        self.filled = []

    def _fill(self, rid: int) -> int:
        """The harness's callback (the GIL is taken again for it): fill region `rid`."""
        try:
            self._lazy[rid]()
        except BaseException as exc:  # handed back to the caller of the run
            self._fill_error = exc
            return 1
        self.filled.append(rid)
        return 0

    # -- registers --------------------------------------------------------------------
    def _offset(self, reg: str | int) -> int:
        if isinstance(reg, str):
            if isinstance(self.cfg, AccelConfig):  # a ConfigError for a block this build lacks
                return self.regmap.built_register(reg, self.cfg).offset
            return self.regmap.offset(reg)
        if isinstance(reg, bool) or not isinstance(reg, int) or not 0 <= reg < 2**32:
            raise ValueError(f"register offset {reg!r} must be an int in [0, 2^32)")
        return reg

    def try_write(self, offset: int, value: int) -> Resp:
        """Raw AXI4-Lite write; returns BRESP (raises BusError only on no response)."""
        if not 0 <= value < 2**32:
            raise ValueError(f"register value {value} does not fit 32 bits")
        resp = self._lib.fastsim_reg_write(self._h, self._offset(offset), value, LITE_TIMEOUT)
        self._check_protocol()
        if resp < 0:
            raise BusError(f"no write response at 0x{offset:x} within {LITE_TIMEOUT} cycles")
        return Resp(resp)

    def try_read(self, offset: int) -> tuple[int, Resp]:
        """Raw AXI4-Lite read; returns (data, RRESP)."""
        data = ctypes.c_uint32()
        resp = self._lib.fastsim_reg_read(
            self._h, self._offset(offset), ctypes.byref(data), LITE_TIMEOUT
        )
        self._check_protocol()
        if resp < 0:
            raise BusError(f"no read response at 0x{offset:x} within {LITE_TIMEOUT} cycles")
        return data.value, Resp(resp)

    def write_reg(self, reg: str | int, value: int) -> None:
        """Write a 32-bit register by name or byte offset; raises BusError unless OKAY."""
        if isinstance(reg, str) and self.regmap[reg].words != 1:
            raise ValueError(f"register {reg} is 64-bit read-only")
        offset = self._offset(reg)
        resp = self.try_write(offset, value)
        if resp != Resp.OKAY:
            raise BusError(f"write of {reg!r} (0x{offset:x}) got {resp.name}")

    def read_reg(self, reg: str | int) -> int:
        """Read a register by name (64-bit ones low word first) or byte offset.

        By name, a register of a block this build lacks (`contract.regs.Block.built`) is a
        `ConfigError` naming what it needs (by offset: SLVERR, a `BusError`), as in `write_reg`.
        """
        offset = self._offset(reg)
        words = self.regmap[reg].words if isinstance(reg, str) else 1
        value = 0
        for i in range(words):
            data, resp = self.try_read(offset + 4 * i)
            if resp != Resp.OKAY:
                raise BusError(f"read of {reg!r} (0x{offset + 4 * i:x}) got {resp.name}")
            value |= data << (32 * i)
        return value

    # -- running ----------------------------------------------------------------------
    def run(self, max_cycles: int, *, poll_interval: int = 16) -> RunResult:
        """Run until STATUS shows done or error; `FastSimTimeout` after `max_cycles`.

        A protocol violation stops the run within `poll_interval` cycles and
        raises `ProtocolViolation`.

        STATUS is polled over AXI4-Lite every `poll_interval` cycles, so
        `cycles` may exceed the job's own length by up to `poll_interval`
        plus a register read; the top's cycle counters are exact.
        """
        if isinstance(max_cycles, bool) or not isinstance(max_cycles, int) or max_cycles < 1:
            raise ValueError(f"max_cycles = {max_cycles!r} must be a positive int")
        if not 1 <= poll_interval <= 1 << 20:
            raise ValueError(f"poll_interval = {poll_interval} must be in [1, 2^20]")
        status = ctypes.c_uint32()
        cycles = ctypes.c_uint64()
        start = time.perf_counter()
        code = self._lib.fastsim_run(
            self._h,
            max_cycles,
            self.regmap.offset("STATUS"),
            self._done_mask,
            self._error_mask,
            poll_interval,
            ctypes.byref(status),
            ctypes.byref(cycles),
        )
        wall = time.perf_counter() - start
        self._check_protocol()
        if code == 2:
            raise FastSimTimeout(
                f"no done/error within max_cycles = {max_cycles} "
                f"(STATUS = 0x{status.value:x}); raise the limit or check the top"
            )
        if code == 3:
            raise BusError("reading STATUS failed (SLVERR or no response) while running")
        if code == 0:
            return RunResult(cycles.value, RunStatus.DONE, wall, ErrorCause.NONE)
        cause = ErrorCause.NONE
        if "ERROR_CAUSE" in self.regmap:
            raw = self.read_reg("ERROR_CAUSE")
            try:
                cause = ErrorCause(raw)
            except ValueError:
                raise SimulationError(f"the top reported an unknown ERROR_CAUSE {raw}") from None
        return RunResult(cycles.value, RunStatus.ERROR, wall, cause)
