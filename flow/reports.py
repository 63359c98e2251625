"""Reading the tools' reports (yosys `stat -json`, nextpnr `--report`) and writing tables.

A `SynthReport` is one run's result; `markdown_table` renders reports and
`update_doc` puts a sweep's table into docs/fpga.md between its markers.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from .devices import DEVICES, FpgaDevice
from .errors import SynthError
from .paths import REPO_ROOT, git_describe

__all__ = [
    "SWEEP_BEGIN",
    "SWEEP_END",
    "SynthReport",
    "critical_path_hops",
    "markdown_table",
    "parse_nextpnr_report",
    "parse_yosys_stat",
    "rtl_revision",
    "stat_cells",
    "update_doc",
]


@dataclass
class SynthReport:
    """One synthesis + place-and-route result (JSON-ready; `markdown_table` renders rows).

    `status`: "ok" (routed, all clocks meet their target), "timing-fail"
    (routed, some clock below target) or "no-fit" (placement impossible;
    `message` has nextpnr's reason). Cell counts come from yosys after
    synthesis (so they exist for "no-fit" too) and include the harness.
    """

    top: str
    config_name: str
    device: str
    rows: int
    cols: int
    target_mhz: float
    status: Literal["ok", "timing-fail", "no-fit"]
    luts: int
    carry: int
    ffs: int
    dsps: int
    brams: int
    harness_ffs: int
    logic_cells_used: int | None
    logic_cells_available: int | None
    fmax_mhz: dict[str, float]
    wall_s: float
    yosys_s: float
    nextpnr_s: float
    seed: int
    tools: dict[str, str]
    out_dir: str
    message: str = ""
    critical_path: list[dict[str, Any]] = field(default_factory=list)
    utilization: dict[str, dict[str, int]] = field(default_factory=dict)
    yosys_cells: dict[str, int] = field(default_factory=dict)
    cached: bool = False

    @property
    def logic_pct(self) -> float | None:
        if not self.logic_cells_used or not self.logic_cells_available:
            return None
        return 100.0 * self.logic_cells_used / self.logic_cells_available

    @property
    def fmax_min_mhz(self) -> float | None:
        """The slowest clock's Fmax (the design's clock rate when it has one domain)."""
        return min(self.fmax_mhz.values()) if self.fmax_mhz else None

    @property
    def peak_gops(self) -> float | None:
        """Peak int8 GOPS at the achieved Fmax: 2 ops × rows × cols MACs per cycle."""
        fmax = self.fmax_min_mhz
        return None if fmax is None else 2 * self.rows * self.cols * fmax / 1000.0

    @property
    def timing_met(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            logic_pct=self.logic_pct,
            fmax_min_mhz=self.fmax_min_mhz,
            peak_gops=self.peak_gops,
            timing_met=self.timing_met,
        )
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SynthReport:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> str:
        """A few human lines: status, Fmax, utilisation and the critical path's ends."""
        lines = [markdown_table([self])]
        if self.message:
            lines.append(f"\n{self.message}")
        if self.critical_path:
            total = sum(step["delay_ns"] for step in self.critical_path)
            logic = sum(1 for step in self.critical_path if step["type"] == "logic")
            lines.append(
                f"\ncritical path: {total:.2f} ns, {logic} logic cells "
                f"(every step in {self.out_dir}/report.json):\n  "
                + "\n  ".join(critical_path_hops(self.critical_path))
            )
        lines.append(f"\nreport: {self.out_dir}/synth_report.json")
        return "\n".join(lines)


_PRIMITIVE = re.compile(
    r"_(?:SB_|TRELLIS_|CCU2C|LUT4|MULT18X18D|ALU54B|DP16KD|PFUMX|L6MUX21|DPR16X4)|\$"
)


def critical_path_hops(path: Sequence[dict[str, Any]]) -> list[str]:
    """The critical path as design signals with cumulative delay, one line per signal.

    nextpnr names packed cells after the netlist signal they drive plus the
    primitive (`dut.postproc.req_a_0.product_SB_MAC16_O_DSP`); cutting the
    primitive part and merging consecutive steps of one signal gives a path
    a designer can map back to the Amaranth source.
    """
    hops: list[tuple[str, float]] = []
    elapsed = 0.0
    for step in path:
        elapsed += step["delay_ns"]
        cell = step.get("to_cell") or step.get("from_cell") or "?"
        name = _PRIMITIVE.split(cell, maxsplit=1)[0] or cell
        if hops and hops[-1][0] == name:
            hops[-1] = (name, elapsed)
        else:
            hops.append((name, elapsed))
    return [f"{elapsed:7.2f} ns  {name}" for name, elapsed in hops]


def _gops(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def markdown_table(reports: Sequence[SynthReport]) -> str:
    """A Markdown table, one row per report (DSP/BRAM headers name the first device's cells)."""
    if not reports:
        raise SynthError("markdown_table needs at least one report")
    dev = DEVICES[reports[0].device]
    head = (
        f"| top | config | array | LUT4 | carry | FF | {dev.dsp_label} | {dev.bram_label} "
        "| logic cells | Fmax MHz (target) | timing | peak int8 GOPS | wall s |"
    )
    rows = [head, "|" + "---|" * 13]
    for r in reports:
        pct = r.logic_pct
        cells = "—" if pct is None else f"{r.logic_cells_used} ({pct:.1f} %)"
        fmax = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r.fmax_mhz.items()))
        timing = {"ok": "met", "timing-fail": "**FAIL**", "no-fit": "**does not fit**"}[r.status]
        rows.append(
            f"| {r.top} | {r.config_name} | {r.rows}×{r.cols} | {r.luts} | {r.carry} | {r.ffs} "
            f"| {r.dsps} | {r.brams} | {cells} | {fmax or '—'} ({r.target_mhz:g}) | {timing} "
            f"| {_gops(r.peak_gops)} | {r.wall_s:.0f} |"
        )
    return "\n".join(rows)


