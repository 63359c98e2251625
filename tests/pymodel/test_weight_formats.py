"""The compressed weight formats: pruning rule, compressed and packed forms, group scales."""

from __future__ import annotations

import numpy as np
import pytest

from pymodel.config import AccelConfig, ConfigError
from pymodel.numerics import NumericsError
from pymodel.weight_formats import (
    GROUP_SCALE_FRAC_BITS,
    WeightFormat,
    check_supported,
    compress_2_4,
    decompress_2_4,
    grouped_matmul,
    idx_mask,
    pack_int4,
    prune_2_4_mask,
    quantize_weights,
    unpack_int4,
)

SEED = 19
"""Seed of the random cases here (replay: pytest tests/pymodel/test_weight_formats.py)."""


def test_format_parse_names_and_json() -> None:
    assert WeightFormat.parse() == WeightFormat.DENSE_INT8 == WeightFormat()
    assert not WeightFormat.DENSE_INT8.compressed
    fmt = WeightFormat.parse("int4", "2:4", 128)
    assert (fmt.bits, fmt.sparse, fmt.group_size) == (4, True, 128)
    assert (fmt.weights, fmt.sparsity, fmt.name, fmt.qmax) == ("int4", "2:4", "int4 2:4 g128", 7)
    assert fmt.compressed
    for f in (fmt, WeightFormat.DENSE_INT8, WeightFormat(4), WeightFormat(8, True)):
        assert WeightFormat.from_json(f.to_json()) == f


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(weights="int2"), "weights must be one of"),
        (dict(sparsity="1:4"), "sparsity must be one of"),
        (dict(weights="int8", group_size=32), "int4 weights only"),
        (dict(weights="int4", group_size=48), "group_size = 48 is not one of"),
    ],
)
def test_format_rejects(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WeightFormat.parse(**kwargs)


def test_format_rejects_bad_json() -> None:
    with pytest.raises(ConfigError, match="not a WeightFormat"):
        WeightFormat.from_json("int8")


def test_check_k() -> None:
    with pytest.raises(ConfigError, match="K = 30 is not a multiple of 4"):
        WeightFormat(8, True).check_k(30)
    with pytest.raises(ConfigError, match="group size 64 does not divide weight K = 96"):
        WeightFormat(4, False, 64).check_k(96)
    WeightFormat(4, True, 32).check_k(96)


def test_prune_rule_by_hand() -> None:
    w = np.array(
        [
            [0.1, 1.0, -3.0, 0.5],
            [-0.9, 1.0, 3.0, 0.5],
            [0.3, 1.0, 0.0, 0.5],
            [0.2, 1.0, -3.0, 0.5],
        ]
    )
    mask = prune_2_4_mask(w)
    # col 0: |-0.9| and 0.3 largest; col 1: all tie → lowest two k; col 2: 3 ties
    # (k = 0, 1, 3) → 0 and 1; col 3: all tie → 0, 1.
    expected = np.array(
        [
            [False, True, True, True],
            [True, True, True, True],
            [True, False, False, False],
            [False, False, False, False],
        ]
    )
    np.testing.assert_array_equal(mask, expected)


def test_prune_keeps_two_largest_random() -> None:
    rng = np.random.default_rng(SEED)
    w = rng.standard_normal((32, 16))
    mask = prune_2_4_mask(w)
    groups = np.abs(w).reshape(8, 4, 16)
    kept = np.where(mask.reshape(8, 4, 16), groups, np.inf).min(axis=1)
    dropped = np.where(mask.reshape(8, 4, 16), -np.inf, groups).max(axis=1)
    assert np.all(mask.reshape(8, 4, 16).sum(axis=1) == 2)
    assert np.all(kept >= dropped)


def test_prune_errors() -> None:
    with pytest.raises(ConfigError, match="K = 6 is not a multiple of 4"):
        prune_2_4_mask(np.ones((6, 2)))
    with pytest.raises(NumericsError, match="NaN"):
        prune_2_4_mask(np.full((4, 2), np.nan))
    with pytest.raises(ConfigError, match="2-D"):
        prune_2_4_mask(np.ones(8))


def test_compress_layout_by_hand() -> None:
    w = np.array([[5, 0], [0, -3], [7, 0], [0, 2], [1, 0], [0, 0], [0, 4], [-6, 0]])
    mask = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 1], [0, 1], [0, 0], [1, 0]], dtype=bool)
    mask[6, 1] = False
    values, idx = compress_2_4(w, mask)
    np.testing.assert_array_equal(idx, [[0, 1], [2, 3], [0, 0], [3, 1]])
    np.testing.assert_array_equal(values, [[5, -3], [7, 2], [1, 0], [-6, 0]])
    assert idx.dtype == np.uint8
    np.testing.assert_array_equal(decompress_2_4(values, idx), np.where(mask, w, 0))


