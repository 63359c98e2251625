"""Calibration and the integer image of one MoE layer.

Two steps, both run by the driver before the hardware sees anything:

1. `calibrate(spec, weights, x_calib)` runs the float reference on a
   calibration batch and records the absmax of every activation tensor
   (input, per-expert a/g/u/h, the layer-wide expert output, the output).
   Scales come from float activations only, never from the integer answer.
2. `quantize_layer(spec, weights, calib, cfg)` turns weights and ranges into
   what the hardware runs: expert weights in the layer's `WeightFormat`
   (int8 or int4, dense or 2:4, per-channel or group-wise int4 scales;
   the router stays int8 dense) with per-output-channel scales,
   requantisation multipliers/shifts, activation LUTs, the fixed-point
   correction bias. `QuantizedLayer.to_arrays()` / `from_arrays()` give a
   pickle-free dict of numpy arrays (`np.savez(..., allow_pickle=False)`).

Scale conventions (`docs/numerics.md`): a real value v is represented by the
int q with v ≈ q · s. Routed and shared expert outputs share one scale `s_ye`
so the combiner adds them without rescaling.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import AccelConfig, ConfigError, MoESpec
from .gate import check_routing
from .numerics import (
    NumericsError,
    make_lut,
    quantize_multiplier,
    round_half_away,
    scale_for,
)
from .reference import ACTIVATIONS, FFN_TENSORS, check_float_input, expert_ffn_float, pruned_weights
from .reference import moe_forward_float as _forward
from .weight_formats import WeightFormat, quantize_weights
from .weights import MoEWeights

NUMERIC_FIELDS: tuple[str, ...] = (
    "act_bits",
    "weight_bits",
    "mult_bits",
    "logit_bits",
    "logit_frac_bits",
    "gate_frac_bits",
    "gate_weight_bits",
)
"""The `AccelConfig` fields a `QuantizedLayer` is built for (its constants depend on them)."""


@dataclass(frozen=True)
class Calibration:
    """Activation ranges (absmax) observed on a float calibration batch.

    `expert_absmax[name][e]` covers the rows routed (and kept) to expert `e`;
    an expert that received no calibration token is measured on the whole
    batch instead (`expert_tokens[e] == 0` tells which). `ye_absmax` is the
    layer-wide expert output range (routed and shared), `y_absmax` the output's.
    """

    x_absmax: float
    logits_absmax: np.ndarray  # [E] router logits per expert
    expert_absmax: dict[str, np.ndarray]  # name in FFN_TENSORS -> [E]
    expert_tokens: np.ndarray  # [E]
    shared_absmax: dict[str, float]
    ye_absmax: float
    y_absmax: float
    n_tokens: int


def calibrate(
    spec: MoESpec,
    weights: MoEWeights,
    x_calib: np.ndarray,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
) -> Calibration:
    """Run the float reference on `x_calib` [T, d_model] and record every activation range.

    With a 2:4 `weight_format` the reference is the pruned float block
    (`reference.pruned_weights`): the ranges are those of the layer the
    integer weights approximate.
    """
    weights = pruned_weights(weights, weight_format)
    res = _forward(spec, weights, x_calib)
    x32 = check_float_input(spec, x_calib)
    absmax = {name: a.copy() for name, a in res.expert_absmax.items()}
    for e in np.flatnonzero(res.expert_tokens == 0):
        w3 = weights.w3[e] if weights.w3 is not None else None
        trace = expert_ffn_float(spec.ffn, weights.w1[e], weights.w2[e], w3, x32)
        for name, t in trace.items():
            absmax[name][e] = float(np.max(np.abs(t)))
    routed_ye = res.expert_absmax["ye"][res.expert_tokens > 0]
    ye_absmax = float(routed_ye.max()) if routed_ye.size else 0.0
    if spec.has_shared:
        ye_absmax = max(ye_absmax, res.shared_absmax["ye"])
    return Calibration(
        x_absmax=float(np.max(np.abs(x32))),
        logits_absmax=np.max(np.abs(res.logits), axis=0).astype(np.float64),
        expert_absmax=absmax,
        expert_tokens=res.expert_tokens,
        shared_absmax=dict(res.shared_absmax),
        ye_absmax=ye_absmax,
        y_absmax=float(np.max(np.abs(res.y))),
        n_tokens=int(x32.shape[0]),
    )


@dataclass(frozen=True)
class FFNParams:
    """Integer constants of `n` experts of one kind, stacked on axis 0.

    `lut[i]` maps a (scale `s_a`) to act(a) (scale `s_g`); for GELU/ReLU
    experts act(a) is h itself (`s_h == s_g`, no `w3`/`m_h`). Multipliers
    and shifts are per output channel for the GEMMs (`m1`, `m3`: [n, f];
    `m2`: [n, d]) and per expert for the gated multiply (`m_h`: [n]).
    The weights `w*_q` are dense ints in the layer's `WeightFormat` (zeros
    where 2:4 pruned); `w*_idx` [n, K/2, N] hold the 2:4 positions and
    `w*_gmult` [n, K/G, N] the group-wise int4 scale ratios, when the
    format has them (`weight_formats.QuantizedWeights`).
    """

    w1_q: np.ndarray  # [n, d, f] int8
    w1_scale: np.ndarray  # [n, f]
    m1: np.ndarray  # [n, f]
    sh1: np.ndarray  # [n, f]
    lut: np.ndarray  # [n, 2^act_bits]
    w2_q: np.ndarray  # [n, f, d] int8
    w2_scale: np.ndarray  # [n, d]
    m2: np.ndarray  # [n, d]
    sh2: np.ndarray  # [n, d]
    s_a: np.ndarray  # [n]
    s_g: np.ndarray  # [n]
    s_h: np.ndarray  # [n]
    w3_q: np.ndarray | None = None  # [n, d, f] int8, SwiGLU
    w3_scale: np.ndarray | None = None
    m3: np.ndarray | None = None
    sh3: np.ndarray | None = None
    s_u: np.ndarray | None = None  # [n]
    m_h: np.ndarray | None = None  # [n]
    sh_h: np.ndarray | None = None  # [n]
    w1_idx: np.ndarray | None = None  # [n, d/2, f] 2:4 positions
    w2_idx: np.ndarray | None = None  # [n, f/2, d]
    w3_idx: np.ndarray | None = None  # [n, d/2, f]
    w1_gmult: np.ndarray | None = None  # [n, d/G, f] group-wise int4 scale ratios
    w2_gmult: np.ndarray | None = None  # [n, f/G, d]
    w3_gmult: np.ndarray | None = None  # [n, d/G, f]

    @property
    def gated(self) -> bool:
        return self.w3_q is not None

    def matrices(self) -> tuple[str, ...]:
        """The weight matrices of one expert: ("w1", "w3", "w2") or ("w1", "w2")."""
        return ("w1", "w3", "w2") if self.gated else ("w1", "w2")


@dataclass(frozen=True)
class QuantizedLayer:
    """Everything the hardware holds for one layer, plus the scales that explain it.

    The router GEMM uses `router_q` [d, E] (Qwen2-MoE: [d, E+1], the shared
    gate as column E); its accumulators are requantised per column with
    `router_mult`/`router_shift` into fixed-point logits. `bias_q` is the
    correction bias in Q.gate_frac_bits. The combiner's sum is requantised
    with `out_mult`/`out_shift` into the output scale `s_y`.
    """

    spec: MoESpec
    cfg: AccelConfig
    s_x: float
    router_q: np.ndarray  # [d, E(+1)] int8
    router_scale: np.ndarray  # [E(+1)]
    router_mult: np.ndarray  # [E(+1)]
    router_shift: np.ndarray  # [E(+1)]
    experts: FFNParams
    s_ye: float
    s_y: float
    out_mult: int
    out_shift: int
    bias_q: np.ndarray | None = None  # [E]
    shared: FFNParams | None = None
    weight_format: WeightFormat = WeightFormat.DENSE_INT8

    def __post_init__(self) -> None:
        fmt = self.weight_format
        if not isinstance(fmt, WeightFormat):
            raise ConfigError(f"QuantizedLayer.weight_format must be a WeightFormat, got {fmt!r}")
        for kind, part in (("experts", self.experts), ("shared", self.shared)):
            if part is None:
                continue
            for name in part.matrices():
                for field, wanted in (("idx", fmt.sparse), ("gmult", fmt.group_size is not None)):
                    if (getattr(part, f"{name}_{field}") is not None) != wanted:
                        raise ConfigError(
                            f"QuantizedLayer {kind}.{name}_{field} is "
                            f"{'missing' if wanted else 'present'} for weight format {fmt.name}"
                        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """A flat dict of numpy arrays (no objects, no pickle) that `from_arrays` inverts."""
        out: dict[str, np.ndarray] = {
            "spec_json": np.array(self.spec.to_json()),
            "cfg_json": np.array(self.cfg.to_json()),
            "weight_format_json": np.array(self.weight_format.to_json()),
        }
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("spec", "cfg", "weight_format") or value is None:
                continue
            if isinstance(value, FFNParams):
                for g in dataclasses.fields(value):
                    part = getattr(value, g.name)
                    if part is not None:
                        out[f"{f.name}.{g.name}"] = np.asarray(part)
            else:
                out[f.name] = np.asarray(value)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> QuantizedLayer:
        """Rebuild from `to_arrays()` output (e.g. an `np.load`-ed .npz), checking completeness."""
        data = {key: np.asarray(arrays[key]) for key in arrays}
        try:
            spec = MoESpec.from_json(str(data.pop("spec_json")))
            cfg = AccelConfig.from_json(str(data.pop("cfg_json")))
        except KeyError as exc:
            raise ConfigError(f"QuantizedLayer arrays lack {exc.args[0]!r}") from exc
        kwargs: dict[str, Any] = {"spec": spec, "cfg": cfg}
        if "weight_format_json" in data:
            kwargs["weight_format"] = WeightFormat.from_json(str(data.pop("weight_format_json")))
        parts: dict[str, dict[str, np.ndarray]] = {"experts": {}, "shared": {}}
        scalars = {"s_x": float, "s_ye": float, "s_y": float, "out_mult": int, "out_shift": int}
        for key, value in data.items():
            head, _, tail = key.partition(".")
            if head in parts and tail:
                parts[head][tail] = value
            elif key in scalars:
                kwargs[key] = scalars[key](value)
            elif key in ("router_q", "router_scale", "router_mult", "router_shift", "bias_q"):
                kwargs[key] = value
            else:
                raise ConfigError(f"QuantizedLayer arrays: unknown entry {key!r}")
        for name, fields in parts.items():
            if fields:
                try:
                    kwargs[name] = FFNParams(**fields)
                except TypeError as exc:
                    raise ConfigError(f"QuantizedLayer arrays: bad {name} entries: {exc}") from exc
        try:
            layer = cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"QuantizedLayer arrays incomplete: {exc}") from exc
        return layer


def _format_bits(fmt: WeightFormat, cfg: AccelConfig) -> int:
    """Stored weight width: the build's `weight_bits` for int8, 4 for int4."""
    if fmt.bits == 8:
        return cfg.weight_bits
    if cfg.weight_bits < fmt.bits:
        raise ConfigError(
            f"{fmt.name} weights need AccelConfig.weight_bits >= {fmt.bits}, got {cfg.weight_bits}"
        )
    return fmt.bits


