"""Golden expert FFN on gathered token rows: what the grouped GEMM engine computes.

For one expert and its gathered int8 rows `xe`:
SwiGLU `a = rq(xe·W1)`, `g = LUT(a)`, `u = rq(xe·W3)`, `h = rq(g·u)`;
GELU/ReLU `a = rq(xe·W1)`, `h = LUT(a)`; then `ye = rq(h·W2)` into the
layer-wide expert output scale. All GEMMs are `gemm.matmul_int` (exact int32
accumulation) on the dense form of the layer's weights, whatever their
`WeightFormat` (2:4 pruned entries are zeros, int4 values are ints in
[-7, 7]); group-wise int4 scales use `weight_formats.grouped_matmul`. Each
GEMM's outputs go through `numerics.postprocess` (the engine's
post-processing lanes). Dispatch pads each
expert's group with zero rows; all LUTs map 0 to 0, so padded rows yield 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import AccelConfig, ConfigError
from .dispatch import Dispatch
from .gemm import matmul_int
from .numerics import PostMode, check_int_array, postprocess
from .quantize import FFNParams, QuantizedLayer
from .weight_formats import grouped_matmul


@dataclass(frozen=True)
class FFNTrace:
    """Every integer intermediate of an FFN over some rows (int64, act_bits values)."""

    a: np.ndarray  # [rows, f]
    g: np.ndarray  # [rows, f] act(a); equals h for GELU/ReLU
    h: np.ndarray  # [rows, f]
    y: np.ndarray  # [rows, d]
    u: np.ndarray | None = None  # [rows, f], SwiGLU


@dataclass(frozen=True)
class ExpertOutputs:
    """Routed experts over the dispatcher's sorted slots, and the shared expert over tokens.

    `x` are the gathered input rows (row i feeds sorted slot i; pad rows are 0).
    """

    x: np.ndarray  # [P, d]
    routed: FFNTrace  # rows aligned with Dispatch.sorted_slots
    shared: FFNTrace | None = None  # rows = tokens


def expert_gemm(p: FFNParams, name: str, e: int, x: np.ndarray, cfg: AccelConfig) -> np.ndarray:
    """Accumulators of `x @ W` for weight matrix `name` ("w1", "w2", "w3") of expert `e`.

    Exact integers at the channel's scale `name_scale`: the plain GEMM, or
    with group-wise int4 scales the scaled partial sums of `grouped_matmul`.
    """
    w = getattr(p, f"{name}_q")[e]
    gmult = getattr(p, f"{name}_gmult")
    if gmult is None:
        return matmul_int(x, w, cfg)
    return grouped_matmul(x, w, gmult[e], cfg)


def ffn_int(p: FFNParams, e: int, xe_q: np.ndarray, cfg: AccelConfig) -> FFNTrace:
    """Expert `e` of `p` on int rows `xe_q` [rows, d]: the engine's two GEMM commands."""
    acc1 = expert_gemm(p, "w1", e, xe_q, cfg)
    if p.gated:
        first = postprocess(
            PostMode.SWIGLU,
            cfg,
            acc1,
            p.m1[e],
            p.sh1[e],
            lut=p.lut[e],
            acc_b=expert_gemm(p, "w3", e, xe_q, cfg),
            mult_b=p.m3[e],
            shift_b=p.sh3[e],
            gate_mult=p.m_h[e],
            gate_shift=p.sh_h[e],
        )
    else:
        first = postprocess(PostMode.REQUANT_LUT, cfg, acc1, p.m1[e], p.sh1[e], lut=p.lut[e])
    h = first.y
    acc2 = expert_gemm(p, "w2", e, h, cfg)
    y = postprocess(PostMode.REQUANT, cfg, acc2, p.m2[e], p.sh2[e]).y
    return FFNTrace(a=first.a, g=first.g, h=h, y=y, u=first.u)


def gather_rows(x_q: np.ndarray, disp: Dispatch) -> np.ndarray:
    """Input row of every sorted slot: token `slot // k`, zeros for pad slots."""
    n_tokens, k = disp.kept.shape
    if x_q.shape[0] != n_tokens:
        raise ConfigError(f"x_q has {x_q.shape[0]} rows but the dispatch covers {n_tokens} tokens")
    padded = np.concatenate([x_q.astype(np.int64), np.zeros((1, x_q.shape[1]), np.int64)])
    tokens = np.where(disp.sorted_slots == disp.pad_id, n_tokens, disp.sorted_slots // k)
    return padded[tokens]


def run_experts(
    ql: QuantizedLayer, x_q: np.ndarray, disp: Dispatch, cfg: AccelConfig
) -> ExpertOutputs:
    """Every active expert on its padded group of gathered rows, plus the shared expert."""
    check_int_array("x_q", x_q, cfg.act_bits)
    spec = ql.spec
    if x_q.ndim != 2 or x_q.shape[1] != spec.d_model:
        raise ConfigError(f"x_q has shape {x_q.shape}, expected [T, {spec.d_model}]")
    xs = gather_rows(x_q, disp)
    n_rows, f = xs.shape[0], spec.d_ff
    a, g, h = (np.zeros((n_rows, f), np.int64) for _ in range(3))
    u = np.zeros((n_rows, f), np.int64) if ql.experts.gated else None
    y = np.zeros((n_rows, spec.d_model), np.int64)
    for e in range(spec.n_experts):
        lo, hi = int(disp.offsets[e]), int(disp.offsets[e + 1])
        if lo == hi:
            continue
        t = ffn_int(ql.experts, e, xs[lo:hi], cfg)
        a[lo:hi], g[lo:hi], h[lo:hi], y[lo:hi] = t.a, t.g, t.h, t.y
        if u is not None:
            u[lo:hi] = t.u
    shared = ffn_int(ql.shared, 0, x_q, cfg) if ql.shared is not None else None
    return ExpertOutputs(x=xs, routed=FFNTrace(a=a, g=g, h=h, y=y, u=u), shared=shared)
