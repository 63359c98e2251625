"""Roofline bound of one MoE layer on a configuration: the yardstick for measured cycles.

A layer cannot finish faster than its multiply-accumulates allow at the
array's peak (`rows·cols` MACs a cycle), nor faster than the bytes it must
move allow at the memory interface's `mem_bytes_per_cycle`. The bound counts
only the work any implementation must do: the router GEMM, the expert GEMMs
over the tokens actually routed (kept) to each expert, the shared expert, and
the bytes of tokens in, outputs out and the weights of experts that receive
at least one token (empty experts are never fetched). Benchmarks report
measured cycles ÷ this bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import AccelConfig, ConfigError, MoESpec


@dataclass(frozen=True)
class Roofline:
    """The layer's essential work and the two lower bounds on its cycles."""

    macs: int
    bytes_moved: int
    compute_cycles: float
    memory_cycles: float

    @property
    def bound_cycles(self) -> float:
        return max(self.compute_cycles, self.memory_cycles)

    @property
    def bound_by(self) -> str:
        return "compute" if self.compute_cycles >= self.memory_cycles else "memory"


def ffn_matrices(spec: MoESpec) -> int:
    """Weight matrices of d×f per expert: 3 for SwiGLU (W1, W3, W2), 2 otherwise."""
    return 3 if spec.ffn == "swiglu" else 2


def roofline(
    spec: MoESpec, cfg: AccelConfig, tokens: int, tokens_per_expert: np.ndarray
) -> Roofline:
    """Bound for `tokens` tokens whose kept (token, slot) pairs per expert are given."""
    counts = np.asarray(tokens_per_expert, dtype=np.int64)
    if counts.shape != (spec.n_experts,) or np.any(counts < 0):
        raise ConfigError(
            f"tokens_per_expert must be {spec.n_experts} non-negative counts, got {counts.shape}"
        )
    if counts.sum() > tokens * spec.top_k:
        raise ConfigError("tokens_per_expert sums to more than tokens × top_k")
    d, f, fs = spec.d_model, spec.d_ff, spec.shared_d_ff
    router_cols = spec.n_experts + (1 if spec.shared_gate else 0)
    mats = ffn_matrices(spec)
    macs = tokens * d * router_cols + int(counts.sum()) * mats * d * f
    weight_bytes = d * router_cols + int(np.count_nonzero(counts)) * mats * d * f
    if spec.has_shared:
        macs += tokens * 3 * d * fs
        weight_bytes += 3 * d * fs
    act_bytes = 2 * tokens * d * cfg.act_bits // 8
    bytes_moved = weight_bytes * cfg.weight_bits // 8 + act_bytes
    return Roofline(
        macs=macs,
        bytes_moved=bytes_moved,
        compute_cycles=macs / cfg.macs_per_cycle,
        memory_cycles=bytes_moved / cfg.mem_bytes_per_cycle,
    )
