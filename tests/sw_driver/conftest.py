"""Shared set-up for the driver tests: one torch thread and seeded tokens."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Tiny torch ops on 2 shared cores: extra threads only cost."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def make_tokens() -> Callable[..., np.ndarray]:
    """Factory of unit-normal float32 tokens [t, d] from a seed."""

    def make(seed: int, t: int, d: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((t, d)).astype(np.float32)

    return make
