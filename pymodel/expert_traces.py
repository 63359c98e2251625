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
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import ConfigError, _check_int, read_json_file

__all__ = ["RoutingTrace", "synthetic_trace"]


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
