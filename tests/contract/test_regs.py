"""contract.regs: the register enums agree with the spec vocabulary they encode; optional
units' blocks exist only in their builds."""

import pytest

from contract.regs import (
    COPY_BLOCK,
    COUNTER_BLOCK,
    COUNTER_SOURCES,
    REGISTER_MAP,
    Access,
    Block,
    FFNKind,
    Reg,
    RoutingMode,
    SharedExpert,
)
from pymodel.config import FFN_KINDS, SCORINGS, AccelConfig, ConfigError
from pymodel.families import family_spec


def test_the_enums_name_the_spec_choices_in_order():
    assert [k.name.lower() for k in FFNKind] == list(FFN_KINDS)
    assert [m.name.lower() for m in RoutingMode] == list(SCORINGS)


def test_shared_expert_mode_of_a_spec():
    assert SharedExpert.of(family_spec("qwen2_moe")) is SharedExpert.GATED
    assert SharedExpert.of(family_spec("deepseek_v3")) is SharedExpert.UNGATED
    assert SharedExpert.of(family_spec("mixtral")) is SharedExpert.NONE


def test_every_counter_register_has_one_source():
    assert set(COUNTER_SOURCES) == {r.name for r in COUNTER_BLOCK.registers}


def test_the_copy_block_exists_only_in_builds_with_the_copy_engine():
    """DESIGN §8: an optional unit's registers add nothing to a build without the unit."""
    plain, copy = AccelConfig(), AccelConfig(copy_engine=True)
    copy_regs = {r.name for r in COPY_BLOCK.registers}
    assert {p.name for p in REGISTER_MAP} >= copy_regs
    assert not copy_regs & {p.name for p in REGISTER_MAP.registers_in(plain)}
    assert {p.name for p in REGISTER_MAP.registers_in(copy)} == {p.name for p in REGISTER_MAP}
    # Offsets never move with the switch; identification registers are in every build.
    assert REGISTER_MAP.offset("COPY_SRC") == COPY_BLOCK.base == 0x340
    assert set(REGISTER_MAP.constants(plain)) == set(REGISTER_MAP.constants(copy))
    assert REGISTER_MAP.built_register("COPY_SRC", copy).offset == 0x340
    assert REGISTER_MAP.built_register("STATUS", plain).offset == 0x044
    with pytest.raises(ConfigError, match=r"COPY_SRC \(copy block\).*copy_engine = True"):
        REGISTER_MAP.built_register("COPY_SRC", plain)
    with pytest.raises(KeyError, match="no register named"):
        REGISTER_MAP.built_register("NOPE", copy)


def test_a_block_built_in_some_builds_says_what_it_needs():
    reg = (Reg("X", Access.RO, "x"),)
    with pytest.raises(ConfigError, match="`built` and `needs` come together"):
        Block("opt", 0x800, 8, reg, built=lambda cfg: cfg.copy_engine)
    with pytest.raises(ConfigError, match="`built` and `needs` come together"):
        Block("opt", 0x800, 8, reg, needs="AccelConfig.copy_engine = True")
    grown = REGISTER_MAP.extended(
        Block("opt", 0x800, 8, reg, built=lambda cfg: cfg.sparse_2_4, needs="sparse_2_4")
    )
    assert "X" not in {p.name for p in grown.registers_in(AccelConfig())}
    assert grown.built_register("X", AccelConfig(sparse_2_4=True)).offset == 0x800
