"""pymodel.synthetic: lazily generated expert weights and layers that stay inside int8."""

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.families import family_spec
from pymodel.layer import golden_layer
from pymodel.synthetic import TOKEN_STD, LazyExpertWeights, synthetic_layer, synthetic_tokens

CFG = AccelConfig()


def test_lazy_weights_are_deterministic_per_expert_and_order_free() -> None:
    w = LazyExpertWeights(4, 16, 8, seed=3, tag=1)
    late = w[2]
    again = LazyExpertWeights(4, 16, 8, seed=3, tag=1)
    assert np.array_equal(again[2], late)
    assert late.dtype == np.int8 and late.shape == (16, 8)
    assert np.abs(late.astype(np.int64)).max() <= 127
    assert not np.array_equal(w[1], w[2])
    assert not np.array_equal(LazyExpertWeights(4, 16, 8, seed=4, tag=1)[2], late)
    assert not np.array_equal(LazyExpertWeights(4, 16, 8, seed=3, tag=3)[2], late)
    assert len(w) == 4 and w.shape == (4, 16, 8) and w.nbytes == 4 * 16 * 8


def test_lazy_weights_refuse_bad_indices_and_shapes() -> None:
    w = LazyExpertWeights(2, 4, 4, seed=0, tag=0)
    with pytest.raises(IndexError, match="expert 2 out of range"):
        w[2]
    with pytest.raises(TypeError):
        w[0:1]  # type: ignore[index]
    with pytest.raises(ConfigError, match=r"LazyExpertWeights\.k"):
        LazyExpertWeights(2, -1, 4, seed=0, tag=0)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "switch"])
def test_synthetic_layers_keep_activations_inside_int8(family: str) -> None:
    shared = {"shared_d_ff": 64} if family == "deepseek_v3" else {}
    spec = family_spec(family, d_model=128, d_ff=96, n_experts=8, **shared)
    ql = synthetic_layer(spec, CFG, seed=11)
    x_q = synthetic_tokens(spec, CFG, 6, seed=11)
    assert abs(x_q.std() - TOKEN_STD) < 4
    res = golden_layer(ql, x_q, CFG)
    routed = res.dispatch.sorted_slots != res.dispatch.pad_id
    for name in ("a", "h", "y"):
        values = getattr(res.experts.routed, name)[routed]
        assert 5 < values.std() < 60, name
        assert np.mean(np.abs(values) >= 127) < 0.02, name
    assert np.count_nonzero(res.y_q) > 0.5 * res.y_q.size
    again = golden_layer(synthetic_layer(spec, CFG, seed=11), x_q, CFG)
    assert np.array_equal(again.y_q, res.y_q)
    assert isinstance(ql.experts.w1_q, LazyExpertWeights)


def test_synthetic_layer_refuses_a_bad_seed() -> None:
    spec = family_spec("mixtral", d_model=16, d_ff=16, n_experts=4)
    with pytest.raises(ConfigError, match="seed"):
        synthetic_layer(spec, CFG, seed=-1)
