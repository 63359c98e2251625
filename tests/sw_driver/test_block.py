"""`run_block` (any HF MoE block in one call) and `run --layer-config` report the same numbers."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from pymodel.config import ConfigError
from pymodel.families import FAMILIES, family_spec
from sim.tb.layer_cases import SMALL_TOP
from sw_driver.block import run_block
from sw_driver.cli import main
from sw_driver.hf import build_hf_block, hf_config
from sw_driver.layer_config import load_layer_config

D = 32
NON_DEFAULT: dict[str, dict] = {
    "mixtral": {"n_experts": 6, "top_k": 3},
    "qwen2_moe": {"top_k": 3, "shared_d_ff": 40, "renormalize": True},
    "qwen3_moe": {"top_k": 4, "renormalize": False},
    "olmoe": {"top_k": 3, "renormalize": True},
    "deepseek_v3": {
        "top_k": 4,
        "n_group": 4,
        "topk_group": 2,
        "routed_scaling_factor": 1.5,
        "shared_d_ff": 64,
        "renormalize": False,
    },
    "switch": {"capacity": 2},
}
"""One setting (or more) off each family's defaults, inside the small top's limits."""

COMPARED = (
    "family",
    "tokens",
    "top_k",
    "n_experts",
    "rel_l2_vs_torch",
    "max_abs_vs_torch",
    "routing_agreement",
    "guaranteed_tokens",
    "dropped_pairs",
    "tokens_per_expert",
    "bit_exact_vs_golden",
    "cycles",
    "counters",
    "moe_spec",
)


@pytest.mark.parametrize("backend", ["golden", "verilator"])
@pytest.mark.parametrize("family", FAMILIES)
def test_cli_file_and_one_call_agree(family: str, backend: str, tmp_path: Path, capsys) -> None:
    options = {"d_model": D, "d_ff": 32, **NON_DEFAULT[family]}
    layer = tmp_path / "layer.json"
    layer.write_text(json.dumps({"family": family, **options}))
    small = tmp_path / "small.json"
    small.write_text(SMALL_TOP.to_json())
    out = tmp_path / "report.json"
    argv = ["run", "-q", "--layer-config", str(layer), "--config", str(small), "--tokens", "12"]
    argv += ["--seed", "3", "--backend", backend, "--json", str(out)]
    assert main(argv) == 0, capsys.readouterr().err
    cli = json.loads(out.read_text())

    block = build_hf_block(family, seed=3, **options)
    x = np.random.default_rng(4).standard_normal((12, D)).astype(np.float32)
    run = run_block(block, torch.from_numpy(x), backend=backend, config=SMALL_TOP, seed=3)
    one_call = asdict(run.report)
    for key in COMPARED:
        assert cli[key] == one_call[key], key
    spec = family_spec(family, **options)
    assert cli["moe_spec"] == spec.to_dict(), "the file's non-default settings reached the layer"
    assert isinstance(run.y, torch.Tensor) and run.y.shape == (12, D)
    if backend == "verilator":
        assert run.bit_exact is True


def test_batches_are_split_into_hardware_runs() -> None:
    """[B, T, d] in, [B, T, d] out: tokens go in runs of ≤ max_tokens; capacity per sequence."""
    block = build_hf_block("mixtral", seed=1, d_model=D, d_ff=32)
    x = torch.randn(3, 10, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    run = run_block(block, x, config=SMALL_TOP)
    assert run.y.shape == x.shape and run.y.dtype == torch.float64
    assert [r.tokens for r in run.reports] == [16, 14]  # 30 tokens, max_tokens = 16
    flat = run_block(block, x.reshape(30, D), config=SMALL_TOP)
    assert torch.equal(flat.y.reshape(3, 10, D), run.y)

    switch = build_hf_block("switch", seed=1, d_model=D, d_ff=32, capacity=2)
    per_seq = run_block(switch, x.float().numpy(), config=SMALL_TOP)
    assert [r.tokens for r in per_seq.reports] == [10, 10, 10]
    assert isinstance(per_seq.y, np.ndarray) and per_seq.y.shape == (3, 10, D)
    with pytest.raises(ValueError, match="3 runs"):
        _ = per_seq.report


def test_hf_config_json(tmp_path: Path) -> None:
    """A HuggingFace config.json (extra model fields ignored) gives the same layer."""
    spec = family_spec("deepseek_v3", d_model=D, d_ff=16, **NON_DEFAULT["deepseek_v3"])
    data = hf_config(spec, "deepseek_v3").to_dict() | {"vocab_size": 1000, "num_hidden_layers": 3}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    family, options = load_layer_config(path)
    assert family == "deepseek_v3"
    assert family_spec(family, **options) == spec


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"family": "mixtral", "width": 3}, "unknown keys \\['width'\\]"),
        ({"family": "gpt"}, "'family' must be one of"),
        ({"model_type": "llama", "hidden_size": 8}, "not a supported MoE architecture"),
        ({"family": "switch", "top_k": 2}, "routes top-1"),
        ([1, 2], "must be an object"),
    ],
)
def test_bad_layer_files(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "layer.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ConfigError, match=message):
        load_layer_config(path)


def test_bad_input_to_run_block() -> None:
    block = build_hf_block("olmoe", seed=0, d_model=D, d_ff=32)
    with pytest.raises(ConfigError, match=r"expected \[\.\.\., T, 32\]"):
        run_block(block, torch.zeros(4, 16), config=SMALL_TOP)
    with pytest.raises(ConfigError, match="dtype"):
        run_block(block, torch.zeros(4, D, dtype=torch.int32), config=SMALL_TOP)
    with pytest.raises(ConfigError, match="NaN"):
        run_block(block, torch.full((4, D), float("nan")), config=SMALL_TOP)
    with pytest.raises(ConfigError, match="unsupported MoE block"):
        run_block(torch.nn.Linear(D, D), torch.zeros(4, D), config=SMALL_TOP)
    with pytest.raises(ConfigError, match="unknown backend"):
        run_block(block, torch.zeros(4, D), backend="fpga", config=SMALL_TOP)


@pytest.mark.parametrize("family", ["deepseek_v3", "switch"])
def test_run_block_prunes_and_quantises_on_import(family: str) -> None:
    """The weight format's keywords: the report gives the format, the expert weight bytes and
    the error against the pruned float block beside the unpruned one."""
    block = build_hf_block(family, seed=5, d_model=D, d_ff=32)
    x = np.random.default_rng(6).standard_normal((12, D)).astype(np.float32)
    dense = run_block(block, x, config=SMALL_TOP).report
    sparse = run_block(block, x, config=SMALL_TOP, weights="int4", sparsity="2:4").report
    assert (dense.weight_format, sparse.weight_format) == ("int8 dense", "int4 2:4")
    assert dense.rel_l2_vs_torch_pruned is None
    assert sparse.rel_l2_vs_torch_pruned is not None
    assert sparse.rel_l2_vs_torch_pruned <= sparse.rel_l2_bound < sparse.rel_l2_vs_torch
    # int4 2:4 reads 6 stream rows for every 2R = 16 K positions where int8 dense reads 16.
    assert sparse.expert_weight_bytes * 16 == dense.expert_weight_bytes * 6


def test_formats_the_layer_hardware_lacks_are_refused_before_anything_runs() -> None:
    compressed = SMALL_TOP.replace(sparse_2_4=True, int4_weights=True)
    not_a_block = object()  # refused before the block is even looked at
    with pytest.raises(ConfigError, match=r"AccelConfig\.sparse_2_4 = True"):
        run_block(not_a_block, None, backend="verilator", config=SMALL_TOP, sparsity="2:4")
    with pytest.raises(ConfigError, match="one scale per output channel"):
        run_block(not_a_block, None, backend="verilator", config=compressed, weights="int4",
                  int4_group=32)  # fmt: skip
    with pytest.raises(ConfigError, match=r"AccelConfig\.int4_weights = True"):
        run_block(not_a_block, None, backend="verilator", config=SMALL_TOP, weights="int4")
    with pytest.raises(ConfigError, match="weights must be one of"):
        run_block(not_a_block, None, weights="int3")
