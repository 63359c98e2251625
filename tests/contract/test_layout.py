"""contract.layout: the memory layout's rules, on their own (no image, no simulation).

The images built from them are checked by `tests/sw_driver/test_compile.py`
and, bit for bit, by running them on the RTL.
"""

import numpy as np
import pytest

from contract import layout
from pymodel.config import AccelConfig, ConfigError


def test_weight_stream_interleaves_swiglu_passes_per_tile():
    cfg = AccelConfig(cols=4, mem_bytes_per_cycle=8)  # two rows a beat: K = 2 needs no pad
    w1 = np.arange(12, dtype=np.int8).reshape(2, 6)
    w3 = -w1
    s = layout.weight_stream(cfg, [w1, w3])
    assert s.shape == (layout.weight_stream_rows(cfg, 2, 6, 2), 4)
    np.testing.assert_array_equal(s[0], w1[0, :4])
    np.testing.assert_array_equal(s[2], w3[0, :4])
    np.testing.assert_array_equal(s[4], [w1[0, 4], w1[0, 5], 0, 0])


@pytest.mark.parametrize(("bus", "lanes"), [(4, 1), (8, 2), (16, 4)])
def test_weight_stream_pads_each_k_run_to_whole_beats(bus, lanes):
    """K = 5 rows per (N-tile, pass) run: zero rows up to a multiple of the rows per beat."""
    cfg = AccelConfig(rows=4, cols=4, mem_bytes_per_cycle=bus)
    assert cfg.weight_rows_per_beat == lanes
    rng = np.random.default_rng(bus)
    w1, w3 = (rng.integers(-128, 128, size=(5, 6)).astype(np.int8) for _ in range(2))
    s = layout.weight_stream(cfg, [w1, w3])
    run = layout.padded_k(cfg, 5)
    assert run == -(-5 // lanes) * lanes
    assert s.shape == (layout.weight_stream_rows(cfg, 5, 6, 2), 4) == (2 * 2 * run, 4)
    for j, (lo, hi) in enumerate(((0, 4), (4, 6))):
        for p, w in enumerate((w1, w3)):
            block = s[(2 * j + p) * run : (2 * j + p + 1) * run]
            np.testing.assert_array_equal(block[:5, : hi - lo], w[:, lo:hi])
            assert not block[:5, hi - lo :].any() and not block[5:].any()


def test_descriptor_and_routing_record_dtypes_are_whole_words():
    assert layout.EXPERT_DESCRIPTOR.itemsize % 4 == 0
    assert layout.ROUTING_RECORD_BYTES == 8 and layout.ROUTING_RECORD.names == ("expert", "weight")
    for bus in (4, 16, 64):
        cfg = AccelConfig(mem_bytes_per_cycle=bus)
        assert layout.desc_bytes(cfg) == max(layout.EXPERT_DESCRIPTOR.itemsize, bus)
        assert layout.desc_bytes(cfg) % bus == 0


def test_rows_are_padded_to_the_widest_unit():
    cfg = AccelConfig(rows=8, cols=4, mem_bytes_per_cycle=16)
    assert layout.row_unit(cfg) == 16
    assert [layout.row_bytes(cfg, d) for d in (1, 16, 17)] == [16, 16, 32]
    assert layout.max_sorted_rows(cfg, tokens=4, top_k=2, n_experts=3) == 8 + 3 * (cfg.m_tile - 1)


def test_param_words_pack_and_pad_each_section():
    cfg = AccelConfig(cols=4)
    words = layout.param_words(cfg, [(np.array([3, 5]), np.array([1, 2]))])
    assert words.tolist() == [3 | 1 << 24, 5 | 2 << 24, 0, 0]
    with pytest.raises(ConfigError, match="do not fit"):
        layout.param_word(1 << 24, 0)


@pytest.mark.parametrize(
    ("bits", "granule", "align"), [(32, 1, 64), (40, 256, 256), (48, 65536, 65536)]
)
def test_address_words_count_granules_of_the_bus_width(bits, granule, align):
    cfg = AccelConfig(addr_bits=bits)
    assert layout.addr_granule(cfg) == granule and layout.region_align(cfg) == align
    top = 2**bits - granule  # the last granule a 32-bit word can name
    assert layout.addr_word(cfg, top, "output") == 2**32 - 1
    assert layout.addr_word(cfg, 3 * granule, "tokens") << layout.addr_shift(cfg) == 3 * granule
    with pytest.raises(ConfigError, match=rf"region 'luts' at .* beyond the {bits}-bit address"):
        layout.addr_word(cfg, 2**bits, "luts")
    if granule > 1:
        with pytest.raises(ConfigError, match=r"region 'bias' at .* not a multiple of the"):
            layout.addr_word(cfg, granule + 64, "bias")
    assert set(layout.ADDRESS_FIELDS) <= set(layout.DESC_FIELDS)