def _quantize_stack(
    w: np.ndarray, fmt: WeightFormat, cfg: AccelConfig, what: str
) -> dict[str, np.ndarray]:
    """Experts' float [n, K, N] weights → stacked `q`, `scale` (and `idx`, `gmult`) per `fmt`."""
    fmt.check_k(w.shape[-2], what)
    parts = [quantize_weights(m, fmt, _format_bits(fmt, cfg)) for m in w]
    out = {"q": np.stack([p.q for p in parts]), "scale": np.stack([p.scale for p in parts])}
    if fmt.sparse:
        out["idx"] = np.stack([p.idx for p in parts])
    if fmt.group_size is not None:
        out["gmult"] = np.stack([p.group_mult for p in parts])
    return out


def _multipliers(
    real: np.ndarray,
    cfg: AccelConfig,
    what: str,
    axes: tuple[str, ...] = ("expert", "channel"),
) -> tuple[np.ndarray, np.ndarray]:
    """(m, s) per factor; a factor beyond the multiplier is an error naming `what` and its place.

    `axes` names the axes of `real` (e.g. expert, channel) for that message.
    """
    real = np.asarray(real, dtype=np.float64)
    pairs = []
    for pos, r in zip(np.ndindex(real.shape), real.reshape(-1), strict=True):
        try:
            pairs.append(quantize_multiplier(float(r), cfg.mult_bits))
        except NumericsError as exc:
            where = ", ".join(f"{axis} {i}" for axis, i in zip(axes, pos, strict=False))
            raise NumericsError(f"{what}{' at ' + where if where else ''}: {exc}") from exc
    mult = np.array([p[0] for p in pairs], dtype=np.int64).reshape(real.shape)
    shift = np.array([p[1] for p in pairs], dtype=np.int64).reshape(real.shape)
    return mult, shift