def test_compress_round_trip_random() -> None:
    rng = np.random.default_rng(SEED)
    w = rng.standard_normal((64, 24))
    mask = prune_2_4_mask(w)
    q = rng.integers(-127, 128, size=w.shape).astype(np.int8)
    values, idx = compress_2_4(q, mask)
    assert values.shape == idx.shape == (32, 24)
    assert np.all(idx.reshape(16, 2, 24)[:, 0] < idx.reshape(16, 2, 24)[:, 1])
    np.testing.assert_array_equal(idx_mask(idx), mask)
    np.testing.assert_array_equal(decompress_2_4(values, idx), np.where(mask, q, 0))
    assert decompress_2_4(values, idx).dtype == np.int8


def test_compress_errors() -> None:
    q = np.zeros((8, 2), dtype=np.int8)
    with pytest.raises(ConfigError, match="keeps 3 entries of group 1"):
        bad = np.zeros((8, 2), dtype=bool)
        bad[[0, 1], :] = True
        bad[[4, 5, 6], 0] = True
        bad[[4, 5], 1] = True
        compress_2_4(q, bad)
    with pytest.raises(ConfigError, match="bool array of shape"):
        compress_2_4(q, np.ones((8, 2), dtype=np.int8))
    with pytest.raises(NumericsError, match="integer"):
        compress_2_4(q.astype(float), prune_2_4_mask(np.ones((8, 2))))
    with pytest.raises(NumericsError, match="ascending"):
        decompress_2_4(np.zeros((2, 1), np.int8), np.array([[1], [1]], np.uint8))
    with pytest.raises(NumericsError, match=r"0\.\.3"):
        idx_mask(np.array([[0], [4]]))


def test_pack_by_hand() -> None:
    q = np.array([[-7, 7, 0], [7, -7, -1], [3, -8, 1]])
    packed = pack_int4(q)
    assert packed.dtype == np.uint8 and packed.shape == (2, 3)
    # byte = low nibble q[2j] | high nibble q[2j+1]; −7 = 0x9, 7 = 0x7, −1 = 0xF, −8 = 0x8.
    np.testing.assert_array_equal(packed, [[0x79, 0x97, 0xF0], [0x03, 0x08, 0x01]])
    np.testing.assert_array_equal(unpack_int4(packed, 3), q)


def test_pack_round_trip_random() -> None:
    rng = np.random.default_rng(SEED)
    for k in (1, 2, 7, 16):
        q = rng.integers(-7, 8, size=(k, 5))
        q[0, 0], q[-1, -1] = -7, 7
        out = unpack_int4(pack_int4(q), k)
        assert out.dtype == np.int8
        np.testing.assert_array_equal(out, q)


def test_pack_errors() -> None:
    with pytest.raises(NumericsError, match="signed 4-bit range"):
        pack_int4(np.array([[8]]))
    with pytest.raises(NumericsError, match="signed 4-bit range"):
        pack_int4(np.array([[-9]]))
    with pytest.raises(NumericsError, match="uint8"):
        unpack_int4(np.zeros((1, 1), np.int8))
    with pytest.raises(ConfigError, match="hold K = 3 or 4, not 5"):
        unpack_int4(np.zeros((2, 1), np.uint8), 5)


