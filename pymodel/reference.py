"""The float reference of one MoE layer, in NumPy, mirroring the HF blocks.

`moe_forward_float` computes what the HuggingFace block of the spec's family
computes (transformers 5.x, fp32): router logits, softmax or sigmoid scores,
top-k (DeepSeek-V3: correction bias and group-limited selection), optional
renormalisation and routed scaling, the routed experts, the shared expert,
and Switch's capacity drops (a dropped token contributes zero). It is the
accuracy yardstick for the integer golden model and the source of the
activation ranges calibration turns into scales, so it also records the
absmax of every intermediate tensor.

Ties in top-k go to the lower expert index (HF's `torch.topk` leaves them
unspecified; compare expert *sets* away from ties). `expert_ids` are ordered
by descending selection score.

`pruned_weights` gives the float block a 2:4 format approximates (expert
weights with the 2:4 mask applied): the "pruned" reference, reported next to
the unpruned one so pruning error and quantisation error read separately.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from .config import ConfigError, MoESpec
from .dispatch import capacity_kept
from .gate import check_routing, group_limited_topk, topk_lower_index
from .numerics import NumericsError, check_finite
from .weight_formats import WeightFormat, prune_2_4_mask
from .weights import MoEWeights

FFN_TENSORS: tuple[str, ...] = ("a", "g", "u", "h", "ye")
"""Intermediates of one expert: a = x·W1, g = act(a), u = x·W3, h = g·u (SwiGLU) or g, ye = h·W2."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function without overflow warnings, in the input's float precision."""
    x = np.asarray(x)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def silu(x: np.ndarray) -> np.ndarray:
    return x * sigmoid(x)


_erf = np.frompyfunc(math.erf, 1, 1)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, HF's `ACT2FN["gelu"]`."""
    x = np.asarray(x)
    return (0.5 * x * (1 + _erf(x / math.sqrt(2)).astype(np.float64))).astype(x.dtype)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0).astype(np.asarray(x).dtype)


ACTIVATIONS = {"swiglu": silu, "gelu": gelu, "relu": relu}
"""The element-wise function applied to x·W1 for each `MoESpec.ffn` kind."""


def expert_ffn_float(
    ffn: str, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray | None, x: np.ndarray
) -> dict[str, np.ndarray]:
    """One expert on rows `x` (fp32): every intermediate of `FFN_TENSORS` that exists."""
    x = np.asarray(x, dtype=np.float32)
    a = x @ w1
    g = ACTIVATIONS[ffn](a)
    out = {"a": a, "g": g}
    if ffn == "swiglu":
        if w3 is None:
            raise ConfigError("a SwiGLU expert needs w3")
        u = x @ w3
        h = g * u
        out["u"] = u
    else:
        h = g
    out["h"] = h
    out["ye"] = h @ w2
    return out


def _absmax(t: np.ndarray) -> float:
    return float(np.max(np.abs(t))) if t.size else 0.0


@dataclass(frozen=True)
class RoutedOutput:
    """A float MoE layer's output and its routing, as numpy arrays (every float reference)."""

    y: np.ndarray  # [T, d] float32
    logits: np.ndarray  # [T, E] float32
    scores: np.ndarray  # [T, E] float32
    expert_ids: np.ndarray  # [T, k] int64
    gate_weights: np.ndarray  # [T, k] float32
    kept: np.ndarray  # [T, k] bool

    @property
    def dropped(self) -> int:
        """Pairs capacity dropped."""
        return int(self.kept.size - np.count_nonzero(self.kept))


@dataclass(frozen=True)
class FloatResult(RoutedOutput):
    """Output and intermediates of the float layer.

    `scores` are the values top-k selects on (softmax probabilities, or
    sigmoid + correction bias for sigmoid routing); `gate_weights` are the
    final per-slot weights (after renormalisation and routed scaling); `kept`
    is False where capacity dropped the pair. `expert_absmax[name][e]` is the
    absmax of tensor `name` over the rows routed (and kept) to expert `e`
    (0 when none), `expert_tokens[e]` their number; `shared_absmax` the same
    for the shared expert over all tokens.
    """

    shared_gate_logit: np.ndarray | None = None  # [T], Qwen2-MoE
    shared_gate: np.ndarray | None = None  # [T] sigmoid of it
    shared_y: np.ndarray | None = None  # [T, d] shared expert output (before its gate)
    expert_absmax: dict[str, np.ndarray] = field(default_factory=dict)
    expert_tokens: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    shared_absmax: dict[str, float] = field(default_factory=dict)


