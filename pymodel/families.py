"""The six MoE model families the accelerator runs, as `MoESpec` presets.

Each preset encodes the routing of the family's HuggingFace block
(transformers 5.x, `transformers.models.<family>.modeling_<family>`), so the
float reference, the golden model and the HF importer agree on what a
"Mixtral layer" or a "DeepSeek-V3 layer" means:

| family      | scores  | selection                      | renorm  | extras                        |
|-------------|---------|--------------------------------|---------|-------------------------------|
| mixtral     | softmax | top-k                          | always  | —                             |
| qwen2_moe   | softmax | top-k                          | False*  | shared SwiGLU × sigmoid gate  |
| qwen3_moe   | softmax | top-k                          | True*   | —                             |
| olmoe       | softmax | top-k                          | False*  | —                             |
| deepseek_v3 | sigmoid | top-k of s+bias in best groups | True*   | × 2.5, ungated shared expert  |
| switch      | softmax | top-1, capacity                | —       | ReLU expert, drops → 0        |

(*) `norm_topk_prob` in HF; the value shown is the preset's default and can be
overridden with `renormalize=`. HF's `Qwen3MoeConfig` defaults to False, but
the released Qwen3-MoE checkpoints set True, which is what the preset models.
"""

from __future__ import annotations

from .config import ConfigError, MoESpec
from .weight_formats import WeightFormat

FAMILIES: tuple[str, ...] = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3", "switch")

_RENORM_DEFAULT = {
    "mixtral": True,
    "qwen2_moe": False,
    "qwen3_moe": True,
    "olmoe": False,
    "deepseek_v3": True,
    "switch": False,
}

SWITCH_DEFAULT_CAPACITY = 8
"""Tokens per expert for a Switch layer when none is given (HF counts it per sequence)."""

DEEPSEEK_ROUTED_SCALING = 2.5
"""`DeepseekV3Config.routed_scaling_factor` default."""

REL_L2_BOUND: dict[str, float] = {
    "mixtral": 0.27,
    "qwen2_moe": 0.15,
    "qwen3_moe": 0.27,
    "olmoe": 0.26,
    "deepseek_v3": 0.38,
    "switch": 0.52,
}
"""Documented bound on ‖y_golden − y_float‖ / ‖y_float‖ over all tokens, per family.

Measured maximum × 1.25 (docs/numerics.md §7). Most of it is tokens the int8
router sends elsewhere at float near-ties; see `REL_L2_BOUND_AGREEING`.
"""

REL_L2_BOUND_AGREEING = 0.06
"""The same bound over tokens whose expert set (and capacity fate) matches the float router's."""

INT4_REL_L2_BOUND: dict[str, float] = {
    "mixtral": 0.32,
    "qwen2_moe": 0.29,
    "qwen3_moe": 0.32,
    "olmoe": 0.29,
    "deepseek_v3": 0.38,
    "switch": 0.52,
}
"""Bound with int4 expert weights (any int4 format), all tokens, per family.

The larger of `REL_L2_BOUND` and the int4 formats' measured maximum × 1.25
(`bench/format_accuracy.py`, docs/numerics.md §7.1), against the float block
the weights approximate (the pruned one for 2:4).
"""

INT4_REL_L2_BOUND_AGREEING = 0.28
"""The int4 bound over agreeing tokens: the measured maximum (0.2226) × 1.25."""


def rel_l2_bounds(family: str, fmt: WeightFormat) -> tuple[float, float]:
    """(all tokens, agreeing tokens) bounds on the error of a layer in expert weight format `fmt`.

    Judged against the float block the format's integer weights approximate:
    the pruned block for 2:4 formats (pruning error is the model's choice, not
    arithmetic error), the block itself for dense ones. int8 formats keep the
    int8 bounds (2:4 measured within them); int4 formats have their own.
    """
    if family not in FAMILIES:
        raise ConfigError(f"unknown MoE family {family!r}; allowed: {list(FAMILIES)}")
    if fmt.bits == 8:
        return REL_L2_BOUND[family], REL_L2_BOUND_AGREEING
    return INT4_REL_L2_BOUND[family], INT4_REL_L2_BOUND_AGREEING


