"""Golden integer GEMM: what the systolic array computes for one weight tile stream.

Exact integer arithmetic, with the contract's guarantee checked: the reduction
length may not exceed `AccelConfig.max_k`, so the int32 accumulator can never
overflow (no wrapping, no saturation inside the array). The product runs in
float64 BLAS, ~30× faster than NumPy's int64 matmul on full-size experts and
exact: every product and partial sum is an integer below 2^31 < 2^53.
"""

from __future__ import annotations

import numpy as np

from .config import AccelConfig, ConfigError
from .numerics import check_int_array


def matmul_int(x: np.ndarray, w: np.ndarray, cfg: AccelConfig) -> np.ndarray:
    """`x[M, K] @ w[K, N]` in exact integers, as the array's accumulators hold it."""
    check_int_array("activations", x, cfg.act_bits)
    check_int_array("weights", w, cfg.weight_bits)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ConfigError(f"GEMM shapes do not chain: x {x.shape} @ w {w.shape}")
    if x.shape[1] > cfg.max_k:
        raise ConfigError(
            f"GEMM reduction length {x.shape[1]} exceeds AccelConfig.max_k = {cfg.max_k}"
        )
    return (x.astype(np.float64) @ w.astype(np.float64)).astype(np.int64)
