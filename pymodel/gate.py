"""Golden gate unit: fixed-point scoring, top-k selection and gate weights.

Input: per-token fixed-point router logits `l` (signed `logit_bits`, value
`logit · 2^logit_frac_bits`, produced by requantising the router GEMM).
Output: k expert ids and k unsigned gate weights per token (value
`w · 2^gate_frac_bits`, `gate_weight_bits` wide, saturating at the top),
plus the shared expert's weight. Every step is a shift, an add, a compare, a
small LUT or an exact integer division (the RTL uses a sequential divider), so
the gate RTL matches this module bit for bit. `docs/numerics.md` names every
rounding point.

The selection helpers `topk_lower_index` and `group_limited_topk` are
dtype-agnostic: the float reference uses them too, so both break ties the
same way (to the lower index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import AccelConfig, ConfigError, MoESpec
from .numerics import NumericsError, check_int_array, div_round, rshift_round

LOG2E_FRAC_BITS = 15
"""Fraction bits of the log2(e) constant in `exp_fx` (unsigned, 16 bits: 47274 / 2^15)."""

LOG2E_FX = round(math.log2(math.e) * 2**LOG2E_FRAC_BITS)

RSF_FRAC_BITS = 16
"""Fraction bits of the routed scaling factor (unsigned Q4.16 for factors up to 15)."""


def check_routing(spec: MoESpec) -> None:
    """Raise for routing modes the gate does not implement."""
    if spec.n_group > 1 and spec.scoring != "sigmoid":
        raise ConfigError(
            f"MoESpec.n_group = {spec.n_group}: group-limited selection needs scoring = "
            f"'sigmoid' (got {spec.scoring!r})"
        )
    if spec.routed_scaling_factor != 1.0 and spec.scoring != "sigmoid":
        raise ConfigError(
            f"MoESpec.routed_scaling_factor = {spec.routed_scaling_factor}: routed scaling "
            f"needs scoring = 'sigmoid' (got {spec.scoring!r})"
        )


# --- selection (any dtype) -------------------------------------------------------------------


def topk_lower_index(scores: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Indices [T, k] of the k largest scores per row, ties to the lower index.

    The result is ordered by descending score (then ascending index). Entries
    where `valid` is False rank below every valid entry (HF masks them to -inf).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ConfigError(f"scores must be [T, N], got shape {scores.shape}")
    if not 1 <= k <= scores.shape[1]:
        raise ConfigError(f"top-k k = {k} must lie in [1, {scores.shape[1]}]")
    key = -scores.astype(np.float64) if scores.dtype.kind == "f" else -scores.astype(np.int64)
    order = np.argsort(key, axis=1, kind="stable")
    if valid is not None:
        invalid = ~np.take_along_axis(np.asarray(valid, dtype=bool), order, axis=1)
        order = np.take_along_axis(order, np.argsort(invalid, axis=1, kind="stable"), axis=1)
    return order[:, :k].astype(np.int64)


def group_scores(choice: np.ndarray, n_group: int) -> np.ndarray:
    """[T, n_group]: the sum of each group's two largest selection scores (DeepSeek-V3)."""
    t, e = choice.shape
    grouped = np.sort(choice.reshape(t, n_group, e // n_group), axis=2)
    return grouped[:, :, -1] + grouped[:, :, -2]


def group_limited_topk(choice: np.ndarray, k: int, n_group: int, topk_group: int) -> np.ndarray:
    """Top-k of `choice` restricted to the `topk_group` best of `n_group` expert groups.

    Groups rank by `group_scores`, ties to the lower group index; experts of
    the other groups can never be chosen. With `n_group == 1` this is plain
    `topk_lower_index`.
    """
    choice = np.asarray(choice)
    if n_group == 1:
        return topk_lower_index(choice, k)
    t, e = choice.shape
    if e % n_group or e // n_group < 2:
        raise ConfigError(f"n_group = {n_group} must split {e} experts into groups of >= 2")
    if not 1 <= topk_group <= n_group or k > topk_group * (e // n_group):
        raise ConfigError(f"topk_group = {topk_group}, k = {k} invalid for {n_group} groups")
    best = topk_lower_index(group_scores(choice, n_group), topk_group)
    group_mask = np.zeros((t, n_group), dtype=bool)
    np.put_along_axis(group_mask, best, True, axis=1)
    valid = np.repeat(group_mask, e // n_group, axis=1)
    return topk_lower_index(choice, k, valid)


# --- fixed-point scoring ---------------------------------------------------------------------


def exp_lut(cfg: AccelConfig) -> np.ndarray:
    """2^logit_frac_bits entries: `round(2^(-f / 2^logit_frac_bits) · 2^gate_frac_bits)`."""
    f = np.arange(2**cfg.logit_frac_bits, dtype=np.float64)
    values = np.exp2(-f / 2**cfg.logit_frac_bits) * 2**cfg.gate_frac_bits
    return np.floor(values + 0.5).astype(np.int64)


def exp_fx(z: np.ndarray, cfg: AccelConfig) -> np.ndarray:
    """e^(z / 2^logit_frac_bits) for integer z <= 0, as unsigned Q0.gate_frac_bits.

    `n = -round(z · LOG2E_FX / 2^15)` is `-z·log2(e)` in the logit's fixed
    point; its integer part `i` is a right shift and its fraction `f` indexes
    `exp_lut`: `e = round(exp_lut[f] / 2^i)`. Shifts past `gate_frac_bits + 2`
    give 0. Monotone non-decreasing in z; exp_fx(0) = 2^gate_frac_bits.
    """
    z = np.asarray(z, dtype=np.int64)
    if z.size and z.max() > 0:
        raise NumericsError("exp_fx takes non-positive arguments (logit minus row maximum)")
    n = -rshift_round(z * LOG2E_FX, LOG2E_FRAC_BITS)
    frac_mask = 2**cfg.logit_frac_bits - 1
    i = np.minimum(n >> cfg.logit_frac_bits, cfg.gate_frac_bits + 2)
    return rshift_round(exp_lut(cfg)[n & frac_mask], i)


def softmax_fx(logits: np.ndarray, cfg: AccelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise fixed-point softmax of logits [T, E]: (exponentials e, probabilities p).

    `e = exp_fx(l - max_row(l))` (the row maximum maps to exactly 2^gate_frac_bits,
    so the row sum is never 0), `p = div_round(e, Σ_row e)`.
    """
    logits = np.asarray(logits, dtype=np.int64)
    e = exp_fx(logits - logits.max(axis=1, keepdims=True), cfg)
    return e, div_round(e, e.sum(axis=1, keepdims=True), cfg.gate_frac_bits)


def sigmoid_fx(logits: np.ndarray, cfg: AccelConfig) -> np.ndarray:
    """σ(l / 2^logit_frac_bits) as unsigned Q0.gate_frac_bits, exactly odd-symmetric.

    For l >= 0: `div_round(2^g, 2^g + exp_fx(-l))`; for l < 0: `2^g - sigmoid_fx(-l)`.
    So σ(0) = 2^(g-1), σ(l) + σ(-l) = 2^g and the result is monotone.
    """
    logits = np.asarray(logits, dtype=np.int64)
    one = 2**cfg.gate_frac_bits
    mag = np.abs(logits)
    pos = div_round(np.full_like(mag, one), one + exp_fx(-mag, cfg), cfg.gate_frac_bits)
    return np.where(logits >= 0, pos, one - pos)


def quantize_scaling(factor: float) -> int:
    """Routed scaling factor as unsigned fixed point with `RSF_FRAC_BITS` fraction bits."""
    if not math.isfinite(factor) or factor <= 0:
        raise NumericsError(f"routed scaling factor must be finite and > 0, got {factor}")
    return math.floor(factor * 2**RSF_FRAC_BITS + 0.5)


def saturate_weight(w: np.ndarray, cfg: AccelConfig) -> np.ndarray:
    """Clamp unsigned gate weights to `gate_weight_bits` bits."""
    return np.minimum(np.asarray(w, dtype=np.int64), 2**cfg.gate_weight_bits - 1)


# --- the gate unit ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Routing:
    """What the gate unit produces for T tokens (int64 arrays).

    `select` holds the values top-k ranks (the logits for softmax scoring,
    sigmoid + correction bias for sigmoid scoring). `shared_weight` is the
    shared expert's weight per token (the sigmoid gate for Qwen2-MoE, exactly
    2^gate_frac_bits for an ungated shared expert, None without one).
    """

    logits: np.ndarray  # [T, E] signed logit_bits, Q.logit_frac_bits
    select: np.ndarray  # [T, E]
    expert_ids: np.ndarray  # [T, k]
    gate_weights: np.ndarray  # [T, k] unsigned Q.gate_frac_bits
    shared_logit: np.ndarray | None = None  # [T], Qwen2-MoE shared gate
    shared_weight: np.ndarray | None = None  # [T]


def gate(
    spec: MoESpec,
    logits: np.ndarray,
    cfg: AccelConfig,
    *,
    bias_q: np.ndarray | None = None,
    shared_logit: np.ndarray | None = None,
) -> Routing:
    """Fixed-point logits [T, E] → expert ids and gate weights, per `spec`'s routing.

    `bias_q` is the correction bias in Q.gate_frac_bits (signed, sigmoid
    scoring); `shared_logit` [T] is the Qwen2-MoE shared-gate logit (router
    column E), in the same fixed point as `logits`.
    """
    check_routing(spec)
    check_int_array("router logits", logits, cfg.logit_bits)
    n_experts, k, g = spec.n_experts, spec.top_k, cfg.gate_frac_bits
    if logits.ndim != 2 or logits.shape[1] != n_experts or logits.shape[0] < 1:
        raise ConfigError(f"router logits have shape {logits.shape}, expected [T, {n_experts}]")
    logits = logits.astype(np.int64)
    if spec.scoring == "softmax":
        select = logits
        ids = topk_lower_index(logits, k)
        e, p = softmax_fx(logits, cfg)
        if spec.renormalize:
            e_k = np.take_along_axis(e, ids, axis=1)
            weights = div_round(e_k, e_k.sum(axis=1, keepdims=True), g)
        else:
            weights = np.take_along_axis(p, ids, axis=1)
    else:
        s = sigmoid_fx(logits, cfg)
        select = s
        if spec.correction_bias:
            if bias_q is None:
                raise ConfigError("spec has a correction bias but no bias_q was given")
            check_int_array("correction bias", bias_q, cfg.gate_weight_bits + 1)
            if bias_q.shape != (n_experts,):
                raise ConfigError(f"bias_q has shape {bias_q.shape}, expected ({n_experts},)")
            select = s + bias_q.astype(np.int64)
        ids = group_limited_topk(select, k, spec.n_group, spec.topk_group)
        weights = np.take_along_axis(s, ids, axis=1)
        if spec.renormalize:
            total = weights.sum(axis=1, keepdims=True)
            safe = np.maximum(total, 1)
            weights = np.where(total > 0, div_round(weights, safe, g), 0)
        rsf_q = quantize_scaling(spec.routed_scaling_factor)
        weights = rshift_round(weights * rsf_q, RSF_FRAC_BITS)
    shared_weight = None
    if spec.shared_gate:
        if shared_logit is None:
            raise ConfigError("spec has a shared-expert gate but no shared_logit was given")
        check_int_array("shared gate logit", shared_logit, cfg.logit_bits)
        if shared_logit.shape != (logits.shape[0],):
            raise ConfigError(
                f"shared_logit has shape {shared_logit.shape}, expected ({logits.shape[0]},)"
            )
        shared_logit = shared_logit.astype(np.int64)
        shared_weight = sigmoid_fx(shared_logit, cfg)
    elif spec.has_shared:
        shared_weight = np.full(logits.shape[0], 2**g, dtype=np.int64)
    return Routing(
        logits=logits,
        select=select,
        expert_ids=ids,
        gate_weights=saturate_weight(weights, cfg),
        shared_logit=shared_logit if spec.shared_gate else None,
        shared_weight=shared_weight,
    )
