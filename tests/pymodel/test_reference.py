"""Float reference: routing semantics of each family and a dense re-derivation of the output.

(The HF-block comparison lives with the torch driver tests, tests/sw_driver.)
"""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.families import FAMILIES
from pymodel.reference import (
    ACTIVATIONS,
    PRUNED_MATRICES,
    expert_ffn_float,
    moe_forward_float,
    pruned_weights,
    sigmoid,
)
from pymodel.weight_formats import WeightFormat, prune_2_4_mask


def dense_output(spec, w, x, res) -> np.ndarray:
    """Token by token, slot by slot, in float64: Σ_j w_j · FFN_e(x) (+ shared)."""
    y = np.zeros((x.shape[0], spec.d_model))
    x = x.astype(np.float64)
    for t in range(x.shape[0]):
        for j in range(spec.top_k):
            if not res.kept[t, j]:
                continue
            e = res.expert_ids[t, j]
            a = x[t] @ w.w1[e]
            h = ACTIVATIONS[spec.ffn](a) * (x[t] @ w.w3[e] if spec.ffn == "swiglu" else 1.0)
            y[t] += res.gate_weights[t, j] * (h @ w.w2[e])
        if spec.has_shared:
            hs = ACTIVATIONS["swiglu"](x[t] @ w.shared_w1) * (x[t] @ w.shared_w3)
            gate = sigmoid(x[t] @ w.shared_gate) if spec.shared_gate else 1.0
            y[t] += gate * (hs @ w.shared_w2)
    return y


@pytest.mark.parametrize("family", FAMILIES)
def test_output_matches_dense_formulation(family: str, make_case) -> None:
    case = make_case(family, seed=4, tokens=24)
    res = moe_forward_float(case.spec, case.weights, case.x)
    assert res.y.dtype == np.float32 and res.y.shape == case.x.shape
    np.testing.assert_allclose(res.y, dense_output(case.spec, case.weights, case.x, res), atol=1e-5)
    assert int(res.expert_tokens.sum()) == int(res.kept.sum())


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "switch"])
def test_softmax_routing(family: str, make_case) -> None:
    case = make_case(family, seed=5, tokens=32)
    spec, res = case.spec, moe_forward_float(case.spec, case.weights, case.x)
    probs = res.scores
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    order = np.argsort(-probs, axis=1, kind="stable")[:, : spec.top_k]
    assert np.array_equal(res.expert_ids, order)
    picked = np.take_along_axis(probs, order, axis=1)
    want = picked / picked.sum(axis=1, keepdims=True) if spec.renormalize else picked
    np.testing.assert_allclose(res.gate_weights, want, rtol=1e-6)


def test_deepseek_routing(make_case) -> None:
    case = make_case("deepseek_v3", seed=6, tokens=32)
    spec, w, res = case.spec, case.weights, moe_forward_float(case.spec, case.weights, case.x)
    s = sigmoid(case.x @ w.router)
    np.testing.assert_allclose(res.scores, s + w.correction_bias, rtol=1e-6, atol=1e-7)
    size = spec.n_experts // spec.n_group
    for t in range(32):
        choice = res.scores[t]
        gscore = [
            np.sort(choice[g * size : (g + 1) * size])[-2:].sum() for g in range(spec.n_group)
        ]
        best = set(np.argsort(-np.array(gscore), kind="stable")[: spec.topk_group].tolist())
        assert {int(e) // size for e in res.expert_ids[t]} <= best
        raw = s[t, res.expert_ids[t]]
        np.testing.assert_allclose(res.gate_weights[t], raw / raw.sum() * 2.5, rtol=1e-5)


def test_switch_capacity_zeroes_dropped_tokens(make_case) -> None:
    case = make_case("switch", seed=7, tokens=64, capacity=3)
    res = moe_forward_float(case.spec, case.weights, case.x)
    assert not res.kept.all()
    assert np.all(res.y[~res.kept[:, 0]] == 0)
    assert np.all(np.bincount(res.expert_ids[res.kept], minlength=8) <= 3)
    for e in range(8):
        mine = np.flatnonzero(res.expert_ids[:, 0] == e)
        assert res.kept[mine, 0].tolist() == [i < 3 for i in range(mine.size)]


def test_absmax_statistics(make_case) -> None:
    case = make_case("mixtral", seed=8, tokens=16)
    w, res = case.weights, moe_forward_float(case.spec, case.weights, case.x)
    for e in range(8):
        rows = np.flatnonzero((res.expert_ids == e).any(axis=1))
        if rows.size == 0:
            assert res.expert_absmax["a"][e] == 0
            continue
        trace = expert_ffn_float("swiglu", w.w1[e], w.w2[e], w.w3[e], case.x[rows])
        for name in ("a", "g", "u", "h", "ye"):
            assert res.expert_absmax[name][e] == pytest.approx(np.abs(trace[name]).max())


def test_pruned_weights_mask_experts_only(make_case) -> None:
    case = make_case("qwen2_moe", seed=5, tokens=8)
    w = case.weights
    assert pruned_weights(w, WeightFormat(4)) is w
    pruned = pruned_weights(w, WeightFormat(8, True))
    for name in PRUNED_MATRICES:
        before, after = getattr(w, name), getattr(pruned, name)
        assert after.dtype == before.dtype
        stack = before.reshape(-1, *before.shape[-2:])
        for mat, got in zip(stack, after.reshape(stack.shape), strict=True):
            np.testing.assert_array_equal(got, np.where(prune_2_4_mask(mat), mat, 0))
    for name in ("router", "shared_gate"):
        assert getattr(pruned, name) is getattr(w, name)
    again = pruned_weights(pruned, WeightFormat(8, True))
    for name in PRUNED_MATRICES:
        np.testing.assert_array_equal(getattr(again, name), getattr(pruned, name))
    ref = moe_forward_float(case.spec, pruned, case.x)
    assert ref.y.shape == case.x.shape
