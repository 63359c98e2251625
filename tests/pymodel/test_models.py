"""Real MoE layer shapes (`pymodel.models`) and their routing distribution."""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.cycles import layer_cycles
from pymodel.models import REAL_MODELS, uniform_routing


def test_published_shapes() -> None:
    ds = REAL_MODELS["DeepSeek-V3"]
    assert (ds.d_model, ds.d_ff, ds.n_experts, ds.top_k) == (7168, 2048, 256, 8)
    assert (ds.n_group, ds.topk_group, ds.shared_d_ff) == (8, 4, 2048)
    mx = REAL_MODELS["Mixtral-8x7B"]
    assert (mx.d_model, mx.d_ff, mx.n_experts, mx.top_k) == (4096, 14336, 8, 2)
    assert REAL_MODELS["Switch-base-128"].ffn == "relu"


@pytest.mark.parametrize("name", list(REAL_MODELS))
def test_real_layers_exceed_the_rtl_but_fit_the_model(name: str) -> None:
    spec, cfg = REAL_MODELS[name], AccelConfig()
    with pytest.raises(ConfigError):
        cfg.check_fits(spec, tokens=2048)
    cfg.check_model_fits(spec, tokens=2048)
    counts = uniform_routing(spec, 64, np.random.default_rng(3))
    assert layer_cycles(cfg, spec, 64, counts).cycles_total[0] > 0


def test_uniform_routing_respects_groups_and_capacity() -> None:
    rng = np.random.default_rng(1)
    ds = REAL_MODELS["DeepSeek-V3"]
    one = uniform_routing(ds, 1, rng)
    assert one.sum() == 8
    groups = np.nonzero(one)[0] // 32
    assert len(set(groups.tolist())) <= 4
    sw = REAL_MODELS["Switch-base-128"].replace(capacity=2)
    assert uniform_routing(sw, 2048, rng).max() == 2
    with pytest.raises(ConfigError, match="tokens"):
        uniform_routing(ds, 0, rng)
