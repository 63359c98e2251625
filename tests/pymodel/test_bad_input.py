"""Every bad input raises a clear error whose message names the problem."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.families import family_spec
from pymodel.gate import gate
from pymodel.layer import golden_layer, quantize_input, route, run_golden
from pymodel.numerics import NumericsError
from pymodel.quantize import QuantizedLayer, calibrate, quantize_layer
from pymodel.reference import moe_forward_float
from pymodel.weights import MoEWeights

CFG = AccelConfig()


@dataclass(frozen=True)
class Env:
    spec: MoESpec
    w: MoEWeights
    x: np.ndarray
    ql: QuantizedLayer
    x_q: np.ndarray


@pytest.fixture(scope="module")
def env() -> Env:
    spec = family_spec("mixtral", d_model=16, d_ff=32)
    w = MoEWeights.random(spec, 0)
    x = np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32)
    ql = quantize_layer(spec, w, calibrate(spec, w, x), CFG)
    return Env(spec, w, x, ql, quantize_input(ql, x))


def spec(**kw: object) -> MoESpec:
    return MoESpec(**{"d_model": 16, "d_ff": 32, "n_experts": 8, "top_k": 2, **kw})


def with_weight(e: Env, **kw: object) -> MoEWeights:
    return dataclasses.replace(e.w, **kw)


def poisoned(a: np.ndarray, value: float) -> np.ndarray:
    a = a.copy()
    a.flat[3] = value
    return a


CASES: list[tuple[str, Callable[[Env], object], type[Exception], str]] = [
    ("top_k > experts", lambda e: spec(top_k=9), ConfigError, "top_k"),
    ("n_group not dividing", lambda e: spec(scoring="sigmoid", n_group=3), ConfigError, "divide"),
    ("zero d_model", lambda e: spec(d_model=0), ConfigError, "d_model"),
    ("zero d_ff", lambda e: spec(d_ff=0), ConfigError, "d_ff"),
    ("zero experts", lambda e: spec(n_experts=0), ConfigError, "n_experts"),
    ("negative capacity", lambda e: spec(capacity=-1), ConfigError, "capacity"),
    ("unknown scoring", lambda e: spec(scoring="relu6"), ConfigError, "scoring"),
    ("unknown ffn", lambda e: spec(ffn="geglu"), ConfigError, "ffn"),
    ("unknown family", lambda e: family_spec("llama"), ConfigError, "unknown MoE family"),
    ("x 1-D", lambda e: run_golden(e.spec, e.w, e.x[0], CFG), ConfigError, "x has shape"),
    ("x wrong width", lambda e: run_golden(e.spec, e.w, e.x[:, :8], CFG), ConfigError, "d_model"),
    ("x no tokens", lambda e: run_golden(e.spec, e.w, e.x[:0], CFG), ConfigError, "T >= 1"),
    ("x a list", lambda e: moe_forward_float(e.spec, e.w, [[0.0] * 16]), NumericsError, "numpy"),
    ("x NaN", lambda e: run_golden(e.spec, e.w, poisoned(e.x, np.nan), CFG), NumericsError, "NaN"),
    ("x Inf", lambda e: moe_forward_float(e.spec, e.w, poisoned(e.x, np.inf)), NumericsError, "x"),
    (
        "x integer",
        lambda e: run_golden(e.spec, e.w, e.x.astype(np.int32), CFG),
        NumericsError,
        "float",
    ),
    (
        "calib_x NaN",
        lambda e: run_golden(e.spec, e.w, e.x, CFG, calib_x=poisoned(e.x, np.nan)),
        NumericsError,
        "NaN",
    ),
    (
        "router shape",
        lambda e: moe_forward_float(e.spec, with_weight(e, router=e.w.router[:, :4]), e.x),
        ConfigError,
        "MoEWeights.router has shape",
    ),
    (
        "w2 shape",
        lambda e: run_golden(e.spec, with_weight(e, w2=e.w.w2[:, :4]), e.x, CFG),
        ConfigError,
        "MoEWeights.w2 has shape",
    ),
    (
        "w3 missing",
        lambda e: moe_forward_float(e.spec, with_weight(e, w3=None), e.x),
        ConfigError,
        "w3 missing",
    ),
    (
        "weights NaN",
        lambda e: moe_forward_float(e.spec, with_weight(e, w1=poisoned(e.w.w1, np.nan)), e.x),
        NumericsError,
        "MoEWeights.w1 holds",
    ),
    (
        "weights Inf",
        lambda e: calibrate(e.spec, with_weight(e, w2=poisoned(e.w.w2, -np.inf)), e.x),
        NumericsError,
        "MoEWeights.w2 holds",
    ),
    (
        "weights integer",
        lambda e: moe_forward_float(e.spec, with_weight(e, w1=e.w.w1.astype(np.int8)), e.x),
        ConfigError,
        "float numpy array",
    ),
    (
        "x_q beyond int8",
        lambda e: golden_layer(e.ql, e.x_q + 130, CFG),
        NumericsError,
        "x_q has values outside",
    ),
    (
        "x_q float",
        lambda e: route(e.ql, e.x_q.astype(np.float64), CFG),
        NumericsError,
        "x_q must be an integer",
    ),
    (
        "logits beyond logit_bits",
        lambda e: gate(e.spec, np.full((2, 8), 2**15), CFG),
        NumericsError,
        "router logits",
    ),
    (
        "spec beyond max_experts",
        lambda e: run_golden(
            e.spec, e.w, e.x, AccelConfig(max_experts=4, max_top_k=2, max_groups=4)
        ),
        ConfigError,
        "max_experts",
    ),
    (
        "tokens beyond max_tokens",
        lambda e: run_golden(e.spec, e.w, e.x, AccelConfig(max_tokens=4)),
        ConfigError,
        "max_tokens",
    ),
    (
        "d_model beyond max_d_model",
        lambda e: quantize_layer(
            e.spec, e.w, calibrate(e.spec, e.w, e.x), AccelConfig(max_d_model=8)
        ),
        ConfigError,
        "max_d_model",
    ),
    (
        "group-limited softmax",
        lambda e: moe_forward_float(spec(n_group=2, topk_group=1), e.w, e.x),
        ConfigError,
        "group-limited",
    ),
]


@pytest.mark.parametrize(("what", "call", "exc", "match"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named(
    what: str, call: Callable[[Env], object], exc: type[Exception], match: str, env: Env
) -> None:
    with pytest.raises(exc, match=match):
        call(env)
