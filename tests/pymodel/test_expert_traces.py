"""Routing traces: the pre-gating stand-in (accuracy, replay), scoring, and bad trace files."""

from pathlib import Path

import numpy as np
import pytest

from pymodel.config import ConfigError
from pymodel.expert_traces import (
    FLAME_ACCURACY,
    RoutingTrace,
    prediction_accuracy,
    pregated_prediction,
    synthetic_trace,
)
from pymodel.families import family_spec

SEEDS = (0, 1, 2)


def trace(seed: int, *, n_experts: int = 8, top_k: int = 2, steps: int = 400) -> RoutingTrace:
    return synthetic_trace(
        layers=4, steps=steps, n_experts=n_experts, top_k=top_k, skew=1.0, reuse=0.3, seed=seed
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("n_experts", "top_k", "accuracy"), [(8, 2, FLAME_ACCURACY), (64, 8, 0.5)])
def test_prediction_accuracy_converges(seed: int, n_experts: int, top_k: int, accuracy: float):
    print(
        f"seed {seed}; replay: python -m pytest tests/pymodel/test_expert_traces.py "
        f"-k 'converges and {n_experts}-{top_k}-{accuracy}-{seed}'"
    )
    t = trace(seed, n_experts=n_experts, top_k=top_k)
    predicted = pregated_prediction(t, accuracy=accuracy, seed=seed)
    assert predicted.shape == t.experts.shape
    assert (predicted[:, 0] == -1).all()  # layer 0 has no predecessor
    per_layer = prediction_accuracy(t, predicted)
    assert np.isnan(per_layer[0])
    # 400 steps x top_k picks a layer: the binomial mean's sigma is under 0.013.
    sigma = np.sqrt(accuracy * (1 - accuracy) / (400 * top_k))
    assert np.abs(per_layer[1:] - accuracy).max() < 4 * sigma + 1e-12
    # every prediction is an expert, distinct within a call: the wrong ones are never actual
    made = predicted[:, 1:]
    assert (made >= 0).all() and (made < n_experts).all()
    assert (np.diff(np.sort(made, axis=2), axis=2) != 0).all()


def test_prediction_replays_from_its_seed() -> None:
    t = trace(0)
    first = pregated_prediction(t, seed=7)
    assert np.array_equal(first, pregated_prediction(t, seed=7))
    assert not np.array_equal(first, pregated_prediction(t, seed=8))


def test_prediction_extremes() -> None:
    t = trace(1, steps=50)
    perfect = pregated_prediction(t, accuracy=1.0)
    assert np.array_equal(perfect[:, 1:], t.experts[:, 1:])
    assert (prediction_accuracy(t, pregated_prediction(t, accuracy=0.0))[1:] == 0).all()
    # top-k of k experts: no wrong expert exists, a missed slot predicts nothing (-1)
    full = RoutingTrace(np.tile([0, 1], (5, 3, 1)), 2)
    assert (pregated_prediction(full, accuracy=0.0)[:, 1:] == -1).all()


@pytest.mark.parametrize("accuracy", [-0.1, 1.5, True, "0.8"])
def test_prediction_rejects_bad_accuracy(accuracy: object) -> None:
    with pytest.raises(ConfigError, match="accuracy"):
        pregated_prediction(trace(0, steps=4), accuracy=accuracy)  # type: ignore[arg-type]


def test_accuracy_rejects_predictions_of_another_trace() -> None:
    t = trace(0, steps=4)
    with pytest.raises(ConfigError, match=r"\[4, 4, n\]"):
        prediction_accuracy(t, np.zeros((3, 4, 2), dtype=np.int64))
    with pytest.raises(ConfigError, match="expert indices"):
        prediction_accuracy(t, np.full((4, 4, 2), 8))


def test_trace_must_match_the_layer() -> None:
    t = trace(0, steps=4)
    t.check_spec(family_spec("mixtral", n_experts=8, top_k=2))
    with pytest.raises(ConfigError, match="16 experts"):
        t.check_spec(family_spec("mixtral", n_experts=16, top_k=2))
    with pytest.raises(ConfigError, match="top-4"):
        t.check_spec(family_spec("mixtral", n_experts=8, top_k=4))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "not valid JSON"),
        ("[1, 2]", "not a RoutingTrace"),
        ('{"kind": "RoutingTrace", "experts": [[[0, 1]]]}', "missing 'n_experts'"),
        ('{"kind": "RoutingTrace", "n_experts": 4}', "missing 'experts'"),
        ('{"kind": "RoutingTrace", "n_experts": "4", "experts": [[[0, 1]]]}', "must be an int"),
        ('{"kind": "RoutingTrace", "n_experts": true, "experts": [[[0, 1]]]}', "must be an int"),
        ('{"kind": "RoutingTrace", "n_experts": 4, "experts": [[[0, 1]], [[2]]]}', "trace"),
        ('{"kind": "RoutingTrace", "n_experts": 4, "experts": [[[0.5, 1]]]}', "integers"),
        ('{"kind": "RoutingTrace", "n_experts": 4, "experts": [[["a", "b"]]]}', "integers"),
        ('{"kind": "RoutingTrace", "n_experts": 4, "experts": [[[-1, 2]]]}', "expert -1"),
        ('{"kind": "RoutingTrace", "n_experts": 4, "experts": [[[0, 4]]]}', "expert 4, outside"),
        ('{"kind": "RoutingTrace", "n_experts": 4, "experts": [0, 1]}', "steps, layers, top_k"),
    ],
)
def test_bad_trace_files(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        RoutingTrace.load(path)
    assert str(path) in str(info.value)


def test_missing_trace_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        RoutingTrace.load(tmp_path / "absent.json")
