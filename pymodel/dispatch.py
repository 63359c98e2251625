"""Golden dispatch: group the T·k (token, slot) pairs by expert for the grouped GEMM.

Same contract as vLLM's `moe_align_block_size`: a stable permutation of the
flat slot ids `t·k + j` sorted by expert (ascending slot id inside an expert),
each expert's group padded to a multiple of the row tile with the sentinel
`T·k`, and one expert id per row tile. An optional capacity keeps, for every
expert, only its first `capacity` pairs in sequence order (Switch) and counts
the rest as dropped. Empty experts get no tiles, so their weights are never
fetched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ConfigError


@dataclass(frozen=True)
class Dispatch:
    """The dispatcher's outputs (all int64 / bool numpy arrays)."""

    sorted_slots: np.ndarray  # [padded_total] flat slot ids t*k+j; pad entries hold T*k
    tile_experts: np.ndarray  # [padded_total // m_tile] expert id of each row tile
    counts: np.ndarray  # [E] pairs kept per expert (after capacity)
    offsets: np.ndarray  # [E+1] exclusive prefix sum of the padded group sizes
    kept: np.ndarray  # [T, k] False where capacity dropped the pair
    dropped: int  # number of dropped pairs

    @property
    def pad_id(self) -> int:
        return int(self.kept.size)


def capacity_kept(expert_ids: np.ndarray, n_experts: int, capacity: int | None) -> np.ndarray:
    """[T, k] bool: False for pairs beyond their expert's first `capacity` (Switch semantics).

    Pairs count in sequence order, slot id `t·k + j`; None keeps every pair.
    The one capacity rule: the dispatcher, the float and the torch references
    all call it.
    """
    ids = np.asarray(expert_ids)
    if capacity is None:
        return np.ones(ids.shape, dtype=bool)
    if capacity < 1:
        raise ConfigError(f"capacity = {capacity} must be >= 1 or None")
    flat = ids.reshape(-1).astype(np.int64)
    order = np.argsort(flat, kind="stable")
    hist = np.bincount(flat, minlength=n_experts).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(hist)[:-1]])
    rank = np.empty(flat.size, dtype=np.int64)
    rank[order] = np.arange(flat.size) - np.repeat(starts, hist)
    return (rank < capacity).reshape(ids.shape)


def dispatch(
    expert_ids: np.ndarray, n_experts: int, m_tile: int, capacity: int | None = None
) -> Dispatch:
    """Histogram → capacity → exclusive prefix sum → stable permutation → padding."""
    ids = np.asarray(expert_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ConfigError(
            f"expert_ids must be an integer [T, k] array, got {ids.dtype} {ids.shape}"
        )
    if ids.size and (ids.min() < 0 or ids.max() >= n_experts):
        raise ConfigError(f"expert_ids must lie in [0, {n_experts - 1}]")
    if m_tile < 1:
        raise ConfigError(f"m_tile = {m_tile} must be >= 1")
    if capacity is not None and capacity < 1:
        raise ConfigError(f"capacity = {capacity} must be >= 1 or None")
    flat = ids.reshape(-1).astype(np.int64)
    n_pairs = flat.size
    order = np.argsort(flat, kind="stable")  # by expert, sequence order inside one
    kept_flat = capacity_kept(ids, n_experts, capacity).reshape(-1)
    counts = np.bincount(flat[kept_flat], minlength=n_experts).astype(np.int64)
    padded = -(-counts // m_tile) * m_tile
    offsets = np.concatenate([[0], np.cumsum(padded)]).astype(np.int64)
    sorted_slots = np.full(int(offsets[-1]), n_pairs, dtype=np.int64)
    kept_order = order[kept_flat[order]]
    for e in range(n_experts):
        group = kept_order[flat[kept_order] == e]
        sorted_slots[offsets[e] : offsets[e] + group.size] = group
    tile_experts = np.repeat(np.arange(n_experts, dtype=np.int64), padded // m_tile)
    return Dispatch(
        sorted_slots=sorted_slots,
        tile_experts=tile_experts,
        counts=counts,
        offsets=offsets,
        kept=kept_flat.reshape(ids.shape),
        dropped=int(n_pairs - kept_flat.sum()),
    )
