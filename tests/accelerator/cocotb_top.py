"""cocotb side of tests/accelerator/test_top.py: MoEAccel with AxiLiteMaster and a paused AxiRam.

Runs the jobs listed in `$TOP_JOBS/jobs.json` (written by the pytest side:
each a memory image, a register program and an optional fault), with random
pauses on every AXI channel of the memory and the AXI4 protocol checker on
the accelerator's master port (`sim.tb.axi_checker`), and saves, per job, the final
memory (`<name>.npy`) and the outcome (`outcomes.json`). The pytest side
decodes and compares them with the golden layer.
"""

import json
import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiLiteBus, AxiLiteMaster

from contract.regs import REGISTER_MAP
from sim.tb import reset_dut, start_clock
from sim.tb.axi_checker import AxiProtocolChecker
from sim.tb.axil import RegisterClient, paused_ram
from sim.tb.params import tb_params

P = tb_params()

JOBS_DIR = P.path("jobs")
MEM_BYTES = P["mem_bytes"]
SEED = P.get("seed", 1)
BEAT_BYTES = P["beat_bytes"]
MAX_BURST = P["max_burst"]
MAX_OUTSTANDING = P["max_outstanding"]
PAUSE = P.get("pause", 0.2)
"""Probability of a pause cycle on each AXI channel of the memory (0: never stalls)."""
STATUS = REGISTER_MAP["STATUS"].register
CTRL = REGISTER_MAP["CTRL"].register


class Regs(RegisterClient):
    def __init__(self, master: AxiLiteMaster) -> None:
        super().__init__(master, REGISTER_MAP)

    async def wait_idle(self, dut, limit: int = 400_000) -> dict:
        for _ in range(limit // 64):
            fields = STATUS.unpack(await self.read("STATUS"))
            if not fields["busy"] and (fields["done"] or fields["error"]):
                return fields
            await ClockCycles(dut.clk, 64)
        raise AssertionError("the accelerator did not finish")


@cocotb.test()
async def layers_match_the_golden_model(dut):
    rng = random.Random(SEED)
    start_clock(dut.clk)
    ram = paused_ram(dut, rng, PAUSE, MEM_BYTES)
    axi = AxiProtocolChecker(
        dut, beat_bytes=BEAT_BYTES, max_burst=MAX_BURST, max_outstanding=MAX_OUTSTANDING
    ).start()
    regs = Regs(AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"), dut.clk))
    await reset_dut(dut, dut.clk)
    healthy_read, healthy_write = ram.read_if._read, ram.write_if._write
    outcomes = {}
    for job in json.loads((JOBS_DIR / "jobs.json").read_text()):
        fault = job.get("fault")
        lo, hi = job.get("range", (0, 0))

        async def read(address, length, fault=fault, lo=lo, hi=hi):
            if fault == "read_error" and address < hi and address + length > lo:
                raise OSError("injected read fault")
            return await healthy_read(address, length)

        async def write(address, data, fault=fault, lo=lo, hi=hi):
            if fault == "write_error" and address < hi and address + len(data) > lo:
                raise OSError("injected write fault")
            return await healthy_write(address, data)

        ram.read_if._read, ram.write_if._write = read, write
        image = np.load(JOBS_DIR / f"{job['name']}_image.npy")
        ram.write(0, bytes(MEM_BYTES))
        ram.write(0, image.tobytes())
        program = job["program"]
        for name, value in program[:-1]:
            await regs.write(name, value)
        if fault == "watchdog":
            await regs.write("WATCHDOG_CYCLES", job["cycles"])
        await regs.write(*program[-1])
        if fault == "start_busy":
            await ClockCycles(dut.clk, 100)
            await regs.write(*program[-1])
        if fault == "soft_reset":
            await ClockCycles(dut.clk, job["cycles"])
            assert STATUS.unpack(await regs.read("STATUS"))["busy"]
            await regs.write("CTRL", CTRL.pack(soft_reset=1))
            await ClockCycles(dut.clk, 300)
            fields = STATUS.unpack(await regs.read("STATUS"))
        else:
            fields = await regs.wait_idle(dut)
        outcomes[job["name"]] = {
            **fields,
            "cause": await regs.read("ERROR_CAUSE"),
            "cycles": await regs.read("CYCLES_TOTAL"),
        }
        np.save(
            JOBS_DIR / f"{job['name']}_mem.npy", np.frombuffer(ram.read(0, MEM_BYTES), np.uint8)
        )
    (JOBS_DIR / "outcomes.json").write_text(json.dumps(outcomes))
    axi.check()
