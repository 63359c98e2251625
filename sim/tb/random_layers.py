"""Constrained-random MoE layers: the whole-accelerator tests' and the soak's stimulus.

Why: hand-picked layers leave corners of the layer sequencer, gate and
dispatcher unexercised (all tokens on one expert, exact ties, k at its limit,
one token, saturating scales). Each draw takes everything from one seeded
generator, so a layer is replayed from its seed alone:

- family and its routing options (groups and group top-k, renormalisation,
  routed scaling, shared-expert width, capacity);
- shapes from 1 to the top's limits, drawn to hit both ends often: T, d, f,
  E (a power of two), k up to min(E, `max_top_k`);
- one stimulus kind: `balanced` (standard-normal tokens), `skewed` (tokens
  pushed along one expert's router column), `all_to_one` (pushed so hard
  every token picks that expert first), `tied` (two router columns equal,
  and their correction biases under sigmoid routing, so their selection
  scores tie exactly and the lower expert must win), `extreme`
  (expert weights 40× larger: requantisation saturates).

Draws the hardware cannot take (`AccelConfig.check_fits`, family rules)
and stimuli the quantiser refuses (a requantisation factor beyond the
multiplier, `NumericsError`) are redrawn from the same generator; a layer
that fits and quantises is never changed.
"""

from __future__ import annotations

import numpy as np

from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.families import FAMILIES, family_spec
from pymodel.numerics import NumericsError
from pymodel.weights import MoEWeights

from .layer_cases import LayerCase, case_from

__all__ = ["STIMULI", "random_layer"]

STIMULI = ("balanced", "skewed", "all_to_one", "tied", "extreme")


def _edge_biased(rng: np.random.Generator, high: int, low: int = 1) -> int:
    """An int in [low, high]: a third of the time an end, else uniform."""
    roll = rng.random()
    if roll < 1 / 6:
        return low
    if roll < 1 / 3:
        return high
    return int(rng.integers(low, high + 1))


def _spec(rng: np.random.Generator, cfg: AccelConfig) -> MoESpec:
    family = str(rng.choice(FAMILIES))
    n_experts = 2 ** int(
        rng.integers(0 if family != "deepseek_v3" else 1, 1 + cfg.max_experts.bit_length() - 1)
    )
    top_k = 1 if family == "switch" else _edge_biased(rng, min(n_experts, cfg.max_top_k))
    options: dict[str, object] = {
        "d_model": _edge_biased(rng, cfg.max_d_model),
        "d_ff": _edge_biased(rng, cfg.max_d_ff),
        "n_experts": n_experts,
        "top_k": top_k,
    }
    if family == "qwen2_moe":  # its shared expert is gated: always there
        options["shared_d_ff"] = _edge_biased(rng, cfg.max_d_ff)
    if family == "deepseek_v3":
        options["shared_d_ff"] = int(rng.choice([0, _edge_biased(rng, cfg.max_d_ff)]))
    if family in ("qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"):
        options["renormalize"] = bool(rng.integers(2))
    if family == "deepseek_v3":
        groups = [g for g in (1, 2, 4, 8) if n_experts % g == 0 and g <= cfg.max_groups]
        n_group = int(rng.choice(groups))
        options["n_group"] = n_group
        options["topk_group"] = int(rng.integers(1, n_group + 1))
        options["routed_scaling_factor"] = float(rng.choice([1.0, 2.5]))
    if family == "switch" or rng.random() < 0.15:
        options["capacity"] = int(rng.integers(1, 2 * cfg.max_tokens))
    return family_spec(family, **options)


def random_layer(cfg: AccelConfig, seed: int, *, tokens: int | None = None) -> LayerCase:
    """One constrained-random layer for the top built from `cfg` (see the module docstring).

    `tokens` fixes T (else it is drawn). The case's name records the draw:
    seed, family, shape and stimulus.
    """
    rng = np.random.default_rng(seed)
    for _ in range(100):
        try:
            spec = _spec(rng, cfg)
            t = tokens if tokens is not None else _edge_biased(rng, cfg.max_tokens)
            cfg.check_fits(spec, t)
        except ConfigError:
            continue
        break
    else:
        raise ConfigError(f"no layer for {cfg} in 100 draws from seed {seed}")
    for _ in range(100):
        try:
            return _stimulus_case(rng, spec, t, cfg, seed)
        except NumericsError:  # the quantiser refuses this draw (e.g. a scale beyond 16 bits)
            continue
    raise NumericsError(f"no quantisable stimulus for {spec.name} in 100 draws from seed {seed}")


def _stimulus_case(
    rng: np.random.Generator, spec: MoESpec, t: int, cfg: AccelConfig, seed: int
) -> LayerCase:
    """One stimulus kind, weights and tokens for `spec`, drawn from `rng`, as a layer case."""
    stimulus = str(rng.choice(STIMULI))
    weights = MoEWeights.random(spec, seed=int(rng.integers(2**31)))
    x = rng.standard_normal((t, spec.d_model)).astype(np.float32)
    target = int(rng.integers(spec.n_experts))
    if stimulus == "tied" and spec.n_experts > 1:
        other = (target + 1) % spec.n_experts
        low, high = min(target, other), max(target, other)
        weights.router[:, high] = weights.router[:, low]
        if weights.correction_bias is not None:  # sigmoid: the selection adds the bias
            weights.correction_bias[high] = weights.correction_bias[low]
    elif stimulus in ("skewed", "all_to_one"):
        column = weights.router[:, target]
        push = 1.0 if stimulus == "skewed" else 8.0
        x += push * np.sqrt(spec.d_model) * column / max(float(np.linalg.norm(column)), 1e-6)
    elif stimulus == "extreme":
        for name in ("w1", "w2", "w3", "shared_w1", "shared_w2", "shared_w3"):
            array = getattr(weights, name)
            if array is not None:
                array *= 40.0
    name = (
        f"seed {seed}: {spec.name} T={t} d={spec.d_model} f={spec.d_ff} E={spec.n_experts} "
        f"k={spec.top_k} shared={spec.shared_d_ff} cap={spec.capacity} {stimulus}"
    )
    return case_from(name, spec, weights, x.astype(np.float32), cfg)
