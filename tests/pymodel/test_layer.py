"""Golden layer: accuracy against the float reference per family, routing agreement, stages."""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.families import FAMILIES, REL_L2_BOUND, REL_L2_BOUND_AGREEING, rel_l2_bounds
from pymodel.layer import (
    combine_outputs,
    dispatch_tokens,
    golden_layer,
    quantize_input,
    route,
    routing_guaranteed,
    run_experts,
    run_golden,
    selection_tolerance,
)
from pymodel.quantize import calibrate, quantize_layer
from pymodel.reference import moe_forward_float, pruned_weights
from pymodel.weight_formats import WeightFormat
from pymodel.weights import MoEWeights

# docs/numerics.md §7: relative L2 error of the dequantised int8 output against the float
# reference (T = 48, d = 32, f = 64, E = 8, MoEWeights.random). "all" (REL_L2_BOUND) includes
# tokens the integer router sends elsewhere near float ties; "agreeing" counts only tokens
# whose expert set (and capacity fate) matches the float one.
BOUND_ALL = REL_L2_BOUND
BOUND_AGREEING = REL_L2_BOUND_AGREEING
SEEDS = (0, 1, 2)


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_accuracy_against_float_reference(family: str, seed: int, make_case, cfg) -> None:
    case = make_case(family, seed)
    ref = moe_forward_float(case.spec, case.weights, case.x)
    got = run_golden(case.spec, case.weights, case.x, cfg)
    assert rel_l2(got.y, ref.y) <= BOUND_ALL[family]
    same = np.array(
        [set(a) == set(b) for a, b in zip(got.routing.expert_ids, ref.expert_ids, strict=True)]
    )
    agree = same & (got.dispatch.kept == ref.kept).all(axis=1)
    assert agree.mean() > 0.8
    assert rel_l2(got.y[agree], ref.y[agree]) <= BOUND_AGREEING


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_expert_sets_match_beyond_the_quantisation_step(
    family: str, seed: int, make_case, cfg
) -> None:
    case = make_case(family, seed, tokens=64)
    ref = moe_forward_float(case.spec, case.weights, case.x)
    got = run_golden(case.spec, case.weights, case.x, cfg)
    sure = routing_guaranteed(got.ql, case.weights, case.x, ref, cfg)
    assert sure.mean() > 0.4, "the guarantee should cover most tokens"
    for t in np.flatnonzero(sure):
        assert set(got.routing.expert_ids[t]) == set(ref.expert_ids[t]), t


def test_selection_tolerance_bounds_the_logit_error(make_case, cfg) -> None:
    case = make_case("mixtral", seed=9, tokens=64)
    ref = moe_forward_float(case.spec, case.weights, case.x)
    got = run_golden(case.spec, case.weights, case.x, cfg)
    tol = selection_tolerance(got.ql, case.weights, case.x, cfg)
    err = np.abs(got.routing.logits / 2**cfg.logit_frac_bits - ref.logits)
    assert np.all(err <= tol)
    case = make_case("deepseek_v3", seed=9, tokens=64)
    ref = moe_forward_float(case.spec, case.weights, case.x)
    got = run_golden(case.spec, case.weights, case.x, cfg)
    tol = selection_tolerance(got.ql, case.weights, case.x, cfg)
    assert np.all(np.abs(got.routing.select / 2**cfg.gate_frac_bits - ref.scores) <= tol)


@pytest.mark.parametrize("family", FAMILIES)
def test_stages_chain_to_the_golden_layer(family: str, make_case, cfg) -> None:
    case = make_case(family, seed=3, tokens=32)
    ql = quantize_layer(case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg)
    x_q = quantize_input(ql, case.x)
    routing = route(ql, x_q, cfg)
    disp = dispatch_tokens(ql, routing, cfg)
    outs = run_experts(ql, x_q, disp, cfg)
    combined = combine_outputs(ql, routing, disp, outs, cfg)
    whole = golden_layer(ql, x_q, cfg)
    assert np.array_equal(whole.y_q, combined.y)
    assert np.array_equal(whole.routing.gate_weights, routing.gate_weights)
    assert np.array_equal(whole.y, (combined.y * ql.s_y).astype(np.float32))
    assert whole.y_q.min() >= -127 and whole.y_q.max() <= 127
    if family == "switch":
        dropped = ~whole.dispatch.kept[:, 0]
        assert np.all(whole.y_q[dropped] == 0)


