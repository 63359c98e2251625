"""Shared fixtures of the golden-model tests: the default hardware and small family layers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from pymodel.config import AccelConfig, MoESpec
from pymodel.families import family_spec
from pymodel.weights import MoEWeights

SMALL = dict(d_model=32, d_ff=64, n_experts=8)
"""Layer dimensions of the per-family tests (small so the suite stays fast)."""


@dataclass(frozen=True)
class Case:
    spec: MoESpec
    weights: MoEWeights
    x: np.ndarray


def build_case(family: str, seed: int, tokens: int = 48, **overrides: object) -> Case:
    """Family layer with seeded weights and tokens (standard normal, as after an RMSNorm)."""
    spec = family_spec(family, **{**SMALL, **overrides})
    weights = MoEWeights.random(spec, seed)
    x = np.random.default_rng(1000 + seed).standard_normal((tokens, spec.d_model))
    return Case(spec, weights, x.astype(np.float32))


@pytest.fixture
def cfg() -> AccelConfig:
    return AccelConfig()


@pytest.fixture
def make_case() -> Callable[..., Case]:
    """`build_case` for tests (helpers are shared as fixtures, not imports)."""
    return build_case
