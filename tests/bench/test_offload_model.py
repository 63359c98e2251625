"""`bench/offload_model.py` on a small study: the warm tail, the bounds, the memo, the plot."""

from pathlib import Path

import numpy as np
import pytest

from bench import offload_model as om
from pymodel import expert_cache
from pymodel.expert_cache import HostLink, decode_cost, simulate_cache
from pymodel.expert_traces import synthetic_trace

# Mixtral-8x7B at full size, 2 layers: 28 distinct layer calls at most, a second or two.
SMALL = om.Study(
    "Mixtral-8x7B", layers=2, slots=(2,), sweep=(0, 8), steps=6, warmup=200, sensitivity_steps=4
)


@pytest.fixture(scope="module")
def small_result() -> dict:
    return om.run_study(SMALL, links=om.LINK_SWEEP)


def test_tail_is_the_end_of_one_replay() -> None:
    trace = synthetic_trace(layers=3, steps=40, n_experts=8, top_k=2, seed=3)
    cache = simulate_cache(trace, 3, "lru")
    part, end = om.tail(trace, cache, 10)
    assert np.array_equal(part.experts, trace.experts[-10:])
    assert np.array_equal(end.miss_mask, cache.miss_mask[-10:])
    assert (end.hits + end.misses == 10 * 2).all()
    assert end.misses.sum() == cache.miss_mask[-10:].sum()


def test_small_study_between_the_bounds(small_result: dict) -> None:
    result = small_result
    rows = {(r["policy"], r["slots"]): r for r in result["rows"]}
    assert set(rows) == {(p, s) for p in expert_cache.POLICIES for s in (2, 4)}
    low, high = result["all_in_device"], result["rows"][0]["all_over_link"]
    assert low < high
    for r in result["rows"]:
        assert low <= r["plain"]["cycles_per_token"] <= high
        assert r["plain"]["hidden"] == pytest.approx(
            (high - r["plain"]["cycles_per_token"]) / (high - low)
        )
    # pinned fetches nothing ahead: prefetch changes nothing
    assert rows["pinned", 4]["prefetch"] == rows["pinned", 4]["plain"]
    # the sweep: no slot is the all-over-link bound, every expert (warm) the other
    none, every = result["sweep"]["8"]["plain"]
    assert none == pytest.approx(high)
    assert every == pytest.approx(low)
    assert 0.8 < result["prediction_accuracy"] < 0.9
    assert len(result["sensitivity"]) == len(om.VARIANTS) * len(expert_cache.POLICIES)
    assert "| LRU | 2 |" in om.markdown(result)


def test_memo_changes_no_figure() -> None:
    replays = om.Replays(SMALL)
    trace, cache = replays.replay("lfu", 2, True)
    link = HostLink(bytes_per_cycle=8, latency=1000)
    plain = decode_cost(om.CFG, SMALL.spec, trace, cache, link)
    memo: dict[tuple[int, ...], int] = {}
    first = decode_cost(om.CFG, SMALL.spec, trace, cache, link, memo=memo)
    assert memo
    assert first == plain == decode_cost(om.CFG, SMALL.spec, trace, cache, link, memo=memo)


def test_plot_is_written(tmp_path: Path, small_result: dict) -> None:
    out = tmp_path / "offload.png"
    om.plot([small_result, small_result], out, om.CFG.clock_mhz)
    assert out.stat().st_size > 10_000


def test_recorded_trace_is_priced_with_its_own_pre_gating() -> None:
    study = om.Study("Mixtral-8x7B", layers=3, slots=(4,), sweep=(), steps=3, warmup=3)
    result = om.recorded_study(study)
    assert [r["policy"] for r in result["rows"]] == list(expert_cache.POLICIES)
    assert 0.0 <= result["prediction_accuracy"] <= 1.0
    assert "real pre-gating accuracy" in om.recorded_markdown(result)
