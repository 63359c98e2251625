"""Routing traces of decode streams: which experts each MoE layer picks at each token.

A `RoutingTrace` is `experts[step, layer, slot]` (batch size 1: one token a
step; `top_k` distinct experts per layer). Traces are plain JSON
(`save` / `load`, no pickle) so users can bring their own from real models,
and `synthetic_trace` makes one from a stated generator:

- **popularity skew**: each layer ranks its experts in a random order and
  draws them with probability ∝ 1 / rank^`skew` (Zipf; 0 is uniform, the
  load-balanced ideal);
- **temporal reuse**: each slot keeps one of the previous token's experts
  with probability `reuse` (the rest drawn by popularity, without repeats).

Both effects are measured in real MoE models: Jiang et al., "Mixtral of
Experts" (2024), §5 report that consecutive tokens are routed to the same
experts more often than chance, and expert popularity is uneven per layer
in every released MoE; the parameters here are knobs, set per study, not
fitted to a model.

`pregated_prediction` stands in for pre-gating (layer l+1's router applied to
layer l's input, `sw_driver.decode_stream.DecodeStack`) on a trace that has no
hidden states: each actual expert is predicted with a stated probability
(default `FLAME_ACCURACY`), seeded so a study replays; `prediction_accuracy`
scores any prediction, pre-gated or recorded, against a trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, MoESpec, _check_int, read_json_file

__all__ = [
    "FLAME_ACCURACY",
    "RoutingTrace",
    "prediction_accuracy",
    "pregated_prediction",
    "synthetic_trace",
]

FLAME_ACCURACY = 0.844
"""Pre-gating accuracy FLAME reports with 2 cache slots (|predicted ∩ actual| / |actual|),
the figure issue 20's survey quotes; the default of `pregated_prediction`."""


@dataclass(frozen=True)
class RoutingTrace:
    """`experts[step, layer, slot]`: the experts of each layer at each decode step."""

    experts: np.ndarray
    n_experts: int
    source: str = "synthetic"

    def __post_init__(self) -> None:
        _check_int("RoutingTrace", "n_experts", self.n_experts, 1)
        e = np.asarray(self.experts)
        if e.ndim != 3 or 0 in e.shape:
            raise ConfigError(
                f"RoutingTrace.experts must be a non-empty [steps, layers, top_k] array, got "
                f"shape {e.shape}"
            )
        if not np.issubdtype(e.dtype, np.integer):
            raise ConfigError(f"RoutingTrace.experts must be integers, got {e.dtype}")
        if e.min() < 0 or e.max() >= self.n_experts:
            bad = int(e.max()) if e.max() >= self.n_experts else int(e.min())
            raise ConfigError(f"RoutingTrace names expert {bad}, outside 0..{self.n_experts - 1}")
        ordered = np.sort(e, axis=2)
        if (np.diff(ordered, axis=2) == 0).any():
            step, layer = np.argwhere((np.diff(ordered, axis=2) == 0).any(axis=2))[0]
            raise ConfigError(f"RoutingTrace step {step}, layer {layer} names an expert twice")
        object.__setattr__(self, "experts", e.astype(np.int64))

    @property
    def steps(self) -> int:
        return int(self.experts.shape[0])

    @property
    def layers(self) -> int:
        return int(self.experts.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.experts.shape[2])

    def reuse_rate(self) -> float:
        """Fraction of (step, layer, slot) picks that the previous step's same layer also made."""
        prev, cur = self.experts[:-1], self.experts[1:]
        if not len(cur):
            return 0.0
        hits = (cur[..., :, None] == prev[..., None, :]).any(axis=-1)
        return float(hits.mean())

    def check_spec(self, spec: MoESpec) -> None:
        """`ConfigError` unless the trace routes `spec`'s layer: same expert count and top-k.

        Why: a trace names experts by index, so one recorded on another model
        (more experts, another k) would price experts the layer does not have.
        """
        if self.n_experts != spec.n_experts or self.top_k != spec.top_k:
            raise ConfigError(
                f"trace ({self.source}) has {self.n_experts} experts, top-{self.top_k}; the "
                f"layer {spec.name or 'spec'} has {spec.n_experts} experts, top-{spec.top_k}"
            )

    def save(self, path: Path | str) -> None:
        """Write the trace as JSON: `{"kind", "n_experts", "source", "experts"}`."""
        data = {
            "kind": "RoutingTrace",
            "n_experts": self.n_experts,
            "source": self.source,
            "experts": self.experts.tolist(),
        }
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path | str) -> RoutingTrace:
        """Read a trace written by `save` (or by hand); `ConfigError` naming what is wrong."""
        data = read_json_file(path, f"trace {path}")
        if not isinstance(data, dict) or data.get("kind") != "RoutingTrace":
            raise ConfigError(f"trace {path}: not a RoutingTrace JSON object")
        unknown = sorted(set(data) - {"kind", "n_experts", "source", "experts"})
        if unknown:
            raise ConfigError(f"trace {path}: unknown keys {unknown}")
        try:
            experts = np.array(data["experts"])
            return cls(experts, data["n_experts"], str(data.get("source", "file")))
        except KeyError as exc:
            raise ConfigError(f"trace {path}: missing {exc.args[0]!r}") from None
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"trace {path}: {exc}") from None
        except ConfigError as exc:
            raise ConfigError(f"trace {path}: {exc}") from None


