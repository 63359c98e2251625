"""HuggingFace transformers MoE blocks ↔ our `MoESpec` + `MoEWeights`.

The driver accepts a layer either from our own spec or from a transformers
sparse MoE block of one of the six families in `pymodel.families`. This module
does both directions:

- `build_hf_block` / `build_hf_block_from_spec` construct the family's block
  offline from a transformers config object (no hub access) and re-initialise
  every parameter and buffer from a seed: transformers allocates experts
  uninitialised, zero-initialises several routers and DeepSeek-V3's
  `e_score_correction_bias`, so an untouched block routes every token alike.
- `import_hf_block` reads a block's routing configuration and weights into our
  layout (`x @ W`, input dimension first). It understands the transformers 5.x
  fused experts (`experts.gate_up_proj` [E, 2f, d] gate rows first and
  `experts.down_proj` [E, d, f], or [E, d, 2f] / [E, f, d] where the experts
  say `is_transposed`; interleaved or biased experts are rejected) and the
  4.x per-expert module lists (Mixtral `w1/w2/w3`; Qwen2/Qwen3/OLMoE/DeepSeek
  `gate_proj/up_proj/down_proj`; Switch `expert_{i}.wi/wo`). The layout is
  recognised by the attributes present, never by a version string; the family
  by the block's class name, because a family's routing (Mixtral always
  renormalises, Qwen2-MoE gates its shared expert…) is not visible in its
  parameters.

Anything the accelerator cannot express exactly (another activation, biases,
a router in bf16, a block in training mode with jitter noise or dropout)
raises `ConfigError` naming the problem, rather than importing a layer that
silently computes something else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (
    DeepseekV3Config,
    MixtralConfig,
    OlmoeConfig,
    PretrainedConfig,
    Qwen2MoeConfig,
    Qwen3MoeConfig,
    SwitchTransformersConfig,
)
from transformers.activations import GELUActivation, SiLUActivation
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock
from transformers.models.switch_transformers.modeling_switch_transformers import (
    SwitchTransformersSparseMLP,
)

from pymodel.config import ConfigError, MoESpec
from pymodel.families import FAMILIES, family_spec
from pymodel.weights import MoEWeights

BLOCK_CLASSES: dict[str, str] = {
    "MixtralSparseMoeBlock": "mixtral",
    "Qwen2MoeSparseMoeBlock": "qwen2_moe",
    "Qwen3MoeSparseMoeBlock": "qwen3_moe",
    "OlmoeSparseMoeBlock": "olmoe",
    "DeepseekV3MoE": "deepseek_v3",
    "SwitchTransformersSparseMLP": "switch",
}
"""Block class name (transformers 4.x and 5.x alike) → family in `pymodel.families.FAMILIES`."""

_BLOCK_TYPES: dict[str, Callable[[Any], nn.Module]] = {
    "mixtral": MixtralSparseMoeBlock,
    "qwen2_moe": Qwen2MoeSparseMoeBlock,
    "qwen3_moe": Qwen3MoeSparseMoeBlock,
    "olmoe": OlmoeSparseMoeBlock,
    "deepseek_v3": DeepseekV3MoE,
    "switch": SwitchTransformersSparseMLP,
}

ROUTER_LOGIT_STD = 1.5
"""Std of the seeded router logits for unit-variance tokens: spread enough to avoid near-ties."""

CORRECTION_BIAS_STD = 0.1
"""Std of DeepSeek-V3's seeded `e_score_correction_bias` (sigmoid scores lie in (0, 1))."""


# --- building blocks offline -------------------------------------------------------------------


def _require(ok: bool, family: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"a {family!r} HF block cannot express this spec: {what}")


