"""AccelConfig / MoESpec: valid defaults, JSON round trips, and a named error per bad field."""

from __future__ import annotations

import dataclasses
import math

import pytest

from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.families import FAMILIES, family_spec

BASE_SPEC = dict(d_model=8, d_ff=16, n_experts=4, top_k=2)


def test_accel_defaults_are_valid_and_consistent() -> None:
    cfg = AccelConfig()
    assert cfg.macs_per_cycle == cfg.rows * cfg.cols
    assert cfg.peak_gops == pytest.approx(2 * 64 * 100e6 / 1e9)
    # The int32 accumulator cannot overflow for K <= max_k products of int8 × int8 …
    assert cfg.max_k * 2 ** (cfg.act_bits + cfg.weight_bits - 2) <= 2 ** (cfg.acc_bits - 1) - 1
    # … and max_k is the largest such K.
    assert (cfg.max_k + 1) * 2 ** (cfg.act_bits + cfg.weight_bits - 2) > 2 ** (cfg.acc_bits - 1) - 1


@pytest.mark.parametrize(
    ("rows", "cols", "bus", "want"),
    [
        (8, 8, 16, 2),  # the default: a 16-byte beat carries two 8-byte rows
        (8, 8, 8, 1),
        (4, 4, 4, 1),
        (8, 8, 4, 1),  # a bus narrower than a row: beats are gathered, one row a cycle
        (8, 12, 32, 2),  # 32 // 12: whole rows only, the beat's tail bytes go unused
        (2, 8, 64, 2),  # never more rows than a tile has
    ],
)
def test_weight_rows_per_beat(rows: int, cols: int, bus: int, want: int) -> None:
    cfg = AccelConfig(rows=rows, cols=cols, mem_bytes_per_cycle=bus)
    assert cfg.weight_rows_per_beat == want


@pytest.mark.parametrize(
    ("cols", "bus", "want"),
    [
        (8, 16, 4),  # the default: a 16-byte beat is 4 words, 4 divides 8 lanes
        (8, 64, 8),  # never more words than a parameter row has lanes
        (8, 4, 1),
        (9, 16, 1),  # a write stays in one row: the count must divide the lanes
        (6, 16, 2),
    ],
)
def test_param_words_per_beat(cols: int, bus: int, want: int) -> None:
    cfg = AccelConfig(rows=4, cols=cols, mem_bytes_per_cycle=bus)
    assert cfg.param_words_per_beat == want
    assert cols % want == 0


@pytest.mark.parametrize(("act_bits", "bus"), [(8, 16), (8, 4), (2, 4), (8, 64)])
def test_lut_entries_per_beat_fit_every_beat_and_table(act_bits: int, bus: int) -> None:
    cfg = AccelConfig(act_bits=act_bits, mem_bytes_per_cycle=bus)
    v = cfg.lut_entries_per_beat
    assert v <= bus and (2**act_bits) % v == 0


def test_accel_json_round_trip() -> None:
    cfg = AccelConfig(rows=16, cols=4, m_tile=4, mult_bits=20, clock_mhz=125.5)
    again = AccelConfig.from_json(cfg.to_json())
    assert again == cfg
    assert AccelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("family", FAMILIES)
def test_family_spec_json_round_trip(family: str) -> None:
    spec = family_spec(family)
    assert MoESpec.from_json(spec.to_json()) == spec


def test_replace_validates_again() -> None:
    cfg = AccelConfig()
    assert cfg.replace(rows=4).rows == 4
    with pytest.raises(ConfigError, match="rows"):
        cfg.replace(rows=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rows", 0),
        ("rows", "8"),
        ("rows", True),
        ("cols", 65),
        ("m_tile", 0),
        ("act_bits", 1),
        ("weight_bits", 9),
        ("acc_bits", 15),
        ("mult_bits", 7),
        ("logit_bits", 25),
        ("logit_frac_bits", 15),
        ("gate_frac_bits", 7),
        ("gate_weight_bits", 16),
        ("max_experts", 0),
        ("max_top_k", 9),
        ("max_groups", 0),
        ("max_tokens", 0),
        ("max_d_model", 10**9),
        ("max_d_ff", 0),
        ("weight_buffers", 3),
        ("mem_bytes_per_cycle", 12),
        ("clock_mhz", 0.5),
        ("clock_mhz", math.nan),
    ],
)
def test_accel_invalid_field_is_named(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        AccelConfig(**{field: value})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"d_model": 0}, "d_model"),
        ({"d_ff": 0}, "d_ff"),
        ({"n_experts": 0}, "n_experts"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 5}, "top_k"),
        ({"scoring": "tanh"}, "scoring"),
        ({"ffn": "swish"}, "ffn"),
        ({"renormalize": 1}, "renormalize"),
        ({"scoring": "sigmoid", "n_group": 3}, "n_group"),
        ({"scoring": "sigmoid", "n_group": 4}, "n_group"),
        ({"topk_group": 2}, "topk_group"),
        ({"scoring": "sigmoid", "n_group": 2, "topk_group": 3}, "topk_group"),
        ({"correction_bias": True}, "correction_bias"),
        ({"correction_bias": "yes"}, "correction_bias"),
        ({"routed_scaling_factor": 0.0}, "routed_scaling_factor"),
        ({"routed_scaling_factor": math.inf}, "routed_scaling_factor"),
        ({"capacity": 0}, "capacity"),
        ({"capacity": -3}, "capacity"),
        ({"shared_d_ff": -1}, "shared_d_ff"),
        ({"shared_gate": True}, "shared_gate"),
        ({"shared_gate": 1, "shared_d_ff": 8}, "shared_gate"),
        ({"name": 3}, "name"),
    ],
)
def test_spec_invalid_field_is_named(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        MoESpec(**{**BASE_SPEC, **changes})


def test_spec_top_k_beyond_selected_groups() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        MoESpec(d_model=8, d_ff=8, n_experts=8, top_k=3, scoring="sigmoid", n_group=4, topk_group=1)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[1, 2]",
        '{"kind": "MoESpec", "d_model": 8}',
        '{"kind": "AccelConfig", "rows": 8, "bogus": 1}',
    ],
)
def test_accel_from_json_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        AccelConfig.from_json(text)


def test_spec_from_json_missing_field_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"missing field.*d_ff"):
        MoESpec.from_json('{"kind": "MoESpec", "d_model": 8}')


@pytest.mark.parametrize(
    ("limit", "spec_changes", "tokens"),
    [
        ("max_tokens", {}, 257),
        ("max_d_model", {"d_model": 2048}, 1),
        ("max_d_ff", {"d_ff": 4096}, 1),
        ("max_d_ff", {"shared_d_ff": 4096}, 1),
        ("max_experts", {"n_experts": 128}, 1),
        ("max_top_k", {"n_experts": 16, "top_k": 9}, 1),
        ("max_groups", {"n_experts": 32, "scoring": "sigmoid", "n_group": 16}, 1),
    ],
)
def test_check_fits_names_the_limit(limit: str, spec_changes: dict, tokens: int) -> None:
    spec = MoESpec(**{**BASE_SPEC, **spec_changes})
    with pytest.raises(ConfigError, match=limit):
        AccelConfig().check_fits(spec, tokens)


def test_check_fits_rejects_zero_tokens() -> None:
    with pytest.raises(ConfigError, match="tokens"):
        AccelConfig().check_fits(MoESpec(**BASE_SPEC), 0)


def test_configs_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        AccelConfig().rows = 4  # type: ignore[misc]
