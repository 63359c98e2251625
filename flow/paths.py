"""Repository paths and build directories, defined once (no Amaranth: the driver imports it)."""

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
BUILD_ROOT = REPO_ROOT / "build"
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