def hf_config(spec: MoESpec, family: str | None = None) -> PretrainedConfig:
    """The transformers config object of `family`'s MoE block that computes `spec`.

    `family` defaults to `spec.name`. Specs the family's block cannot compute
    (a Mixtral layer without renormalisation, a capacity outside Switch, …)
    raise `ConfigError` naming the field.
    """
    if not isinstance(spec, MoESpec):
        raise ConfigError(f"spec must be a MoESpec, got {type(spec).__name__}")
    family = spec.name if family is None else family
    if family not in FAMILIES:
        raise ConfigError(f"unknown MoE family {family!r}; allowed: {list(FAMILIES)}")
    sigmoid_family = family == "deepseek_v3"
    _require(
        spec.scoring == ("sigmoid" if sigmoid_family else "softmax"),
        family,
        f"scoring = {spec.scoring!r}",
    )
    _require(spec.correction_bias == sigmoid_family, family, "correction_bias")
    if not sigmoid_family:
        _require(spec.n_group == 1, family, f"n_group = {spec.n_group} (no group routing)")
        _require(spec.routed_scaling_factor == 1.0, family, "routed_scaling_factor != 1")
    _require(
        (spec.capacity is not None) == (family == "switch"),
        family,
        f"capacity = {spec.capacity} (only Switch has one, and it always does)",
    )
    if family == "switch":
        _require(spec.ffn in ("relu", "gelu"), family, f"ffn = {spec.ffn!r} (relu or gelu)")
    else:
        _require(spec.ffn == "swiglu", family, f"ffn = {spec.ffn!r} (SwiGLU experts)")
    _require(
        spec.shared_gate == (family == "qwen2_moe"),
        family,
        f"shared_gate = {spec.shared_gate}",
    )
    if family not in ("qwen2_moe", "deepseek_v3"):
        _require(spec.shared_d_ff == 0, family, f"shared_d_ff = {spec.shared_d_ff}")
    d, f, e, k = spec.d_model, spec.d_ff, spec.n_experts, spec.top_k
    if family == "mixtral":
        _require(spec.renormalize, family, "renormalize = False (Mixtral always renormalises)")
        return MixtralConfig(
            hidden_size=d,
            intermediate_size=f,
            num_local_experts=e,
            num_experts_per_tok=k,
            hidden_act="silu",
            router_jitter_noise=0.0,
            experts_implementation="eager",
        )
    if family == "qwen2_moe":
        _require(spec.shared_d_ff > 0, family, "shared_d_ff = 0 (Qwen2-MoE has a shared expert)")
        return Qwen2MoeConfig(
            hidden_size=d,
            intermediate_size=f,
            moe_intermediate_size=f,
            shared_expert_intermediate_size=spec.shared_d_ff,
            num_experts=e,
            num_experts_per_tok=k,
            norm_topk_prob=spec.renormalize,
            hidden_act="silu",
            experts_implementation="eager",
        )
    if family == "qwen3_moe":
        return Qwen3MoeConfig(
            hidden_size=d,
            intermediate_size=f,
            moe_intermediate_size=f,
            num_experts=e,
            num_experts_per_tok=k,
            norm_topk_prob=spec.renormalize,
            hidden_act="silu",
            experts_implementation="eager",
        )
    if family == "olmoe":
        return OlmoeConfig(
            hidden_size=d,
            intermediate_size=f,
            num_experts=e,
            num_experts_per_tok=k,
            norm_topk_prob=spec.renormalize,
            hidden_act="silu",
            experts_implementation="eager",
        )
    if family == "deepseek_v3":
        _require(
            spec.shared_d_ff > 0 and spec.shared_d_ff % f == 0,
            family,
            f"shared_d_ff = {spec.shared_d_ff} must be n_shared_experts × d_ff = k × {f}, k >= 1",
        )
        return DeepseekV3Config(
            hidden_size=d,
            intermediate_size=f,
            moe_intermediate_size=f,
            n_routed_experts=e,
            num_experts_per_tok=k,
            n_group=spec.n_group,
            topk_group=spec.topk_group,
            norm_topk_prob=spec.renormalize,
            routed_scaling_factor=spec.routed_scaling_factor,
            n_shared_experts=spec.shared_d_ff // f,
            hidden_act="silu",
            experts_implementation="eager",
        )
    _require(k == 1, family, f"top_k = {k} (Switch routes top-1)")
    _require(not spec.renormalize, family, "renormalize = True (Switch does not renormalise)")
    return SwitchTransformersConfig(
        d_model=d,
        d_ff=f,
        num_experts=e,
        expert_capacity=spec.capacity,
        router_bias=False,
        router_jitter_noise=0.0,
        router_dtype="float32",
        dense_act_fn=spec.ffn,
        dropout_rate=0.0,
    )