def synthetic_trace(
    *,
    layers: int,
    steps: int,
    n_experts: int,
    top_k: int,
    skew: float = 1.0,
    reuse: float = 0.3,
    seed: int = 0,
) -> RoutingTrace:
    """A decode trace from the module docstring's generator (popularity skew, reuse)."""
    for name, value, lo in (
        ("layers", layers, 1),
        ("steps", steps, 1),
        ("n_experts", n_experts, 1),
    ):
        _check_int("synthetic_trace", name, value, lo)
    _check_int("synthetic_trace", "top_k", top_k, 1, n_experts)
    if not 0.0 <= skew <= 10.0:
        raise ConfigError(f"synthetic_trace skew = {skew} is outside [0, 10]")
    if not 0.0 <= reuse <= 1.0:
        raise ConfigError(f"synthetic_trace reuse = {reuse} is outside [0, 1]")
    rng = np.random.default_rng(seed)
    popularity = np.empty((layers, n_experts))
    for layer in range(layers):
        order = rng.permutation(n_experts)
        weight = 1.0 / np.arange(1, n_experts + 1) ** skew
        popularity[layer, order] = weight / weight.sum()
    out = np.empty((steps, layers, top_k), dtype=np.int64)
    for step in range(steps):
        for layer in range(layers):
            chosen: list[int] = []
            if step:
                for e in out[step - 1, layer]:
                    if rng.random() < reuse:
                        chosen.append(int(e))
            p = popularity[layer].copy()
            p[chosen] = 0.0
            need = top_k - len(chosen)
            if need:
                chosen += list(rng.choice(n_experts, size=need, replace=False, p=p / p.sum()))
            out[step, layer] = chosen
    return RoutingTrace(out, n_experts, f"synthetic(skew={skew}, reuse={reuse}, seed={seed})")


def pregated_prediction(
    trace: RoutingTrace, *, accuracy: float = FLAME_ACCURACY, seed: int = 0
) -> np.ndarray:
    """`[steps, layers, top_k]` predicted experts of every layer call, made before it runs.

    The stated stand-in for pre-gating on a synthetic trace: layer 0 has no
    predecessor and is not predicted (-1, as in `DecodeStack.run`); in every
    other call each actual expert is predicted with probability `accuracy`, and
    a slot that misses predicts a wrong expert instead, drawn by the layer's
    popularity in the trace (its use counts + 1), never an actual one or one
    already predicted (-1 when none is left). So each call's
    |predicted ∩ actual| / |actual| is Binomial(top_k, accuracy) / top_k and the
    mean converges to `accuracy`; the same seed gives the same predictions.
    """
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float):
        raise ConfigError(f"pregated_prediction accuracy must be a number, got {accuracy!r}")
    if not 0.0 <= accuracy <= 1.0:
        raise ConfigError(f"pregated_prediction accuracy = {accuracy} is outside [0, 1]")
    rng = np.random.default_rng(seed)
    steps, layers, k = trace.experts.shape
    out = np.full((steps, layers, k), -1, dtype=np.int64)
    right = rng.random((steps, layers, k)) < accuracy
    for layer in range(1, layers):
        weight = np.bincount(trace.experts[:, layer].ravel(), minlength=trace.n_experts) + 1.0
        for step in range(steps):
            actual = trace.experts[step, layer]
            out[step, layer] = np.where(right[step, layer], actual, -1)
            wrong = np.flatnonzero(~right[step, layer])
            if not len(wrong):
                continue
            p = weight.copy()
            p[actual] = 0.0
            n = min(len(wrong), int(np.count_nonzero(p)))
            if n:
                drawn = rng.choice(trace.n_experts, size=n, replace=False, p=p / p.sum())
                out[step, layer, wrong[:n]] = drawn
    return out


def prediction_accuracy(trace: RoutingTrace, predicted: np.ndarray) -> np.ndarray:
    """Per layer: |predicted ∩ actual| / |actual| over the trace's steps (NaN: never predicted).

    `predicted[step, layer]` lists experts (any count, -1 pads), e.g. from
    `pregated_prediction` or `DecodeStreamResult.predicted`.
    """
    pred = np.asarray(predicted)
    steps, layers, _ = trace.experts.shape
    if pred.ndim != 3 or pred.shape[:2] != (steps, layers):
        raise ConfigError(
            f"predictions must be [steps, layers, n] = [{steps}, {layers}, n], got {pred.shape}"
        )
    if not np.issubdtype(pred.dtype, np.integer) or (
        pred.size and (pred.min() < -1 or pred.max() >= trace.n_experts)
    ):
        raise ConfigError(
            f"predictions must be expert indices in 0..{trace.n_experts - 1} or -1 (none)"
        )
    hit = (trace.experts[..., :, None] == pred[..., None, :]).any(axis=-1).mean(axis=(0, 2))
    made = (pred >= 0).any(axis=(0, 2))
    return np.where(made, hit, np.nan)
