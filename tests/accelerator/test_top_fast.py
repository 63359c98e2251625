# amaranth: UnusedElaboratable=no
"""MoEAccel through the fast backend (`sim.fast.FastSim`): whole layers, bit-exact.

Every routing mode (the six families' presets, Switch with capacity drops,
softmax top-3 GELU) on the small top, compared with the golden layer; the
fault paths (bad descriptor, bus error, start while busy, soft reset in the
middle of a layer, watchdog), each followed by a correct layer; and one
layer on the default `AccelConfig` top (marked slow: a ~40 s build and a long layer),
which prints the simulated cycles/s (run with -s).
"""

import numpy as np
import pytest

from contract.regs import REGISTER_MAP, ErrorCause
from pymodel.config import AccelConfig, ConfigError
from pymodel.families import family_spec
from rtl.top import MoEAccel
from sim.fast import FastSim, RunStatus, build_fast
from sim.tb.layer_cases import (
    SMALL_TOP,
    LayerCase,
    check_outputs,
    check_start_while_busy,
    expect_error,
    load_case,
    make_case,
    mode_specs,
    run_case,
)
from sw_driver.compile import read_outputs

MEM_BYTES = 1 << 18
STATUS = REGISTER_MAP["STATUS"].register
CTRL = REGISTER_MAP["CTRL"].register
SPECS = mode_specs(32, 64, 8)


@pytest.mark.parametrize("mode", list(SPECS))
def test_every_routing_mode_is_bit_exact(sim, mode):
    case = make_case(mode, SPECS[mode], SMALL_TOP, tokens=16, seed=len(mode))
    run_case(sim, case)
    if mode == "switch_drops":
        assert case.golden.dispatch.dropped > 0
    total = sim.read_reg("CYCLES_TOTAL")
    phases = sum(sim.read_reg(f"CYCLES_{p}") for p in ("ROUTE", "DISPATCH", "EXPERTS", "COMBINE"))
    assert 0 < phases <= total
    assert sim.read_reg("MAC_CYCLES") > 0
    assert sim.read_reg("BYTES_WRITTEN") > 0


def test_random_shapes_and_token_counts(sim):
    rng = np.random.default_rng(7)
    for i in range(4):
        spec = family_spec(
            str(rng.choice(["mixtral", "qwen2_moe", "deepseek_v3"])),
            d_model=int(rng.integers(1, 33)),
            d_ff=int(rng.integers(1, 65)),
            n_experts=int(rng.choice([4, 8])),
        )
        case = make_case(f"rand{i}", spec, SMALL_TOP, tokens=int(rng.integers(1, 17)), seed=i)
        run_case(sim, case)


@pytest.mark.parametrize(("bus", "lanes"), [(8, 1), (32, 4)])
def test_other_bus_widths_take_their_weight_rows_per_beat(bus, lanes):
    """The small top on an 8-byte (one weight row a beat) and a 32-byte bus (four):
    odd d_model / d_ff give K runs padded to whole beats; every output bit-exact."""
    cfg = SMALL_TOP.replace(mem_bytes_per_cycle=bus)
    assert cfg.weight_rows_per_beat == lanes
    rng = np.random.default_rng(bus)
    with FastSim(lambda: MoEAccel(cfg), cfg, MEM_BYTES, read_latency=12, name="moe_accel") as s:
        for i, (d, f) in enumerate(((13, 22), (32, 37))):
            spec = family_spec("qwen2_moe", d_model=d, d_ff=f, n_experts=8, shared_d_ff=f + 3)
            tokens = int(rng.integers(2, 17))
            run_case(s, make_case(f"bus{bus}_{i}", spec, cfg, tokens=tokens, seed=bus + i))


def fault_case() -> LayerCase:
    return make_case("fault", SPECS["mixtral"], SMALL_TOP, tokens=8, seed=3)