def reinit_block(block: nn.Module, seed: int) -> None:
    """Overwrite every float parameter and buffer of `block` from `seed`, in place.

    Tensors are visited in name order with one `torch.Generator`, so the values
    depend only on the seed and the block's structure. Projections get
    N(0, 1/fan_in) (outputs of unit scale for unit-scale inputs); routers get
    `ROUTER_LOGIT_STD / sqrt(d)` so logits spread and near-ties are rare; the
    correction bias gets `CORRECTION_BIAS_STD`.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an int, got {type(seed).__name__}")
    gen = torch.Generator().manual_seed(seed)
    tensors = dict(block.named_parameters())
    tensors.update(dict(block.named_buffers()))
    with torch.no_grad():
        for name in sorted(tensors):
            t = tensors[name]
            if not t.is_floating_point():
                continue
            if name.endswith("e_score_correction_bias"):
                std = CORRECTION_BIAS_STD
            elif _is_router_weight(name):
                std = ROUTER_LOGIT_STD / float(np.sqrt(t.shape[-1]))
            else:
                std = 1.0 / float(np.sqrt(t.shape[-1])) if t.ndim >= 2 else 0.1
            values = torch.randn(t.shape, generator=gen, dtype=torch.float32) * std
            t.copy_(values.to(t.dtype))


def _is_router_weight(name: str) -> bool:
    return name in ("gate.weight", "router.classifier.weight", "shared_expert_gate.weight")


def build_hf_block_from_spec(spec: MoESpec, seed: int = 0, family: str | None = None) -> nn.Module:
    """The family's HF MoE block for `spec` (eval mode, fp32, CPU), seeded weights."""
    config = hf_config(spec, family)
    block = _BLOCK_TYPES[spec.name if family is None else family](config)
    reinit_block(block, seed)
    return block.float().eval()


def build_hf_block(family: str, *, seed: int = 0, **options: Any) -> nn.Module:
    """Build `family`'s HF block from `pymodel.families.family_spec(family, **options)`.

    `options` are `family_spec`'s keywords (d_model, d_ff, n_experts, top_k,
    shared_d_ff, capacity, n_group, topk_group, renormalize,
    routed_scaling_factor).
    """
    return build_hf_block_from_spec(family_spec(family, **options), seed)


# --- importing blocks --------------------------------------------------------------------------


def block_family(block: Any) -> str:
    """The family of an HF MoE block, from its class (or a base class) name."""
    if not isinstance(block, nn.Module):
        raise TypeError(f"expected a torch.nn.Module MoE block, got {type(block).__name__}")
    for cls in type(block).__mro__:
        if cls.__name__ in BLOCK_CLASSES:
            return BLOCK_CLASSES[cls.__name__]
    raise ConfigError(
        f"unsupported MoE block type {type(block).__name__}; supported: {sorted(BLOCK_CLASSES)}"
    )


def _attr(owners: Iterable[Any], names: tuple[str, ...], what: str) -> Any:
    """The first attribute of `names` found on any of `owners` (4.x and 5.x spell them apart)."""
    for owner in owners:
        for name in names:
            value = getattr(owner, name, None)
            if value is not None:
                return value
    raise ConfigError(f"HF block has no {what} (looked for attributes {list(names)})")


def _tensor(value: Any, what: str) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise ConfigError(f"{what} is not a tensor (got {type(value).__name__})")
    if not value.is_floating_point():
        raise ConfigError(f"{what} has dtype {value.dtype}; expected a float tensor")
    return value.detach().to("cpu", torch.float32).numpy().copy()


def _linear(module: Any, what: str, shape: tuple[int | None, int | None]) -> np.ndarray:
    """A bias-free `nn.Linear`'s weight, transposed to our [in, out] layout."""
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"{what} should be an nn.Linear, got {type(module).__name__}")
    if module.bias is not None:
        raise ConfigError(f"{what} has a bias; the accelerator's projections have none")
    w = _tensor(module.weight, f"{what}.weight").T
    _check_shape(w, shape, what + " (as [in, out])")
    return w


def _check_shape(a: np.ndarray, shape: tuple[int | None, ...], what: str) -> None:
    if a.ndim != len(shape) or any(
        s is not None and s != n for s, n in zip(shape, a.shape, strict=True)
    ):
        want = "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"
        raise ConfigError(f"{what} has shape {list(a.shape)}, expected {want}")


