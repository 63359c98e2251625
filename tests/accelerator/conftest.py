"""Shared fixture of the whole-accelerator tests on the fast backend; the functional bins'
report (`sim.tb.functional_coverage`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rtl.top import MoEAccel
from sim.fast import FastSim
from sim.tb import functional_coverage
from sim.tb.layer_cases import SMALL_TOP

MEM_BYTES = 1 << 18
"""Memory of the small top's model: every layer the tests build fits."""


@pytest.fixture(scope="module")
def sim() -> Iterator[FastSim]:
    """`MoEAccel(SMALL_TOP)` on the fast backend (one cached build shared by the modules)."""
    with FastSim(
        lambda: MoEAccel(SMALL_TOP), SMALL_TOP, MEM_BYTES, read_latency=12, name="moe_accel"
    ) as s:
        yield s


def pytest_configure(config: pytest.Config) -> None:
    functional_coverage.pytest_configure(config)
