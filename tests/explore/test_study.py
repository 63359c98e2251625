"""Studies end to end: same seed → same front, resume after SIGKILL, an external Dask cluster."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from distributed import Client

from .conftest import SMALL_LAYER, free_port

BIN = Path(sys.executable).parent


def _front(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open() as fh:
        return [r for r in csv.DictReader(fh) if r["on_front"] == "True"]


def test_same_seed_same_front(explore, tmp_path: Path, seed: int) -> None:
    args = [*SMALL_LAYER, "--trials", "240", "--population", "40", "--seed", str(seed % 10_000)]
    args += ["--objective", "decode_latency_us", "--objective", "prefill_tokens_per_s"]
    args += ["--objective", "luts"]
    rc_a, _, _ = explore(*args, storage=tmp_path / "a.db", out=tmp_path / "a")
    rc_b, _, _ = explore(*args, storage=tmp_path / "b.db", out=tmp_path / "b")
    assert rc_a == rc_b == 0
    front = _front(tmp_path / "a")
    assert front, "a study of 240 trials has a front"
    assert front == _front(tmp_path / "b")
    assert (tmp_path / "a" / "summary.md").read_text() == (
        tmp_path / "b" / "summary.md"
    ).read_text()
    study = optuna.load_study(study_name="explore", storage=f"sqlite:///{tmp_path / 'a.db'}")
    assert len(study.trials) == 240
    # three objectives: three plots, one per pair
    assert len(list((tmp_path / "a").glob("front_*.png"))) == 3


def _trials(db: Path) -> dict[int, tuple]:
    study = optuna.load_study(study_name="explore", storage=f"sqlite:///{db}")
    return {t.number: (t.state, t.params, t.values) for t in study.get_trials(deepcopy=False)}


def test_sigkill_then_resume(explore, tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    args = [*SMALL_LAYER, "--trials", "600", "--population", "20", "--seed", "5"]
    cmd = [str(BIN / "moe-accel"), "explore", "-q", "--storage", str(db), *args]
    cmd += ["--out", str(tmp_path / "first")]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    stored = 0
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    with sqlite3.connect(db) as con:
                        stored = con.execute("select count(*) from trials").fetchone()[0]
                except sqlite3.OperationalError:
                    stored = 0
            if stored >= 100:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 100 <= stored < 600, f"the study was to be killed midway (it had {stored} trials)"
    before = _trials(db)
    assert 100 <= len(before) < 600
    rc, out, _ = explore(*args, storage=db)
    assert rc == 0
    assert f"{len(before)} trials resumed from the storage" in out
    after = _trials(db)
    assert sorted(after) == list(range(600)), "no trial lost, none stored twice"
    for number, trial in before.items():
        assert after[number] == trial


@pytest.fixture
def dask_pair(tmp_path: Path):
    """`dask scheduler` + `dask worker` started apart from the test, on loopback."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = (tmp_path / "dask.log").open("w")
    scheduler = subprocess.Popen(
        [
            str(BIN / "dask"),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-dashboard",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen(
        [
            str(BIN / "dask"),
            "worker",
            address,
            "--host",
            "127.0.0.1",
            "--nthreads",
            "1",
            "--no-dashboard",
            "--nworkers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with Client(address, timeout="60s", set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for proc in (worker, scheduler):
            proc.terminate()
        for proc in (worker, scheduler):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_external_scheduler(explore, dask_pair: str, tmp_path: Path) -> None:
    rc, out, err = explore(*SMALL_LAYER, "--trials", "60", "--population", "20",
                           "--scheduler", dask_pair)  # fmt: skip
    assert rc == 0, err
    assert "60 trials stored" not in err
    assert "trials stored: 60 (60 complete" in out
    local_rc, _, _ = explore(*SMALL_LAYER, "--trials", "60", "--population", "20",
                             storage=tmp_path / "local.db", out=tmp_path / "local")  # fmt: skip
    assert local_rc == 0
    assert _front(tmp_path / "out") == _front(tmp_path / "local"), "a cluster changes nothing"


@pytest.mark.parametrize(("min_mhz", "feasible"), [("100", "False"), ("99", "True")])
def test_min_mhz_uses_measured_fmax(explore, tmp_path: Path, min_mhz: str, feasible: str) -> None:
    """configs/4x4.json reached 99.2 MHz on ECP5-85F (docs/fpga.md): 100 MHz rules it out."""
    fixed = ["rows=4", "cols=4", "m_tile=4", "mem_bytes_per_cycle=16", "max_tokens=256"]
    args = [*SMALL_LAYER, "--trials", "2", "--population", "2", "--min-mhz", min_mhz]
    for p in fixed:
        args += ["--param", p]
    rc, out, err = explore(*args)
    assert rc == 0, err
    with (tmp_path / "out" / "results.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["feasible"] for r in rows} == {feasible}
    assert ("front: 1 design\n" in out) == (feasible == "True")
