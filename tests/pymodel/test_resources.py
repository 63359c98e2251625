"""The FPGA resource model against the checked-in synthesis table it is fitted to."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.resources import (
    COPY_UNITS_MEASURED,
    FIT_TABLE,
    RESOURCES,
    copy_units,
    estimate,
    holdout_errors,
    known_fmax,
    markdown,
)


def _table() -> list[dict[str, str]]:
    with FIT_TABLE.open() as fh:
        return list(csv.DictReader(fh))


def test_table_has_fit_and_holdout_rows() -> None:
    roles = [r["role"] for r in _table()]
    assert roles.count("fit") >= 10
    assert roles.count("holdout") >= 3
    assert set(roles) == {"fit", "holdout"}


def test_dsps_exact_everywhere() -> None:
    """One multiplier a PE, six a post-processing lane, one in the sequencer."""
    for row in _table():
        r, c = int(row["rows"]), int(row["cols"])
        cfg = AccelConfig(rows=r, cols=c)
        assert estimate(cfg).dsps == int(row["dsps"]) == r * c + 6 * c + 1, row["name"]


def test_held_out_error_within_documented_bound() -> None:
    """docs/explore.md: LUT4, carry, FF and DSP within 10 % on configs kept out of the fit."""
    errors = holdout_errors()
    assert len(errors) >= 3
    for entry in errors:
        for resource in ("luts", "carry", "ffs", "dsps"):
            measured, predicted, err = entry[resource]
            assert abs(err) <= 0.10, (entry["name"], resource, measured, predicted)
    assert "**worst**" in markdown()


def test_logic_cells_count_carry_twice() -> None:
    est = estimate(AccelConfig())
    assert est.logic_cells == est.luts + 2 * est.carry


def test_known_fmax_only_for_measured_configs() -> None:
    assert known_fmax(AccelConfig()) == 100.4
    assert known_fmax(AccelConfig(clock_mhz=150.0)) == 100.4
    assert known_fmax(AccelConfig(rows=4, cols=4, m_tile=4)) == 99.2
    assert known_fmax(AccelConfig(mem_bytes_per_cycle=32)) is None


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="needs an AccelConfig"):
        estimate({"rows": 8})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs an AccelConfig"):
        copy_units({"rows": 8})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cfg",
    [AccelConfig(), AccelConfig(rows=4, cols=4, m_tile=4, mem_bytes_per_cycle=8, addr_bits=40)],
)
def test_the_copy_engine_switch_adds_the_copy_units_and_nothing_else(cfg: AccelConfig) -> None:
    """Without the switch: the engine alone (no LUT RAM); with it: plus the copy engine and
    the arbiter, which have no DSP and block RAM only for the copy engine's beat FIFO."""
    plain, copy = estimate(cfg), estimate(cfg.replace(copy_engine=True))
    units = copy_units(cfg)
    assert plain.lut_ram == 0 and units.dsps == 0 and units.brams > 0
    for resource in RESOURCES:
        assert getattr(copy, resource) == getattr(plain, resource) + getattr(units, resource)
    assert copy.lut_ram == units.lut_ram > 0
    assert units.luts > 0 and units.carry > 0 and units.ffs > 0


def test_copy_units_within_two_percent_of_their_synthesis() -> None:
    """Each measured config: the two units' LUT4, carry and FF sums within 2 %; LUT RAM is
    the FIFO (2 cells a bus byte), the queue ((2 addr_bits + 32) / 4) and the arbiter's 1."""
    points = {(bus, abits) for _, bus, abits, *_ in COPY_UNITS_MEASURED}
    for bus, abits in sorted(points):
        cfg = AccelConfig(mem_bytes_per_cycle=bus, addr_bits=abits)
        rows = [r for r in COPY_UNITS_MEASURED if r[1:3] == (bus, abits)]
        est = copy_units(cfg)
        for i, resource in enumerate(("luts", "carry", "ffs")):
            measured = sum(r[3 + i] for r in rows)
            assert abs(getattr(est, resource) - measured) <= 0.02 * measured, (bus, abits)
    # At the default config (yosys): 24 LUT RAM cells in the copy engine (its descriptor
    # queue), 1 in the arbiter; 4 DP16KD for the copy engine's 64 beats of 16 B.
    assert copy_units(AccelConfig()).lut_ram == 25
    assert copy_units(AccelConfig()).brams == 4


def test_bad_table(tmp_path: Path) -> None:
    bad = tmp_path / "t.csv"
    bad.write_text("name,role,rows\nx,fit,8\n")
    with pytest.raises(ConfigError, match="lacks columns"):
        holdout_errors(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        holdout_errors(tmp_path / "missing.csv")


def test_docs_table_is_the_models() -> None:
    """docs/explore.md shows the held-out table this model and table produce."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "explore.md").read_text()
    assert markdown() in doc, "rerun `python -m pymodel.resources` and paste it into the doc"
