"""Calibration and the integer image: ranges, weight quantisation, constants, pickle-free I/O."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pymodel.config import ConfigError
from pymodel.families import FAMILIES
from pymodel.layer import golden_layer, quantize_input
from pymodel.numerics import NumericsError, make_lut
from pymodel.quantize import QuantizedLayer, calibrate, quantize_layer
from pymodel.reference import expert_ffn_float, moe_forward_float, silu
from pymodel.weight_formats import WeightFormat, idx_mask, prune_2_4_mask


def test_calibration_ranges_come_from_the_float_layer(make_case) -> None:
    case = make_case("qwen2_moe", seed=0, tokens=32)
    calib = calibrate(case.spec, case.weights, case.x)
    res = moe_forward_float(case.spec, case.weights, case.x)
    assert calib.x_absmax == pytest.approx(np.abs(case.x).max())
    assert calib.y_absmax == pytest.approx(np.abs(res.y).max())
    assert calib.n_tokens == 32
    routed = res.expert_absmax["ye"][res.expert_tokens > 0].max()
    assert calib.ye_absmax == pytest.approx(max(routed, res.shared_absmax["ye"]))


def test_unrouted_experts_are_calibrated_on_the_whole_batch(make_case) -> None:
    case = make_case("mixtral", seed=1, tokens=2)
    calib = calibrate(case.spec, case.weights, case.x)
    idle = np.flatnonzero(calib.expert_tokens == 0)
    assert idle.size >= 4
    for e in idle:
        w = case.weights
        trace = expert_ffn_float("swiglu", w.w1[e], w.w2[e], w.w3[e], case.x)
        assert calib.expert_absmax["h"][e] == pytest.approx(np.abs(trace["h"]).max())
        assert calib.expert_absmax["a"][e] > 0


def test_weights_and_constants(make_case, cfg) -> None:
    case = make_case("qwen2_moe", seed=2, tokens=32)
    ql = quantize_layer(case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg)
    p, w = ql.experts, case.weights
    assert p.w1_q.dtype == np.int8 and np.abs(p.w1_q).max() == 127
    assert np.all(np.abs(p.w1_q).max(axis=1) == 127), "every channel uses the full range"
    err = np.abs(p.w1_q * p.w1_scale[:, None, :] - w.w1)
    assert np.all(err <= p.w1_scale[:, None, :] / 2 + 1e-9)
    real = ql.s_x * p.w1_scale / p.s_a[:, None]
    assert np.all(np.abs(p.m1 / 2.0**p.sh1 / real - 1) <= 2.0**-cfg.mult_bits)
    assert np.array_equal(p.lut[3], make_lut(silu, p.s_a[3], p.s_g[3]))
    assert ql.router_q.shape == (32, 9), "shared gate is router column E"
    assert ql.shared is not None and ql.shared.w1_q.shape == (1, 32, 128)
    real_out = ql.s_ye / (2**cfg.gate_frac_bits * ql.s_y)
    assert abs(ql.out_mult / 2**ql.out_shift / real_out - 1) <= 2.0**-cfg.mult_bits


def test_correction_bias_fixed_point(make_case, cfg) -> None:
    case = make_case("deepseek_v3", seed=3, tokens=16)
    calib = calibrate(case.spec, case.weights, case.x)
    ql = quantize_layer(case.spec, case.weights, calib, cfg)
    np.testing.assert_allclose(ql.bias_q / 2**16, case.weights.correction_bias, atol=2**-17)
    big = dataclasses.replace(case.weights, correction_bias=np.full(8, 20.0, dtype=np.float32))
    with pytest.raises(NumericsError, match="correction bias"):
        quantize_layer(case.spec, big, calib, cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_arrays_round_trip_without_pickle(family: str, make_case, cfg, tmp_path) -> None:
    case = make_case(family, seed=4, tokens=24)
    ql = quantize_layer(case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg)
    path = tmp_path / "layer.npz"
    np.savez(path, allow_pickle=False, **ql.to_arrays())
    with np.load(path, allow_pickle=False) as data:
        again = QuantizedLayer.from_arrays(dict(data))
    assert again.spec == ql.spec and again.cfg == ql.cfg
    for key, value in ql.to_arrays().items():
        assert np.array_equal(again.to_arrays()[key], value), key
    x_q = quantize_input(ql, case.x)
    assert np.array_equal(golden_layer(again, x_q, cfg).y_q, golden_layer(ql, x_q, cfg).y_q)


def test_from_arrays_rejects_incomplete_or_foreign_entries(make_case, cfg) -> None:
    case = make_case("mixtral", seed=5, tokens=8)
    arrays = quantize_layer(
        case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg
    ).to_arrays()
    with pytest.raises(ConfigError, match="unknown entry 'bogus'"):
        QuantizedLayer.from_arrays({**arrays, "bogus": np.zeros(1)})
    with pytest.raises(ConfigError, match="spec_json"):
        QuantizedLayer.from_arrays({k: v for k, v in arrays.items() if k != "spec_json"})
    with pytest.raises(ConfigError, match="s_ye"):
        QuantizedLayer.from_arrays({k: v for k, v in arrays.items() if k != "s_ye"})
    with pytest.raises(ConfigError, match="experts"):
        QuantizedLayer.from_arrays({k: v for k, v in arrays.items() if k != "experts.m1"})


def test_quantize_layer_rejects_a_non_calibration(make_case, cfg) -> None:
    case = make_case("mixtral", seed=5, tokens=8)
    with pytest.raises(ConfigError, match="Calibration"):
        quantize_layer(case.spec, case.weights, {"x_absmax": 1.0}, cfg)


FORMATS = [
    WeightFormat(8, True),
    WeightFormat(4),
    WeightFormat(4, False, 32),
    WeightFormat(4, True),
    WeightFormat(4, True, 32),
]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_compressed_formats_prune_and_quantise_experts(fmt: WeightFormat, make_case, cfg) -> None:
    case = make_case("qwen2_moe", seed=6, tokens=24)
    calib = calibrate(case.spec, case.weights, case.x, fmt)
    ql = quantize_layer(case.spec, case.weights, calib, cfg, fmt)
    dense = quantize_layer(case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg)
    assert ql.weight_format == fmt
    np.testing.assert_array_equal(ql.router_q, dense.router_q)  # the router stays int8 dense
    for part, floats in ((ql.experts, case.weights), (ql.shared, None)):
        for name in part.matrices():
            q = getattr(part, f"{name}_q")
            assert q.dtype == np.int8 and np.abs(q).max() == fmt.qmax
            w = getattr(case.weights, name if floats else f"shared_{name}")
            w = w if floats else w[None]
            if fmt.sparse:
                idx = getattr(part, f"{name}_idx")
                for e in range(q.shape[0]):
                    mask = prune_2_4_mask(w[e])
                    np.testing.assert_array_equal(idx_mask(idx[e]), mask)
                    assert np.all(q[e][~mask] == 0)
            else:
                assert getattr(part, f"{name}_idx") is None
            assert (getattr(part, f"{name}_gmult") is not None) == (fmt.group_size is not None)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_format_round_trips_through_arrays(fmt: WeightFormat, make_case, cfg) -> None:
    case = make_case("mixtral", seed=7, tokens=16)
    calib = calibrate(case.spec, case.weights, case.x, fmt)
    ql = quantize_layer(case.spec, case.weights, calib, cfg, fmt)
    again = QuantizedLayer.from_arrays(ql.to_arrays())
    assert again.weight_format == fmt
    for key, value in ql.to_arrays().items():
        assert np.array_equal(again.to_arrays()[key], value), key
    x_q = quantize_input(ql, case.x)
    assert np.array_equal(golden_layer(again, x_q, cfg).y_q, golden_layer(ql, x_q, cfg).y_q)
    lacking = {k: v for k, v in ql.to_arrays().items() if not k.endswith(("_idx", "_gmult"))}
    if lacking != ql.to_arrays():
        with pytest.raises(ConfigError, match="missing for weight format"):
            QuantizedLayer.from_arrays(lacking)


def test_old_arrays_without_a_format_are_dense_int8(make_case, cfg) -> None:
    case = make_case("olmoe", seed=8, tokens=8)
    arrays = quantize_layer(
        case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg
    ).to_arrays()
    del arrays["weight_format_json"]
    assert QuantizedLayer.from_arrays(arrays).weight_format == WeightFormat.DENSE_INT8


def test_2_4_needs_k_a_multiple_of_4(make_case, cfg) -> None:
    case = make_case("mixtral", seed=9, tokens=8, d_model=30)
    calib = calibrate(case.spec, case.weights, case.x)
    with pytest.raises(ConfigError, match="routed expert w1 K = 30 is not a multiple of 4"):
        quantize_layer(case.spec, case.weights, calib, cfg, WeightFormat(8, True))
    with pytest.raises(ConfigError, match=r"MoEWeights\.w1 K = 30 is not a multiple of 4"):
        calibrate(case.spec, case.weights, case.x, WeightFormat(4, True))


def test_int4_scale_overflowing_the_requantiser_names_the_channel(make_case, cfg) -> None:
    """A W1 column whose weights meet only an always-zero input feature: a huge weight
    scale for a tiny output range. Its factor fits the 16-bit multiplier at int8 (scale
    absmax/127) but not at int4 (absmax/7)."""
    case = make_case("mixtral", seed=10, tokens=16)
    x = case.x.copy()
    x[:, 0] = 0.0
    calib = calibrate(case.spec, case.weights, x)
    s_a = calib.expert_absmax["a"][0] / 127
    s_x = calib.x_absmax / 127
    w1 = case.weights.w1.copy()
    w1[0, 0, 5] = 2**17 * 7 * s_a / s_x  # the int4 factor is 2^17, the int8 one 2^17·7/127
    weights = dataclasses.replace(case.weights, w1=w1)
    quantize_layer(case.spec, weights, calib, cfg)
    with pytest.raises(
        NumericsError,
        match="int4 dense routed expert W1 requantiser at expert 0, "
        "channel 5: requantisation factor",
    ):
        quantize_layer(case.spec, weights, calib, cfg, WeightFormat(4))
