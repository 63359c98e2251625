"""Search spaces, workloads and the model evaluation a trial gets."""

from __future__ import annotations

import numpy as np
import pytest

from explore.errors import ExploreError
from explore.objectives import METRICS, OBJECTIVES, check_objectives, evaluate, evaluate_batch
from explore.space import DEFAULT_SPACE, Choice, IntRange, SearchSpace, config_hash, parse_param
from explore.workload import Workload, parse_layer
from pymodel.config import AccelConfig
from pymodel.cycles import layer_cycles
from pymodel.models import REAL_MODELS
from pymodel.resources import estimate


def test_parse_param_forms() -> None:
    assert parse_param("m_tile=2:8") == ("m_tile", IntRange(2, 8))
    assert parse_param("rows=4,8") == ("rows", Choice((4, 8)))
    assert parse_param("cols=8") == ("cols", Choice((8,)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rows", "expected NAME=LOW:HIGH"),
        ("speed=1:2", "unknown parameter 'speed'"),
        ("m_tile=9:3", "empty range"),
        ("m_tile=a:b", "integers"),
        ("rows=4,4", "listed twice"),
    ],
)
def test_parse_param_errors(text: str, message: str) -> None:
    with pytest.raises(ExploreError, match=message):
        parse_param(text)


def test_space_checks_every_value() -> None:
    with pytest.raises(ExploreError, match="power of two"):
        SearchSpace({"cols": IntRange(2, 5)})
    with pytest.raises(ExploreError, match="empty"):
        SearchSpace({})
    space = SearchSpace(DEFAULT_SPACE)
    cfg = space.config({"rows": 4, "cols": 16, "m_tile": 2, "mem_bytes_per_cycle": 32,
                        "max_tokens": 64})  # fmt: skip
    assert (cfg.rows, cfg.cols, cfg.max_tokens) == (4, 16, 64)
    assert config_hash(cfg) == config_hash(AccelConfig.from_json(cfg.to_json()))
    assert config_hash(cfg) != config_hash(AccelConfig())


def test_layers() -> None:
    assert parse_layer("DeepSeek-V3")[1] == REAL_MODELS["DeepSeek-V3"]
    _, spec = parse_layer("deepseek_v3:d_model=64,d_ff=32,n_experts=16,top_k=4,n_group=4,"
                          "topk_group=2,shared_d_ff=64,renormalize=false")  # fmt: skip
    assert (spec.n_group, spec.topk_group, spec.renormalize) == (4, 2, False)
    for bad in ("mixtral:top_k", "mixtral:top_k=x", "switch:top_k=2", "nope"):
        with pytest.raises(ExploreError):
            parse_layer(bad)
    with pytest.raises(ExploreError, match="at least 1"):
        Workload.parse(["Mixtral-8x7B"], 0, 4, 0)


def test_evaluate_is_the_models(seed: int) -> None:
    """A trial's numbers are the cycle, energy and resource models' for the workload's routing."""
    wl = Workload.parse(["Mixtral-8x7B", "olmoe:d_model=256,d_ff=128,n_experts=16"], 2, 64, seed)
    cfg = AccelConfig(rows=16, cols=8, mem_bytes_per_cycle=32)
    m = evaluate(cfg, wl)
    assert set(m) == set(METRICS)
    decode = sum(
        int(layer_cycles(cfg, spec, 2, wl.counts(name, 2)).cycles_total[0])
        for name, spec in wl.layers
    )
    assert m["decode_cycles"] == decode
    assert m["decode_latency_us"] == pytest.approx(decode / cfg.clock_mhz)
    assert m["prefill_tokens_per_s"] == pytest.approx(64 * 100e6 / m["prefill_cycles"])
    assert m["dsps"] == estimate(cfg).dsps
    for name, spec in wl.layers:  # every token keeps k experts: no capacity in these layers
        assert wl.counts(name, 64).sum() == 64 * spec.top_k
    assert np.array_equal(
        wl.counts("Mixtral-8x7B", 64),
        Workload.parse(["Mixtral-8x7B"], 2, 64, seed).counts("Mixtral-8x7B", 64),
    )
    assert evaluate_batch([cfg, AccelConfig(acc_bits=20, max_d_model=16, max_d_ff=16)], wl)[
        1
    ].startswith("MoESpec.d_model")


def test_objectives() -> None:
    assert [o.name for o in check_objectives(["dsps", "luts"])] == ["dsps", "luts"]
    assert OBJECTIVES["prefill_tokens_per_s"].direction == "maximize"
    with pytest.raises(ExploreError, match="does not exist"):
        check_objectives(["latency"])
    with pytest.raises(ExploreError, match="twice"):
        check_objectives(["dsps", "dsps"])
