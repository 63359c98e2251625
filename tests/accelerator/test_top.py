# amaranth: UnusedElaboratable=no
"""MoEAccel on Verilator via cocotb + cocotbext-axi: whole layers against the golden model.

One build of the small top (`sim.tb.layer_cases.SMALL_TOP`) runs a job list
through AxiLiteMaster and an AxiRam with random pauses on every channel:
a layer of every routing mode (softmax top-k with and without
renormalisation, DeepSeek-V3 sigmoid + bias + groups + scaling + ungated
shared expert, Qwen2-MoE gated shared expert, Switch top-1 with capacity
drops, ReLU / GELU / SwiGLU experts), each compared bit for bit with
`pymodel.layer.golden_layer`, and the faults: a read and a write bus error,
start while busy, a soft reset in the middle of a layer and a watchdog
expiry — each followed by a layer that must again be exact.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from contract.regs import ErrorCause
from rtl.dma import DMA
from rtl.top import MoEAccel
from sim.build import build_component, emit_verilog, lint_verilog, run_cocotb
from sim.tb.layer_cases import (
    SMALL_TOP,
    check_outputs,
    make_case,
    mode_specs,
    top_bench_params,
)
from sw_driver.compile import read_outputs

TB = Path(__file__).with_name("cocotb_top.py")
MEM_BYTES = 1 << 16
TOKENS = 8


def test_top_layers_and_faults(tmp_path):
    specs = mode_specs(24, 40, 8)
    cases = {
        name: make_case(name, spec, SMALL_TOP, tokens=TOKENS, seed=i)
        for i, (name, spec) in enumerate(specs.items())
    }
    fault = cases["mixtral"]
    w1 = fault.image.regions["expert0.w1"]
    table = fault.image.regions["expert_table"]
    out = fault.image.regions["output"]
    jobs = [{"name": name, "case": name} for name in cases]
    jobs += [
        {
            "name": "read_error",
            "case": "mixtral",
            "fault": "read_error",
            "range": [table.addr, w1.addr + w1.size],
        },
        {"name": "after_read_error", "case": "mixtral"},
        {
            "name": "write_error",
            "case": "mixtral",
            "fault": "write_error",
            "range": [out.addr, out.addr + out.size],
        },
        {"name": "start_busy", "case": "qwen2_moe", "fault": "start_busy"},
        {"name": "soft_reset", "case": "deepseek_v3", "fault": "soft_reset", "cycles": 1500},
        {"name": "after_soft_reset", "case": "deepseek_v3"},
        {"name": "watchdog", "case": "switch", "fault": "watchdog", "cycles": 700},
        {"name": "after_watchdog", "case": "switch"},
    ]
    for job in jobs:
        case = cases[job["case"]]
        assert case.image.mem_bytes <= MEM_BYTES
        np.save(tmp_path / f"{job['name']}_image.npy", case.image.mem)
        job["program"] = [[name, int(value)] for name, value in case.image.program]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))

    params = top_bench_params(SMALL_TOP, tmp_path, MEM_BYTES, seed=5)
    dma = DMA(SMALL_TOP)  # the top's DMA: the checker's burst and outstanding limits
    assert (params["max_burst"], params["max_outstanding"]) == (dma.burst, dma.max_outstanding)
    start = time.perf_counter()
    build = build_component(MoEAccel(SMALL_TOP), "moe_accel_small")
    print(f"\nMoEAccel(SMALL_TOP) cocotb build: {time.perf_counter() - start:.1f} s")
    run_cocotb(
        build,
        TB,
        params=params,
    )
    outcomes = json.loads((tmp_path / "outcomes.json").read_text())
    expected_error = {
        "read_error": ErrorCause.BUS_READ_ERROR,
        "write_error": ErrorCause.BUS_WRITE_ERROR,
        "watchdog": ErrorCause.WATCHDOG_TIMEOUT,
    }
    for job in jobs:
        got = outcomes[job["name"]]
        case = cases[job["case"]]
        mem = np.load(tmp_path / f"{job['name']}_mem.npy")
        name = job["name"]
        if name in expected_error:
            assert got["error"] and not got["done"] and not got["busy"], (name, got)
            assert got["cause"] == expected_error[name], (name, got)
        elif name == "soft_reset":
            assert not got["busy"] and not got["error"] and not got["done"], got
        elif name == "start_busy":
            assert got["done"] and got["error"], got
            assert got["cause"] == ErrorCause.START_WHILE_BUSY
            check_outputs(case, read_outputs(mem, case.image))
        else:
            assert got["done"] and not got["error"], (name, got)
            check_outputs(case, read_outputs(mem, case.image))
            assert got["cycles"] > 0


def test_top_verilog_lints_clean():
    assert lint_verilog(emit_verilog(MoEAccel(SMALL_TOP), "moe_accel"), "moe_accel") == []


@pytest.mark.parametrize("field", ["rows", "cols"])
def test_top_rejects_non_power_of_two_arrays(field):
    from pymodel.config import ConfigError

    with pytest.raises(ConfigError, match=field):
        MoEAccel(SMALL_TOP.replace(**{field: 6}))
