"""contract.regs: the register enums agree with the spec vocabulary they encode."""

from contract.regs import COUNTER_BLOCK, COUNTER_SOURCES, FFNKind, RoutingMode, SharedExpert
from pymodel.config import FFN_KINDS, SCORINGS
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
