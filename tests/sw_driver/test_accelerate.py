"""`accelerate` and `moe-accel generate`: tiny HF models with their MoE blocks on a backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pymodel.config import AccelConfig, ConfigError
from pymodel.families import FAMILIES
from sim.tb.layer_cases import SMALL_TOP
from sw_driver.accelerate import AcceleratedMoE, accelerate, generate_compare, tiny_model
from sw_driver.cli import main


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_sixteen_tokens(family: str) -> None:
    model = tiny_model(family, seed=1)
    result = generate_compare(model, [3, 4, 5, 6], 16, backend="golden")
    assert len(result.float_tokens) == len(result.accel_tokens) == 16
    assert 0.0 <= result.agreement <= 1.0
    assert len(result.layers) == 2
    for layer in result.layers:
        assert layer["calls"] == 16
        assert layer["rel_l2_vs_block_max"] < 0.6, layer  # the families' error bounds' scale
    # the model is restored: its MoE blocks are its own again
    assert not any(isinstance(m, AcceleratedMoE) for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_verilator_four_tokens_bit_exact(family: str) -> None:
    model = tiny_model(family, seed=2)
    result = generate_compare(model, [7, 8, 9, 10], 4, backend="verilator", config=SMALL_TOP)
    assert len(result.accel_tokens) == 4
    assert all(layer["bit_exact"] is True for layer in result.layers), result.layers
    assert all(layer["calls"] == 4 for layer in result.layers)


def test_golden_and_verilator_generate_the_same_tokens() -> None:
    """The backends agree bit for bit, so the accelerated generations are the same tokens."""
    model = tiny_model("qwen2_moe", seed=3)
    golden = generate_compare(model, [5, 6, 7], 3, backend="golden", config=SMALL_TOP)
    rtl = generate_compare(model, [5, 6, 7], 3, backend="verilator", config=SMALL_TOP)
    assert golden.accel_tokens == rtl.accel_tokens


def test_bad_input() -> None:
    with pytest.raises(ConfigError, match="no supported MoE block"):
        with accelerate(torch.nn.Sequential(torch.nn.Linear(4, 4))):
            pass
    too_small = AccelConfig(max_d_model=16, max_d_ff=64, max_experts=8, max_top_k=4)
    with pytest.raises(ConfigError, match=r"MoE block model\.layers\.0\.mlp: .*max_d_model"):
        with accelerate(tiny_model("mixtral"), config=too_small):
            pass
    with pytest.raises(ConfigError, match="unknown MoE family"):
        tiny_model("gpt")


def test_generate_command(tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen.json"
    rc = main(["generate", "-q", "--family", "switch", "--tokens", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "token agreement" in text
    data = json.loads(out.read_text())
    assert len(data["accel_tokens"]) == 3 and 0 <= data["agreement"] <= 1
    small = tmp_path / "small.json"
    small.write_text(SMALL_TOP.to_json())
    rc = main(["generate", "-q", "--config", str(small), "--tokens", "20"])
    assert rc == 2
    assert "exceeds AccelConfig.max_tokens = 16" in capsys.readouterr().err
