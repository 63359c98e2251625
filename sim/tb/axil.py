"""Register access and bus stalls for tops with an AXI4-Lite slave, under cocotb.

`RegisterClient` reads and writes registers by name through a cocotbext-axi
`AxiLiteMaster`, using a `contract.regs.RegisterMap` for offsets (a 64-bit
register is read low word first, as the register file latches it);
`pauses` is a pause generator for cocotbext-axi channels and `paused_ram`
an `AxiRam` on a top's `m_axi` port that stalls every channel at random.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from cocotbext.axi import AxiBus, AxiLiteMaster, AxiRam, AxiResp

from contract.regs import RegisterMap


def pauses(rng: random.Random, p: float) -> Iterator[bool]:
    """Endless pause flags, each True with probability `p` (random bus stalls)."""
    while True:
        yield rng.random() < p


def paused_ram(dut, rng: random.Random, p: float, size: int) -> AxiRam:
    """An `AxiRam` of `size` bytes on `dut.m_axi`, each channel pausing with probability `p`."""
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi", bus_separator="__"), dut.clk, dut.rst, size=size)
    for ch in (
        ram.write_if.aw_channel,
        ram.write_if.w_channel,
        ram.write_if.b_channel,
        ram.read_if.ar_channel,
        ram.read_if.r_channel,
    ):
        ch.set_pause_generator(pauses(random.Random(rng.random()), p))
    return ram


class RegisterClient:
    """Registers by name over AXI4-Lite; any non-OKAY response fails the test."""

    def __init__(self, master: AxiLiteMaster, regmap: RegisterMap) -> None:
        self.master = master
        self.regmap = regmap

    async def write(self, name: str, value: int) -> None:
        resp = await self.master.write(self.regmap.offset(name), value.to_bytes(4, "little"))
        assert resp.resp == AxiResp.OKAY, name

    async def read(self, name: str) -> int:
        value = 0
        for i in range(self.regmap[name].words):
            resp = await self.master.read(self.regmap.offset(name) + 4 * i, 4)
            assert resp.resp == AxiResp.OKAY, name
            value |= int.from_bytes(resp.data, "little") << (32 * i)
        return value