def test_quantize_weights_per_channel() -> None:
    rng = np.random.default_rng(SEED)
    w = rng.standard_normal((16, 4))
    for bits in (8, 4):
        qw = quantize_weights(w, WeightFormat(bits))
        top = 2 ** (bits - 1) - 1
        np.testing.assert_allclose(qw.scale, np.abs(w).max(axis=0) / top)
        assert np.abs(qw.q).max() == top and qw.q.min() >= -top
        assert qw.idx is None and qw.group_mult is None
        assert np.max(np.abs(qw.q * qw.scale - w)) <= qw.scale.max() / 2 + 1e-12


def test_quantize_weights_2_4_scales_over_kept() -> None:
    w = np.array([[0.5, 1.0], [0.1, -2.0], [4.0, 0.2], [0.2, 0.3]])
    qw = quantize_weights(w, WeightFormat(4, True))
    # col 0 keeps 0.5 and 4.0; col 1 keeps 1.0 and −2.0.
    np.testing.assert_allclose(qw.scale, [4.0 / 7, 2.0 / 7])
    np.testing.assert_array_equal(qw.q, [[1, 4], [0, -7], [7, 0], [0, 0]])
    np.testing.assert_array_equal(qw.idx, [[0, 0], [2, 1]])


def test_quantize_weights_grouped() -> None:
    rng = np.random.default_rng(SEED)
    w = rng.standard_normal((64, 3))
    w[32:, 1] *= 0.01
    w[:32, 2] = 0.0
    qw = quantize_weights(w, WeightFormat(4, False, 32))
    one = 2**GROUP_SCALE_FRAC_BITS
    assert qw.group_mult.shape == (2, 3)
    assert np.all(qw.group_mult.max(axis=0) == one)
    assert qw.group_mult[1, 1] < one // 50
    assert qw.group_mult[0, 2] == 1 and np.all(qw.q[:32, 2] == 0)
    enc = np.repeat(qw.scale * qw.group_mult / one, 32, axis=0)
    assert np.all(np.abs(qw.q * enc - w) <= enc / 2 + 1e-12)


def test_grouped_matmul_exact_rule() -> None:
    cfg = AccelConfig()
    rng = np.random.default_rng(SEED)
    x = rng.integers(-127, 128, size=(5, 64))
    q = rng.integers(-7, 8, size=(64, 3))
    gm = rng.integers(1, 2**16 + 1, size=(2, 3))
    gm[:, 0] = 2**16
    out = grouped_matmul(x, q, gm, cfg)
    np.testing.assert_array_equal(out[:, 0], x @ q[:, 0])
    for m in range(5):
        for n in range(3):
            exact = sum(
                int(x[m, g * 32 : g * 32 + 32] @ q[g * 32 : g * 32 + 32, n]) * int(gm[g, n])
                for g in range(2)
            )
            sign = 1 if exact >= 0 else -1
            assert out[m, n] == sign * ((abs(exact) + 2**15) >> 16)
    with pytest.raises(NumericsError, match="group ratios must lie"):
        grouped_matmul(x, q, np.zeros((2, 3), np.int64), cfg)
    with pytest.raises(ConfigError, match="do not fit"):
        grouped_matmul(x, q, np.ones((3, 3), np.int64), cfg)


def test_check_supported() -> None:
    dense = AccelConfig()
    both = AccelConfig(sparse_2_4=True, int4_weights=True)
    check_supported(WeightFormat.DENSE_INT8, dense)
    for fmt in (WeightFormat(8, True), WeightFormat(4), WeightFormat(4, True)):
        check_supported(fmt, both)
    with pytest.raises(ConfigError, match=r"AccelConfig\.sparse_2_4 = True"):
        check_supported(WeightFormat(8, True), dense)
    with pytest.raises(ConfigError, match=r"AccelConfig\.int4_weights = True"):
        check_supported(WeightFormat(4), AccelConfig(sparse_2_4=True))
    with pytest.raises(ConfigError, match="applies one scale per output channel"):
        check_supported(WeightFormat(4, False, 32), both)
    with pytest.raises(ConfigError, match="expected a WeightFormat"):
        check_supported("int4", both)