def _clock_label(name: str) -> str:
    """The user's clock name from nextpnr's (`$glbnet$clk`, `posedge clk$SB_IO_IN_$glb_clk`)."""
    name = name.split(" ")[-1].removeprefix("$glbnet$")
    return name.split("$")[0] or name


def _is_pseudo_clock(name: str) -> bool:
    """nextpnr-ice40 lists DSPs' constant-tied clock pins as a clock; it is no clock."""
    return "$PACKER_GND_NET" in name or "$PACKER_VCC_NET" in name


def parse_yosys_stat(stat: dict[str, Any], device: FpgaDevice) -> dict[str, int]:
    """Cell counts by class (`luts`, `carry`, `ffs`, `dsps`, `brams`) from `stat -json`.

    Reads the top module's count when yosys reports a design total, so a
    flattened netlist and a hierarchical one count the same.
    """
    cells = stat_cells(stat)

    def total(names: Sequence[str]) -> int:
        return sum(cells.get(n, 0) for n in names)

    return {
        "luts": total(device.lut_cells),
        "carry": total(device.carry_cells),
        "ffs": sum(n for t, n in cells.items() if t.startswith(device.ff_prefixes)),
        "dsps": total(device.dsp_cells),
        "brams": total(device.bram_cells),
    }


def stat_cells(stat: dict[str, Any]) -> dict[str, int]:
    design = stat.get("design")
    if isinstance(design, dict) and "num_cells_by_type" in design:
        return {k: int(v) for k, v in design["num_cells_by_type"].items()}
    modules = stat.get("modules") or {}
    if len(modules) != 1:
        raise SynthError(f"yosys stat JSON has no design total and {len(modules)} modules")
    (only,) = modules.values()
    return {k: int(v) for k, v in only.get("num_cells_by_type", {}).items()}


def parse_nextpnr_report(report: dict[str, Any]) -> dict[str, Any]:
    """Fmax per clock, utilisation per cell type and the worst critical path from `--report`.

    The critical path is the one of the slowest clock, each step as
    `{type, net, delay_ns, from_cell, to_cell}` (type: clk-to-q, logic,
    routing, setup). Clock names are the design's (`clk`), without nextpnr's
    decorations.
    """
    clocks = {
        _clock_label(name): v
        for name, v in (report.get("fmax") or {}).items()
        if not _is_pseudo_clock(name)
    }
    fmax = {k: float(v["achieved"]) for k, v in clocks.items() if v.get("achieved") is not None}
    constraints = {
        k: float(v["constraint"]) for k, v in clocks.items() if v.get("constraint") is not None
    }
    util = {
        name: {"used": int(v["used"]), "available": int(v["available"])}
        for name, v in (report.get("utilization") or {}).items()
    }
    path: list[dict[str, Any]] = []
    worst = min(fmax, key=fmax.get) if fmax else None
    for cp in report.get("critical_paths") or []:
        ends = {_clock_label(cp.get("from", "")), _clock_label(cp.get("to", ""))}
        if ends != {worst}:
            continue
        path = [
            {
                "type": step.get("type", ""),
                "net": step.get("net", ""),
                "delay_ns": float(step.get("delay", 0.0)),
                "from_cell": (step.get("from") or {}).get("cell", ""),
                "to_cell": (step.get("to") or {}).get("cell", ""),
            }
            for step in cp.get("path", [])
        ]
        break
    return {"fmax": fmax, "constraints": constraints, "utilization": util, "path": path}


SWEEP_BEGIN = "<!-- sweep:begin -->"
SWEEP_END = "<!-- sweep:end -->"


def update_doc(doc: Path | str, reports: Sequence[SynthReport], revision: str) -> None:
    """Replace the text between the sweep markers of `doc` with the table of `reports`."""
    doc = Path(doc)
    text = doc.read_text()
    if SWEEP_BEGIN not in text or SWEEP_END not in text:
        raise SynthError(f"{doc} lacks the markers {SWEEP_BEGIN} … {SWEEP_END}")
    before, rest = text.split(SWEEP_BEGIN, 1)
    _, after = rest.split(SWEEP_END, 1)
    notes = [
        f"Measured at RTL revision `{revision}` with yosys {reports[0].tools['yosys']}, "
        f"nextpnr {reports[0].tools['nextpnr']}, seed {reports[0].seed}, `--threads 1`."
    ]
    for r in reports:
        if r.message:
            notes.append(f"- {r.config_name}: {r.message}")
    body = "\n".join([markdown_table(reports), "", *notes])
    doc.write_text(f"{before}{SWEEP_BEGIN}\n{body}\n{SWEEP_END}{after}")


def rtl_revision() -> str:
    """The git commit (`-dirty` with local edits) and a hash of the RTL sources."""
    commit = git_describe() or "no git"
    h = hashlib.sha256()
    for path in sorted((REPO_ROOT / "rtl").glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{commit}, rtl sources sha256 {h.hexdigest()[:12]}"
