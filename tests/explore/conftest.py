"""Running `moe-accel explore` in tests: small workloads, quiet, outputs under tmp_path."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from sw_driver.cli import main

SMALL_LAYER = ["--layer", "mixtral:d_model=64,d_ff=128", "--decode-tokens", "1"]
SMALL_LAYER += ["--prefill-tokens", "32"]
"""A Mixtral-style layer the model evaluates in a fraction of a millisecond."""


def free_port() -> int:
    """A TCP port on loopback nobody listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def explore(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    """Run `moe-accel explore ARGS -q` in-process: (exit status, stdout, stderr)."""

    def run(*args: str, storage: Path | None = None, out: Path | None = None) -> tuple:
        argv = ["explore", "-q", "--storage", str(storage or tmp_path / "study.db")]
        argv += ["--out", str(out or tmp_path / "out"), *args]
        rc = main(argv)
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run
