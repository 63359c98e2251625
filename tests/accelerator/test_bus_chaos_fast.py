# amaranth: UnusedElaboratable=no
"""The fast harness's bus under stress: random stalls and latency, write errors, a bad master.

Why: the harness's memory model is otherwise deterministic (fixed latency,
READY always up while its queues have room), so the top's stall paths on
the activation, weight and output streams never run. With
`FastSim.set_bus_chaos` every READY drops, R beats and B responses are held
back and bursts wait longer, all from the test's seed (replay a failure with
the command its report prints); the layers must still be bit-exact. The
harness's AXI4 protocol checker watches every test of the top; a test-only
master that breaks one rule at a time shows that each rule is checked.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from contract.regs import REGISTER_MAP, ErrorCause
from pymodel.config import AccelConfig, ConfigError
from rtl.axi import AXI4Signature, AXILiteSignature, Burst, Resp
from sim.fast import FastSim, ProtocolViolation, RunStatus
from sim.tb.layer_cases import (
    SMALL_TOP,
    LayerCase,
    load_case,
    make_case,
    mode_specs,
    run_case,
)

STATUS = REGISTER_MAP["STATUS"].register
CTRL = REGISTER_MAP["CTRL"].register
SPECS = mode_specs(32, 64, 8)
CHAOS_MODES = ("mixtral", "deepseek_v3", "switch_drops", "softmax_gelu_k3")


def random_case(mode: str, seed: int) -> LayerCase:
    tokens = int(np.random.default_rng(seed).integers(1, SMALL_TOP.max_tokens + 1))
    return make_case(mode, SPECS[mode], SMALL_TOP, tokens=tokens, seed=seed)


@pytest.mark.parametrize("mode", CHAOS_MODES)
def test_layers_are_bit_exact_under_random_stalls_and_latency(sim, mode, seed):
    """Three layers, each with its own token count and stall rate (up to 1 cycle in 2).

    The stalls reach the array as weight waits, never as output waits: the engine's
    output goes to the on-chip buffers through `OutputSink`, which is always ready, and
    its credits cover the round trip to it, so STALL_OUTPUT stays 0 in this top however
    the bus stalls (the coverage waiver of its counter rests on this; the GEMM engine's
    unit bench backpressures the output and sees it count).
    """
    rng = np.random.default_rng(seed)
    stall_weight = 0
    for _ in range(3):
        layer_seed = int(rng.integers(2**31))
        stall, extra = float(rng.uniform(0.01, 0.5)), int(rng.integers(0, 65))
        print(f"layer seed {layer_seed}: stall_probability {stall:.3f}, extra latency {extra}")
        sim.set_bus_chaos(seed=layer_seed, stall_probability=stall, max_extra_latency=extra)
        run_case(sim, random_case(mode, layer_seed))  # the start clears the counters
        assert sim.read_reg("STALL_OUTPUT") == 0
        stall_weight += sim.read_reg("STALL_WEIGHT")
    assert stall_weight > 0


def test_chaos_is_replayable_from_its_seed_and_off_by_default(sim):
    case = make_case("mixtral", SPECS["mixtral"], SMALL_TOP, tokens=8, seed=3)
    sim.set_bus_chaos(seed=0)
    calm = run_case(sim, case)
    sim.set_bus_chaos(seed=5, stall_probability=0.3, max_extra_latency=20)
    stormy = run_case(sim, case)
    sim.set_bus_chaos(seed=5, stall_probability=0.3, max_extra_latency=20)
    assert run_case(sim, case) == stormy > calm
    sim.set_bus_chaos(seed=0)
    assert run_case(sim, case) == calm


def test_soft_resets_under_chaos_then_a_correct_layer(sim, seed):
    """A soft reset with bursts in flight and the bus stalling must drain, not wedge."""
    rng = np.random.default_rng(seed)
    sim.set_bus_chaos(seed=seed, stall_probability=0.4, max_extra_latency=50)
    case = random_case("deepseek_v3", seed)
    for _ in range(3):
        load_case(sim, case)
        sim.step(int(rng.integers(10, 8000)))
        sim.write_reg("CTRL", CTRL.pack(soft_reset=1))
        for _ in range(200):
            sim.step(500)
            if not STATUS.unpack(sim.read_reg("STATUS"))["busy"]:
                break
        fields = STATUS.unpack(sim.read_reg("STATUS"))
        assert not fields["busy"] and not fields["error"], fields
    run_case(sim, case)


def test_write_decerr_is_reported_then_a_correct_layer(sim, seed):
    sim.set_bus_chaos(seed=seed, stall_probability=0.1, max_extra_latency=10)
    case = random_case("qwen2_moe", seed)
    out = case.image.regions["output"]
    start_reg, start_value = case.image.program[-1]
    sim.mem[:] = 0
    sim.mem[: case.image.mem_bytes] = case.image.mem
    for reg, value in case.image.program[:-1]:
        sim.write_reg(reg, value)
    sim.inject_error(out.addr, out.addr + out.size, write=True, resp=Resp.DECERR)
    sim.write_reg(start_reg, start_value)
    result = sim.run(4_000_000)
    assert result.status is RunStatus.ERROR and result.cause is ErrorCause.BUS_WRITE_ERROR
    assert out.addr <= sim.read_reg("ERROR_ADDR") < out.addr + out.size
    assert not STATUS.unpack(sim.read_reg("STATUS"))["busy"]
    sim.clear_errors()
    run_case(sim, case)


def test_bus_chaos_arguments_are_checked(sim):
    for bad in (
        {"seed": -1},
        {"seed": 2**64},
        {"seed": True},
        {"seed": 1, "stall_probability": 1.0},
        {"seed": 1, "stall_probability": -0.1},
        {"seed": 1, "max_extra_latency": -1},
        {"seed": 1, "max_extra_latency": 2.5},
    ):
        with pytest.raises(ConfigError):
            sim.set_bus_chaos(**bad)
    with pytest.raises(ConfigError, match="max_burst_beats"):
        FastSim(BadMaster(SMALL_TOP), SMALL_TOP, 4096, max_burst_beats=257)


class Fault:
    """What `BadMaster` does wrong, chosen by an AXI4-Lite write of one of these codes."""

    LONG_BURST = 1
    CROSSES_4K = 2
    UNSTABLE_AR = 3
    EARLY_WLAST = 4
    FIXED_BURST = 5
    UNSTABLE_W = 6


class BadMaster(wiring.Component):
    """A test-only top whose AXI4 master breaks one protocol rule, picked by a register write.

    Its AXI4-Lite side takes any write (the data picks the fault) and answers no reads.
    """

    def __init__(self, cfg: AccelConfig) -> None:
        self.cfg = cfg
        super().__init__({"s_axil": In(AXILiteSignature()), "m_axi": Out(AXI4Signature(cfg))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        lite, axi = self.s_axil, self.m_axi
        fault = Signal(8)
        bvalid = Signal()
        m.d.comb += [lite.awready.eq(1), lite.wready.eq(1), lite.bvalid.eq(bvalid)]
        with m.If(lite.wvalid):
            m.d.sync += [fault.eq(lite.wdata), bvalid.eq(1)]
        with m.Elif(lite.bready):
            m.d.sync += bvalid.eq(0)

        size = self.m_axi.signature.size_code
        ar_sent, aw_sent, w_sent = Signal(), Signal(), Signal()
        count = Signal(8)
        m.d.sync += count.eq(count + 1)
        with m.If(axi.arvalid & axi.arready):
            m.d.sync += ar_sent.eq(1)
        with m.If(axi.awvalid & axi.awready):
            m.d.sync += aw_sent.eq(1)
        with m.If(axi.wvalid & axi.wready):
            m.d.sync += w_sent.eq(1)
        m.d.comb += [
            axi.arsize.eq(size),
            axi.awsize.eq(size),
            axi.arburst.eq(Burst.INCR),
            axi.awburst.eq(Burst.INCR),
            axi.rready.eq(fault != Fault.UNSTABLE_AR),
            axi.bready.eq(1),
        ]
        with m.Switch(fault):
            with m.Case(Fault.LONG_BURST):
                m.d.comb += [axi.arvalid.eq(~ar_sent), axi.arlen.eq(16)]
            with m.Case(Fault.CROSSES_4K):
                m.d.comb += [axi.arvalid.eq(~ar_sent), axi.araddr.eq(0xFF0), axi.arlen.eq(1)]
            with m.Case(Fault.UNSTABLE_AR):  # R never drains, so ARREADY drops after 16 ARs
                m.d.comb += [axi.arvalid.eq(1), axi.araddr.eq(count << 4)]
            with m.Case(Fault.EARLY_WLAST):
                m.d.comb += [
                    axi.awvalid.eq(~aw_sent),
                    axi.awlen.eq(1),
                    axi.wvalid.eq(~w_sent),
                    axi.wlast.eq(1),
                    axi.wstrb.eq(-1),
                ]
            with m.Case(Fault.FIXED_BURST):
                m.d.comb += [axi.arvalid.eq(~ar_sent), axi.arburst.eq(Burst.FIXED)]
            with m.Case(Fault.UNSTABLE_W):  # no AW, so WREADY stays low
                m.d.comb += [axi.wvalid.eq(1), axi.wdata.eq(count)]
        return m


@pytest.fixture(scope="module")
def bad_sim():
    with FastSim(BadMaster(SMALL_TOP), SMALL_TOP, 1 << 14, name="bad_master") as s:
        yield s


def misbehave(sim: FastSim, fault: int) -> None:
    """Pick `fault` and let the master run (the violation may come within the write)."""
    assert sim.try_write(0, fault) is Resp.OKAY
    sim.step(100)


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault.LONG_BURST, "AR burst of 17 beats at 0x0 exceeds the maximum 16"),
        (Fault.CROSSES_4K, "AR burst 0xff0..0x100f crosses a 4 KiB boundary"),
        (Fault.UNSTABLE_AR, "AR valid or payload changed before ARREADY"),
        (Fault.EARLY_WLAST, "WLAST set on beat 1 of a 2-beat burst at 0x0"),
        (Fault.FIXED_BURST, "AR burst type 0 at 0x0"),
        (Fault.UNSTABLE_W, "W valid, data, strobes or last changed before WREADY"),
    ],
)
def test_the_protocol_checker_catches_a_bad_master(bad_sim, fault, message):
    bad_sim.reset()
    bad_sim.step(50)
    assert bad_sim.protocol_error is None
    with pytest.raises(ProtocolViolation, match=f"at cycle \\d+: {message}"):
        misbehave(bad_sim, fault)
    with pytest.raises(ProtocolViolation, match=message):  # latched until the next reset
        bad_sim.run(1000)
    bad_sim.reset()
    assert bad_sim.protocol_error is None
