"""cocotb side of tests/sim/test_fast.py: MemCopyTop with cocotbext-axi's AxiLiteMaster + AxiRam.

Runs the job list in `COPY_JOBS` (the same list test_fast.py runs through
the fast backend) with random backpressure on every AXI channel, then saves
the final memory and each job's outcome under `COPY_OUT` for comparison.
"""

import json
import random

import cocotb
import numpy as np
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiLiteBus, AxiLiteMaster
from memcopy_top import COPY_MAP

from sim.tb import reset_dut, start_clock
from sim.tb.axil import RegisterClient, paused_ram
from sim.tb.params import tb_params

P = tb_params()

JOBS = P["jobs"]
MEM_BYTES = P["mem_bytes"]
MEM_SEED = P["mem_seed"]
OUT = P.path("out")
STATUS = COPY_MAP["STATUS"].register


@cocotb.test()
async def copy_jobs_match_the_fast_backend(dut):
    rng = random.Random(MEM_SEED)
    start_clock(dut.clk)
    ram = paused_ram(dut, rng, 0.25, MEM_BYTES)
    image = np.random.default_rng(MEM_SEED).integers(0, 256, MEM_BYTES, dtype=np.uint8)
    ram.write(0, image.tobytes())
    regs = RegisterClient(
        AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil", bus_separator="__"), dut.clk), COPY_MAP
    )
    await reset_dut(dut, dut.clk)

    healthy = ram.read_if._read
    outcomes = []
    for job in JOBS:
        fault = job.get("read_fault")

        async def read(address, length, fault=fault):
            if fault and address < fault[1] and address + length > fault[0]:
                raise OSError("injected read fault")
            return await healthy(address, length)

        ram.read_if._read = read
        for name in ("SRC_ADDR", "DST_ADDR", "LENGTH", "ADD"):
            await regs.write(name, job[name.lower().removesuffix("_addr")])
        await regs.write("STATUS", STATUS.pack(done=1, error=1))
        await regs.write("CTRL", COPY_MAP["CTRL"].register.pack(start=1))
        if job.get("double_start"):
            await regs.write("CTRL", COPY_MAP["CTRL"].register.pack(start=1))
        for _ in range(20000):
            fields = STATUS.unpack(await regs.read("STATUS"))
            if not fields["busy"] and (fields["done"] or fields["error"]):
                break
            await ClockCycles(dut.clk, 8)
        else:
            raise AssertionError(f"job {job} did not finish")
        outcomes.append(
            {
                **fields,
                "cause": await regs.read("ERROR_CAUSE"),
                "bytes_read": await regs.read("BYTES_READ"),
                "bytes_written": await regs.read("BYTES_WRITTEN"),
            }
        )
    OUT.mkdir(parents=True, exist_ok=True)
    np.save(OUT / "mem.npy", np.frombuffer(ram.read(0, MEM_BYTES), dtype=np.uint8))
    (OUT / "outcomes.json").write_text(json.dumps(outcomes))
