# amaranth: UnusedElaboratable=no
"""`flow.runs`: argument checks, no-fit detection and one real iCE40 build.

The real build (the smallest configuration, yosys + nextpnr-ice40) is the
default-run smoke test: ~1 min on 2 cores once YoWASP's WebAssembly is
compiled (the first call on a fresh machine adds 1–3 min, cached under
~/.cache/YoWASP). The ECP5 timing check of the default configuration is
`slow` (several minutes; `make synth` does the same).
"""

import json
from pathlib import Path

import pytest

from flow.errors import SynthError
from flow.runs import _NO_FIT, synth
from flow.tops import load_config
from pymodel.config import AccelConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_unknown_device_and_bad_frequency():
    with pytest.raises(SynthError, match="ecp5-85f"):
        synth(AccelConfig(rows=2, cols=2), device="virtex")
    with pytest.raises(SynthError, match="frequency"):
        synth(AccelConfig(rows=2, cols=2), freq_mhz=0.5)


@pytest.mark.parametrize(
    "line",
    [
        "ERROR: Failed to expand region (0, 0) |_> (25, 31) of 5358 ICESTORM_LCs",
        "ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'MULT18X18D'",
    ],
)
def test_nextpnr_placement_failures_read_as_no_fit(line):
    """nextpnr's ways of saying the design is too big become a `no-fit` report, not a crash."""
    match = _NO_FIT.search(f"Info: placing\n{line}\n1 error")
    assert match is not None and match.group(1) == line


def test_ice40_smoke_build(tmp_path):
    """The smallest configuration (1×1) through yosys and nextpnr-ice40 (UP5K), twice (cached).

    UP5K has 8 SB_MAC16: the array's product and the post-processing lane's
    multipliers take 7, so 1×1 is the largest engine that fits.
    """
    cfg = load_config(CONFIGS / "ice40.json")
    report = synth(cfg, device="ice40-up5k", out_root=tmp_path, config_name="ice40")
    assert report.status in ("ok", "timing-fail"), report.message
    assert list(report.fmax_mhz) == ["clk"] and report.fmax_min_mhz > 5
    assert 0 < report.logic_cells_used <= report.logic_cells_available == 5280
    assert cfg.rows * cfg.cols <= report.dsps <= 8
    assert report.ffs >= report.harness_ffs
    assert report.critical_path and report.critical_path[-1]["type"] == "setup"
    saved = json.loads(Path(report.out_dir, "synth_report.json").read_text())
    assert saved["status"] == report.status and saved["peak_gops"] == report.peak_gops
    again = synth(cfg, device="ice40-up5k", out_root=tmp_path, config_name="ice40")
    assert again.cached and again.fmax_mhz == report.fmax_mhz


@pytest.mark.slow
def test_default_config_meets_100mhz_on_ecp5():
    """Issue #6: the default 8×8 engine closes 100 MHz on ECP5-85F (~20 min on 2 cores)."""
    cfg = load_config(CONFIGS / "default.json")
    report = synth(cfg, config_name="default")
    # One multiplier per PE, six per post-processing lane, one in the sequencer.
    assert report.dsps == cfg.rows * cfg.cols + 6 * cfg.cols + 1
    assert report.status == "ok", report.summary()
    assert report.fmax_min_mhz >= 100.0
