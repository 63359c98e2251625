"""The golden integer MoE layer: route → dispatch → experts → combine, stage by stage.

Each stage is a separate function with the same inputs and outputs as the
hardware unit of the same name, so RTL tests can check one unit against its
golden twin; `golden_layer` chains them and keeps every intermediate.
`run_golden` is the convenience path from float tokens: calibrate → quantise
→ golden layer.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .combine import CombineResult, combine
from .config import AccelConfig, ConfigError, MoESpec
from .dispatch import Dispatch, dispatch
from .experts import ExpertOutputs, run_experts
from .gate import Routing, gate, group_scores, sigmoid_fx
from .gemm import matmul_int
from .numerics import PostMode, check_int_array, postprocess, quantize
from .quantize import NUMERIC_FIELDS, QuantizedLayer, calibrate, quantize_layer
from .reference import FloatResult, check_float_input, sigmoid
from .weight_formats import WeightFormat
from .weights import MoEWeights


def check_layer_cfg(ql: QuantizedLayer, cfg: AccelConfig) -> None:
    """Raise unless `ql` was built for `cfg`'s numerics and its spec fits `cfg`."""
    if not isinstance(ql, QuantizedLayer):
        raise ConfigError(f"expected a QuantizedLayer, got {type(ql).__name__}")
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"expected an AccelConfig, got {type(cfg).__name__}")
    for name in NUMERIC_FIELDS:
        if getattr(ql.cfg, name) != getattr(cfg, name):
            raise ConfigError(
                f"QuantizedLayer was built for AccelConfig.{name} = {getattr(ql.cfg, name)}, "
                f"but the hardware has {getattr(cfg, name)}"
            )
    cfg.check_fits(ql.spec, 1)


def check_tokens(ql: QuantizedLayer, x_q: np.ndarray, cfg: AccelConfig) -> None:
    """Validate quantised tokens: integer [T, d_model] in the act_bits range, T <= max_tokens."""
    check_layer_cfg(ql, cfg)
    check_int_array("x_q", x_q, cfg.act_bits)
    if x_q.ndim != 2 or x_q.shape[1] != ql.spec.d_model:
        raise ConfigError(f"x_q has shape {x_q.shape}, expected [T, {ql.spec.d_model}]")
    cfg.check_fits(ql.spec, x_q.shape[0])


def quantize_input(ql: QuantizedLayer, x: np.ndarray) -> np.ndarray:
    """Float tokens [T, d_model] → int tokens at the calibrated input scale `s_x`."""
    return quantize(check_float_input(ql.spec, x), ql.s_x, ql.cfg.act_bits)


def route(ql: QuantizedLayer, x_q: np.ndarray, cfg: AccelConfig) -> Routing:
    """Router GEMM, per-column requantisation to fixed-point logits, then the gate unit."""
    check_tokens(ql, x_q, cfg)
    spec = ql.spec
    acc = matmul_int(x_q, ql.router_q, cfg)
    logits = postprocess(PostMode.WIDE, cfg, acc, ql.router_mult, ql.router_shift).y
    n = spec.n_experts
    shared_logit = logits[:, n] if spec.shared_gate else None
    return gate(spec, logits[:, :n], cfg, bias_q=ql.bias_q, shared_logit=shared_logit)


def dispatch_tokens(ql: QuantizedLayer, routing: Routing, cfg: AccelConfig) -> Dispatch:
    """Group the (token, slot) pairs by expert, padded to `cfg.m_tile`, with the spec's capacity."""
    return dispatch(routing.expert_ids, ql.spec.n_experts, cfg.m_tile, ql.spec.capacity)


def combine_outputs(
    ql: QuantizedLayer, routing: Routing, disp: Dispatch, outs: ExpertOutputs, cfg: AccelConfig
) -> CombineResult:
    """The combiner with this layer's output requantisation."""
    shared_y = outs.shared.y if outs.shared is not None else None
    return combine(
        routing.gate_weights,
        disp,
        outs.routed.y,
        ql.out_mult,
        ql.out_shift,
        cfg,
        shared_weight=routing.shared_weight if shared_y is not None else None,
        shared_y=shared_y,
    )


@dataclass(frozen=True)
class LayerResult:
    """The golden layer's output and every intermediate.

    `y_q` is the int output at scale `ql.s_y`; `y` its dequantised float32 value.
    """

    ql: QuantizedLayer
    x_q: np.ndarray
    routing: Routing
    dispatch: Dispatch
    experts: ExpertOutputs
    combined: CombineResult

    @property
    def y_q(self) -> np.ndarray:
        return self.combined.y

    @property
    def y(self) -> np.ndarray:
        return (self.combined.y * self.ql.s_y).astype(np.float32)


def golden_layer(ql: QuantizedLayer, x_q: np.ndarray, cfg: AccelConfig) -> LayerResult:
    """The whole integer layer on quantised tokens `x_q` [T, d_model]."""
    routing = route(ql, x_q, cfg)
    disp = dispatch_tokens(ql, routing, cfg)
    outs = run_experts(ql, x_q, disp, cfg)
    combined = combine_outputs(ql, routing, disp, outs, cfg)
    return LayerResult(
        ql=ql, x_q=x_q, routing=routing, dispatch=disp, experts=outs, combined=combined
    )


