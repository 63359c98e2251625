"""FPGA resources of the GEMM engine on ECP5-85F, fitted to yosys synthesis of real configs.

The engine (`rtl.gemm_engine`: tile sequencer, R × C array, accumulators,
post-processing lanes) is what `make synth` measures and what bounds which
array fits a device: its multipliers are the DSP budget. Each resource class
is a least-squares fit, linear in a few structural quantities of the config
(`FEATURES`): processing elements R·C, lanes C, rows R, the bus width, the
parameter memory's size in block RAMs; block RAMs whose mapping is known
(accumulators, activation LUTs, output FIFO) are counted, not fitted. The fitting data is
`pymodel/data/resource_fit.csv`: one row per config of a documented set
(`bench/resource_sweep.py`, which runs `flow.runs.netlist`: yosys
`synth_ecp5`, counts with the synthesis harness, as in docs/fpga.md), rows
marked `holdout` kept out of the fit to measure its error (`holdout_errors`,
`python -m pymodel.resources`). DSPs come out exact (R·C + 6·C + 1: one
multiplier a PE, six a post-processing lane, one in the sequencer).

The copy engine and the AXI arbiter (builds with `AccelConfig.copy_engine`)
are counted on top of the engine when the switch is on: `copy_units` fits
each unit's LUT4, carry and FF counts, linear in the bus width and
`addr_bits`, to yosys `synth_ecp5` of the unit alone at five configs
(`COPY_UNITS_MEASURED`, the synthesis harness's cells taken off); they use
no DSP; the copy engine's beat FIFO maps to block RAM and the other
memories (the descriptor queue, the arbiter's W-order FIFO) to LUT RAM,
counted exactly in `brams` and `lut_ram`.

Fmax is not modelled: `known_fmax` returns the place-and-route result of a
config of docs/fpga.md's sweep (`FMAX_MEASURED`), else None.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from contract.timing import (
    DMA_MAX_OUTSTANDING,
    SHIFT_BITS,
    burst_beats,
    default_m_block,
    default_param_rows,
    postproc_output_bits,
)

from .config import AccelConfig, ConfigError

__all__ = [
    "COPY_UNITS_MEASURED",
    "FIT_TABLE",
    "FMAX_MEASURED",
    "RESOURCES",
    "ResourceEstimate",
    "copy_units",
    "estimate",
    "holdout_errors",
    "known_fmax",
]

FIT_TABLE = Path(__file__).with_name("data") / "resource_fit.csv"
"""The checked-in synthesis results the model is fitted to."""

CONFIG_COLUMNS = (
    "rows",
    "cols",
    "m_tile",
    "mem_bytes_per_cycle",
    "weight_buffers",
    "max_d_ff",
    "max_d_model",
    "max_tokens",
    "max_experts",
)
RESOURCES = ("luts", "carry", "ffs", "dsps", "brams")
"""Resource classes, as `flow.reports.parse_yosys_stat` counts them."""
TABLE_COLUMNS = {
    "config": CONFIG_COLUMNS,
    "all": (*CONFIG_COLUMNS, *RESOURCES, "harness_ffs", "yosys"),
}

FMAX_MEASURED: tuple[tuple[AccelConfig, float], ...] = (
    (AccelConfig(rows=4, cols=4, m_tile=4), 99.2),
    (AccelConfig(), 100.4),
    (AccelConfig(rows=9, cols=9, m_tile=9), 101.1),
)
"""Fmax (MHz) of the ECP5-85F place-and-route runs of docs/fpga.md's sweep
(configs/4x4.json, default.json, 9x9.json), seed 1, at a 100 MHz target."""


def _quantities(cfg: AccelConfig) -> dict[str, float]:
    r, c = cfg.rows, cfg.cols
    m_block = default_m_block(cfg)
    param_rows = default_param_rows(cfg)
    # Block RAMs whose mapping is known (yosys `memory_libmap` on ECP5, read off the logs):
    # each of the two accumulator banks (m_block rows of C·acc_bits) as 512 × 36 blocks once
    # deeper than 32 rows (shallower ones go to LUT RAM), one block per activation-LUT lane,
    # the output FIFO (≤ 64 entries of the output row) in 36-bit-wide blocks.
    acc = 2 * _ceil(c * cfg.acc_bits, 36) * _ceil(m_block, 512) if m_block > 32 else 0
    fifo = _ceil(postproc_output_bits(cfg), 36)
    return {
        "one": 1.0,
        "pes": float(r * c),
        "lanes": float(c),
        "rows": float(r),
        "bus": float(cfg.mem_bytes_per_cycle),
        "bram_known": float(acc + c + fifo),
        "param_blocks": param_rows * c * (cfg.mult_bits + SHIFT_BITS) / 18432,
    }


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


FEATURES: dict[str, tuple[str, ...]] = {
    "luts": ("one", "pes", "lanes", "rows", "bus"),
    "carry": ("one", "pes", "lanes", "rows"),
    "ffs": ("one", "pes", "lanes", "rows", "bus"),
    "dsps": ("one", "pes", "lanes"),
    "brams": ("one", "param_blocks", "lanes"),
}
"""The quantities each resource class is linear in (beyond its `KNOWN` part)."""

KNOWN: dict[str, str] = {"brams": "bram_known"}
"""A part counted exactly, not fitted: the block RAMs whose mapping is known. The fit covers
the rest (the requantisation-parameter memory, in DP16KD blocks of 18 Kbit)."""


@dataclass(frozen=True)
class ResourceEstimate:
    """Estimated cell counts for one config (ECP5): the GEMM engine (synthesis harness
    included), plus the copy engine and the arbiter in builds with `copy_engine`."""

    luts: int
    carry: int
    ffs: int
    dsps: int
    brams: int
    lut_ram: int = 0
    """TRELLIS_DPR16X4 cells (16 × 4 bits of LUT RAM) of the units counted exactly: the
    copy engine's and the arbiter's memories (0 without `copy_engine`); not in
    `logic_cells`."""

    @property
    def logic_cells(self) -> int:
        """LUT4 positions: LUT4s plus two per CCU2C carry cell (nextpnr's TRELLIS_COMB)."""
        return self.luts + 2 * self.carry


def _read_table(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ConfigError(f"cannot read the resource table {path}: {exc.strerror}") from None
    missing = {"name", "role", *CONFIG_COLUMNS, *RESOURCES} - set(rows[0] if rows else {})
    if missing:
        raise ConfigError(f"resource table {path} lacks columns {sorted(missing)}")
    return rows


def _config_of(row: dict[str, str]) -> AccelConfig:
    return AccelConfig(**{k: int(row[k]) for k in CONFIG_COLUMNS})


def _design(cfgs: list[AccelConfig], resource: str) -> np.ndarray:
    return np.array([[_quantities(c)[f] for f in FEATURES[resource]] for c in cfgs])


@functools.cache
def _fit(path: Path = FIT_TABLE) -> dict[str, np.ndarray]:
    rows = [r for r in _read_table(path) if r["role"] == "fit"]
    cfgs = [_config_of(r) for r in rows]
    coef = {}
    for resource in RESOURCES:
        a = _design(cfgs, resource)
        if len(rows) < a.shape[1]:
            raise ConfigError(
                f"resource table {path}: {len(rows)} fit rows cannot fit {a.shape[1]} "
                f"coefficients for {resource}"
            )
        y = np.array([float(r[resource]) for r in rows])
        if resource in KNOWN:
            y = y - np.array([_quantities(c)[KNOWN[resource]] for c in cfgs])
        coef[resource] = np.linalg.lstsq(a, y, rcond=None)[0]
    return coef


def estimate(cfg: AccelConfig) -> ResourceEstimate:
    """Estimated LUT4, carry, FF, DSP and block-RAM counts of `cfg`'s GEMM engine on ECP5,
    with the copy engine and the arbiter (`copy_units`) when `cfg.copy_engine`."""
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"estimate needs an AccelConfig, got {type(cfg).__name__}")
    coef = _fit()
    q = _quantities(cfg)
    # The fitted part is never negative (a small parameter memory extrapolated below the
    # fitting range); the counted part is added to it.
    values = {
        r: round(
            q.get(KNOWN.get(r, ""), 0.0)
            + max(0.0, float(np.dot([q[f] for f in FEATURES[r]], coef[r])))
        )
        for r in RESOURCES
    }
    engine = ResourceEstimate(**values)
    if not cfg.copy_engine:
        return engine
    copy = copy_units(cfg)
    return ResourceEstimate(
        **{r: getattr(engine, r) + getattr(copy, r) for r in RESOURCES}, lut_ram=copy.lut_ram
    )


COPY_UNITS_MEASURED: tuple[tuple[str, int, int, int, int, int], ...] = (
    # unit, mem_bytes_per_cycle, addr_bits, LUT4, CCU2C, FF
    ("copy_engine", 16, 32, 834, 380, 1033),
    ("copy_engine", 4, 32, 743, 403, 759),
    ("copy_engine", 64, 32, 1247, 353, 2171),
    ("copy_engine", 16, 48, 998, 428, 1161),
    ("copy_engine", 8, 40, 865, 418, 913),
    ("axi_arbiter", 16, 32, 319, 96, 208),
    ("axi_arbiter", 4, 32, 211, 96, 208),
    ("axi_arbiter", 64, 32, 751, 96, 208),
    ("axi_arbiter", 16, 48, 351, 96, 208),
    ("axi_arbiter", 8, 40, 263, 96, 208),
)
"""yosys 0.70 `synth_ecp5` of `CopyEngine(cfg, axi_id=1)` and `AXI4Arbiter(cfg, ids=(0, 1))`
alone, each in `flow.tops.SynthHarness` (`flow.runs.netlist`, other fields default). The
harness's cells are taken off: its `in_bits + out_bits` flip-flops exactly and one LUT4 per
output bit (the capture multiplexer). `python bench/copy_units_sweep.py` remakes and checks
these rows."""


def _copy_features(bus: int, addr_bits: int) -> list[float]:
    return [1.0, float(bus), float(addr_bits)]


@functools.cache
def _copy_fit() -> dict[str, np.ndarray]:
    """Per copy unit, (LUT4, carry, FF) coefficients on `_copy_features`."""
    coef = {}
    for unit in ("copy_engine", "axi_arbiter"):
        rows = [r for r in COPY_UNITS_MEASURED if r[0] == unit]
        a = np.array([_copy_features(r[1], r[2]) for r in rows])
        y = np.array([r[3:] for r in rows], dtype=float)
        coef[unit] = np.linalg.lstsq(a, y, rcond=None)[0]
    return coef


def copy_units(cfg: AccelConfig) -> ResourceEstimate:
    """Estimated cells of the copy engine plus the AXI arbiter at `cfg` (built or not).

    Memories are counted exactly: the copy engine's FIFO (`DMA_MAX_OUTSTANDING` bursts of
    the bus, 63 beats at most in memory) maps to DP16KD block RAM, 36 bits wide at 512
    entries; LUT RAM holds its descriptor queue (`COPY_QUEUE_DEPTH` ≤ 16 entries of
    src, dst and a 32-bit length), and one cell for the arbiter's W-order FIFO.
    """
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"copy_units needs an AccelConfig, got {type(cfg).__name__}")
    x = np.array(_copy_features(cfg.mem_bytes_per_cycle, cfg.addr_bits))
    fifo_beats = DMA_MAX_OUTSTANDING * burst_beats(cfg)
    luts, carry, ffs = sum(x @ coef for coef in _copy_fit().values())
    return ResourceEstimate(
        luts=round(luts),
        carry=round(carry),
        ffs=round(ffs),
        dsps=0,
        brams=_ceil(8 * cfg.mem_bytes_per_cycle, 36) * _ceil(fifo_beats - 1, 512),
        lut_ram=_ceil(2 * cfg.addr_bits + 32, 4) + 1,
    )