@pytest.mark.parametrize("m_tile", [1, 3, 16])
def test_row_tile_does_not_change_the_answer(m_tile: int, make_case, cfg) -> None:
    case = make_case("qwen2_moe", seed=4, tokens=40)
    ql = quantize_layer(case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg)
    x_q = quantize_input(ql, case.x)
    base = golden_layer(ql, x_q, cfg)
    other = golden_layer(ql, x_q, cfg.replace(m_tile=m_tile))
    assert np.array_equal(base.y_q, other.y_q)
    assert other.dispatch.sorted_slots.size % m_tile == 0


def test_shared_gate_is_the_extra_router_column(make_case, cfg) -> None:
    case = make_case("qwen2_moe", seed=5, tokens=16)
    got = run_golden(case.spec, case.weights, case.x, cfg)
    ref = moe_forward_float(case.spec, case.weights, case.x)
    np.testing.assert_allclose(got.routing.shared_weight / 2**16, ref.shared_gate, atol=0.02)


def test_calibration_batch_is_separate_from_the_run(make_case, cfg) -> None:
    case = make_case("olmoe", seed=6, tokens=16)
    calib_x = 2 * make_case("olmoe", seed=7, tokens=32).x
    got = run_golden(case.spec, case.weights, case.x, cfg, calib_x=calib_x)
    assert got.ql.s_x == pytest.approx(np.abs(calib_x).max() / 127)


def test_layer_built_for_other_numerics_is_refused(make_case, cfg) -> None:
    case = make_case("mixtral", seed=0, tokens=8)
    ql = quantize_layer(case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg)
    x_q = quantize_input(ql, case.x)
    other = AccelConfig(gate_frac_bits=12, gate_weight_bits=16)
    with pytest.raises(ConfigError, match="gate_frac_bits"):
        golden_layer(ql, x_q, other)
    with pytest.raises(ConfigError, match="max_tokens"):
        golden_layer(ql, x_q, cfg.replace(max_tokens=4))


@pytest.mark.parametrize(
    "changes",
    [
        {"ffn": "gelu", "capacity": 10},
        {"ffn": "relu", "top_k": 3, "renormalize": True},
        {"scoring": "sigmoid", "renormalize": False, "routed_scaling_factor": 1.5},
        {"scoring": "sigmoid", "n_group": 2, "topk_group": 1, "shared_d_ff": 32},
    ],
)
def test_generic_specs_beyond_the_families(changes: dict, cfg) -> None:
    spec = MoESpec(**{"d_model": 32, "d_ff": 64, "n_experts": 8, "top_k": 2, **changes})
    weights = MoEWeights.random(spec, 11)
    x = np.random.default_rng(11).standard_normal((48, 32)).astype(np.float32)
    ref = moe_forward_float(spec, weights, x)
    got = run_golden(spec, weights, x, cfg)
    same = np.array(
        [set(a) == set(b) for a, b in zip(got.routing.expert_ids, ref.expert_ids, strict=True)]
    )
    agree = same & (got.dispatch.kept == ref.kept).all(axis=1)
    assert agree.mean() > 0.8
    assert rel_l2(got.y[agree], ref.y[agree]) <= BOUND_AGREEING


@pytest.mark.parametrize(
    "fmt",
    [WeightFormat(8, True), WeightFormat(4), WeightFormat(4, False, 32), WeightFormat(4, True)],
    ids=lambda f: f.name,
)
@pytest.mark.parametrize("family", FAMILIES)
def test_formats_within_their_bounds(family: str, fmt: WeightFormat, make_case, cfg) -> None:
    """Against the float block the format approximates (pruned for 2:4), `rel_l2_bounds`."""
    for seed in SEEDS:
        case = make_case(family, seed)
        ref = moe_forward_float(case.spec, pruned_weights(case.weights, fmt), case.x)
        got = run_golden(case.spec, case.weights, case.x, cfg, weight_format=fmt)
        bound, bound_agreeing = rel_l2_bounds(family, fmt)
        assert rel_l2(got.y, ref.y) <= bound, seed
        same = np.array(
            [set(a) == set(b) for a, b in zip(got.routing.expert_ids, ref.expert_ids, strict=True)]
        )
        agree = same & (got.dispatch.kept == ref.kept).all(axis=1)
        assert rel_l2(got.y[agree], ref.y[agree]) <= bound_agreeing, seed
