"""Golden combiner: exact weighted sums against a plain loop, accumulator width, errors."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymodel.combine import combine, combine_acc_bits, slot_rows
from pymodel.config import AccelConfig, ConfigError
from pymodel.dispatch import dispatch
from pymodel.numerics import NumericsError

PROPS = settings(max_examples=100, deadline=None)


def rq(acc: int, mult: int, shift: int) -> int:
    q = Fraction(acc * mult, 2**shift)
    v = int(abs(q) + Fraction(1, 2)) * (1 if q >= 0 else -1)
    return max(-127, min(127, v))


@PROPS
@given(
    seed=st.integers(0, 2**31),
    tokens=st.integers(1, 12),
    k=st.integers(1, 4),
    capacity=st.one_of(st.none(), st.integers(1, 4)),
    shared=st.booleans(),
)
def test_combine_matches_plain_loop(
    seed: int, tokens: int, k: int, capacity: int | None, shared: bool
) -> None:
    cfg = AccelConfig(m_tile=4)
    rng = np.random.default_rng(seed)
    n_experts = 6
    ids = np.stack([rng.permutation(n_experts)[:k] for _ in range(tokens)])
    disp = dispatch(ids, n_experts, cfg.m_tile, capacity)
    ye = rng.integers(-127, 128, size=(disp.sorted_slots.size, 5))
    w = rng.integers(0, 2**cfg.gate_weight_bits, size=(tokens, k))
    sw = rng.integers(0, 2**16 + 1, size=tokens) if shared else None
    sy = rng.integers(-127, 128, size=(tokens, 5)) if shared else None
    mult, shift = int(rng.integers(2**15, 2**16)), int(rng.integers(20, 30))
    res = combine(w, disp, ye, mult, shift, cfg, shared_weight=sw, shared_y=sy)

    row_of = {int(s): r for r, s in enumerate(disp.sorted_slots) if s != disp.pad_id}
    for t in range(tokens):
        for c in range(5):
            acc = sum(
                int(w[t, j]) * int(ye[row_of[t * k + j], c]) for j in range(k) if disp.kept[t, j]
            )
            if shared:
                acc += int(sw[t]) * int(sy[t, c])
            assert res.acc[t, c] == acc
            assert res.y[t, c] == rq(acc, mult, shift)


def test_slot_rows_marks_drops() -> None:
    disp = dispatch(np.array([[0], [0], [1]]), 2, 2, capacity=1)
    assert slot_rows(disp).tolist() == [[0], [-1], [2]]


def test_dropped_pairs_contribute_nothing() -> None:
    cfg = AccelConfig()
    disp = dispatch(np.array([[0], [0]]), 1, 1, capacity=1)
    ye = np.array([[10]])  # only the kept pair has a row
    res = combine(np.array([[2**16], [2**16]]), disp, ye, 1, 16, cfg)
    assert res.y.tolist() == [[10], [0]]


@pytest.mark.parametrize(("terms", "bits"), [(1, 28), (2, 29), (3, 30), (8, 31), (9, 32)])
def test_combine_acc_bits(terms: int, bits: int) -> None:
    assert combine_acc_bits(terms, AccelConfig()) == bits


def test_accumulator_bound_holds_at_the_extremes() -> None:
    cfg = AccelConfig()
    k = 8
    disp = dispatch(np.arange(k)[None, :], k, 1)
    wmax = 2**cfg.gate_weight_bits - 1
    ye = np.full((k, 1), -127)
    res = combine(
        np.full((1, k), wmax), disp, ye, 1, 0, cfg,
        shared_weight=np.array([2**cfg.gate_frac_bits]), shared_y=np.array([[-127]]),
    )  # fmt: skip
    assert abs(int(res.acc[0, 0])) < 2 ** (combine_acc_bits(k + 1, cfg) - 1)


def test_combine_rejects_bad_input() -> None:
    cfg = AccelConfig()
    disp = dispatch(np.array([[0]]), 1, 1)
    ye = np.zeros((1, 2), dtype=np.int64)
    with pytest.raises(NumericsError, match="gate weights"):
        combine(np.array([[-1]]), disp, ye, 1, 0, cfg)
    with pytest.raises(NumericsError, match="gate weights"):
        combine(np.array([[2**20]]), disp, ye, 1, 0, cfg)
    with pytest.raises(ConfigError, match="gate_weights"):
        combine(np.array([[0.5]]), disp, ye, 1, 0, cfg)
    with pytest.raises(ConfigError, match="gate_weights"):
        combine(np.array([[1, 1]]), disp, ye, 1, 0, cfg)
    with pytest.raises(NumericsError, match="expert outputs"):
        combine(np.array([[1]]), disp, ye + 300, 1, 0, cfg)
    with pytest.raises(ConfigError, match="expert outputs"):
        combine(np.array([[1]]), disp, np.zeros((3, 2), dtype=np.int64), 1, 0, cfg)
    with pytest.raises(ConfigError, match="together"):
        combine(np.array([[1]]), disp, ye, 1, 0, cfg, shared_y=ye)
    with pytest.raises(ConfigError, match="shared expert output"):
        combine(
            np.array([[1]]), disp, ye, 1, 0, cfg,
            shared_weight=np.array([1, 1]), shared_y=ye,
        )  # fmt: skip
    with pytest.raises(ConfigError, match="n_terms"):
        combine_acc_bits(0, cfg)
