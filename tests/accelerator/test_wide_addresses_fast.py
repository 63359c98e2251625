# amaranth: UnusedElaboratable=no
"""Addresses wider than 32 bits through the whole accelerator, on the fast backend.

`MoEAccel` built with `addr_bits = 40` (the small top otherwise): a layer whose
every region lies above 4 GiB runs bit-exact against the golden layer (the
descriptor registers and the expert table hold address words, the DMA and
the AXI4 master 40-bit byte addresses); a bus error there reports its whole
address (ERROR_ADDR, ERROR_ADDR_HI); a region running out of the address
space is refused by the driver, naming the region, and by the hardware as
BAD_DESCRIPTOR naming the rule. And the demand-filled memory: experts are
generated only when the hardware reads them, with the same outputs as a
memory written before the run.
"""

import numpy as np
import pytest

from contract import layout
from contract.descriptor import RULES, DescriptorError, check_program, rule_code
from contract.regs import ErrorCause
from pymodel.config import ConfigError
from pymodel.families import family_spec
from rtl.top import MoEAccel
from sim.fast import FastSim, RunStatus
from sim.tb.layer_cases import SMALL_TOP, check_outputs, make_case
from sw_driver.compile import compile_layer, read_expert_counts, read_outputs
from sw_driver.device import VerilatorDevice

WIDE_TOP = SMALL_TOP.replace(addr_bits=40)
"""The small top with 40-bit addresses (a 256-byte address granule)."""

BASE = 5 << 32
"""Where the wide layer's image starts: above 4 GiB (5 GiB)."""

SPAN = 1 << 20
"""Memory the tests use above `BASE` (every small layer's image fits)."""

SPEC = family_spec("deepseek_v3", d_model=32, d_ff=48, n_experts=8, shared_d_ff=40)


@pytest.fixture(scope="module")
def wide_sim():
    """`MoEAccel(WIDE_TOP)` with a 5 GiB + 1 MiB sparse memory (only written pages cost)."""
    with FastSim(
        lambda: MoEAccel(WIDE_TOP), WIDE_TOP, BASE + SPAN, read_latency=12, name="moe_accel"
    ) as s:
        yield s


def wide_case(seed: int, tokens: int = 6):
    """A DeepSeek-V3-like layer (grouped sigmoid routing, shared expert) compiled at `BASE`."""
    case = make_case("wide", SPEC, WIDE_TOP, tokens=tokens, seed=seed)
    return case, compile_layer(case.ql, case.x_q, WIDE_TOP, base=BASE)


def start(sim: FastSim, image, *, program=None) -> None:
    sim.reset()
    sim.clear_errors()
    sim.clear_memory()
    image.write_into(sim.mem)
    for reg, value in program or image.program:
        sim.write_reg(reg, value)


def test_a_layer_above_4_gib_is_bit_exact(wide_sim):
    case, image = wide_case(seed=3)
    assert min(r.addr for r in image.regions.values()) >= BASE
    assert all(r.addr % layout.region_align(WIDE_TOP) == 0 for r in image.regions.values())
    table = image.regions["expert_table"].addr
    words = image.mem[table - BASE : table - BASE + layout.desc_bytes(WIDE_TOP)].view("<u4")
    assert words[0] == image.regions["expert0.w1"].addr >> 8  # an address word, not bytes
    start(wide_sim, image)
    assert wide_sim.run(4_000_000).status is RunStatus.DONE
    counts = read_expert_counts(wide_sim.write_reg, wide_sim.read_reg, image)
    check_outputs(case, read_outputs(wide_sim.mem, image), counts)
    assert wide_sim.read_reg("CONFIG_ADDR_BITS") == 40


def test_a_bus_error_above_4_gib_reports_the_whole_address(wide_sim):
    _, image = wide_case(seed=4)
    start(wide_sim, image, program=image.program[:-1])
    for e in range(SPEC.n_experts):
        w1 = image.regions[f"expert{e}.w1"]
        wide_sim.inject_error(w1.addr, w1.addr + w1.size)
    wide_sim.write_reg(*image.program[-1])
    result = wide_sim.run(4_000_000)
    assert result.status is RunStatus.ERROR and result.cause is ErrorCause.BUS_READ_ERROR
    addr = wide_sim.read_reg("ERROR_ADDR") | wide_sim.read_reg("ERROR_ADDR_HI") << 32
    assert any(
        r.addr <= addr < r.addr + r.size
        for name, r in image.regions.items()
        if name.endswith(".w1") and name.startswith("expert")
    ), hex(addr)


def test_a_region_beyond_the_address_space_is_refused_by_driver_and_hardware(wide_sim):
    case, image = wide_case(seed=5, tokens=16)  # 16 rows of 32 bytes: more than a granule
    with pytest.raises(ConfigError, match=r"40-bit bus: region 'tokens'"):
        compile_layer(case.ql, case.x_q, WIDE_TOP, base=2**40 - 4096)
    with pytest.raises(ConfigError, match=r"region 'output' at 0x10000000000 lies beyond the 40"):
        layout.addr_word(WIDE_TOP, 2**40, "output")
    top_word = 2**32 - 1  # the last granule: the tokens' rows run past 2^40
    program = [(r, top_word if r == "TOKENS_ADDR" else v) for r, v in image.program]
    rule = next(r for r in RULES if r.name == "tokens_addr_past_address_space")
    with pytest.raises(DescriptorError, match="tokens_addr_past_address_space") as info:
        check_program(program, WIDE_TOP)
    assert info.value.rules == [rule]
    start(wide_sim, image, program=program)
    result = wide_sim.run(10_000)
    assert result.status is RunStatus.ERROR and result.cause is ErrorCause.BAD_DESCRIPTOR
    assert wide_sim.read_reg("ERROR_DETAIL") == rule_code(rule)


def test_demand_filled_experts_are_generated_only_when_the_hardware_reads_them(monkeypatch):
    import sw_driver.compile as compile_module

    case, _ = wide_case(seed=6, tokens=2)
    routed_weights = {id(case.ql.experts.w1_q), id(case.ql.experts.w2_q)}
    produced: list[int] = []
    real_stream = compile_module._stream

    def recording_stream(cfg, weights, e, *rest):
        produce = real_stream(cfg, weights, e, *rest)

        def produce_and_record():
            if id(weights[0]) in routed_weights:
                produced.append(e)
            return produce()

        return produce_and_record

    monkeypatch.setattr(compile_module, "_stream", recording_stream)
    eager = VerilatorDevice(WIDE_TOP)
    full = eager.run(case.ql, case.x_q)
    assert sorted(set(produced)) == list(range(SPEC.n_experts))
    produced.clear()
    demand = VerilatorDevice(WIDE_TOP, experts="demand")
    lazy = demand.run(case.ql, case.x_q)
    routed = np.flatnonzero(case.golden.dispatch.counts).tolist()
    assert len(routed) < SPEC.n_experts, "the test needs an expert no token routes to"
    assert sorted(produced) == sorted(routed * 2), "W1/W3 and W2 streams of routed experts only"
    assert sorted(demand.last_filled) == sorted([f"expert{e}" for e in routed] + ["shared"])
    for out in (full, lazy):
        np.testing.assert_array_equal(out.y_q, case.golden.y_q)
        np.testing.assert_array_equal(out.expert_ids, case.golden.routing.expert_ids)
        np.testing.assert_array_equal(out.tokens_per_expert, case.golden.dispatch.counts)
    assert lazy.counters["bytes_read"] == full.counters["bytes_read"]
    assert lazy.counters["cycles_total"] == full.counters["cycles_total"]
