"""Family presets: each family's routing facts (docs/numerics.md §4.2), options it refuses."""

from __future__ import annotations

import pytest

from pymodel.config import ConfigError
from pymodel.families import (
    FAMILIES,
    INT4_REL_L2_BOUND,
    INT4_REL_L2_BOUND_AGREEING,
    REL_L2_BOUND,
    REL_L2_BOUND_AGREEING,
    SWITCH_DEFAULT_CAPACITY,
    family_spec,
    rel_l2_bounds,
)
from pymodel.weight_formats import WeightFormat

FACTS = {
    # family: (scoring, top_k, renormalize, ffn, shared_d_ff, shared_gate, bias, groups, rsf, cap)
    "mixtral": ("softmax", 2, True, "swiglu", 0, False, False, (1, 1), 1.0, None),
    "qwen2_moe": ("softmax", 2, False, "swiglu", 256, True, False, (1, 1), 1.0, None),
    "qwen3_moe": ("softmax", 2, True, "swiglu", 0, False, False, (1, 1), 1.0, None),
    "olmoe": ("softmax", 2, False, "swiglu", 0, False, False, (1, 1), 1.0, None),
    "deepseek_v3": ("sigmoid", 2, True, "swiglu", 128, False, True, (4, 2), 2.5, None),
    "switch": ("softmax", 1, False, "relu", 0, False, False, (1, 1), 1.0, SWITCH_DEFAULT_CAPACITY),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_routing_facts(family: str) -> None:
    s = family_spec(family)
    got = (
        s.scoring, s.top_k, s.renormalize, s.ffn, s.shared_d_ff, s.shared_gate,
        s.correction_bias, (s.n_group, s.topk_group), s.routed_scaling_factor, s.capacity,
    )  # fmt: skip
    assert got == FACTS[family]
    assert s.name == family and (s.d_model, s.d_ff, s.n_experts) == (64, 128, 8)


def test_unknown_family_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown MoE family 'gpt'.*mixtral.*switch"):
        family_spec("gpt")


@pytest.mark.parametrize(
    ("family", "kwargs", "match"),
    [
        ("switch", {"top_k": 2}, "top-1"),
        ("mixtral", {"renormalize": False}, "renormalize"),
        ("mixtral", {"n_group": 2}, "group"),
        ("olmoe", {"topk_group": 1}, "group"),
        ("olmoe", {"routed_scaling_factor": 2.0}, "routed_scaling_factor"),
        ("mixtral", {"shared_d_ff": 64}, "shared expert"),
        ("qwen2_moe", {"shared_d_ff": 0}, "shared"),
        ("deepseek_v3", {"n_group": 3}, "n_group"),
        ("deepseek_v3", {"top_k": 5, "topk_group": 2}, "top_k"),
        ("mixtral", {"top_k": 9}, "top_k"),
        ("switch", {"capacity": 0}, "capacity"),
    ],
)
def test_family_refuses_foreign_options(family: str, kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        family_spec(family, **kwargs)


@pytest.mark.parametrize(
    ("n_experts", "top_k", "groups"),
    [(8, 2, (4, 2)), (16, 4, (4, 2)), (6, 2, (2, 1)), (3, 2, (1, 1)), (4, 3, (2, 2))],
)
def test_deepseek_default_groups_are_valid(n_experts: int, top_k: int, groups: tuple) -> None:
    s = family_spec("deepseek_v3", n_experts=n_experts, top_k=top_k)
    assert (s.n_group, s.topk_group) == groups


def test_overrides() -> None:
    assert not family_spec("qwen3_moe", renormalize=False).renormalize
    s = family_spec("deepseek_v3", n_group=2, routed_scaling_factor=1.0, shared_d_ff=0)
    assert (s.n_group, s.topk_group, s.routed_scaling_factor, s.has_shared) == (2, 1, 1.0, False)
    assert family_spec("switch", capacity=3).capacity == 3
    assert family_spec("mixtral", capacity=5).capacity == 5


def test_presets_agree_with_hf_config_defaults() -> None:
    cfgs = pytest.importorskip("transformers")
    assert cfgs.Qwen2MoeConfig().norm_topk_prob is False
    assert cfgs.OlmoeConfig().norm_topk_prob is False
    ds = cfgs.DeepseekV3Config()
    assert (ds.norm_topk_prob, ds.routed_scaling_factor) == (True, 2.5)
    assert cfgs.SwitchTransformersConfig().dense_act_fn == "relu"
    assert cfgs.MixtralConfig().hidden_act == "silu"
    # HF's Qwen3MoeConfig defaults to False; the preset follows the released checkpoints.
    assert cfgs.Qwen3MoeConfig().norm_topk_prob is False


def test_rel_l2_bounds_by_weight_format() -> None:
    for family in FAMILIES:
        for fmt in (WeightFormat.DENSE_INT8, WeightFormat(8, True)):
            assert rel_l2_bounds(family, fmt) == (REL_L2_BOUND[family], REL_L2_BOUND_AGREEING)
        for fmt in (WeightFormat(4), WeightFormat(4, True, 64)):
            bound, agreeing = rel_l2_bounds(family, fmt)
            assert bound == INT4_REL_L2_BOUND[family] >= REL_L2_BOUND[family]
            assert agreeing == INT4_REL_L2_BOUND_AGREEING
    with pytest.raises(ConfigError, match="unknown MoE family"):
        rel_l2_bounds("gpt", WeightFormat.DENSE_INT8)
