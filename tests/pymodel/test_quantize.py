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
