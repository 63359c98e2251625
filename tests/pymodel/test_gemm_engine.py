"""pymodel.gemm_engine: the engine's weight order and golden outputs."""

import random

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.gemm_engine import (
    padded_k,
    random_case,
    reference_output,
    tile_schedule,
    weight_beats,
    weight_stream,
)
from pymodel.numerics import PostMode, apply_lut, gated_multiply, requantize


def beats_by_tile(case, cfg, m_block):
    """The weight beats built tile by tile from `tile_schedule` (the engine's loop nest)."""
    lanes, cols = cfg.weight_rows_per_beat, cfg.cols
    beats = []
    for t in tile_schedule(case.m, case.k, case.n, case.passes, cfg, m_block):
        w = case.weights(t.second_pass)
        end = min(t.k0 + cfg.rows, case.k)
        for r0 in range(t.k0, end, lanes):
            beat = []
            for r in range(r0, r0 + lanes):
                row = [int(v) for v in w[r, t.n0 : t.n0 + cols]] if r < end else []
                beat.append(row + [0] * (cols - len(row)))
            beats.append(beat)
    return beats


@pytest.mark.parametrize(("rows", "bus"), [(4, 8), (3, 8), (5, 16), (8, 4)])
def test_weight_beats_follow_the_tile_schedule(rows, bus):
    """Also when L does not divide R: each K-tile is padded to whole beats on its own."""
    cfg = AccelConfig(rows=rows, cols=4, mem_bytes_per_cycle=bus, max_tokens=16)
    rng = np.random.default_rng(rows * bus)
    case = random_case(rng, cfg, 7, 11, 6, PostMode.SWIGLU)
    assert weight_beats(case, cfg, 4) == beats_by_tile(case, cfg, 4)
    run = padded_k(cfg, 11)
    assert weight_stream(cfg, [case.w_a, case.w_b]).shape == (2 * 2 * run, 4)


def test_dont_care_lanes_get_random_values_and_real_ones_stay():
    cfg = AccelConfig(rows=4, cols=4, mem_bytes_per_cycle=8)
    case = random_case(np.random.default_rng(1), cfg, 2, 5, 3, PostMode.REQUANT)
    clean = np.asarray(weight_beats(case, cfg, 2))
    noisy = np.asarray(weight_beats(case, cfg, 2, random.Random(3)))
    real = np.asarray(beats_by_tile(case, cfg, 2)) != 0
    assert np.array_equal(noisy[real], clean[real])
    assert np.any(noisy[~real] != 0)


@pytest.mark.parametrize("mode", list(PostMode)[:3])
def test_reference_output_is_the_post_processing_chain(mode):
    cfg = AccelConfig(rows=4, cols=4)
    case = random_case(np.random.default_rng(int(mode)), cfg, 3, 9, 5, mode)
    bits = cfg.act_bits
    q_a = requantize(case.x @ case.w_a, case.mult_a, case.shift_a, bits)
    expect = q_a if mode == PostMode.REQUANT else apply_lut(case.lut, q_a, bits)
    if mode == PostMode.SWIGLU:
        q_b = requantize(case.x @ case.w_b, case.mult_b, case.shift_b, bits)
        expect = gated_multiply(expect, q_b, case.gate_mult, case.gate_shift, bits)
    np.testing.assert_array_equal(reference_output(case, cfg), expect)


def test_weight_stream_rejects_mismatched_matrices():
    cfg = AccelConfig(rows=4, cols=4)
    with pytest.raises(ConfigError, match="differ in shape"):
        weight_stream(cfg, [np.zeros((3, 4), np.int8), np.zeros((3, 5), np.int8)])