def _ffn_params(
    ffn: str,
    w1: np.ndarray,
    w2: np.ndarray,
    w3: np.ndarray | None,
    absmax: dict[str, np.ndarray],
    s_x: float,
    s_ye: float,
    cfg: AccelConfig,
    fmt: WeightFormat,
    kind: str,
) -> FFNParams:
    """Integer constants of experts stacked on axis 0, from their float weights and ranges.

    `kind` ("routed" or "shared") names the experts in errors.
    """
    ab = cfg.act_bits
    s_a = scale_for(absmax["a"], ab)
    s_g = scale_for(absmax["g"], ab)
    s_h = scale_for(absmax["h"], ab) if w3 is not None else s_g
    params: dict[str, np.ndarray] = {}
    for name, w in (("w1", w1), ("w2", w2), ("w3", w3)):
        if w is not None:
            for part, value in _quantize_stack(w, fmt, cfg, f"{kind} expert {name}").items():
                params[f"{name}_{part}"] = value
    where = f"{fmt.name} {kind} expert"
    m1, sh1 = _multipliers(s_x * params["w1_scale"] / s_a[:, None], cfg, f"{where} W1 requantiser")
    m2, sh2 = _multipliers(s_h[:, None] * params["w2_scale"] / s_ye, cfg, f"{where} W2 requantiser")
    act = ACTIVATIONS[ffn]
    lut = np.stack([make_lut(act, float(a), float(g), ab) for a, g in zip(s_a, s_g, strict=True)])
    params.update(m1=m1, sh1=sh1, lut=lut, s_a=s_a, s_g=s_g, m2=m2, sh2=sh2, s_h=s_h)
    if w3 is not None:
        s_u = scale_for(absmax["u"], ab)
        m3, sh3 = _multipliers(
            s_x * params["w3_scale"] / s_u[:, None], cfg, f"{where} W3 requantiser"
        )
        m_h, sh_h = _multipliers(s_g * s_u / s_h, cfg, f"{where} gated multiply")
        params.update(m3=m3, sh3=sh3, s_u=s_u, m_h=m_h, sh_h=sh_h)
    return FFNParams(**params)