def activation_name(act: Any) -> str:
    """'silu', 'gelu' (exact erf) or 'relu' for a transformers/torch activation module.

    Anything else (tanh-approximated GELU, …) raises `ConfigError`: the
    accelerator's LUTs are built for these three functions.
    """
    if isinstance(act, SiLUActivation | nn.SiLU) or act is torch.nn.functional.silu:
        return "silu"
    if isinstance(act, nn.ReLU) or act is torch.nn.functional.relu:
        return "relu"
    if type(act) is GELUActivation or act is torch.nn.functional.gelu:
        return "gelu"
    if isinstance(act, nn.GELU) and act.approximate == "none":
        return "gelu"
    raise ConfigError(
        f"unsupported expert activation {type(act).__name__}; the accelerator implements "
        "silu (SwiGLU), exact gelu and relu"
    )


def _gated_ffn(act: Any, owner: str) -> str:
    name = activation_name(act)
    if name != "silu":
        raise ConfigError(
            f"{owner}: gated (gate/up) experts with activation {name!r}; only silu "
            "(SwiGLU) is supported for gated experts"
        )
    return "swiglu"


def _fused_experts(experts: nn.Module, e: int, d: int, owner: str) -> dict[str, Any]:
    """transformers 5.x: 3-D `gate_up_proj` / `down_proj` parameters of all experts."""
    if (
        getattr(experts, "has_bias", False)
        or getattr(experts, "gate_up_proj_bias", None) is not None
    ):
        raise ConfigError(f"{owner}: fused experts with biases are not supported")
    if not getattr(experts, "is_concatenated", True):
        raise ConfigError(
            f"{owner}: interleaved gate/up rows (is_concatenated=False) are not supported"
        )
    gate_up = _tensor(experts.gate_up_proj, f"{owner}.experts.gate_up_proj")
    down = _tensor(experts.down_proj, f"{owner}.experts.down_proj")
    if getattr(experts, "is_transposed", False):
        _check_shape(gate_up, (e, d, None), f"{owner}.experts.gate_up_proj [E, d, 2f]")
        gate_up = gate_up.transpose(0, 2, 1)
        down = down.transpose(0, 2, 1)
    _check_shape(gate_up, (e, None, d), f"{owner}.experts.gate_up_proj [E, 2f, d]")
    two_f = gate_up.shape[1]
    if two_f % 2:
        raise ConfigError(f"{owner}.experts.gate_up_proj has an odd row count {two_f}")
    f = two_f // 2
    _check_shape(down, (e, d, f), f"{owner}.experts.down_proj [E, d, f]")
    return {
        "w1": np.ascontiguousarray(gate_up[:, :f, :].transpose(0, 2, 1)),
        "w3": np.ascontiguousarray(gate_up[:, f:, :].transpose(0, 2, 1)),
        "w2": np.ascontiguousarray(down.transpose(0, 2, 1)),
        "ffn": _gated_ffn(_attr([experts], ("act_fn",), "experts activation"), owner),
    }


_PER_EXPERT_NAMES: tuple[tuple[str, str | None, str], ...] = (
    # (projection through the activation, linear up projection or None, down projection)
    ("w1", "w3", "w2"),  # Mixtral 4.x
    ("gate_proj", "up_proj", "down_proj"),  # Qwen2/Qwen3/OLMoE/DeepSeek 4.x
    ("wi", None, "wo"),  # Switch
)


def _per_expert_modules(experts: nn.Module, e: int, owner: str) -> list[nn.Module]:
    if isinstance(experts, nn.ModuleDict):
        names = [f"expert_{i}" for i in range(e)]
        if sorted(experts.keys()) != sorted(names):
            raise ConfigError(
                f"{owner}.experts has keys {sorted(experts.keys())}, expected {names}"
            )
        return [experts[n] for n in names]
    if isinstance(experts, nn.ModuleList):
        if len(experts) != e:
            raise ConfigError(f"{owner}.experts has {len(experts)} modules, router has {e}")
        if any(m is None for m in experts):
            raise ConfigError(f"{owner}.experts holds None (expert-parallel shard?)")
        return list(experts)
    raise ConfigError(
        f"{owner}.experts ({type(experts).__name__}) is neither fused (gate_up_proj/down_proj) "
        "nor a ModuleList/ModuleDict of per-expert modules"
    )


