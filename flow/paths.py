"""Repository paths and build directories, defined once (no Amaranth: the driver imports it)."""

import os
import subprocess
from functools import cache
from pathlib import Path

__all__ = [
    "BUILD_ROOT",
    "DEFAULT_CONFIG",
    "FAST_BUILD_ROOT",
    "FORMAL_BUILD_ROOT",
    "FPGA_BUILD_ROOT",
    "REPO_ROOT",
    "SIM_BUILD_ROOT",
    "VERILOG_BUILD_ROOT",
    "git_describe",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.json"


def _build_root() -> Path:
    """Where builds go: `$MOE_ACCEL_BUILD_DIR`; else `build/` of a source checkout (the
    project's `pyproject.toml` beside the packages); else the user's cache directory
    (`$XDG_CACHE_HOME/moe-accel`, default `~/.cache/moe-accel`) for an installed package."""
    chosen = os.environ.get("MOE_ACCEL_BUILD_DIR")
    if chosen:
        return Path(chosen).expanduser().resolve()
    if (REPO_ROOT / "pyproject.toml").is_file():
        return REPO_ROOT / "build"
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "moe-accel"


BUILD_ROOT = _build_root()
"""Root of every build folder below (Verilator models, proofs, FPGA runs), chosen once."""
SIM_BUILD_ROOT = BUILD_ROOT / "sim"
"""Verilator builds for cocotb (`sim.build`)."""
FAST_BUILD_ROOT = BUILD_ROOT / "fast"
"""Shared-library builds of the fast backend (`sim.fast`)."""
FORMAL_BUILD_ROOT = BUILD_ROOT / "formal"
"""SymbiYosys proofs (`sim.formal`)."""
FPGA_BUILD_ROOT = BUILD_ROOT / "fpga"
"""Synthesis and place-and-route runs, one folder per device (`flow.runs`)."""
VERILOG_BUILD_ROOT = BUILD_ROOT / "verilog"
"""Standalone Verilog for vendor tools (`moe-accel synth verilog`)."""


@cache
def git_describe() -> str | None:
    """`git describe --always --dirty` of the repository, or None outside a git checkout."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() or None