def quantize_layer(
    spec: MoESpec,
    weights: MoEWeights,
    calib: Calibration,
    cfg: AccelConfig,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
) -> QuantizedLayer:
    """Build the integer image of the layer for hardware `cfg` from weights and calibration.

    Routed and shared expert weights are pruned (2:4, on the float weights)
    and quantised per `weight_format`; the router GEMM stays int8 dense (its
    logits pick the experts, and it is a small part of the weights).
    """
    if not isinstance(calib, Calibration):
        raise ConfigError(f"calib must be a Calibration, got {type(calib).__name__}")
    if not isinstance(weight_format, WeightFormat):
        raise ConfigError(f"weight_format must be a WeightFormat, got {weight_format!r}")
    check_routing(spec)
    weights.validate(spec)
    cfg.check_fits(spec, 1)
    ab, wb, g = cfg.act_bits, cfg.weight_bits, cfg.gate_frac_bits
    s_x = float(scale_for(calib.x_absmax, ab))
    s_ye = float(scale_for(calib.ye_absmax, ab))
    s_y = float(scale_for(calib.y_absmax, ab))

    router = weights.router
    if spec.shared_gate:
        router = np.concatenate([router, weights.shared_gate[:, None]], axis=1)
    router_w = quantize_weights(router, WeightFormat.DENSE_INT8, wb)
    router_q, router_scale = router_w.q, router_w.scale
    router_mult, router_shift = _multipliers(
        s_x * router_scale * 2**cfg.logit_frac_bits, cfg, "router requantiser", ("column",)
    )
    fmt = weight_format
    experts = _ffn_params(
        spec.ffn,
        weights.w1,
        weights.w2,
        weights.w3,
        calib.expert_absmax,
        s_x,
        s_ye,
        cfg,
        fmt,
        "routed",
    )
    shared = None
    if spec.has_shared:
        shared_absmax = {name: np.array([calib.shared_absmax[name]]) for name in FFN_TENSORS}
        shared = _ffn_params(
            "swiglu",
            weights.shared_w1[None],
            weights.shared_w2[None],
            weights.shared_w3[None],
            shared_absmax,
            s_x,
            s_ye,
            cfg,
            fmt,
            "shared",
        )
    bias_q = None
    if spec.correction_bias:
        bias_q = round_half_away(weights.correction_bias.astype(np.float64) * 2**g)
        limit = 2**cfg.gate_weight_bits - 1
        if np.any(np.abs(bias_q) > limit):
            raise NumericsError(
                f"correction bias beyond ±{limit / 2**g:g} does not fit the signed "
                f"{cfg.gate_weight_bits + 1}-bit fixed point"
            )
    router = {"q": router_q, "scale": router_scale, "mult": router_mult, "shift": router_shift}
    return assemble_layer(spec, cfg, s_x, router, experts, s_ye, s_y, bias_q, shared, fmt)


def assemble_layer(
    spec: MoESpec,
    cfg: AccelConfig,
    s_x: float,
    router: dict[str, np.ndarray],
    experts: FFNParams,
    s_ye: float,
    s_y: float,
    bias_q: np.ndarray | None,
    shared: FFNParams | None,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
) -> QuantizedLayer:
    """The `QuantizedLayer` of these parts, with its output requantiser derived here, once.

    `router` holds the router's `q`, `scale`, `mult` and `shift`. The combine
    accumulates gate-weighted expert outputs in scale `s_ye / 2^gate_frac_bits`;
    the output requantiser takes that to the output scale `s_y`.
    """
    out_mult, out_shift = quantize_multiplier(s_ye / (2**cfg.gate_frac_bits * s_y), cfg.mult_bits)
    return QuantizedLayer(
        spec=spec,
        cfg=cfg,
        s_x=s_x,
        router_q=router["q"],
        router_scale=router["scale"],
        router_mult=router["mult"],
        router_shift=router["shift"],
        experts=experts,
        s_ye=s_ye,
        s_y=s_y,
        out_mult=out_mult,
        out_shift=out_shift,
        bias_q=bias_q,
        shared=shared,
        weight_format=weight_format,
    )
