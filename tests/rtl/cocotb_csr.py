"""cocotb side of tests/rtl/test_csr.py: the register file of REGISTER_MAP over AXI4-Lite."""

import random

import cocotb
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge
from cocotbext.axi import AxiLiteBus, AxiLiteMaster, AxiResp

from contract.regs import REGISTER_MAP, Access
from sim.tb import reset_dut, start_clock
from sim.tb.params import tb_params

P = tb_params()

CFG = P.config("cfg")
RNG = random.Random(P.get("seed", 1))
UNMAPPED = (0x24, 0x5C, 0x158, 0x278, 0x308, 0x3FC, 0x1000, 0xFFFF_FFFC)
BUILT = REGISTER_MAP.registers_in(CFG)
"""The registers of this build (a block it lacks, `Block.built`, is unmapped)."""
ABSENT = tuple(p.offset + 4 * i for p in REGISTER_MAP if p not in BUILT for i in range(p.words))


def port(dut, reg: str, member: str):
    return getattr(dut, f"regs__{reg.lower()}__{member}")


def ro_ports(dut):
    for placed in BUILT:
        for f in placed.register.fields_in(CFG):
            if f.access is Access.RO:
                yield placed, f, port(dut, placed.name, f.name)
            elif f.access is Access.W1C:
                yield placed, f, port(dut, placed.name, f"{f.name}_set")


async def setup(dut, *, master: bool = True):
    start_clock(dut.clk)
    for _, _, sig in ro_ports(dut):
        sig.value = 0
    bus = (
        AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"), dut.clk, dut.rst)
        if master
        else None
    )
    await reset_dut(dut, dut.clk)
    return bus


async def read(bus, offset: int) -> tuple[int, AxiResp]:
    resp = await bus.read(offset, 4)
    return int.from_bytes(resp.data, "little"), resp.resp


async def write(bus, offset: int, value: int) -> AxiResp:
    return (await bus.write(offset, value.to_bytes(4, "little"))).resp


def rw_mask(reg) -> int:
    lsbs = reg.lsbs
    fields = reg.fields_in(CFG)
    return sum(((1 << f.width) - 1) << lsbs[f.name] for f in fields if f.access is Access.RW)


@cocotb.test()
async def identification_registers_match_the_config(dut):
    bus = await setup(dut)
    for name, value in REGISTER_MAP.constants(CFG).items():
        data, resp = await read(bus, REGISTER_MAP.offset(name))
        assert resp == AxiResp.OKAY and data == value, (name, hex(data), hex(value))


@cocotb.test()
async def rw_registers_read_back_and_honour_strobes(dut):
    bus = await setup(dut)
    rw = [p for p in BUILT if all(f.access is Access.RW for f in p.register.fields)]
    for placed in rw:  # reset values
        reg = placed.register
        data, _ = await read(bus, placed.offset)
        assert data == reg.pack(**{f.name: f.reset for f in reg.fields}), placed.name
    values = {}
    for placed in rw:
        values[placed.name] = RNG.getrandbits(32) & rw_mask(placed.register)
        assert await write(bus, placed.offset, values[placed.name]) == AxiResp.OKAY
    for placed in rw:
        data, resp = await read(bus, placed.offset)
        assert resp == AxiResp.OKAY and data == values[placed.name], placed.name
        fields = placed.register.unpack(values[placed.name])
        for f in placed.register.fields_in(CFG):
            assert int(port(dut, placed.name, f.name).value) == fields[f.name]
    # One byte (strobe 0b0100) changes only byte 2.
    offset = REGISTER_MAP.offset("TOKENS_ADDR")
    resp = await bus.write(offset + 2, b"\xa5")
    assert resp.resp == AxiResp.OKAY
    data, _ = await read(bus, offset)
    assert data == (values["TOKENS_ADDR"] & ~0x00FF_0000) | 0x00A5_0000


@cocotb.test()
async def read_only_inputs_and_64_bit_latch(dut):
    bus = await setup(dut)
    expect = {}
    for placed, f, sig in ro_ports(dut):
        if f.access is Access.RO:
            value = RNG.getrandbits(f.width)
            sig.value = value
            expect[(placed.name, f.name)] = value
    await RisingEdge(dut.clk)
    for placed in BUILT:
        reg = placed.register
        if not all(f.access is Access.RO for f in reg.fields):
            continue
        word = 0
        for i in range(placed.words):
            data, resp = await read(bus, placed.offset + 4 * i)
            assert resp == AxiResp.OKAY
            word |= data << (32 * i)
        assert reg.unpack(word) == {f.name: expect[(placed.name, f.name)] for f in reg.fields}
    # The high word comes from the low-word read, even if the counter moved since.
    counter = port(dut, "CYCLES_TOTAL", "value")
    counter.value = 0x1234_5678_9ABC_DEF0
    offset = REGISTER_MAP.offset("CYCLES_TOTAL")
    low, _ = await read(bus, offset)
    counter.value = 0xFFFF_0000_0000_0000
    high, _ = await read(bus, offset + 4)
    assert (high << 32 | low) == 0x1234_5678_9ABC_DEF0


