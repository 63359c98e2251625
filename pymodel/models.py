"""Real MoE layers at their published sizes, and a stated routing distribution for them.

Shapes from each model's HuggingFace `config.json` (hidden size, MoE
intermediate size, routed / shared experts, experts per token, groups):

| model           | d_model | d_ff  | experts        | top-k | notes                        |
|-----------------|---------|-------|----------------|-------|------------------------------|
| Mixtral-8x7B    | 4096    | 14336 | 8              | 2     | softmax, renormalised        |
| DeepSeek-V3     | 7168    | 2048  | 256 + 1 shared | 8     | sigmoid, 8 groups, top-4     |
| Qwen3-30B-A3B   | 2048    | 768   | 128            | 8     | softmax, renormalised        |
| OLMoE-1B-7B     | 2048    | 1024  | 64             | 8     | softmax                      |
| Switch-base-128 | 768     | 3072  | 128            | 1     | ReLU FFN, capacity 64/expert |

These exceed the RTL limits of the default `AccelConfig` (`max_d_model`,
`max_d_ff`, `max_experts`), which size the generated buffers; the cycle and
energy models extrapolate the same hardware to them
(`AccelConfig.check_model_fits`).
"""

from __future__ import annotations

import numpy as np

from .config import MoESpec, _check_int
from .families import family_spec

__all__ = ["REAL_MODELS", "uniform_routing"]

SWITCH_CAPACITY = 64
"""`SwitchTransformersConfig.expert_capacity` default."""

REAL_MODELS: dict[str, MoESpec] = {
    "Mixtral-8x7B": family_spec("mixtral", d_model=4096, d_ff=14336, n_experts=8, top_k=2),
    "DeepSeek-V3": family_spec(
        "deepseek_v3",
        d_model=7168,
        d_ff=2048,
        n_experts=256,
        top_k=8,
        n_group=8,
        topk_group=4,
        shared_d_ff=2048,
    ),
    "Qwen3-30B-A3B": family_spec("qwen3_moe", d_model=2048, d_ff=768, n_experts=128, top_k=8),
    "OLMoE-1B-7B": family_spec("olmoe", d_model=2048, d_ff=1024, n_experts=64, top_k=8),
    "Switch-base-128": family_spec(
        "switch", d_model=768, d_ff=3072, n_experts=128, capacity=SWITCH_CAPACITY
    ),
}
"""One MoE layer of each model (the table above), as `MoESpec`s."""


def uniform_routing(spec: MoESpec, tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Kept pairs per expert when each token picks its k experts uniformly at random.

    The distribution a load-balanced router aims for: every token draws k
    distinct experts with equal probability; with groups (`n_group > 1`) it
    first draws `topk_group` distinct groups, then its k experts among theirs.
    A capacity keeps at most `capacity` pairs per expert. Returns `[E]` int64.
    """
    _check_int("uniform_routing", "tokens", tokens, 1)
    e, k = spec.n_experts, spec.top_k
    if spec.n_group > 1:
        per = e // spec.n_group
        groups = np.argsort(rng.random((tokens, spec.n_group)), axis=1)[:, : spec.topk_group]
        members = (groups[:, :, None] * per + np.arange(per)).reshape(tokens, -1)
        pick = np.argsort(rng.random(members.shape), axis=1)[:, :k]
        experts = np.take_along_axis(members, pick, axis=1)
    else:
        experts = np.argsort(rng.random((tokens, e)), axis=1)[:, :k]
    counts = np.bincount(experts.ravel(), minlength=e).astype(np.int64)
    if spec.capacity is not None:
        counts = np.minimum(counts, spec.capacity)
    return counts