def _mlp(module: nn.Module, d: int, owner: str) -> dict[str, Any]:
    """One per-expert module (any of `_PER_EXPERT_NAMES`) in our layout."""
    for act_name, lin_name, down_name in _PER_EXPERT_NAMES:
        if hasattr(module, act_name) and hasattr(module, down_name):
            w1 = _linear(getattr(module, act_name), f"{owner}.{act_name}", (d, None))
            f = w1.shape[1]
            w2 = _linear(getattr(module, down_name), f"{owner}.{down_name}", (f, d))
            act = _attr([module], ("act_fn", "act"), f"{owner} activation")
            if lin_name is None:
                ffn = activation_name(act)
                if ffn == "silu":
                    raise ConfigError(f"{owner}: ungated silu experts are not supported")
                return {"w1": w1, "w3": None, "w2": w2, "ffn": ffn}
            w3 = _linear(getattr(module, lin_name), f"{owner}.{lin_name}", (d, f))
            return {"w1": w1, "w3": w3, "w2": w2, "ffn": _gated_ffn(act, owner)}
    raise ConfigError(
        f"{owner} ({type(module).__name__}) has none of the expert projections "
        f"{list(_PER_EXPERT_NAMES)}"
    )


def _experts(experts: nn.Module, e: int, d: int, owner: str) -> dict[str, Any]:
    """All routed experts, fused (5.x) or per-expert (4.x), detected by their attributes."""
    if hasattr(experts, "gate_up_proj") and hasattr(experts, "down_proj"):
        return _fused_experts(experts, e, d, owner)
    if hasattr(experts, "up_proj") and hasattr(experts, "down_proj"):
        raise ConfigError(f"{owner}: fused experts without a gate projection are not supported")
    mods = _per_expert_modules(experts, e, owner)
    parts = [_mlp(m, d, f"{owner}.experts[{i}]") for i, m in enumerate(mods)]
    f = parts[0]["w1"].shape[1]
    for i, p in enumerate(parts):
        if p["w1"].shape[1] != f or p["ffn"] != parts[0]["ffn"]:
            raise ConfigError(f"{owner}.experts[{i}] differs in width or activation from expert 0")
    return {
        "w1": np.stack([p["w1"] for p in parts]),
        "w3": None if parts[0]["w3"] is None else np.stack([p["w3"] for p in parts]),
        "w2": np.stack([p["w2"] for p in parts]),
        "ffn": parts[0]["ffn"],
    }


def _check_eval_semantics(block: nn.Module, owner: str) -> None:
    """Training-mode randomness (router jitter, dropout) is not a function of the weights."""
    random: list[str] = []
    for module in (block, getattr(block, "router", None)):
        jitter = getattr(module, "jitter_noise", 0.0) or 0.0
        if isinstance(module, nn.Module) and module.training and jitter > 0:
            random.append(f"router jitter noise {jitter}")
    for name, module in block.named_modules():
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            random.append(f"dropout p={module.p} in {name}")
    if random:
        raise ConfigError(
            f"{owner} is in training mode with {', '.join(random)}: its output is random; "
            "call block.eval() before importing or running it"
        )