def test_bad_descriptors_are_refused_and_the_next_layer_runs(sim):
    case = fault_case()
    bad = [
        ("TOP_K", 9),
        ("N_EXPERTS", 0),
        ("D_MODEL", SMALL_TOP.max_d_model + 1),
        ("NUM_TOKENS", 0),
        ("TOKENS_ADDR", case.image.regions["tokens"].addr + 16),
        ("ROUTING_MODE", REGISTER_MAP["ROUTING_MODE"].register.pack(n_group=3, topk_group=1)),
    ]
    for reg, value in bad:
        load_case(sim, case, start=False)
        sim.write_reg(reg, value)
        sim.write_reg(*case.image.program[-1])
        expect_error(sim, ErrorCause.BAD_DESCRIPTOR, 1000)
    run_case(sim, case)


def test_bus_error_aborts_cleanly(sim):
    case = fault_case()
    w1 = case.image.regions["expert0.w1"]
    load_case(sim, case, start=False)
    sim.inject_error(w1.addr, w1.addr + w1.size)
    for e in range(1, 8):
        region = case.image.regions[f"expert{e}.w1"]
        sim.inject_error(region.addr, region.addr + region.size)
    sim.write_reg(*case.image.program[-1])
    expect_error(sim, ErrorCause.BUS_READ_ERROR)
    assert sim.read_reg("ERROR_ADDR") >= case.image.regions["expert0.w1"].addr
    sim.clear_errors()
    run_case(sim, case)


def test_write_error_aborts_cleanly(sim):
    case = fault_case()
    out = case.image.regions["output"]
    load_case(sim, case, start=False)
    sim.inject_error(out.addr, out.addr + out.size, write=True)
    sim.write_reg(*case.image.program[-1])
    expect_error(sim, ErrorCause.BUS_WRITE_ERROR)
    sim.clear_errors()
    run_case(sim, case)


def test_start_while_busy_is_refused(sim):
    check_start_while_busy(sim, fault_case())


def test_soft_reset_mid_layer_then_a_correct_layer(sim):
    case = fault_case()
    for delay in (50, 600, 3000):
        load_case(sim, case, start=False)
        sim.write_reg(*case.image.program[-1])
        sim.step(delay)
        assert STATUS.unpack(sim.read_reg("STATUS"))["busy"]
        sim.write_reg("CTRL", CTRL.pack(soft_reset=1))
        sim.step(200)
        fields = STATUS.unpack(sim.read_reg("STATUS"))
        assert not fields["busy"] and not fields["error"] and not fields["done"]
    run_case(sim, case)


def test_watchdog_expiry_is_reported(sim):
    case = fault_case()
    load_case(sim, case, start=False)
    sim.write_reg("WATCHDOG_CYCLES", 500)
    sim.write_reg(*case.image.program[-1])
    expect_error(sim, ErrorCause.WATCHDOG_TIMEOUT, 10_000)
    run_case(sim, case)


@pytest.mark.slow
def test_default_config_layer_and_speed():
    """Slow: the default top builds in ~40 s and the layer runs ~220 k cycles."""
    cfg = AccelConfig()
    spec = family_spec("mixtral", d_model=128, d_ff=256, n_experts=8)
    case = make_case("default", spec, cfg, tokens=64, seed=5)
    with FastSim(lambda: MoEAccel(cfg), cfg, 1 << 21, read_latency=12, name="moe_accel") as s:
        s.mem[: case.image.mem_bytes] = case.image.mem
        for reg, value in case.image.program:
            s.write_reg(reg, value)
        result = s.run(20_000_000)
        assert result.status is RunStatus.DONE, result
        check_outputs(case, read_outputs(s.mem, case.image))
        print(
            f"\ndefault config, mixtral T=64 d=128 f=256 E=8: {result.cycles} cycles in "
            f"{result.wall_s:.3f} s = {result.cycles_per_second / 1e6:.2f} M cycles/s "
            f"(build {s.build.build_seconds:.1f} s, cached={s.build.cached})"
        )


def test_bare_loop_counts_cycles_then_a_reset_layer_runs(sim):
    """`bare_step` (the bench's measure of the harness) runs the model's clock only."""
    before = sim.cycles
    seconds = sim.bare_step(5_000)
    assert sim.cycles == before + 5_000
    assert seconds > 0
    sim.reset()
    run_case(sim, fault_case())


def test_threads_are_checked():
    with pytest.raises(ConfigError, match="threads"):
        build_fast(MoEAccel(SMALL_TOP), SMALL_TOP, threads=0)
