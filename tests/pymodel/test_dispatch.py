"""Golden dispatch invariants (the `moe_align_block_size` contract plus Switch capacity)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymodel.config import ConfigError
from pymodel.dispatch import capacity_kept, dispatch

PROPS = settings(max_examples=200, deadline=None)


@st.composite
def routings(draw: st.DrawFn) -> tuple[np.ndarray, int, int, int | None]:
    n_experts = draw(st.integers(1, 8))
    k = draw(st.integers(1, n_experts))
    tokens = draw(st.integers(1, 40))
    rows = [
        draw(st.permutations(range(n_experts)))[:k] for _ in range(tokens)
    ]  # distinct experts per token, as a router produces
    m_tile = draw(st.integers(1, 8))
    capacity = draw(st.one_of(st.none(), st.integers(1, 6)))
    return np.array(rows, dtype=np.int64), n_experts, m_tile, capacity


@PROPS
@given(case=routings())
def test_dispatch_invariants(case: tuple[np.ndarray, int, int, int | None]) -> None:
    ids, n_experts, m_tile, capacity = case
    d = dispatch(ids, n_experts, m_tile, capacity)
    flat = ids.reshape(-1)
    pad = d.pad_id
    assert pad == ids.size

    real = d.sorted_slots[d.sorted_slots != pad]
    kept_slots = np.flatnonzero(d.kept.reshape(-1))
    assert sorted(real.tolist()) == kept_slots.tolist(), "a permutation of the kept pairs"
    assert int(d.counts.sum()) == ids.size - d.dropped
    assert np.array_equal(d.counts, np.bincount(flat[kept_slots], minlength=n_experts))

    sizes = np.diff(d.offsets)
    assert np.all(sizes % m_tile == 0)
    assert np.array_equal(sizes, -(-d.counts // m_tile) * m_tile)
    assert d.offsets[0] == 0 and d.offsets[-1] == d.sorted_slots.size

    for e in range(n_experts):
        group = d.sorted_slots[d.offsets[e] : d.offsets[e + 1]]
        body, tail = group[: d.counts[e]], group[d.counts[e] :]
        assert np.all(tail == pad), "padding only at the end of a group"
        assert np.all(flat[body] == e)
        assert np.all(np.diff(body) > 0), "stable: ascending slot order inside a group"
        mine = np.flatnonzero(flat == e)
        if capacity is None:
            assert np.array_equal(body, mine)
        else:
            assert np.array_equal(body, mine[:capacity]), "drops are the later pairs"

    assert d.tile_experts.size * m_tile == d.sorted_slots.size
    for e in range(n_experts):
        tiles = d.tile_experts[d.offsets[e] // m_tile : d.offsets[e + 1] // m_tile]
        assert np.all(tiles == e)
    if capacity is None:
        assert d.dropped == 0 and d.kept.all()


def test_empty_experts_get_no_tiles() -> None:
    d = dispatch(np.array([[2], [2], [0]]), 4, 2)
    assert d.counts.tolist() == [1, 0, 2, 0]
    assert d.tile_experts.tolist() == [0, 2]
    assert d.sorted_slots.tolist() == [2, 3, 0, 1]


def test_switch_capacity_drops_in_sequence_order() -> None:
    d = dispatch(np.array([[1], [1], [0], [1]]), 2, 1, capacity=2)
    assert d.kept.reshape(-1).tolist() == [True, True, True, False]
    assert d.dropped == 1


@pytest.mark.parametrize(
    ("ids", "n_experts", "m_tile", "capacity", "match"),
    [
        (np.array([0, 1]), 2, 1, None, "expert_ids"),
        (np.array([[0.0]]), 2, 1, None, "expert_ids"),
        (np.array([[2]]), 2, 1, None, r"\[0, 1\]"),
        (np.array([[-1]]), 2, 1, None, r"\[0, 1\]"),
        (np.array([[0]]), 2, 0, None, "m_tile"),
        (np.array([[0]]), 2, 1, 0, "capacity"),
    ],
)
def test_dispatch_rejects(ids, n_experts, m_tile, capacity, match) -> None:
    with pytest.raises(ConfigError, match=match):
        dispatch(ids, n_experts, m_tile, capacity)


def test_capacity_kept_is_the_dispatchers_rule():
    ids = np.array([[0, 1], [0, 1], [0, 2], [1, 0]])
    kept = capacity_kept(ids, 3, 2)
    np.testing.assert_array_equal(kept, [[1, 1], [1, 1], [0, 1], [0, 0]])
    np.testing.assert_array_equal(dispatch(ids, 3, 1, 2).kept, kept)
    assert capacity_kept(ids, 3, None).all()
    with pytest.raises(ConfigError, match="capacity"):
        capacity_kept(ids, 3, 0)