def _default_n_group(n_experts: int) -> int:
    """Up to 4 groups of >= 2 experts each (group scores sum a group's top 2)."""
    return next(g for g in (4, 2, 1) if n_experts % g == 0 and (g == 1 or n_experts // g >= 2))


def _default_topk_group(n_experts: int, n_group: int, top_k: int) -> int:
    """Half of the groups, but enough of them to hold `top_k` experts."""
    if n_group <= 1 or n_experts % n_group:
        return 1
    per_group = n_experts // n_group
    return min(n_group, max(n_group // 2, -(-top_k // per_group)))


def family_spec(
    name: str,
    *,
    d_model: int = 64,
    d_ff: int = 128,
    n_experts: int = 8,
    top_k: int | None = None,
    shared_d_ff: int | None = None,
    capacity: int | None = None,
    n_group: int | None = None,
    topk_group: int | None = None,
    renormalize: bool | None = None,
    routed_scaling_factor: float | None = None,
) -> MoESpec:
    """The `MoESpec` of one layer of family `name`, with the family's routing.

    `top_k` defaults to 2 (1 for Switch, which only routes top-1). Options a
    family does not have (a shared expert on Mixtral, groups outside
    DeepSeek-V3, renormalisation switched off on Mixtral, …) raise
    `ConfigError` instead of silently building a different model.
    """
    if name not in FAMILIES:
        raise ConfigError(f"unknown MoE family {name!r}; allowed: {list(FAMILIES)}")
    if top_k is None:
        top_k = 1 if name == "switch" else 2
    if name == "switch" and top_k != 1:
        raise ConfigError(f"family 'switch' routes top-1; top_k = {top_k} is not allowed")
    renorm_default = _RENORM_DEFAULT[name]
    if renormalize is None:
        renormalize = renorm_default
    elif name in ("mixtral", "switch") and renormalize != renorm_default:
        raise ConfigError(
            f"family {name!r} has a fixed renormalize = {renorm_default}; got {renormalize!r}"
        )
    if name != "deepseek_v3":
        if n_group is not None or topk_group is not None:
            raise ConfigError(
                f"family {name!r} has no group-limited routing (n_group/topk_group); "
                "only 'deepseek_v3' does"
            )
        if routed_scaling_factor is not None:
            raise ConfigError(f"family {name!r} has no routed_scaling_factor; only 'deepseek_v3'")
    if name not in ("qwen2_moe", "deepseek_v3") and shared_d_ff:
        raise ConfigError(f"family {name!r} has no shared expert; shared_d_ff must be 0 or None")

    common = dict(
        d_model=d_model,
        d_ff=d_ff,
        n_experts=n_experts,
        top_k=top_k,
        renormalize=renormalize,
        capacity=capacity,
        name=name,
    )
    if name == "qwen2_moe":
        return MoESpec(
            **common,
            scoring="softmax",
            ffn="swiglu",
            shared_d_ff=2 * d_ff if shared_d_ff is None else shared_d_ff,
            shared_gate=True,
        )
    if name == "deepseek_v3":
        if not isinstance(n_experts, int) or not isinstance(top_k, int) or n_experts < 1:
            raise ConfigError(
                f"family 'deepseek_v3' needs int n_experts >= 1 and top_k, "
                f"got {n_experts!r}, {top_k!r}"
            )
        if n_group is None:
            n_group = _default_n_group(n_experts)
        if topk_group is None and isinstance(n_group, int):
            topk_group = _default_topk_group(n_experts, n_group, top_k)
        return MoESpec(
            **common,
            scoring="sigmoid",
            ffn="swiglu",
            correction_bias=True,
            n_group=n_group,
            topk_group=topk_group,
            routed_scaling_factor=(
                DEEPSEEK_ROUTED_SCALING if routed_scaling_factor is None else routed_scaling_factor
            ),
            shared_d_ff=d_ff if shared_d_ff is None else shared_d_ff,
        )
    if name == "switch":
        return MoESpec(
            **{**common, "capacity": SWITCH_DEFAULT_CAPACITY if capacity is None else capacity},
            scoring="softmax",
            ffn="relu",
        )
    return MoESpec(**common, scoring="softmax", ffn="swiglu")
