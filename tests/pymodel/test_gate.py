"""Gate unit: fixed-point exp/sigmoid/softmax error bounds, top-k ties, group limits, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.gate import (
    LOG2E_FRAC_BITS,
    LOG2E_FX,
    exp_fx,
    exp_lut,
    gate,
    group_limited_topk,
    group_scores,
    quantize_scaling,
    sigmoid_fx,
    softmax_fx,
    topk_lower_index,
)
from pymodel.numerics import NumericsError
from pymodel.reference import sigmoid

PROPS = settings(max_examples=200, deadline=None)
CFGS = [
    AccelConfig(),
    AccelConfig(logit_frac_bits=4, gate_frac_bits=12, gate_weight_bits=14),
    AccelConfig(logit_bits=20, logit_frac_bits=10, gate_frac_bits=20, gate_weight_bits=24),
]


def exp_bound(cfg: AccelConfig) -> float:
    """docs/numerics.md: |exp_fx − e^x| ≤ (2^(2^-(f+1)) − 1) + 2^-g + 1e-5."""
    return 2 ** (2.0 ** -(cfg.logit_frac_bits + 1)) - 1 + 2.0**-cfg.gate_frac_bits + 1e-5


def sigmoid_bound(cfg: AccelConfig) -> float:
    """docs/numerics.md: |sigmoid_fx − σ| ≤ (2^(2^-(f+1)) − 1)/4 + 1.5·2^-g + 1e-5."""
    rel = 2 ** (2.0 ** -(cfg.logit_frac_bits + 1)) - 1
    return rel / 4 + 1.5 * 2.0**-cfg.gate_frac_bits + 1e-5


@pytest.mark.parametrize("cfg", CFGS, ids=["default", "narrow", "wide"])
def test_exp_fx_exhaustive(cfg: AccelConfig) -> None:
    lo = -(2 ** (cfg.logit_bits))
    z = np.arange(lo, 1, dtype=np.int64)
    e = exp_fx(z, cfg)
    one = 2**cfg.gate_frac_bits
    assert e[-1] == one
    assert np.all(np.diff(e) >= 0), "exp_fx must be monotone"
    assert e.min() >= 0 and e.max() <= one
    err = np.abs(e / one - np.exp(z / 2**cfg.logit_frac_bits))
    assert err.max() <= exp_bound(cfg)


def test_exp_constants() -> None:
    assert LOG2E_FX == 47274 and LOG2E_FRAC_BITS == 15
    lut = exp_lut(AccelConfig())
    assert lut.shape == (256,) and lut[0] == 2**16 and np.all(np.diff(lut) < 0)


def test_exp_fx_rejects_positive_arguments() -> None:
    with pytest.raises(NumericsError, match="non-positive"):
        exp_fx(np.array([1]), AccelConfig())


@pytest.mark.parametrize("cfg", CFGS, ids=["default", "narrow", "wide"])
def test_sigmoid_fx_exhaustive(cfg: AccelConfig) -> None:
    top = 2 ** (cfg.logit_bits - 1) - 1
    logits = np.arange(-top, top + 1, dtype=np.int64)
    s = sigmoid_fx(logits, cfg)
    one = 2**cfg.gate_frac_bits
    assert s[top] == one // 2
    assert np.array_equal(s + s[::-1], np.full_like(s, one)), "σ(l) + σ(-l) must be exactly 1"
    assert np.all(np.diff(s) >= 0), "sigmoid_fx must be monotone"
    exact = sigmoid(logits / 2**cfg.logit_frac_bits)
    assert np.abs(s / one - exact).max() <= sigmoid_bound(cfg)


logit_rows = st.integers(1, 16).flatmap(
    lambda n: st.lists(st.integers(-(2**15) + 1, 2**15 - 1), min_size=n, max_size=n)
)


@PROPS
@given(row=logit_rows)
def test_softmax_fx_error_bound(row: list[int]) -> None:
    cfg = AccelConfig()
    logits = np.array([row], dtype=np.int64)
    e, p = softmax_fx(logits, cfg)
    one, n = 2**cfg.gate_frac_bits, len(row)
    assert e.max() == one
    assert abs(int(p.sum()) - one) <= n / 2
    x = logits[0] / 2**cfg.logit_frac_bits
    exact = np.exp(x - x.max()) / np.exp(x - x.max()).sum()
    rho = 2 ** (2.0 ** -(cfg.logit_frac_bits + 1)) - 1
    assert np.abs(p[0] / one - exact).max() <= 2.5 * rho + (n + 2) * 2.0**-cfg.gate_frac_bits
    assert int(np.argmax(p[0])) == int(np.argmax(logits[0]))


def brute_topk(scores: list, k: int, valid: list[bool] | None = None) -> list[int]:
    valid = valid or [True] * len(scores)
    return sorted(range(len(scores)), key=lambda i: (not valid[i], -scores[i], i))[:k]


tie_rows = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-3, 3), min_size=n, max_size=n),
        st.integers(1, n),
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
)


@PROPS
@given(case=tie_rows)
def test_topk_ties_go_to_lower_index(case: tuple[list[int], int, list[bool]]) -> None:
    row, k, valid = case
    got = topk_lower_index(np.array([row]), k)[0].tolist()
    assert got == brute_topk(row, k)
    got_f = topk_lower_index(np.array([row], dtype=np.float32), k)[0].tolist()
    assert got_f == got
    masked = topk_lower_index(np.array([row]), k, np.array([valid]))[0].tolist()
    assert masked == brute_topk(row, k, valid)


def brute_group_topk(row: list[int], k: int, n_group: int, topk_group: int) -> list[int]:
    size = len(row) // n_group
    gscore = [sum(sorted(row[g * size : (g + 1) * size])[-2:]) for g in range(n_group)]
    groups = sorted(range(n_group), key=lambda g: (-gscore[g], g))[:topk_group]
    valid = [i // size in groups for i in range(len(row))]
    return brute_topk(row, k, valid)


group_cases = st.sampled_from([(8, 4), (8, 2), (12, 3), (16, 8), (6, 3)]).flatmap(
    lambda eg: st.tuples(
        st.lists(st.integers(-2, 2), min_size=eg[0], max_size=eg[0]),
        st.just(eg[1]),
        st.integers(1, eg[1]),
        st.integers(1, 4),
    )
)


@PROPS
@given(case=group_cases)
def test_group_limited_topk_ties(case: tuple[list[int], int, int, int]) -> None:
    row, n_group, topk_group, k = case
    k = min(k, topk_group * (len(row) // n_group))
    got = group_limited_topk(np.array([row]), k, n_group, topk_group)[0].tolist()
    assert got == brute_group_topk(row, k, n_group, topk_group)


def test_group_scores_sum_top_two() -> None:
    choice = np.array([[1, 5, 3, 2, 9, 9]])
    assert group_scores(choice, 2).tolist() == [[8, 18]]


def spec_of(**kw: object) -> MoESpec:
    return MoESpec(**{"d_model": 4, "d_ff": 4, "n_experts": 4, "top_k": 2, **kw})


def test_softmax_gate_hand_example() -> None:
    cfg = AccelConfig()
    logits = np.zeros((1, 4), dtype=np.int64)
    r = gate(spec_of(), logits, cfg)
    assert r.expert_ids.tolist() == [[0, 1]]
    assert r.gate_weights.tolist() == [[2**14, 2**14]]
    r = gate(spec_of(renormalize=True), logits, cfg)
    assert r.gate_weights.tolist() == [[2**15, 2**15]]
    assert r.shared_weight is None


@PROPS
@given(
    rows=st.lists(
        st.lists(st.integers(-3000, 3000), min_size=8, max_size=8), min_size=1, max_size=8
    ),
    k=st.integers(1, 8),
)
def test_softmax_gate_selects_on_logits(rows: list[list[int]], k: int) -> None:
    cfg = AccelConfig()
    logits = np.array(rows, dtype=np.int64)
    spec = MoESpec(d_model=4, d_ff=4, n_experts=8, top_k=k, renormalize=True)
    r = gate(spec, logits, cfg)
    assert r.expert_ids.tolist() == [brute_topk(row, k) for row in rows]
    assert np.all(np.abs(r.gate_weights.sum(axis=1) - 2**16) <= k / 2)
    plain = gate(spec.replace(renormalize=False), logits, cfg)
    _, p = softmax_fx(logits, cfg)
    assert np.array_equal(plain.gate_weights, np.take_along_axis(p, r.expert_ids, axis=1))


def test_sigmoid_gate_scaling_and_renorm() -> None:
    cfg = AccelConfig()
    spec = spec_of(scoring="sigmoid", renormalize=True, routed_scaling_factor=2.5)
    r = gate(spec, np.zeros((1, 4), dtype=np.int64), cfg)
    assert r.gate_weights.tolist() == [[81920, 81920]]  # 0.5 / 1.0 · 2.5 = 1.25
    assert quantize_scaling(2.5) == 163840


def test_routed_scaling_needs_sigmoid_scoring() -> None:
    with pytest.raises(ConfigError, match="routed_scaling_factor"):
        gate(spec_of(routed_scaling_factor=2.0), np.zeros((1, 4), np.int64), AccelConfig())


def test_sigmoid_gate_zero_sum_gives_zero_weights() -> None:
    cfg = AccelConfig()
    spec = spec_of(scoring="sigmoid", renormalize=True)
    r = gate(spec, np.full((1, 4), -(2**15) + 1, dtype=np.int64), cfg)
    assert r.gate_weights.tolist() == [[0, 0]]


def test_gate_weights_saturate_at_the_top() -> None:
    cfg = AccelConfig(gate_weight_bits=17)
    spec = spec_of(scoring="sigmoid", routed_scaling_factor=15.0)
    r = gate(spec, np.full((1, 4), 2**15 - 1, dtype=np.int64), cfg)
    assert r.gate_weights.tolist() == [[2**17 - 1, 2**17 - 1]]


def test_group_limit_excludes_best_single_expert() -> None:
    cfg = AccelConfig()
    spec = MoESpec(
        d_model=4, d_ff=4, n_experts=4, top_k=1, scoring="sigmoid", n_group=2, topk_group=1
    )
    # Group 0 = {huge, tiny}, group 1 = {big, big}: group 1 wins, so expert 0 is not chosen.
    logits = np.array([[2000, -2000, 1000, 1000]], dtype=np.int64)
    r = gate(spec, logits, cfg)
    assert r.expert_ids.tolist() == [[2]]


def test_masked_experts_never_chosen_even_if_selected_scores_are_negative() -> None:
    # HF 5.x masks experts of dropped groups to -inf, so negative biased scores in the
    # chosen group still win over masked experts (masking to 0 would pick expert 0).
    cfg = AccelConfig()
    spec = MoESpec(
        d_model=4,
        d_ff=4,
        n_experts=4,
        top_k=2,
        scoring="sigmoid",
        n_group=2,
        topk_group=1,
        correction_bias=True,
    )
    bias = np.array([-(2**18), -(2**18), -(2**16), -(2**16)], dtype=np.int64)
    r = gate(spec, np.zeros((1, 4), dtype=np.int64), cfg, bias_q=bias)
    assert sorted(r.expert_ids[0].tolist()) == [2, 3]
    assert np.all(r.select[0] < 0)
    assert r.gate_weights.tolist() == [[2**15, 2**15]]  # weights use the unbiased σ


def test_shared_weights() -> None:
    cfg = AccelConfig()
    logits = np.zeros((2, 4), dtype=np.int64)
    r = gate(spec_of(shared_d_ff=4), logits, cfg)
    assert r.shared_weight.tolist() == [2**16, 2**16]
    shared_logit = np.array([0, 256], dtype=np.int64)
    r = gate(spec_of(shared_d_ff=4, shared_gate=True), logits, cfg, shared_logit=shared_logit)
    assert r.shared_weight[0] == 2**15
    assert r.shared_weight[1] == pytest.approx(2**16 / (1 + math.e**-1), abs=25)


def test_gate_input_errors() -> None:
    cfg = AccelConfig()
    with pytest.raises(ConfigError, match="shape"):
        gate(spec_of(), np.zeros((2, 3), dtype=np.int64), cfg)
    with pytest.raises(NumericsError, match="router logits"):
        gate(spec_of(), np.full((1, 4), 2**15, dtype=np.int64), cfg)
    with pytest.raises(NumericsError, match="integer"):
        gate(spec_of(), np.zeros((1, 4)), cfg)
    with pytest.raises(ConfigError, match="bias_q"):
        gate(spec_of(scoring="sigmoid", correction_bias=True), np.zeros((1, 4), np.int64), cfg)
    with pytest.raises(ConfigError, match="shared_logit"):
        gate(spec_of(shared_d_ff=4, shared_gate=True), np.zeros((1, 4), np.int64), cfg)
    with pytest.raises(ConfigError, match="group-limited"):
        gate(
            MoESpec(d_model=4, d_ff=4, n_experts=4, top_k=1, n_group=2, topk_group=1),
            np.zeros((1, 4), np.int64),
            cfg,
        )
    with pytest.raises(ConfigError, match="top-k"):
        topk_lower_index(np.zeros((1, 3)), 4)
