"""Golden expert FFN: composition of the contract's steps, row independence, padding."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.experts import ffn_int, gather_rows, run_experts
from pymodel.layer import dispatch_tokens, quantize_input, route
from pymodel.numerics import NumericsError
from pymodel.quantize import FFNParams, calibrate, quantize_layer
from pymodel.weight_formats import GROUP_SCALE_FRAC_BITS, WeightFormat


def rq(acc: int, mult: int, shift: int) -> int:
    """requantize, spelled out with exact rationals."""
    q = Fraction(acc * mult, 2**shift)
    v = int(abs(q) + Fraction(1, 2)) * (1 if q >= 0 else -1)
    return max(-127, min(127, v))


def dot_by_hand(p: FFNParams, name: str, e: int, x: list[int], n: int) -> int:
    """Accumulator of output channel n: from the compressed 2:4 pairs (the activation each
    kept weight meets) or the dense weights; group-wise int4 scales per docs/numerics.md."""
    w = getattr(p, f"{name}_q")[e]
    idx = getattr(p, f"{name}_idx")
    if idx is None:
        terms = [x[k] * int(w[k, n]) for k in range(len(x))]
    else:
        kept = [4 * (r // 2) + int(idx[e, r, n]) for r in range(len(x) // 2)]
        terms = [0] * len(x)
        for k in kept:
            terms[k] = x[k] * int(w[k, n])
    gmult = getattr(p, f"{name}_gmult")
    if gmult is None:
        return sum(terms)
    size = len(x) // gmult.shape[1]
    total = Fraction(sum(sum(terms[g * size : (g + 1) * size]) * int(gmult[e, g, n])
                         for g in range(gmult.shape[1])), 2**GROUP_SCALE_FRAC_BITS)  # fmt: skip
    return int(abs(total) + Fraction(1, 2)) * (1 if total >= 0 else -1)


def ffn_by_hand(p: FFNParams, e: int, row: np.ndarray) -> list[int]:
    """One token through expert e with Python ints only (the contract's text, literally)."""
    x = [int(v) for v in row]
    d, f = p.w1_q.shape[1:]
    a = [rq(dot_by_hand(p, "w1", e, x, n), p.m1[e, n], p.sh1[e, n]) for n in range(f)]
    g = [int(p.lut[e][v & 255]) for v in a]
    if p.gated:
        u = [rq(dot_by_hand(p, "w3", e, x, n), p.m3[e, n], p.sh3[e, n]) for n in range(f)]
        h = [rq(g[n] * u[n], int(p.m_h[e]), int(p.sh_h[e])) for n in range(f)]
    else:
        h = g
    return [rq(dot_by_hand(p, "w2", e, h, j), p.m2[e, j], p.sh2[e, j]) for j in range(d)]


FORMATS = [
    WeightFormat.DENSE_INT8,
    WeightFormat(8, True),
    WeightFormat(4),
    WeightFormat(4, False, 32),
    WeightFormat(4, True),
    WeightFormat(4, True, 32),
    WeightFormat(4, False, 64),
    WeightFormat(4, True, 128),
]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("family", ["mixtral", "switch"])
def test_routed_rows_match_the_contract(
    family: str, fmt: WeightFormat, cfg: AccelConfig, make_case
) -> None:
    g = fmt.group_size
    dims = dict(d_model=8, d_ff=16) if g is None else dict(d_model=g, d_ff=g)
    case = make_case(family, seed=3, tokens=24, n_experts=4, **dims)
    calib = calibrate(case.spec, case.weights, case.x, fmt)
    ql = quantize_layer(case.spec, case.weights, calib, cfg, fmt)
    x_q = quantize_input(ql, case.x)
    disp = dispatch_tokens(ql, route(ql, x_q, cfg), cfg)
    out = run_experts(ql, x_q, disp, cfg)
    k = case.spec.top_k
    for e in range(case.spec.n_experts):
        for row in range(int(disp.offsets[e]), int(disp.offsets[e + 1])):
            slot = int(disp.sorted_slots[row])
            if slot == disp.pad_id:
                assert not out.routed.y[row].any() and not out.x[row].any()
                continue
            assert np.array_equal(out.x[row], x_q[slot // k])
            assert out.routed.y[row].tolist() == ffn_by_hand(ql.experts, e, x_q[slot // k])
    if family == "switch":
        assert out.routed.u is None
        assert np.array_equal(out.routed.g, out.routed.h)
    assert out.shared is None


@pytest.mark.parametrize(
    "fmt", [WeightFormat.DENSE_INT8, WeightFormat(4, True)], ids=lambda f: f.name
)
def test_shared_expert_runs_on_every_token(fmt: WeightFormat, cfg: AccelConfig, make_case) -> None:
    case = make_case("deepseek_v3", seed=1, tokens=6, d_model=8, d_ff=8)
    calib = calibrate(case.spec, case.weights, case.x, fmt)
    ql = quantize_layer(case.spec, case.weights, calib, cfg, fmt)
    x_q = quantize_input(ql, case.x)
    out = run_experts(ql, x_q, dispatch_tokens(ql, route(ql, x_q, cfg), cfg), cfg)
    assert out.shared is not None and out.shared.y.shape == (6, 8)
    for t in range(6):
        assert out.shared.y[t].tolist() == ffn_by_hand(ql.shared, 0, x_q[t])


def test_rows_are_independent(cfg: AccelConfig, make_case) -> None:
    case = make_case("qwen3_moe", seed=2, tokens=16)
    ql = quantize_layer(case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg)
    x_q = quantize_input(ql, case.x)
    whole = ffn_int(ql.experts, 5, x_q, cfg)
    for t in (0, 7, 15):
        single = ffn_int(ql.experts, 5, x_q[t : t + 1], cfg)
        assert np.array_equal(single.y[0], whole.y[t])
        assert np.array_equal(single.h[0], whole.h[t])


def test_gather_rows_and_errors(cfg: AccelConfig, make_case) -> None:
    case = make_case("mixtral", seed=0, tokens=8)
    ql = quantize_layer(case.spec, case.weights, calibrate(case.spec, case.weights, case.x), cfg)
    x_q = quantize_input(ql, case.x)
    disp = dispatch_tokens(ql, route(ql, x_q, cfg), cfg)
    with pytest.raises(ConfigError, match="dispatch covers"):
        gather_rows(x_q[:4], disp)
    with pytest.raises(NumericsError, match="x_q"):
        run_experts(ql, x_q.astype(np.float32), disp, cfg)
    with pytest.raises(NumericsError, match="x_q"):
        run_experts(ql, x_q + 200, disp, cfg)
    with pytest.raises(ConfigError, match="x_q has shape"):
        run_experts(ql, x_q[:, :4], disp, cfg)
