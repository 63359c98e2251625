"""Bad input to `moe-accel explore`: one line on stderr, exit status 2, the storage untouched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from .conftest import SMALL_LAYER, free_port


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def good_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storage holding a finished small study."""
    from sw_driver.cli import main

    folder = tmp_path_factory.mktemp("good")
    db = folder / "study.db"
    argv = ["explore", "-q", "--storage", str(db), "--out", str(folder / "out"), *SMALL_LAYER]
    assert main([*argv, "--trials", "20", "--population", "10"]) == 0
    return db


BAD = {
    "unknown parameter": (["--param", "banks=1:4"], "unknown parameter 'banks'"),
    "empty range": (["--param", "m_tile=8:2"], "empty range (8 > 2)"),
    "not a power of two": (["--param", "rows=3,4"], "a power of two"),
    "value outside the config's rules": (["--param", "m_tile=0,4"], "m_tile"),
    "unknown objective": (["--objective", "speed"], "--objective 'speed' does not exist"),
    "unknown layer": (["--layer", "GPT-5"], "not a model"),
    "layer key": (["--layer", "mixtral:width=3"], "unknown key 'width'"),
    "no trials": (["--trials", "0"], "--trials must be at least 1"),
    "other settings": (["--objective", "luts"], "was started with other settings"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_leaves_storage(explore, good_storage: Path, case: str) -> None:
    args, message = BAD[case]
    before = _digest(good_storage)
    rc, _, err = explore(*SMALL_LAYER, "--trials", "20", "--population", "10", *args,
                         storage=good_storage)  # fmt: skip
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert message in err
    assert _digest(good_storage) == before


def test_unreachable_scheduler(explore, good_storage: Path) -> None:
    before = _digest(good_storage)
    address = f"tcp://127.0.0.1:{free_port()}"
    rc, _, err = explore(*SMALL_LAYER, "--trials", "20", "--population", "10",
                         "--scheduler", address, "--connect-timeout", "1",
                         storage=good_storage)  # fmt: skip
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert f"--scheduler {address}: cannot connect" in err
    assert _digest(good_storage) == before


@pytest.mark.parametrize(
    "content", [b"not a database at all" * 50, b"SQLite format 3\x00" + bytes(99)]
)
def test_corrupt_storage(explore, tmp_path: Path, content: bytes) -> None:
    db = tmp_path / "broken.db"
    db.write_bytes(content)
    rc, _, err = explore(*SMALL_LAYER, "--trials", "20", storage=db)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "left unchanged" in err
    assert db.read_bytes() == content


def test_bad_base_config(explore, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.json"
    cfg.write_text('{"rows": 8, "speed": 3}')
    rc, _, err = explore(*SMALL_LAYER, "--base-config", str(cfg))
    assert rc == 2
    assert len(err.strip().splitlines()) == 1, err
    assert f"--base-config {cfg}" in err and "speed" in err
    assert not (tmp_path / "study.db").exists()