def known_fmax(cfg: AccelConfig) -> float | None:
    """Measured ECP5-85F Fmax of `cfg` when it is one of docs/fpga.md's sweep configs, else None."""
    for measured, fmax in FMAX_MEASURED:
        if dataclasses.replace(cfg, clock_mhz=measured.clock_mhz) == measured:
            return fmax
    return None


def holdout_errors(path: Path = FIT_TABLE) -> list[dict[str, object]]:
    """Per held-out config: measured and estimated counts and the relative error of each."""
    out: list[dict[str, object]] = []
    for row in _read_table(path):
        if row["role"] != "holdout":
            continue
        est = estimate(_config_of(row))
        entry: dict[str, object] = {"name": row["name"]}
        for resource in RESOURCES:
            measured = int(row[resource])
            predicted = getattr(est, resource)
            entry[resource] = (measured, predicted, (predicted - measured) / measured)
        out.append(entry)
    return out


def markdown(path: Path = FIT_TABLE) -> str:
    """The held-out error table of docs/explore.md."""
    lines = [
        "| held-out config | " + " | ".join(RESOURCES) + " |",
        "|---|" + "---|" * len(RESOURCES),
    ]
    worst = dict.fromkeys(RESOURCES, 0.0)
    for entry in holdout_errors(path):
        cells = []
        for resource in RESOURCES:
            measured, predicted, err = entry[resource]  # type: ignore[misc]
            worst[resource] = max(worst[resource], abs(err))
            cells.append(f"{measured} → {predicted} ({100 * err:+.1f} %)")
        lines.append(f"| {entry['name']} | " + " | ".join(cells) + " |")
    lines.append(
        "| **worst** | " + " | ".join(f"**{100 * worst[r]:.1f} %**" for r in RESOURCES) + " |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None, out: Callable[[str], object] = print) -> int:
    """Print the held-out errors (measured → estimated) as a Markdown table."""
    del argv
    out(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
