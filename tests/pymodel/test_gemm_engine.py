"""pymodel.gemm_engine: the engine's weight order and golden outputs."""

import random

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.gemm_engine import (
    activation_beats,
    activation_lanes,
    command,
    padded_k,
    random_case,
    reference_output,
    tile_k,
    tile_schedule,
    tile_stream_rows,
    weight_beats,
    weight_stream,
    weight_stream_rows,
)
from pymodel.numerics import NumericsError, PostMode, apply_lut, gated_multiply, requantize
from pymodel.weight_formats import WeightFormat, compress_2_4, decompress_2_4, unpack_int4


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


FORMATS = [
    WeightFormat(bits=8, sparse=True),
    WeightFormat(bits=4),
    WeightFormat(bits=4, sparse=True),
]


def _read_back(stream: np.ndarray, cfg: AccelConfig, fmt: WeightFormat, k: int, n: int):
    """Dense [K, N] weights of one matrix read back from its stream (a single pass)."""
    step = tile_k(cfg, fmt)
    value_rows, index_rows = tile_stream_rows(cfg, fmt, step)
    tiles = -(-k // step)
    cols = []
    rows = iter(np.split(stream, len(stream) // (value_rows + index_rows)))
    for _ in range(-(-n // cfg.cols)):
        parts = []
        for _ in range(tiles):
            block = next(rows)
            kept = cfg.rows if fmt.sparse else step
            if fmt.bits == 4:
                values = unpack_int4(block[: kept // 2].view(np.uint8))
            else:
                values = block[:kept]
            if fmt.sparse:
                codes = block[value_rows : value_rows + cfg.rows // 4].view(np.uint8)
                idx = np.stack([(codes >> (2 * j)) & 3 for j in range(4)], axis=1)
                values = decompress_2_4(values, idx.reshape(cfg.rows, cfg.cols))
            parts.append(values)
        cols.append(np.concatenate(parts))
    return np.concatenate(cols, axis=1)[:k, :n]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize(("rows", "cols", "bus"), [(8, 8, 16), (4, 4, 4), (8, 4, 16), (4, 5, 16)])
def test_compressed_stream_reads_back_to_the_dense_weights(fmt, rows, cols, bus):
    """Tile by tile: value rows (int4 unpacked), index rows decoded, decompressed = W."""
    cfg = AccelConfig(rows=rows, cols=cols, mem_bytes_per_cycle=bus)
    seed = rows * 1000 + cols * 10 + bus
    rng = np.random.default_rng(seed)
    k, n = 3 * tile_k(cfg, fmt) + 4, 2 * cols + 1
    case = random_case(rng, cfg, 1, k, n, PostMode.REQUANT, fmt=fmt)
    stream = weight_stream(cfg, [case.w_a], fmt, [case.idx_a])
    assert stream.shape == (weight_stream_rows(cfg, k, n, 1, fmt), cols), seed
    np.testing.assert_array_equal(_read_back(stream, cfg, fmt, k, n), case.w_a, err_msg=str(seed))


def test_bytes_per_two_tiles_of_k_follow_the_format():
    """R = C = 8 on 16-byte beats, 2R K positions of one N-tile: 16, 10, 8 and 6 rows."""
    cfg = AccelConfig()
    rows = {f.name: padded_k(cfg, 16, f) for f in [WeightFormat.DENSE_INT8, *FORMATS]}
    assert rows == {"int8 dense": 16, "int8 2:4": 10, "int4 dense": 8, "int4 2:4": 6}


def test_a_padded_2_4_group_keeps_positions_0_and_1():
    """K = 4 on an 8-row array: groups 1 … 3 of the tile are padding, index bits 0b0100."""
    cfg = AccelConfig(rows=8, cols=4, mem_bytes_per_cycle=16)
    fmt = WeightFormat(sparse=True)
    w = np.array([[0, 5, 0, -3]] * 4).T[:, :4]
    mask = w != 0
    idx = compress_2_4(w, mask)[1]
    stream = weight_stream(cfg, [w], fmt, [idx])
    codes = stream[8:10].view(np.uint8)
    # Tile rows 0, 1 = group 0's kept positions 1 and 3; rows 2 … 7 = (0, 1) pairs.
    assert codes[0].tolist() == [1 | 3 << 2 | 0 << 4 | 1 << 6] * 4
    assert codes[1].tolist() == [0 | 1 << 2 | 0 << 4 | 1 << 6] * 4


def test_sparse_activation_beats_carry_two_tiles_of_k():
    cfg = AccelConfig(rows=4, cols=4, mem_bytes_per_cycle=8, sparse_2_4=True)
    case = random_case(np.random.default_rng(5), cfg, 2, 12, 3, PostMode.REQUANT)
    sparse = random_case(
        np.random.default_rng(5), cfg, 2, 12, 3, PostMode.REQUANT, fmt=WeightFormat(sparse=True)
    )
    assert activation_lanes(cfg) == 8
    dense_beats = activation_beats(case, cfg, 4)
    rows = [list(case.x[i, k : k + 4]) for k in (0, 4, 8) for i in (0, 1)]
    assert [b[:4] for b in dense_beats] == rows
    assert all(b[4:] == [0] * 4 for b in dense_beats)
    expect = [list(sparse.x[i, 0:8]) for i in (0, 1)]
    expect += [list(sparse.x[i, 8:12]) + [0] * 4 for i in (0, 1)]
    assert activation_beats(sparse, cfg, 4) == expect


def test_command_carries_the_format_only_in_a_compressed_build():
    fmt = WeightFormat(bits=4, sparse=True)
    plain = AccelConfig(rows=4, cols=4)
    both = AccelConfig(rows=4, cols=4, sparse_2_4=True, int4_weights=True)
    case = random_case(np.random.default_rng(2), plain, 1, 8, 4, PostMode.REQUANT, fmt=fmt)
    assert command(case, both)["fmt"] == {"sparse": 1, "int4": 1}
    dense = random_case(np.random.default_rng(2), plain, 1, 8, 4, PostMode.REQUANT)
    assert "fmt" not in command(dense, plain)
    with pytest.raises(ConfigError, match="sparse_2_4"):
        command(case, plain.replace(int4_weights=True))


def test_compressed_streams_reject_bad_input():
    cfg = AccelConfig(rows=4, cols=4)
    fmt = WeightFormat(sparse=True)
    with pytest.raises(ConfigError, match="K = 6"):
        weight_stream(cfg, [np.zeros((6, 4), np.int8)], fmt, [np.zeros((3, 4), np.uint8)])
    with pytest.raises(ConfigError, match="positions of matrix 0"):
        weight_stream(cfg, [np.zeros((8, 4), np.int8)], fmt)
    idx = np.tile(np.array([[0], [1]]), (2, 4))
    w = np.zeros((8, 4), np.int8)
    w[3, 2] = 1
    with pytest.raises(ConfigError, match="nonzero weights at positions its 2:4 indices prune"):
        weight_stream(cfg, [w], fmt, [idx])
    with pytest.raises(NumericsError, match="int4"):
        weight_stream(cfg, [np.full((4, 4), 9, np.int8)], WeightFormat(bits=4))
