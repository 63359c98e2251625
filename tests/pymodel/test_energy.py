"""Energy and storage estimates (`pymodel.energy`): constants, scaling, storage by config."""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.config import AccelConfig
from pymodel.cycles import layer_cycles
from pymodel.energy import (
    DRAM_PJ_PER_BYTE,
    MAC_PJ,
    layer_energy,
    sram_pj_per_byte,
    storage_bytes,
)
from pymodel.families import family_spec


def test_constants_are_horowitz_2014() -> None:
    assert MAC_PJ == pytest.approx(0.3)
    assert sram_pj_per_byte(4096) == pytest.approx(10 / 8)
    assert sram_pj_per_byte(32 * 1024) == pytest.approx(20 / 8)
    assert sram_pj_per_byte(200_000) == pytest.approx(100 / 8)
    assert sram_pj_per_byte(10**9) == pytest.approx(100 / 8)
    assert DRAM_PJ_PER_BYTE == pytest.approx(1950 / 8)


def test_energy_splits_into_mac_sram_dram_and_grows_with_tokens() -> None:
    cfg = AccelConfig()
    spec = family_spec("mixtral", d_model=64, d_ff=128, n_experts=8)
    est = layer_cycles(cfg, spec, np.array([4, 64]), np.array([[1] * 8, [16] * 8]))
    e = layer_energy(cfg, est)
    moved = est.bytes_read + est.bytes_written
    np.testing.assert_allclose(e.dram_pj, moved * DRAM_PJ_PER_BYTE)
    np.testing.assert_allclose(e.mac_pj, est.mac_cycles * 64 * MAC_PJ)
    np.testing.assert_allclose(e.total_pj, e.mac_pj + e.sram_pj + e.dram_pj)
    assert e.total_pj[1] > e.total_pj[0]
    assert e.total_pj[1] / 64 < e.total_pj[0] / 4  # weights amortised over more tokens


def test_storage_grows_with_the_limits_and_the_array() -> None:
    small = storage_bytes(AccelConfig(max_tokens=16, max_d_model=32, max_d_ff=64))
    default = storage_bytes(AccelConfig())
    wide = storage_bytes(AccelConfig(rows=16, cols=16))
    assert default["tokens_x"] == 256 * 1024
    assert sum(small.values()) < sum(default.values()) < sum(wide.values())
    assert wide["weight_banks_registers"] == 2 * 16 * 16
