"""`python -m flow`: the FPGA flow's command line, which is `moe-accel synth`'s."""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flow run|verilog|sweep …`: the same as `moe-accel synth run|verilog|sweep`.

    `synth` is accepted for `run` (`python -m flow synth --config …`).

    The command line lives in `sw_driver.cli` (one parser, one set of checks
    and messages). Exit status: 0 when the reports were produced (a timing
    failure or a design that does not fit is a row of the report, not a
    crash), 1 with `run --strict` when the design misses its target or when
    a tool fails, 2 on bad input.
    """
    from sw_driver.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["synth"]:  # the name this entry point used before `run`
        args[0] = "run"
    return cli_main(["synth", *args])