def run_golden(
    spec: MoESpec,
    weights: MoEWeights,
    x: np.ndarray,
    cfg: AccelConfig,
    calib_x: np.ndarray | None = None,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
) -> LayerResult:
    """Float tokens in: calibrate (on `calib_x`, default `x`) → quantise → golden layer.

    Expert weights are pruned and quantised per `weight_format`.
    """
    x32 = check_float_input(spec, x)
    cfg.check_fits(spec, x32.shape[0])
    calib = calibrate(spec, weights, x32 if calib_x is None else calib_x, weight_format)
    ql = quantize_layer(spec, weights, calib, cfg, weight_format)
    return golden_layer(ql, quantize_input(ql, x32), cfg)


@functools.cache
def sigmoid_error_bound(cfg: AccelConfig) -> float:
    """max |sigmoid_fx(l)/2^g − σ(l/2^f)| over every representable logit (exhaustive)."""
    top = 2 ** (cfg.logit_bits - 1) - 1
    logits = np.arange(-top, top + 1, dtype=np.int64)
    fx = sigmoid_fx(logits, cfg) / 2**cfg.gate_frac_bits
    exact = sigmoid(logits / 2**cfg.logit_frac_bits)
    return float(np.max(np.abs(fx - exact)))


def selection_tolerance(
    ql: QuantizedLayer, weights: MoEWeights, x: np.ndarray, cfg: AccelConfig
) -> np.ndarray:
    """[T, E] bound on |integer − float| selection score, in float units (docs/numerics.md).

    Softmax scoring ranks logits: the bound sums the input quantisation error
    through |Wg|, the weight quantisation error through |x_q·s_x|, the
    multiplier's error, half a logit step and an fp32 slack. Sigmoid scoring
    ranks σ + bias: a quarter of the logit bound (σ is 1/4-Lipschitz), plus
    the exhaustive `sigmoid_error_bound` and half a bias step. A saturated
    logit gets +inf.
    """
    check_layer_cfg(ql, cfg)
    spec = ql.spec
    x64 = check_float_input(spec, x).astype(np.float64)
    x_q = quantize_input(ql, x)
    n, lf = spec.n_experts, cfg.logit_frac_bits
    router = weights.router.astype(np.float64)
    router_q = ql.router_q[:, :n].astype(np.int64)
    input_err = np.abs(x64 - x_q * ql.s_x) @ np.abs(router)
    weight_err = np.abs(x_q * ql.s_x) @ np.abs(router - router_q * ql.router_scale[:n])
    acc = (x_q @ router_q).astype(np.float64)
    used = ql.router_mult[:n] / 2.0 ** ql.router_shift[:n]
    mult_err = np.abs(acc) * np.abs(used - ql.s_x * ql.router_scale[:n] * 2**lf) / 2**lf
    logit_tol = input_err + weight_err + mult_err + 2.0 ** -(lf + 1) + 1e-5
    saturated = np.abs(acc * used) >= 2 ** (cfg.logit_bits - 1) - 1.5
    logit_tol = np.where(saturated, np.inf, logit_tol)
    if spec.scoring == "softmax":
        return logit_tol
    return logit_tol / 4 + sigmoid_error_bound(cfg) + 2.0 ** -(cfg.gate_frac_bits + 1) + 1e-6


def _gap(values: np.ndarray, k: int) -> np.ndarray:
    """Per row: k-th largest minus (k+1)-th largest (+inf when there is no (k+1)-th)."""
    if k >= values.shape[1]:
        return np.full(values.shape[0], np.inf)
    top = -np.sort(-values, axis=1)
    return top[:, k - 1] - top[:, k]


def routing_guaranteed(
    ql: QuantizedLayer, weights: MoEWeights, x: np.ndarray, ref: FloatResult, cfg: AccelConfig
) -> np.ndarray:
    """[T] bool: tokens whose integer top-k expert set must equal the float one.

    True where the float selection margins exceed the quantisation step:
    the gap between the k-th and (k+1)-th float selection score (among the
    experts of the chosen groups) is > 2·tol, and with group-limited routing
    the gap between the topk_group-th and next group score is > 4·tol (a
    group score sums two expert scores), tol = max_e `selection_tolerance`.
    """
    spec = ql.spec
    tol = selection_tolerance(ql, weights, x, cfg).max(axis=1)
    if spec.scoring == "softmax":
        return _gap(ref.logits.astype(np.float64), spec.top_k) > 2 * tol
    choice = ref.scores.astype(np.float64)
    ok = np.ones(choice.shape[0], dtype=bool)
    if spec.n_group > 1:
        gs = group_scores(choice, spec.n_group)
        ok &= _gap(gs, spec.topk_group) > 4 * tol
        chosen = np.argsort(-gs, axis=1, kind="stable")[:, : spec.topk_group]
        mask = np.zeros(gs.shape, dtype=bool)
        np.put_along_axis(mask, chosen, True, axis=1)
        eligible = np.repeat(mask, spec.n_experts // spec.n_group, axis=1)
        choice = np.where(eligible, choice, -np.inf)
    return ok & (_gap(choice, spec.top_k) > 2 * tol)
