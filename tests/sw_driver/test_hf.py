"""HF importer: config → spec fields, seeded re-initialisation, 5.x fused vs 4.x per-expert.

The transformers 4.x module trees are rebuilt here with the 4.57 class and
attribute names (only 5.x is installed) and the same weights as a 5.x block,
so both layouts must import to identical `MoEWeights`.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from transformers import (
    DeepseekV3Config,
    MixtralConfig,
    OlmoeConfig,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
    SwitchTransformersConfig,
)
from transformers.activations import ACT2FN
from transformers.models.deepseek_v3 import modeling_deepseek_v3
from transformers.models.mixtral import modeling_mixtral
from transformers.models.olmoe import modeling_olmoe
from transformers.models.qwen2_moe import modeling_qwen2_moe
from transformers.models.qwen3_moe import modeling_qwen3_moe
from transformers.models.switch_transformers import modeling_switch_transformers

from pymodel.config import ConfigError, MoESpec
from pymodel.families import FAMILIES, family_spec
from pymodel.weights import MoEWeights
from sw_driver.hf import (
    BLOCK_CLASSES,
    activation_name,
    block_family,
    build_hf_block,
    build_hf_block_from_spec,
    hf_config,
    import_hf_block,
    reinit_block,
)
from sw_driver.reference import run_hf_block, torch_moe_forward

SIZES = {"d_model": 48, "d_ff": 64, "n_experts": 8}

# Specs beyond the family defaults: every config knob the importer must read back.
VARIANTS: dict[str, MoESpec] = {
    "mixtral": family_spec("mixtral", **SIZES, top_k=3),
    "qwen2_moe": family_spec("qwen2_moe", **SIZES, renormalize=True, shared_d_ff=96),
    "qwen3_moe": family_spec("qwen3_moe", **SIZES, renormalize=False),
    "olmoe": family_spec("olmoe", **SIZES, renormalize=True, top_k=4),
    "deepseek_v3": family_spec(
        "deepseek_v3",
        **SIZES,
        top_k=3,
        n_group=2,
        topk_group=1,
        renormalize=False,
        routed_scaling_factor=1.5,
        shared_d_ff=128,
    ),
    "switch": family_spec("switch", **SIZES, capacity=5).replace(ffn="gelu"),
}


@pytest.fixture(scope="module")
def blocks() -> dict[str, nn.Module]:
    """One default-spec 5.x block per family, built once for the module."""
    return {family: build_hf_block(family, seed=11, **SIZES) for family in FAMILIES}


# --- spec fields are what the config says ------------------------------------------------------


def _expected_fields(family: str, cfg) -> dict:
    """The spec fields the transformers config of `family` describes (read independently)."""
    if family == "switch":
        return {
            "d_model": cfg.d_model,
            "d_ff": cfg.d_ff,
            "n_experts": cfg.num_experts,
            "top_k": 1,
            "scoring": "softmax",
            "renormalize": False,
            "capacity": cfg.expert_capacity,
            "ffn": cfg.dense_act_fn,
            "shared_d_ff": 0,
        }
    fields = {
        "d_model": cfg.hidden_size,
        "top_k": cfg.num_experts_per_tok,
        "ffn": "swiglu",
        "capacity": None,
    }
    if family == "mixtral":
        fields.update(d_ff=cfg.intermediate_size, n_experts=cfg.num_local_experts, renormalize=True)
    elif family == "olmoe":
        fields.update(
            d_ff=cfg.intermediate_size, n_experts=cfg.num_experts, renormalize=cfg.norm_topk_prob
        )
    elif family in ("qwen2_moe", "qwen3_moe"):
        fields.update(
            d_ff=cfg.moe_intermediate_size,
            n_experts=cfg.num_experts,
            renormalize=cfg.norm_topk_prob,
        )
        if family == "qwen2_moe":
            fields.update(shared_d_ff=cfg.shared_expert_intermediate_size, shared_gate=True)
    else:
        fields.update(
            d_ff=cfg.moe_intermediate_size,
            n_experts=cfg.n_routed_experts,
            renormalize=cfg.norm_topk_prob,
            scoring="sigmoid",
            correction_bias=True,
            n_group=cfg.n_group,
            topk_group=cfg.topk_group,
            routed_scaling_factor=cfg.routed_scaling_factor,
            shared_d_ff=cfg.moe_intermediate_size * cfg.n_shared_experts,
            shared_gate=False,
        )
    return fields


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", [False, True], ids=["default", "variant"])
def test_import_reads_config(family: str, variant: bool) -> None:
    spec = VARIANTS[family] if variant else family_spec(family, **SIZES)
    cfg = hf_config(spec)
    imported, weights = import_hf_block(build_hf_block_from_spec(spec, seed=3))
    for name, value in _expected_fields(family, cfg).items():
        assert getattr(imported, name) == value, name
    assert imported == spec
    assert imported.name == family
    weights.validate(imported)


def _hand_configs() -> dict[str, tuple[type[nn.Module], object]]:
    """Configs written directly with transformers' classes (not via `hf_config`), odd values."""
    common = {"hidden_size": 40, "num_experts_per_tok": 3, "experts_implementation": "eager"}
    return {
        "mixtral": (
            modeling_mixtral.MixtralSparseMoeBlock,
            MixtralConfig(**common, intermediate_size=24, num_local_experts=6),
        ),
        "qwen2_moe": (
            modeling_qwen2_moe.Qwen2MoeSparseMoeBlock,
            Qwen2MoeConfig(
                **common,
                intermediate_size=100,
                moe_intermediate_size=20,
                shared_expert_intermediate_size=36,
                num_experts=10,
                norm_topk_prob=True,
            ),
        ),
        "qwen3_moe": (
            modeling_qwen3_moe.Qwen3MoeSparseMoeBlock,
            Qwen3MoeConfig(
                **common, intermediate_size=100, moe_intermediate_size=28, num_experts=12
            ),
        ),
        "olmoe": (
            modeling_olmoe.OlmoeSparseMoeBlock,
            OlmoeConfig(**common, intermediate_size=30, num_experts=5),
        ),
        "deepseek_v3": (
            modeling_deepseek_v3.DeepseekV3MoE,
            DeepseekV3Config(
                **common,
                intermediate_size=100,
                moe_intermediate_size=16,
                n_routed_experts=12,
                n_group=3,
                topk_group=2,
                routed_scaling_factor=1.25,
                n_shared_experts=2,
                norm_topk_prob=False,
            ),
        ),
        "switch": (
            modeling_switch_transformers.SwitchTransformersSparseMLP,
            SwitchTransformersConfig(
                d_model=40, d_ff=56, num_experts=6, expert_capacity=9, dense_act_fn="gelu"
            ),
        ),
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_import_reads_hand_written_configs(family: str) -> None:
    block_type, cfg = _hand_configs()[family]
    block = block_type(cfg).eval()
    reinit_block(block, seed=1)
    spec, weights = import_hf_block(block)
    for name, value in _expected_fields(family, cfg).items():
        assert getattr(spec, name) == value, name
    weights.validate(spec)
    # The imported layer computes what the block computes (odd sizes, 3 groups of 4, …).
    x = np.random.default_rng(2).standard_normal((20, spec.d_model)).astype(np.float32)
    y = torch_moe_forward(spec, weights, x, device="cpu").y
    assert float(np.max(np.abs(y - run_hf_block(block, x)))) <= 1e-5


def test_block_classes_cover_families() -> None:
    assert sorted(set(BLOCK_CLASSES.values())) == sorted(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_import_copies_the_block_weights(blocks: dict[str, nn.Module], family: str) -> None:
    block = blocks[family]
    _, w = import_hf_block(block)
    router = block.router.classifier.weight if family == "switch" else block.gate.weight
    np.testing.assert_array_equal(w.router, router.detach().numpy().T)
    if family == "switch":
        np.testing.assert_array_equal(w.w1[5], block.experts.expert_5.wi.weight.detach().numpy().T)
        np.testing.assert_array_equal(w.w2[5], block.experts.expert_5.wo.weight.detach().numpy().T)
        assert w.w3 is None
        return
    f = w.w1.shape[2]
    gate_up = block.experts.gate_up_proj.detach().numpy()
    np.testing.assert_array_equal(w.w1[5], gate_up[5, :f].T)
    np.testing.assert_array_equal(w.w3[5], gate_up[5, f:].T)
    np.testing.assert_array_equal(w.w2[5], block.experts.down_proj.detach().numpy()[5].T)
    # The import is a copy: later edits of the block do not leak into it.
    assert not np.shares_memory(w.router, router.detach().numpy())


# --- seeded re-initialisation ------------------------------------------------------------------


def _state(block: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in block.state_dict().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_reinit_is_seeded_and_complete(blocks: dict[str, nn.Module], family: str) -> None:
    again = _state(build_hf_block(family, seed=11, **SIZES))
    first = _state(blocks[family])
    other = _state(build_hf_block(family, seed=12, **SIZES))
    assert first.keys() == again.keys() == other.keys()
    for name, value in first.items():
        np.testing.assert_array_equal(value, again[name], err_msg=name)
        assert not np.array_equal(value, other[name]), f"{name} ignores the seed"
        assert np.all(np.isfinite(value)) and np.count_nonzero(value) == value.size, name
    assert not blocks[family].training


def test_deepseek_correction_bias_is_seeded(blocks: dict[str, nn.Module]) -> None:
    bias = blocks["deepseek_v3"].gate.e_score_correction_bias.numpy()
    assert 0.03 < float(np.std(bias)) < 0.3


def test_build_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="unknown MoE family"):
        build_hf_block("gpt_oss")
    with pytest.raises(ConfigError, match="seed must be an int"):
        build_hf_block("mixtral", seed=1.5)
    with pytest.raises(ConfigError, match="renormalize"):
        build_hf_block_from_spec(family_spec("mixtral").replace(renormalize=False))
    with pytest.raises(ConfigError, match="capacity"):
        build_hf_block_from_spec(family_spec("qwen3_moe").replace(capacity=4))
    with pytest.raises(ConfigError, match="ffn"):
        build_hf_block_from_spec(family_spec("olmoe").replace(ffn="gelu"))
    with pytest.raises(ConfigError, match="shared_d_ff"):
        build_hf_block_from_spec(family_spec("deepseek_v3", d_ff=64, shared_d_ff=96))
    with pytest.raises(ConfigError, match="unknown MoE family"):
        hf_config(MoESpec(d_model=8, d_ff=8, n_experts=4, top_k=1))
    with pytest.raises(ConfigError, match="must be a MoESpec"):
        hf_config({"d_model": 8})


# --- transformers 4.57 per-expert module trees -------------------------------------------------
# Class and attribute names as in transformers 4.57; the importer finds the family by the block
# class name and the layout by the attributes, as it would for a real 4.x block.


class MixtralBlockSparseTop2MLP(nn.Module):
    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)
        self.act_fn = ACT2FN["silu"]


class _GateUpDownMLP(nn.Module):
    """Qwen2MoeMLP / Qwen3MoeMLP / OlmoeMLP / DeepseekV3MLP of 4.57."""

    def __init__(self, d: int, f: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.act_fn = ACT2FN["silu"]


class _SoftmaxBlock(nn.Module):
    """Common 4.57 attributes of the softmax-routed blocks: a Linear gate, an expert list."""

    def __init__(self, d: int, f: int, e: int, top_k: int, mlp: type[nn.Module]) -> None:
        super().__init__()
        self.num_experts = e
        self.top_k = top_k
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList([mlp(d, f) for _ in range(e)])


class MixtralSparseMoeBlock(_SoftmaxBlock):
    def __init__(self, spec: MoESpec) -> None:
        super().__init__(
            spec.d_model, spec.d_ff, spec.n_experts, spec.top_k, MixtralBlockSparseTop2MLP
        )
        self.hidden_dim, self.ffn_dim, self.jitter_noise = spec.d_model, spec.d_ff, 0.0


class Qwen3MoeSparseMoeBlock(_SoftmaxBlock):
    def __init__(self, spec: MoESpec) -> None:
        super().__init__(spec.d_model, spec.d_ff, spec.n_experts, spec.top_k, _GateUpDownMLP)
        self.norm_topk_prob = spec.renormalize


class OlmoeSparseMoeBlock(Qwen3MoeSparseMoeBlock):
    pass


class Qwen2MoeSparseMoeBlock(Qwen3MoeSparseMoeBlock):
    def __init__(self, spec: MoESpec) -> None:
        super().__init__(spec)
        self.shared_expert = _GateUpDownMLP(spec.d_model, spec.shared_d_ff)
        self.shared_expert_gate = nn.Linear(spec.d_model, 1, bias=False)


class DeepseekV3TopkRouter(nn.Module):
    def __init__(self, spec: MoESpec) -> None:
        super().__init__()
        self.top_k = spec.top_k
        self.n_routed_experts = spec.n_experts
        self.routed_scaling_factor = spec.routed_scaling_factor
        self.n_group = spec.n_group
        self.topk_group = spec.topk_group
        self.norm_topk_prob = spec.renormalize
        self.weight = nn.Parameter(torch.empty(spec.n_experts, spec.d_model))
        self.register_buffer("e_score_correction_bias", torch.zeros(spec.n_experts))


class DeepseekV3MoE(nn.Module):
    def __init__(self, spec: MoESpec) -> None:
        super().__init__()
        d, f = spec.d_model, spec.d_ff
        self.experts = nn.ModuleList([_GateUpDownMLP(d, f) for _ in range(spec.n_experts)])
        self.gate = DeepseekV3TopkRouter(spec)
        self.shared_experts = _GateUpDownMLP(d, spec.shared_d_ff)


_LEGACY = {
    "mixtral": MixtralSparseMoeBlock,
    "qwen2_moe": Qwen2MoeSparseMoeBlock,
    "qwen3_moe": Qwen3MoeSparseMoeBlock,
    "olmoe": OlmoeSparseMoeBlock,
    "deepseek_v3": DeepseekV3MoE,
}


def legacy_copy(block: nn.Module) -> nn.Module:
    """The transformers 4.57 module tree holding `block`'s (5.x) weights.

    Switch kept its per-expert `ModuleDict` of `wi`/`wo` from 4.x to 5.x, so
    its 4.x tree is a copy of the 5.x one.
    """
    spec, _ = import_hf_block(block)
    if spec.name == "switch":
        return copy.deepcopy(block)
    old = _LEGACY[spec.name](spec)
    f = spec.d_ff
    gate_up, down = block.experts.gate_up_proj.detach(), block.experts.down_proj.detach()
    names = ("w1", "w3", "w2") if spec.name == "mixtral" else ("gate_proj", "up_proj", "down_proj")
    with torch.no_grad():
        old.gate.weight.copy_(block.gate.weight)
        for e, mlp in enumerate(old.experts):
            getattr(mlp, names[0]).weight.copy_(gate_up[e, :f])
            getattr(mlp, names[1]).weight.copy_(gate_up[e, f:])
            getattr(mlp, names[2]).weight.copy_(down[e])
        if spec.name == "deepseek_v3":
            old.gate.e_score_correction_bias.copy_(block.gate.e_score_correction_bias)
            old.shared_experts.load_state_dict(block.shared_experts.state_dict())
        if spec.name == "qwen2_moe":
            old.shared_expert.load_state_dict(block.shared_expert.state_dict())
            old.shared_expert_gate.weight.copy_(block.shared_expert_gate.weight)
    return old.eval()


def _assert_same_weights(a: MoEWeights, b: MoEWeights) -> None:
    for name in MoEWeights.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype == np.float32, name
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", [False, True], ids=["default", "variant"])
def test_fused_and_per_expert_layouts_agree(family: str, variant: bool) -> None:
    spec = VARIANTS[family] if variant else family_spec(family, **SIZES)
    block = build_hf_block_from_spec(spec, seed=5)
    old = legacy_copy(block)
    assert block_family(old) == family
    new_spec, new_w = import_hf_block(block)
    old_spec, old_w = import_hf_block(old)
    assert old_spec == new_spec == spec
    _assert_same_weights(new_w, old_w)


def test_transposed_fused_layout(blocks: dict[str, nn.Module]) -> None:
    """Fused experts stored [E, d, 2f] / [E, f, d] (`is_transposed`) import identically."""
    block = copy.deepcopy(blocks["qwen3_moe"])
    _, expected = import_hf_block(block)
    experts = block.experts
    experts.gate_up_proj = nn.Parameter(experts.gate_up_proj.detach().transpose(1, 2).clone())
    experts.down_proj = nn.Parameter(experts.down_proj.detach().transpose(1, 2).clone())
    experts.is_transposed = True
    _, got = import_hf_block(block)
    _assert_same_weights(expected, got)


# --- unsupported blocks, layouts and configs ---------------------------------------------------


def test_rejects_non_modules_and_unknown_blocks() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        import_hf_block("mixtral")
    with pytest.raises(ConfigError, match="unsupported MoE block type Linear"):
        import_hf_block(nn.Linear(4, 4))


def test_rejects_other_activations(blocks: dict[str, nn.Module]) -> None:
    mixtral = copy.deepcopy(blocks["mixtral"])
    mixtral.experts.act_fn = ACT2FN["gelu"]
    with pytest.raises(ConfigError, match="only silu"):
        import_hf_block(mixtral)
    switch = copy.deepcopy(blocks["switch"])
    for expert in switch.experts.values():
        expert.act = ACT2FN["gelu_new"]
    with pytest.raises(ConfigError, match="unsupported expert activation NewGELUActivation"):
        import_hf_block(switch)
    assert activation_name(nn.GELU()) == "gelu"
    with pytest.raises(ConfigError, match="unsupported expert activation GELU"):
        activation_name(nn.GELU(approximate="tanh"))


def test_rejects_random_training_mode(blocks: dict[str, nn.Module]) -> None:
    mixtral = copy.deepcopy(blocks["mixtral"]).train()
    import_hf_block(mixtral)  # training mode without jitter computes the same function
    mixtral.jitter_noise = 0.01
    with pytest.raises(ConfigError, match=r"training mode with router jitter noise 0\.01"):
        import_hf_block(mixtral)
    import_hf_block(mixtral.eval())  # jitter only acts while training
    switch = copy.deepcopy(blocks["switch"]).train()
    for expert in switch.experts.values():
        expert.dropout.p = 0.1
    with pytest.raises(ConfigError, match="dropout"):
        import_hf_block(switch)


def test_rejects_unexpected_shapes_and_biases(blocks: dict[str, nn.Module]) -> None:
    bad = copy.deepcopy(blocks["olmoe"])
    bad.experts.down_proj = nn.Parameter(bad.experts.down_proj.detach()[:, :, :-1].clone())
    with pytest.raises(ConfigError, match=r"down_proj .* has shape"):
        import_hf_block(bad)
    bad = copy.deepcopy(blocks["olmoe"])
    bad.experts.gate_up_proj = nn.Parameter(bad.experts.gate_up_proj.detach()[:-1].clone())
    with pytest.raises(ConfigError, match=r"gate_up_proj .* has shape \[7, "):
        import_hf_block(bad)
    switch = copy.deepcopy(blocks["switch"])
    switch.router.classifier = nn.Linear(SIZES["d_model"], SIZES["n_experts"], bias=True)
    with pytest.raises(ConfigError, match="has a bias"):
        import_hf_block(switch)
    switch = copy.deepcopy(blocks["switch"])
    del switch.experts["expert_3"]
    with pytest.raises(ConfigError, match="expert_3"):
        import_hf_block(switch)
    switch = copy.deepcopy(blocks["switch"])
    switch.router.dtype = torch.bfloat16
    with pytest.raises(ConfigError, match="router dtype"):
        import_hf_block(switch)
    qwen = copy.deepcopy(blocks["qwen3_moe"])
    qwen.experts.is_concatenated = False
    with pytest.raises(ConfigError, match="is_concatenated"):
        import_hf_block(qwen)
    qwen = copy.deepcopy(blocks["qwen3_moe"])
    qwen.experts.has_bias = True
    with pytest.raises(ConfigError, match="fused experts with biases"):
        import_hf_block(qwen)
    legacy = legacy_copy(blocks["mixtral"])
    legacy.experts = legacy.experts[:-1]
    with pytest.raises(ConfigError, match="7 modules, router has 8"):
        import_hf_block(legacy)
    legacy = legacy_copy(blocks["deepseek_v3"])
    del legacy.gate.topk_group
    with pytest.raises(ConfigError, match="no topk_group"):
        import_hf_block(legacy)
