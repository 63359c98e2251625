"""`bench/fullsize.py`: the full-size decode steps (slow) and their cheap parts (default)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from pymodel.config import AccelConfig
from pymodel.families import family_spec
from pymodel.synthetic import synthetic_layer, synthetic_tokens
from sw_driver.compile import compile_layer

REPO = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("bench_fullsize", REPO / "bench" / "fullsize.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_layers_are_the_issue_shapes_and_fit_the_config() -> None:
    fs = load()
    cfg = AccelConfig.from_json(fs.CONFIG.read_text())
    mix, ds = fs.LAYERS["mixtral_8x7b"], fs.LAYERS["deepseek_v3"]
    assert (mix.d_model, mix.d_ff, mix.n_experts, mix.top_k) == (4096, 14336, 8, 2)
    assert (ds.d_model, ds.d_ff, ds.n_experts, ds.top_k, ds.shared_d_ff) == (
        7168,
        2048,
        256,
        8,
        2048,
    )
    assert (ds.n_group, ds.topk_group, ds.routed_scaling_factor) == (8, 4, 2.5)
    for spec in (mix, ds):
        cfg.check_fits(spec, cfg.max_tokens)
    assert cfg.addr_bits == 40  # every DeepSeek-V3 expert gets its real address
    image = compile_layer(synthetic_layer(ds, cfg, 1), synthetic_tokens(ds, cfg, 1, 1), cfg)
    assert len(image.resident) == 256 and image.mem_bytes > 11 * 10**9
    filled = fs.filled_bytes(image, ("expert7", "shared"))
    expert = 3 * 7168 * 2048
    assert 2 * expert < filled < 2 * expert + 2**22  # + router, tables, LUTs


def test_decode_read_bytes_counts_the_routed_experts_regions() -> None:
    fs = load()
    cfg = AccelConfig()
    spec = family_spec("deepseek_v3", d_model=64, d_ff=32, n_experts=8, shared_d_ff=32)
    ql = synthetic_layer(spec, cfg, seed=2)
    image = compile_layer(ql, synthetic_tokens(spec, cfg, 1, seed=2), cfg, resident_experts=[1, 5])
    counts = np.zeros(8, np.int64)
    counts[[1, 5]] = 1
    one = fs.decode_read_bytes(image, np.eye(8, dtype=np.int64)[1])
    two = fs.decode_read_bytes(image, counts)
    expert5 = sum(image.regions[f"expert5.{p}"].size for p in ("w1", "w2", "params"))
    row = image.meta["row_bytes"]
    assert two - one == expert5 + 32 + 256 + row  # + descriptor, LUT, its output row


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mixtral_8x7b", "deepseek_v3"])
def test_full_size_decode_step_is_bit_exact_and_honest(name: str) -> None:
    fs = load()
    result = fs.decode_step(name, AccelConfig.from_json(fs.CONFIG.read_text()), fs.DEFAULT_SEED)
    print(fs.report(result))
    assert all(result["checks"].values()), result["checks"]
    assert result["wall_s"] <= fs.WALL_BOUND_S