def check_hf_block(block: nn.Module) -> tuple[str, int]:
    """(family, d_model) of a block that can be run as a reference, without copying weights.

    Raises like `import_hf_block` for a non-module, an unsupported type or a
    block in training mode with random jitter/dropout.
    """
    family = block_family(block)
    _check_eval_semantics(block, type(block).__name__)
    if family == "switch":
        router = _attr([_attr([block], ("router",), "router")], ("classifier",), "classifier")
    else:
        router = _attr([block], ("gate",), "router (gate)")
    weight = _attr([router], ("weight",), "router weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ConfigError(f"{type(block).__name__} router weight is not a 2-D tensor")
    return family, int(weight.shape[1])


def import_hf_block(block: nn.Module) -> tuple[MoESpec, MoEWeights]:
    """Our spec and float weights for an HF sparse MoE block (transformers 4.x or 5.x layout).

    The spec's `name` is the family. Raises `TypeError` for a non-module and
    `ConfigError` for an unsupported block type, activation, bias, shape or
    router precision.
    """
    family = block_family(block)
    owner = type(block).__name__
    _check_eval_semantics(block, owner)
    if family == "switch":
        router = _attr([block], ("router",), "router")
        classifier = _attr([router], ("classifier",), "router classifier")
        router_w = _linear(classifier, f"{owner}.router.classifier", (None, None))
        router_dtype = getattr(router, "dtype", torch.float32)
        if router_dtype != torch.float32:
            raise ConfigError(f"{owner}: router dtype {router_dtype}; only float32 is supported")
        gate_owners: list[Any] = [router, block]
    else:
        gate = _attr([block], ("gate",), "router (gate)")
        router_w = _tensor(_attr([gate], ("weight",), "router weight"), f"{owner}.gate.weight").T
        if isinstance(gate, nn.Linear) and gate.bias is not None:
            raise ConfigError(f"{owner}.gate has a bias; the router GEMM has none")
        gate_owners = [gate, block]
    if router_w.ndim != 2:
        raise ConfigError(f"{owner} router weight has shape {list(router_w.shape)}, expected 2-D")
    d, e = router_w.shape
    for name in ("num_experts", "n_routed_experts", "num_local_experts"):
        n = getattr(gate_owners[0], name, None)
        if isinstance(n, int) and n != e:
            raise ConfigError(f"{owner}: {name} = {n} but the router has {e} rows")
    top_k = (
        1 if family == "switch" else _attr(gate_owners, ("top_k", "num_experts_per_tok"), "top_k")
    )
    exp = _experts(_attr([block], ("experts",), "experts"), e, d, owner)
    fields: dict[str, Any] = {
        "d_model": d,
        "d_ff": exp["w1"].shape[2],
        "n_experts": e,
        "top_k": int(top_k),
        "ffn": exp["ffn"] if family == "switch" else "swiglu",
        "name": family,
    }
    if family == "switch" and exp["ffn"] == "swiglu":
        raise ConfigError(f"{owner}: Switch experts must be ungated")
    extra: dict[str, Any] = {}
    if family == "mixtral":
        fields["renormalize"] = True
    elif family in ("qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3"):
        fields["renormalize"] = bool(_attr(gate_owners, ("norm_topk_prob",), "norm_topk_prob"))
    if family == "switch":
        fields["capacity"] = int(_attr([router], ("expert_capacity",), "expert_capacity"))
    if family == "deepseek_v3":
        fields["scoring"] = "sigmoid"
        fields["correction_bias"] = True
        fields["n_group"] = int(_attr(gate_owners, ("num_group", "n_group"), "n_group"))
        fields["topk_group"] = int(_attr(gate_owners, ("topk_group",), "topk_group"))
        fields["routed_scaling_factor"] = float(
            _attr(gate_owners, ("routed_scaling_factor",), "routed_scaling_factor")
        )
        bias = _tensor(
            _attr(gate_owners, ("e_score_correction_bias",), "e_score_correction_bias"),
            f"{owner}.gate.e_score_correction_bias",
        )
        _check_shape(bias, (e,), f"{owner}.gate.e_score_correction_bias")
        extra["correction_bias"] = bias
        shared = _attr([block], ("shared_experts",), "shared experts")
        extra.update(_shared(shared, d, f"{owner}.shared_experts"))
    if family == "qwen2_moe":
        shared = _attr([block], ("shared_expert",), "shared expert")
        extra.update(_shared(shared, d, f"{owner}.shared_expert"))
        gate_w = _linear(
            _attr([block], ("shared_expert_gate",), "shared_expert_gate"),
            f"{owner}.shared_expert_gate",
            (d, 1),
        )
        extra["shared_gate"] = np.ascontiguousarray(gate_w[:, 0])
        fields["shared_gate"] = True
    if "shared_w1" in extra:
        fields["shared_d_ff"] = extra["shared_w1"].shape[1]
    spec = MoESpec(**fields)
    weights = MoEWeights(
        router=np.ascontiguousarray(router_w),
        w1=exp["w1"],
        w2=exp["w2"],
        w3=exp["w3"],
        **extra,
    )
    weights.validate(spec)
    return spec, weights


def _shared(module: nn.Module, d: int, owner: str) -> dict[str, np.ndarray]:
    part = _mlp(module, d, owner)
    if part["ffn"] != "swiglu":
        raise ConfigError(f"{owner}: the shared expert must be SwiGLU, got {part['ffn']!r}")
    return {"shared_w1": part["w1"], "shared_w3": part["w3"], "shared_w2": part["w2"]}
