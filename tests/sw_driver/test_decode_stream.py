"""Multi-layer decode streams: determinism, pre-gating, traces, and bit-exactness on the RTL."""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.config import ConfigError
from pymodel.expert_traces import RoutingTrace
from pymodel.families import FAMILIES
from sim.tb.layer_cases import SMALL_TOP
from sw_driver.decode_stream import DecodeStack, rms_norm
from sw_driver.device import GoldenDevice, VerilatorDevice

SMALL = {"d_model": 32, "d_ff": 48, "n_experts": 8}


def small(family: str) -> dict[str, int]:
    """Sizes the small top admits (a shared expert as wide as a routed one)."""
    return {**SMALL, "shared_d_ff": 48} if family in ("qwen2_moe", "deepseek_v3") else SMALL


@pytest.mark.parametrize("family", FAMILIES)
def test_golden_stream_is_replayable_and_predicts(family: str) -> None:
    stack = DecodeStack.build(family, layers=4, seed=3, cfg=SMALL_TOP, **small(family))
    first = stack.run(GoldenDevice(SMALL_TOP), 16)
    again = DecodeStack.build(family, layers=4, seed=3, cfg=SMALL_TOP, **small(family)).run(
        GoldenDevice(SMALL_TOP), 16
    )
    assert first.tokens == again.tokens
    assert np.array_equal(first.y_q, again.y_q)
    assert first.trace.experts.shape == (16, 4, stack.layers[0].spec.top_k)
    assert first.bit_exact is None and first.all_bit_exact is None
    accuracy = first.prediction_accuracy()
    assert np.isnan(accuracy[0])
    assert ((accuracy[1:] >= 0) & (accuracy[1:] <= 1)).all()
    # The predictor is layer l+1's own router on layer l's input: where a layer adds
    # nothing to the residual stream, its prediction is exactly the routing.
    quiet = DecodeStack.build(
        family, layers=2, seed=3, cfg=SMALL_TOP, update_ratio=1e-6, **small(family)
    )
    assert quiet.run(GoldenDevice(SMALL_TOP), 4).prediction_accuracy()[1] > 0.99


def test_prediction_is_the_next_layers_router_on_this_layers_input() -> None:
    stack = DecodeStack.build("mixtral", layers=3, seed=5, cfg=SMALL_TOP, **SMALL)
    h = stack.embedding[7]
    picked = stack.predict(1, h)
    x = rms_norm(h[None], stack.layers[1].norm)
    scores = x @ stack.layers[1].weights.router
    assert set(picked.tolist()) == set(np.argsort(-scores[0])[:2].tolist())


def test_trace_round_trips_through_json(tmp_path) -> None:
    stack = DecodeStack.build(
        "deepseek_v3", layers=2, seed=1, cfg=SMALL_TOP, **small("deepseek_v3")
    )
    result = stack.run(GoldenDevice(SMALL_TOP), 5)
    path = tmp_path / "trace.json"
    result.trace.save(path)
    loaded = RoutingTrace.load(path)
    assert np.array_equal(loaded.experts, result.trace.experts)
    assert loaded.source.startswith("deepseek_v3 stack")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": 0}, "layers"),
        ({"vocab": 1}, "vocab"),
        ({"update_ratio": 0.0}, "update_ratio"),
        ({"d_model": 4096}, "max_d_model"),
    ],
)
def test_bad_stack_is_refused(kwargs: dict, message: str) -> None:
    options = {**SMALL, **kwargs}
    with pytest.raises(ConfigError, match=message):
        DecodeStack.build("mixtral", cfg=SMALL_TOP, **options)


def test_bad_run_is_refused() -> None:
    stack = DecodeStack.build("mixtral", layers=1, cfg=SMALL_TOP, vocab=8, **SMALL)
    with pytest.raises(ConfigError, match="steps"):
        stack.run(GoldenDevice(SMALL_TOP), 0)
    with pytest.raises(ConfigError, match="prompt_token"):
        stack.run(GoldenDevice(SMALL_TOP), 1, prompt_token=8)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_stream_on_the_rtl_is_bit_exact(family: str) -> None:
    """4 layers × 16 decode steps on the Verilator backend, every layer call bit-exact."""
    stack = DecodeStack.build(family, layers=4, seed=2, cfg=SMALL_TOP, **small(family))
    hw = stack.run(VerilatorDevice(SMALL_TOP), 16)
    assert hw.all_bit_exact
    assert (hw.cycles > 0).all()
    golden = stack.run(GoldenDevice(SMALL_TOP), 16)
    assert hw.tokens == golden.tokens
    assert np.array_equal(hw.trace.experts, golden.trace.experts)
