# amaranth: UnusedElaboratable=no
"""contract.regs (the register table) and rtl.csr (the AXI4-Lite register file made from it)."""

from pathlib import Path

import pytest

from contract.regs import (
    CONTROL_BLOCK,
    REGISTER_MAP,
    Access,
    Block,
    ErrorCause,
    Field,
    Reg,
    RegisterMap,
    config_hash,
)
from pymodel.config import AccelConfig, ConfigError
from rtl.csr import CSR
from sim.build import build_component, emit_verilog, lint_verilog, run_cocotb

TB = Path(__file__).with_name("cocotb_csr.py")
CFG = AccelConfig(rows=4, cols=8, m_tile=16, mem_bytes_per_cycle=8)


@pytest.mark.parametrize("copy_engine", [False, True])
def test_csr_on_verilator_with_cocotbext_axi(copy_engine):
    """Without the copy engine its block is unmapped (SLVERR); with it, mapped like the rest."""
    cfg = CFG.replace(copy_engine=copy_engine)
    build = build_component(CSR(cfg), "csr")
    run_cocotb(build, TB, params={"cfg": cfg, "seed": 5})


def test_csr_verilog_lint_clean():
    assert lint_verilog(emit_verilog(CSR(CFG), "csr"), "csr") == []


def test_map_offsets_are_stable_and_aligned():
    assert REGISTER_MAP.offset("ID_MAGIC") == 0x000
    assert REGISTER_MAP.offset("CTRL") == 0x040
    assert REGISTER_MAP.offset("STATUS") == 0x044
    assert REGISTER_MAP.offset("TOKENS_ADDR") == 0x100
    assert REGISTER_MAP.offset("CYCLES_TOTAL") == 0x200
    assert REGISTER_MAP.offset("EXPERT_INDEX") == 0x300
    for placed in REGISTER_MAP:
        assert placed.offset % (4 * placed.words) == 0, placed.name
    assert REGISTER_MAP.at(0x204) == (REGISTER_MAP["CYCLES_TOTAL"], 1)
    assert REGISTER_MAP.at(0x5C) is None
    assert REGISTER_MAP.at(0x42) is None


def test_adding_a_register_is_one_line_and_moves_nothing():
    grown = Block(
        "control",
        CONTROL_BLOCK.base,
        CONTROL_BLOCK.span,
        (*CONTROL_BLOCK.registers, Reg("NEW_REG", Access.RW, "x")),
    )
    blocks = tuple(grown if b.name == "control" else b for b in REGISTER_MAP.blocks)
    bigger = RegisterMap(blocks)
    last = CONTROL_BLOCK.registers[-1].name
    assert bigger.offset("NEW_REG") == REGISTER_MAP.offset(last) + 4
    for placed in REGISTER_MAP:
        assert bigger.offset(placed.name) == placed.offset


def test_a_top_extends_the_map_with_its_own_block():
    extra = Block("extra", 0x400, 0x10, (Reg("SCALE", Access.RW, "x"),))
    bigger = REGISTER_MAP.extended(extra)
    assert bigger.offset("SCALE") == 0x400
    assert bigger.offset("STATUS") == REGISTER_MAP.offset("STATUS")
    with pytest.raises(ConfigError, match="overlap"):
        REGISTER_MAP.extended(Block("clash", 0x300, 0x10, ()))


def test_identification_constants_encode_the_config():
    values = REGISTER_MAP.constants(CFG)
    array = REGISTER_MAP["CONFIG_ARRAY"].register.unpack(values["CONFIG_ARRAY"])
    assert array == {"rows": 4, "cols": 8, "m_tile": 16, "mem_bytes_per_cycle": 8}
    assert values["CONFIG_HASH"] == config_hash(CFG) != config_hash(AccelConfig())
    assert values["ID_MAGIC"] == int.from_bytes(b"MoEA", "big")


def test_pack_and_unpack_fields():
    status = REGISTER_MAP["STATUS"].register
    assert status.pack(done=1) == 0b010
    assert status.unpack(0b101) == {"busy": 1, "done": 0, "error": 1}
    mode = REGISTER_MAP["ROUTING_MODE"].register
    assert mode.unpack(mode.pack(scoring=1, n_group=8, topk_group=4))["n_group"] == 8
    with pytest.raises(ValueError, match="does not fit"):
        status.pack(done=2)
    with pytest.raises(KeyError, match="no field 'bogus'"):
        status.pack(bogus=1)


def test_error_cause_codes_are_stable():
    assert ErrorCause.NONE == 0
    assert ErrorCause.BUS_READ_ERROR == 1
    assert ErrorCause.BUS_WRITE_ERROR == 2
    assert ErrorCause.START_WHILE_BUSY == 3
    assert ErrorCause.BAD_DESCRIPTOR == 4
    assert ErrorCause.WATCHDOG_TIMEOUT == 5


def test_bad_tables_are_rejected():
    with pytest.raises(ConfigError, match="overlap"):
        RegisterMap((Block("a", 0, 0x10, ()), Block("b", 0x8, 0x10, ())))
    with pytest.raises(ConfigError, match="defined twice"):
        RegisterMap(
            (Block("a", 0, 8, (Reg("X", Access.RW),)), Block("b", 8, 8, (Reg("X", Access.RW),)))
        )
    with pytest.raises(ConfigError, match="needs 12 bytes"):
        Block("a", 0, 8, (Reg("X", Access.RW), Reg("Y", Access.RW), Reg("Z", Access.RW)))
    with pytest.raises(ConfigError, match="64-bit registers must be RO"):
        Reg("X", Access.RW, width=64)
    with pytest.raises(ConfigError, match="fields use 33 bits"):
        Reg("X", fields=(Field("a", 32, Access.RW), Field("b", 1, Access.RW)))
    with pytest.raises(ConfigError, match="UPPER_CASE"):
        Reg("lower", Access.RW)
    with pytest.raises(ConfigError, match="either an access kind or fields"):
        Reg("X")
    with pytest.raises(ConfigError, match="CONST fields"):
        Field("a", 1, Access.CONST)
    with pytest.raises(KeyError, match="no register named 'NOPE'"):
        REGISTER_MAP.offset("NOPE")


def test_csr_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="AccelConfig"):
        CSR({"rows": 4})
    with pytest.raises(ConfigError, match="RegisterMap"):
        CSR(CFG, regmap=[])
    clash = RegisterMap(
        (
            Block(
                "a",
                0,
                8,
                (Reg("S", fields=(Field("x", 1, Access.W1C), Field("x_set", 1, Access.RW))),),
            ),
        )
    )
    with pytest.raises(ConfigError, match="clashes"):
        CSR(CFG, clash)
