"""Layer config files for `moe-accel run --layer-config`: ours, or a HuggingFace `config.json`.

Ours is a JSON object with `family` and `pymodel.families.family_spec`'s
keywords (`d_model`, `d_ff`, `n_experts`, `top_k`, `shared_d_ff`,
`capacity`, `n_group`, `topk_group`, `renormalize`,
`routed_scaling_factor`); an unknown key is an error. A HuggingFace
`config.json` is recognised by its `model_type`; the MoE block's fields are
read by their HF names (`HF_FIELDS`) and every other field (vocabulary,
layers, attention) is ignored: the layer is one MoE block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pymodel.config import ConfigError, read_json_file
from pymodel.families import FAMILIES, family_spec

__all__ = ["HF_FIELDS", "LAYER_KEYS", "load_layer_config"]

LAYER_KEYS = (
    "d_model",
    "d_ff",
    "n_experts",
    "top_k",
    "shared_d_ff",
    "capacity",
    "n_group",
    "topk_group",
    "renormalize",
    "routed_scaling_factor",
)
"""The keywords of our layer files besides `family` (`family_spec`'s)."""

HF_FIELDS: dict[str, tuple[str, dict[str, str]]] = {
    "mixtral": (
        "mixtral",
        {
            "hidden_size": "d_model",
            "intermediate_size": "d_ff",
            "num_local_experts": "n_experts",
            "num_experts_per_tok": "top_k",
        },
    ),
    "qwen2_moe": (
        "qwen2_moe",
        {
            "hidden_size": "d_model",
            "moe_intermediate_size": "d_ff",
            "num_experts": "n_experts",
            "num_experts_per_tok": "top_k",
            "shared_expert_intermediate_size": "shared_d_ff",
            "norm_topk_prob": "renormalize",
        },
    ),
    "qwen3_moe": (
        "qwen3_moe",
        {
            "hidden_size": "d_model",
            "moe_intermediate_size": "d_ff",
            "num_experts": "n_experts",
            "num_experts_per_tok": "top_k",
            "norm_topk_prob": "renormalize",
        },
    ),
    "olmoe": (
        "olmoe",
        {
            "hidden_size": "d_model",
            "intermediate_size": "d_ff",
            "num_experts": "n_experts",
            "num_experts_per_tok": "top_k",
            "norm_topk_prob": "renormalize",
        },
    ),
    "deepseek_v3": (
        "deepseek_v3",
        {
            "hidden_size": "d_model",
            "moe_intermediate_size": "d_ff",
            "n_routed_experts": "n_experts",
            "num_experts_per_tok": "top_k",
            "n_group": "n_group",
            "topk_group": "topk_group",
            "norm_topk_prob": "renormalize",
            "routed_scaling_factor": "routed_scaling_factor",
        },
    ),
    "switch_transformers": (
        "switch",
        {"d_model": "d_model", "d_ff": "d_ff", "num_experts": "n_experts"},
    ),
}
"""HF `model_type` → (our family, HF field → our keyword)."""


def _from_hf(data: dict[str, Any], where: str) -> tuple[str, dict[str, Any]]:
    model_type = data["model_type"]
    if model_type not in HF_FIELDS:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not a supported MoE architecture; "
            f"supported: {sorted(HF_FIELDS)}"
        )
    family, fields = HF_FIELDS[model_type]
    options = {ours: data[hf] for hf, ours in fields.items() if hf in data}
    if family == "deepseek_v3" and data.get("n_shared_experts"):
        options["shared_d_ff"] = int(data["n_shared_experts"]) * int(options.get("d_ff", 0))
    if family == "switch" and data.get("expert_capacity") is not None:
        options["capacity"] = data["expert_capacity"]
    return family, options


def load_layer_config(path: Path) -> tuple[str, dict[str, Any]]:
    """(family, `family_spec` keywords) from a layer file; `ConfigError` naming what is wrong."""
    where = f"--layer-config {path}"
    data = read_json_file(path, where)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the JSON document must be an object")
    if "model_type" in data:
        family, options = _from_hf(data, where)
    else:
        family = data.get("family")
        if family not in FAMILIES:
            raise ConfigError(
                f"{where}: 'family' must be one of {list(FAMILIES)} (or give an HF config.json "
                f"with its model_type), got {family!r}"
            )
        unknown = sorted(set(data) - {"family", *LAYER_KEYS})
        if unknown:
            raise ConfigError(f"{where}: unknown keys {unknown}; allowed: family, {LAYER_KEYS}")
        options = {k: v for k, v in data.items() if k != "family"}
    try:
        family_spec(family, **options)
    except (ConfigError, TypeError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return family, options
