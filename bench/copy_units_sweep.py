"""Synthesise the copy engine and the AXI arbiter alone; check `pymodel.resources`' table.

`pymodel.resources.copy_units` (what `estimate` adds in builds with
`AccelConfig.copy_engine`) is fitted to `COPY_UNITS_MEASURED`: LUT4, carry and
flip-flop counts of each unit at a few bus widths and `addr_bits`. This script
remakes those rows: each unit through `flow.runs.netlist` (yosys `synth_ecp5`
inside `flow.tops.SynthHarness`, cached by design hash), the harness's cells
taken off (its `in_bits + out_bits` flip-flops, one LUT4 per output bit for the
capture multiplexer). It prints the rows and exits 1 when they differ from the
table: run it after an RTL change to either unit and paste the rows in.
"""

from __future__ import annotations

import argparse
import sys

from amaranth.hdl import Fragment

from flow.runs import netlist
from flow.tools import say
from flow.tops import SynthHarness, build_top
from pymodel.config import AccelConfig
from pymodel.resources import COPY_UNITS_MEASURED


def measure(unit: str, bus: int, addr_bits: int) -> tuple[str, int, int, int, int, int]:
    """One table row: (unit, bus bytes, addr_bits, LUT4, CCU2C, FF) without the harness."""
    cfg = AccelConfig(mem_bytes_per_cycle=bus, addr_bits=addr_bits, copy_engine=True)
    harness = SynthHarness(build_top(unit, cfg))  # for its port count only
    Fragment.get(harness, None)  # elaborated, so not reported as unused
    net = netlist(cfg, top=unit, config_name=f"b{bus}a{addr_bits}")
    c = net.counts
    luts = c["luts"] - harness.out_bits
    return (unit, bus, addr_bits, luts, c["carry"], c["ffs"] - net.harness_ffs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    rows = []
    for unit, bus, addr_bits, *_ in COPY_UNITS_MEASURED:
        say(f"{unit} at {bus} B/beat, {addr_bits}-bit addresses")
        rows.append(measure(unit, bus, addr_bits))
    for row in rows:
        print(f"    {row!r},")
    if tuple(rows) != COPY_UNITS_MEASURED:
        say("the rows differ from pymodel.resources.COPY_UNITS_MEASURED: paste them in")
        return 1
    say("pymodel.resources.COPY_UNITS_MEASURED is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
