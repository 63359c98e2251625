"""RTL checks and syntheses of a front's points, run as Dask tasks and stored with the study."""

from __future__ import annotations

import csv
from pathlib import Path

import optuna
import pytest

from sim.tb.layer_cases import SMALL_TOP


def _front(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["on_front"] == "True"]


def _small_study(tmp_path: Path, *space: str) -> list[str]:
    base = tmp_path / "small.json"
    base.write_text(SMALL_TOP.to_json())
    return [
        "--layer", "mixtral:d_model=32,d_ff=64", "--decode-tokens", "1",
        "--prefill-tokens", "16", "--base-config", str(base), "--device", "none",
        "--param", "max_tokens=16", *space,
    ]  # fmt: skip


def _check_rows(rows: list[dict[str, str]]) -> None:
    for row in rows:
        assert row["rtl_bit_exact"] == "True", row.get("rtl_error")
        for step in ("decode", "prefill"):
            measured = int(row[f"rtl_{step}_cycles_measured"])
            predicted = int(row[f"rtl_{step}_cycles_predicted"])
            # bench/calibrate.py holds the model within 1 % of the RTL on whole layers
            assert abs(measured - predicted) <= 0.01 * measured, (step, measured, predicted)


def _verify(
    explore, tmp_path: Path, space: list[str], objective: str, n: int, trials: int, population: int
):
    """A study over `space` with `--verify-top n`: its checked front rows, checked."""
    args = _small_study(tmp_path, *(a for p in space for a in ("--param", p)))
    args += ["--objective", "decode_latency_us", "--objective", objective]
    args += ["--trials", str(trials), "--population", str(population), "--verify-top", str(n)]
    rc, out, err = explore(*args)
    assert rc == 0, err
    checked = [r for r in _front(tmp_path / "out") if r["rtl_bit_exact"]]
    assert len(checked) == n
    _check_rows(checked)
    return args, out


def test_verify_top_one(explore, tmp_path: Path) -> None:
    """The fastest design of a 2-point front (the RTL tests' own 8×8 top) on the RTL."""
    space = ["rows=8", "cols=8", "m_tile=8", "mem_bytes_per_cycle=8,16"]
    args, out = _verify(explore, tmp_path, space, "luts", 1, 8, 4)
    assert "bit-exact, decode" in out
    study = optuna.load_study(study_name="explore", storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert sum(k.startswith("rtl:") for k in study.user_attrs) == 1
    # rerun: the stored check is reused, not rerun
    rc, out, _ = explore(*args)
    assert rc == 0
    assert "0 configs evaluated, 8 trials resumed" in out


@pytest.mark.slow
def test_verify_top_three(explore, tmp_path: Path) -> None:
    """`--verify-top 3` on a Mixtral-style study: three RTL builds and runs as Dask tasks."""
    space = ["rows=4,8", "cols=4,8", "m_tile=4,8", "mem_bytes_per_cycle=8,16,32"]
    _verify(explore, tmp_path, space, "dsps", 3, 60, 12)


@pytest.mark.slow
def test_synth_top_one(explore, tmp_path: Path) -> None:
    """`--synth-top 1`: yosys + nextpnr of a front point; measured resources replace estimates."""
    args = _small_study(tmp_path, "--param", "rows=2", "--param", "cols=2", "--param",
                        "m_tile=2", "--param", "mem_bytes_per_cycle=16")  # fmt: skip
    args += ["--objective", "decode_latency_us", "--objective", "dsps", "--device", "ecp5-85f"]
    rc, _, err = explore(*args, "--trials", "4", "--population", "2", "--synth-top", "1")
    assert rc == 0, err
    (row,) = _front(tmp_path / "out")
    assert row["synth_status"] in ("ok", "timing-fail")
    assert row["source_dsps"] == "synthesis"
    assert int(float(row["dsps"])) == 2 * 2 + 6 * 2 + 1
