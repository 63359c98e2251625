"""Roofline bound: counts the essential MACs and bytes, skips empty experts."""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.families import family_spec
from pymodel.perf import roofline


def test_mixtral_prefill_is_compute_bound_with_exact_counts() -> None:
    spec = family_spec("mixtral", d_model=64, d_ff=128, n_experts=8, top_k=2)
    cfg = AccelConfig(rows=8, cols=8, mem_bytes_per_cycle=16)
    counts = np.full(8, 64)
    r = roofline(spec, cfg, tokens=256, tokens_per_expert=counts)
    assert r.macs == 256 * 64 * 8 + 512 * 3 * 64 * 128
    assert r.bytes_moved == 64 * 8 + 8 * 3 * 64 * 128 + 2 * 256 * 64
    assert r.compute_cycles == r.macs / 64
    assert r.bound_by == "compute"
    assert r.bound_cycles == r.compute_cycles


def test_decode_skips_empty_experts_and_is_memory_bound() -> None:
    spec = family_spec("deepseek_v3", d_model=64, d_ff=128, n_experts=8, top_k=2)
    cfg = AccelConfig()
    counts = np.array([4, 3, 0, 0, 1, 0, 0, 0])
    r = roofline(spec, cfg, tokens=4, tokens_per_expert=counts)
    shared = 3 * 64 * spec.shared_d_ff
    assert r.bytes_moved == 64 * 8 + 3 * 3 * 64 * 128 + shared + 2 * 4 * 64
    assert r.bound_by == "memory"


@pytest.mark.parametrize(
    ("counts", "match"),
    [(np.ones(7), "8 non-negative"), (np.full(8, -1), "8 non-negative"), (np.full(8, 9), "more")],
)
def test_impossible_counts_are_rejected(counts: np.ndarray, match: str) -> None:
    spec = family_spec("mixtral")
    with pytest.raises(ConfigError, match=match):
        roofline(spec, AccelConfig(), tokens=4, tokens_per_expert=counts)