def check_float_input(spec: MoESpec, x: np.ndarray) -> np.ndarray:
    """Validate tokens `x` ([T, d_model], float, finite, T >= 1) and return them as float32."""
    if not isinstance(x, np.ndarray):
        raise NumericsError(f"x must be a numpy array, got {type(x).__name__}")
    if not np.issubdtype(x.dtype, np.floating):
        raise NumericsError(f"x must be a float array, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] != spec.d_model or x.shape[0] < 1:
        raise ConfigError(f"x has shape {x.shape}, expected [T >= 1, d_model = {spec.d_model}]")
    check_finite("x", x)
    return x.astype(np.float32)


def route_float(
    spec: MoESpec, w: MoEWeights, x32: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Router of the HF block: (logits, selection scores, expert_ids, gate_weights), fp32."""
    logits = x32 @ w.router
    k = spec.top_k
    if spec.scoring == "softmax":
        shifted = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(shifted)
        scores = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        ids = topk_lower_index(scores, k)
        weights = np.take_along_axis(scores, ids, axis=1)
        if spec.renormalize:
            weights = weights / weights.sum(axis=1, keepdims=True)
        return logits, scores, ids, weights.astype(np.float32)
    s = sigmoid(logits)
    choice = s + w.correction_bias if spec.correction_bias else s
    choice = choice.astype(np.float32)
    ids = group_limited_topk(choice, k, spec.n_group, spec.topk_group)
    weights = np.take_along_axis(s, ids, axis=1)
    if spec.renormalize:
        weights = weights / (weights.sum(axis=1, keepdims=True) + np.float32(1e-20))
    weights = weights * np.float32(spec.routed_scaling_factor)
    return logits, choice, ids, weights.astype(np.float32)


def moe_forward_float(spec: MoESpec, w: MoEWeights, x: np.ndarray) -> FloatResult:
    """The HF block's forward pass on tokens `x` [T, d_model] (one sequence), in fp32."""
    if not isinstance(spec, MoESpec):
        raise ConfigError(f"spec must be a MoESpec, got {type(spec).__name__}")
    check_routing(spec)
    w.validate(spec)
    x32 = check_float_input(spec, x)
    n_tokens, n_experts = x32.shape[0], spec.n_experts
    logits, scores, ids, weights = route_float(spec, w, x32)
    kept = capacity_kept(ids, n_experts, spec.capacity)

    y = np.zeros((n_tokens, spec.d_model), dtype=np.float32)
    absmax = {name: np.zeros(n_experts) for name in FFN_TENSORS}
    tokens = np.zeros(n_experts, dtype=np.int64)
    for e in range(n_experts):
        rows, slots = np.nonzero((ids == e) & kept)
        tokens[e] = rows.size
        if rows.size == 0:
            continue
        w3 = w.w3[e] if w.w3 is not None else None
        trace = expert_ffn_float(spec.ffn, w.w1[e], w.w2[e], w3, x32[rows])
        for name, t in trace.items():
            absmax[name][e] = _absmax(t)
        np.add.at(y, rows, trace["ye"] * weights[rows, slots][:, None])

    gate_logit = gate = shared_y = None
    shared_absmax: dict[str, float] = {}
    if spec.has_shared:
        trace = expert_ffn_float("swiglu", w.shared_w1, w.shared_w2, w.shared_w3, x32)
        shared_absmax = {name: _absmax(t) for name, t in trace.items()}
        shared_y = trace["ye"]
        if spec.shared_gate:
            gate_logit = x32 @ w.shared_gate
            gate = sigmoid(gate_logit)
            y = y + gate[:, None] * shared_y
        else:
            y = y + shared_y
    return FloatResult(
        y=y.astype(np.float32),
        logits=logits.astype(np.float32),
        scores=scores,
        expert_ids=ids,
        gate_weights=weights,
        kept=kept,
        shared_gate_logit=gate_logit,
        shared_gate=gate,
        shared_y=shared_y,
        expert_absmax=absmax,
        expert_tokens=tokens,
        shared_absmax=shared_absmax,
    )


PRUNED_MATRICES: tuple[str, ...] = ("w1", "w2", "w3", "shared_w1", "shared_w2", "shared_w3")
"""The `MoEWeights` fields a 2:4 format prunes: routed and shared experts (never the router)."""


def pruned_weights(w: MoEWeights, fmt: WeightFormat) -> MoEWeights:
    """The float weights the format approximates: 2:4 masks applied along K, else `w` itself.

    Every routed and shared expert matrix is pruned per output channel
    (`weight_formats.prune_2_4_mask`); router, shared gate and correction
    bias are kept whole. A K that is not a multiple of 4 is an error naming
    the matrix.
    """
    if not isinstance(fmt, WeightFormat):
        raise ConfigError(f"expected a WeightFormat, got {type(fmt).__name__}")
    if not fmt.sparse:
        return w
    changes: dict[str, np.ndarray] = {}
    for name in PRUNED_MATRICES:
        mats = getattr(w, name)
        if mats is None:
            continue
        fmt.check_k(mats.shape[-2], f"MoEWeights.{name}")
        stack = mats.reshape(-1, *mats.shape[-2:])
        masks = np.stack([prune_2_4_mask(m) for m in stack]).reshape(mats.shape)
        changes[name] = np.where(masks, mats, 0).astype(mats.dtype)
    return dataclasses.replace(w, **changes)
