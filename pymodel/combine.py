"""Golden combiner: weighted sum of each token's expert outputs, then requantisation.

`acc[t] = Σ_j w[t,j] · ye[slot(t,j)] + w_sh[t] · ysh[t]` exactly in integers
(a dropped pair contributes 0), then `y = requantize(acc, out_mult,
out_shift)`. Gate weights are unsigned Q.gate_frac_bits and all expert
outputs share one scale, so no per-expert rescaling is needed; the output
multiplier folds `s_ye / (2^gate_frac_bits · s_y)`. The sum is order
independent, so the RTL may accumulate slots in any order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import AccelConfig, ConfigError
from .dispatch import Dispatch
from .numerics import NumericsError, check_int_array, requantize


def combine_acc_bits(n_terms: int, cfg: AccelConfig) -> int:
    """Signed accumulator width that holds a sum of `n_terms` weight × output products.

    |w| < 2^gate_weight_bits and |ye| <= 2^(act_bits-1), so
    |acc| < n_terms · 2^(gate_weight_bits + act_bits - 1); `n_terms` is top_k,
    plus 1 with a shared expert.
    """
    if n_terms < 1:
        raise ConfigError(f"n_terms = {n_terms} must be >= 1")
    return cfg.gate_weight_bits + cfg.act_bits + math.ceil(math.log2(n_terms))


def slot_rows(disp: Dispatch) -> np.ndarray:
    """[T, k]: the sorted-slot row holding pair (t, j), or -1 where capacity dropped it."""
    rows = np.full(disp.kept.size, -1, dtype=np.int64)
    real = disp.sorted_slots != disp.pad_id
    rows[disp.sorted_slots[real]] = np.flatnonzero(real)
    return rows.reshape(disp.kept.shape)


@dataclass(frozen=True)
class CombineResult:
    acc: np.ndarray  # [T, d] exact sum, Q(s_ye / 2^gate_frac_bits)
    y: np.ndarray  # [T, d] act_bits output, scale s_y


def combine(
    gate_weights: np.ndarray,
    disp: Dispatch,
    ye: np.ndarray,
    out_mult: int,
    out_shift: int,
    cfg: AccelConfig,
    shared_weight: np.ndarray | None = None,
    shared_y: np.ndarray | None = None,
) -> CombineResult:
    """Combine routed outputs `ye` [P, d] (rows aligned with `disp.sorted_slots`) per token."""
    w = np.asarray(gate_weights)
    if not np.issubdtype(w.dtype, np.integer) or w.shape != disp.kept.shape:
        raise ConfigError(
            f"gate_weights must be an integer {disp.kept.shape} array, got {w.dtype} {w.shape}"
        )
    if w.size and (w.min() < 0 or w.max() >= 2**cfg.gate_weight_bits):
        raise NumericsError(
            f"gate weights must be unsigned {cfg.gate_weight_bits}-bit values "
            f"[0, {2**cfg.gate_weight_bits - 1}]"
        )
    check_int_array("expert outputs", ye, cfg.act_bits)
    if ye.ndim != 2 or ye.shape[0] != disp.sorted_slots.size:
        raise ConfigError(
            f"expert outputs have shape {ye.shape}, expected [{disp.sorted_slots.size}, d]"
        )
    rows = slot_rows(disp)
    padded = np.concatenate([ye.astype(np.int64), np.zeros((1, ye.shape[1]), np.int64)])
    picked = padded[np.where(rows < 0, ye.shape[0], rows)]  # [T, k, d]
    acc = np.einsum("tk,tkd->td", w.astype(np.int64), picked)
    if (shared_weight is None) != (shared_y is None):
        raise ConfigError("shared_weight and shared_y must be given together")
    if shared_y is not None:
        check_int_array("shared expert output", shared_y, cfg.act_bits)
        sw = np.asarray(shared_weight, dtype=np.int64)
        if shared_y.shape != acc.shape or sw.shape != (acc.shape[0],):
            raise ConfigError(
                f"shared expert output {shared_y.shape} / weight {sw.shape} do not match "
                f"{acc.shape}"
            )
        acc = acc + sw[:, None] * shared_y.astype(np.int64)
    return CombineResult(acc=acc, y=requantize(acc, out_mult, out_shift, cfg.act_bits))