@cocotb.test()
async def w1c_status_and_start_pulse(dut):
    bus = await setup(dut)
    status = REGISTER_MAP["STATUS"].register
    offset = REGISTER_MAP.offset("STATUS")
    port(dut, "STATUS", "done_set").value = 1
    port(dut, "STATUS", "error_set").value = 1
    port(dut, "STATUS", "busy").value = 1
    await RisingEdge(dut.clk)
    port(dut, "STATUS", "done_set").value = 0
    port(dut, "STATUS", "error_set").value = 0
    data, _ = await read(bus, offset)
    assert status.unpack(data) == {"busy": 1, "done": 1, "error": 1}
    assert await write(bus, offset, status.pack(done=1, busy=1)) == AxiResp.OKAY
    data, _ = await read(bus, offset)
    assert status.unpack(data) == {"busy": 1, "done": 0, "error": 1}
    assert int(port(dut, "STATUS", "error").value) == 1

    pulses = []

    async def count_start():
        while True:
            await RisingEdge(dut.clk)
            await ReadOnly()
            pulses.append(int(port(dut, "CTRL", "start").value))

    cocotb.start_soon(count_start())
    ctrl = REGISTER_MAP["CTRL"].register
    assert await write(bus, REGISTER_MAP.offset("CTRL"), ctrl.pack(start=1)) == AxiResp.OKAY
    await ClockCycles(dut.clk, 4)
    assert sum(pulses) == 1, pulses
    data, _ = await read(bus, REGISTER_MAP.offset("CTRL"))
    assert data == 0


@cocotb.test()
async def unmapped_and_read_only_accesses_get_slverr(dut):
    bus = await setup(dut)
    for offset in UNMAPPED + ABSENT:
        data, resp = await read(bus, offset)
        assert resp == AxiResp.SLVERR and data == 0, hex(offset)
        assert await write(bus, offset, 0xFFFF_FFFF) == AxiResp.SLVERR, hex(offset)
    magic = REGISTER_MAP.offset("ID_MAGIC")
    assert await write(bus, magic, 0) == AxiResp.SLVERR
    assert (await read(bus, magic))[0] == REGISTER_MAP.constants(CFG)["ID_MAGIC"]
    assert await write(bus, REGISTER_MAP.offset("BYTES_READ"), 1) == AxiResp.SLVERR
    # The bus still works after errors.
    assert await write(bus, REGISTER_MAP.offset("D_MODEL"), 77) == AxiResp.OKAY
    assert (await read(bus, REGISTER_MAP.offset("D_MODEL")))[0] == 77


@cocotb.test()
async def write_address_and_data_are_accepted_independently(dut):
    await setup(dut, master=False)
    d = dut
    for sig in ("awvalid", "wvalid", "arvalid"):
        getattr(d, f"s_axil__{sig}").value = 0
    d.s_axil__bready.value = 0
    d.s_axil__rready.value = 1
    d.s_axil__awprot.value = 0
    d.s_axil__arprot.value = 0
    for first, second, value in (("w", "aw", 0x1111), ("aw", "w", 0x2222)):
        d.s_axil__awaddr.value = REGISTER_MAP.offset("D_FF")
        d.s_axil__wdata.value = value
        d.s_axil__wstrb.value = 0xF
        for channel in (first, second):
            getattr(d, f"s_axil__{channel}valid").value = 1
            await ReadOnly()
            assert int(getattr(d, f"s_axil__{channel}ready").value) == 1
            await RisingEdge(d.clk)
            getattr(d, f"s_axil__{channel}valid").value = 0
            await ClockCycles(d.clk, 3)
        # B is held until bready.
        await ReadOnly()
        assert int(d.s_axil__bvalid.value) == 1 and int(d.s_axil__bresp.value) == 0
        await RisingEdge(d.clk)
        d.s_axil__bready.value = 1
        await RisingEdge(d.clk)
        d.s_axil__bready.value = 0
        await ReadOnly()
        assert int(d.s_axil__bvalid.value) == 0
        assert int(port(d, "D_FF", "value").value) == value
        await RisingEdge(d.clk)
