# amaranth: UnusedElaboratable=no
"""sim.fast: the Verilator + C++ harness backend, checked against cocotb + cocotbext-axi.

The same MemCopyTop job list runs under cocotb (AxiLiteMaster, AxiRam with
random backpressure) and through `FastSim`; final memories and job outcomes
must agree (and match `expected_copy`). Fast-only checks cover timeouts,
SLVERR/DECERR, random bus stalls and latency, two models in one process,
the build cache, waveforms and a throughput measurement (printed; run
with -s to see it).
"""

import json
import resource
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from memcopy_top import COPY_MAP, MemCopyTop, expected_copy

from contract.regs import ErrorCause
from pymodel.config import AccelConfig, ConfigError
from pymodel.expert_cache import HostLink
from rtl.axi import AXILiteSignature, Resp
from sim.build import SimulationError, _fst_supported, build_component, run_cocotb
from sim.fast import (
    PREFIX,
    BusError,
    FastSim,
    FastSimTimeout,
    RunStatus,
    sparse_mapping,
    strip_zero_memory_init,
)

TB = Path(__file__).with_name("cocotb_memcopy.py")
CFG = AccelConfig()
MEM_BYTES = 1 << 16
MEM_SEED = 11
STATUS = COPY_MAP["STATUS"].register
START = COPY_MAP["CTRL"].register.pack(start=1)

JOBS = [
    {"src": 0x0040, "dst": 0x8000, "length": 1024, "add": 1},
    {"src": 0x0FC0, "dst": 0x9FE0, "length": 2096, "add": 255},  # crosses 4 KiB both sides
    {"src": 0x3000, "dst": 0xC000, "length": 512, "add": 2, "read_fault": [0x3000, 0x3010]},
    {"src": 0x1008, "dst": 0xC000, "length": 64, "add": 3},  # misaligned: bad descriptor
    {"src": 0x4000, "dst": 0xD000, "length": 1536, "add": 7, "double_start": True},
    {"src": 0x5000, "dst": 0xE000, "length": 0, "add": 9},
    {"src": 0x6010, "dst": 0xE800, "length": 16, "add": 128},
]
EXPECTED = [
    (1, 0, ErrorCause.NONE),
    (1, 0, ErrorCause.NONE),
    (0, 1, ErrorCause.BUS_READ_ERROR),
    (0, 1, ErrorCause.BAD_DESCRIPTOR),
    (1, 1, ErrorCause.START_WHILE_BUSY),
    (1, 0, ErrorCause.NONE),
    (1, 0, ErrorCause.NONE),
]


def initial_memory() -> np.ndarray:
    return np.random.default_rng(MEM_SEED).integers(0, 256, MEM_BYTES, dtype=np.uint8)


def golden_memory() -> np.ndarray:
    mem = initial_memory()
    for job, (done, _, _) in zip(JOBS, EXPECTED, strict=True):
        if done and not job.get("read_fault"):
            mem = expected_copy(mem, job["src"], job["dst"], job["length"], job["add"])
    return mem


def run_jobs_fast(sim: FastSim) -> list[dict]:
    """The cocotb job loop, through the fast backend."""
    outcomes = []
    for job in JOBS:
        sim.clear_errors()
        if job.get("read_fault"):
            sim.inject_error(*job["read_fault"])
        for name in ("SRC_ADDR", "DST_ADDR", "LENGTH", "ADD"):
            sim.write_reg(name, job[name.lower().removesuffix("_addr")])
        sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
        sim.write_reg("CTRL", START)
        if job.get("double_start"):
            sim.write_reg("CTRL", START)
        sim.run(100_000)
        for _ in range(1000):
            fields = STATUS.unpack(sim.read_reg("STATUS"))
            if not fields["busy"]:
                break
            sim.step(64)
        outcomes.append(
            {
                **fields,
                "cause": sim.read_reg("ERROR_CAUSE"),
                "bytes_read": sim.read_reg("BYTES_READ"),
                "bytes_written": sim.read_reg("BYTES_WRITTEN"),
            }
        )
    return outcomes


@pytest.fixture(scope="module")
def fast_sim():
    sim = FastSim(
        lambda: MemCopyTop(CFG), CFG, MEM_BYTES, regmap=COPY_MAP, read_latency=12, name="memcopy"
    )
    yield sim
    sim.close()


def check_outcomes(outcomes: list[dict]) -> None:
    for job, outcome, (done, error, cause) in zip(JOBS, outcomes, EXPECTED, strict=True):
        assert (outcome["done"], outcome["error"], outcome["cause"]) == (done, error, cause), job
        if not error:
            assert outcome["bytes_read"] == outcome["bytes_written"] == job["length"], job


def test_fast_and_cocotb_agree_on_the_same_jobs(fast_sim, tmp_path):
    fast_sim.mem[:] = initial_memory()
    fast_outcomes = run_jobs_fast(fast_sim)
    check_outcomes(fast_outcomes)
    np.testing.assert_array_equal(fast_sim.mem, golden_memory())

    build = build_component(MemCopyTop(CFG), "memcopy")
    out = tmp_path / "cocotb"
    run_cocotb(
        build,
        TB,
        params={"jobs": JOBS, "mem_bytes": MEM_BYTES, "mem_seed": MEM_SEED, "out": out},
    )
    cocotb_outcomes = json.loads((out / "outcomes.json").read_text())
    check_outcomes(cocotb_outcomes)
    np.testing.assert_array_equal(np.load(out / "mem.npy"), fast_sim.mem)
    for fast, slow in zip(fast_outcomes, cocotb_outcomes, strict=True):
        assert {k: fast[k] for k in ("done", "error", "cause")} == {
            k: slow[k] for k in ("done", "error", "cause")
        }


@pytest.mark.parametrize(
    ("read_latency", "write_latency", "bytes_per_cycle"), [(0, 0, 16), (40, 25, 16), (3, 60, 5)]
)
def test_random_copies_with_varied_memory_timing(read_latency, write_latency, bytes_per_cycle):
    rng = np.random.default_rng(read_latency)
    with FastSim(
        lambda: MemCopyTop(CFG),
        CFG,
        MEM_BYTES,
        regmap=COPY_MAP,
        read_latency=read_latency,
        write_latency=write_latency,
        bytes_per_cycle=bytes_per_cycle,
        name="memcopy",
    ) as sim:
        sim.mem[:] = rng.integers(0, 256, MEM_BYTES, dtype=np.uint8)
        expect = sim.mem.copy()
        for _ in range(30):
            length = int(rng.integers(0, 300)) * 16
            src = int(rng.integers(0, (MEM_BYTES // 2 - length) // 16 + 1)) * 16
            dst = MEM_BYTES // 2 + int(rng.integers(0, (MEM_BYTES // 2 - length) // 16 + 1)) * 16
            add = int(rng.integers(0, 256))
            sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
            for name, value in (("SRC_ADDR", src), ("DST_ADDR", dst), ("LENGTH", length)):
                sim.write_reg(name, value)
            sim.write_reg("ADD", add)
            sim.write_reg("CTRL", START)
            assert sim.run(200_000).status is RunStatus.DONE
            expect = expected_copy(expect, src, dst, length, add)
            assert sim.read_reg("BYTES_WRITTEN") == length
            beats = length // 16
            floor = beats * max(1, 16 // bytes_per_cycle)
            assert length == 0 or sim.read_reg("CYCLES_TOTAL") >= floor
        np.testing.assert_array_equal(sim.mem, expect)


def test_copies_are_exact_under_bus_chaos(seed):
    """Random READY stalls, R/B gaps and burst latency (from `seed`): same bytes, more cycles."""
    rng = np.random.default_rng(seed)
    with FastSim(
        lambda: MemCopyTop(CFG), CFG, MEM_BYTES, regmap=COPY_MAP, read_latency=12, name="memcopy"
    ) as sim:
        sim.set_bus_chaos(seed=seed, stall_probability=0.3, max_extra_latency=30)
        sim.mem[:] = rng.integers(0, 256, MEM_BYTES, dtype=np.uint8)
        expect = sim.mem.copy()
        for _ in range(10):
            length = int(rng.integers(1, 200)) * 16
            src = int(rng.integers(0, (MEM_BYTES // 2 - length) // 16 + 1)) * 16
            dst = MEM_BYTES // 2 + int(rng.integers(0, (MEM_BYTES // 2 - length) // 16 + 1)) * 16
            sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
            for name, value in (("SRC_ADDR", src), ("DST_ADDR", dst), ("LENGTH", length)):
                sim.write_reg(name, value)
            sim.write_reg("ADD", 1)
            sim.write_reg("CTRL", START)
            assert sim.run(400_000).status is RunStatus.DONE
            expect = expected_copy(expect, src, dst, length, 1)
        np.testing.assert_array_equal(sim.mem, expect)


@pytest.mark.parametrize("beat", [4, 64])
def test_narrowest_and_widest_bus(beat):
    """32-bit and 512-bit data: the harness's integer and wide-word signal paths."""
    cfg = AccelConfig(mem_bytes_per_cycle=beat)
    rng = np.random.default_rng(beat)
    with FastSim(lambda: MemCopyTop(cfg), cfg, 1 << 15, regmap=COPY_MAP, name="memcopy") as sim:
        sim.mem[:] = rng.integers(0, 256, sim.mem.size, dtype=np.uint8)
        expect = sim.mem.copy()
        for src, dst, length in ((0, 0x4000, 4096 + 3 * beat), (0x0FC0, 0x6FC0, 16 * beat)):
            sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
            for name, value in (("SRC_ADDR", src), ("DST_ADDR", dst), ("LENGTH", length)):
                sim.write_reg(name, value)
            sim.write_reg("ADD", 17)
            sim.write_reg("CTRL", START)
            assert sim.run(100_000).status is RunStatus.DONE
            expect = expected_copy(expect, src, dst, length, 17)
        np.testing.assert_array_equal(sim.mem, expect)


def test_cycle_limit_is_a_clear_error_not_a_hang(fast_sim):
    fast_sim.clear_errors()
    fast_sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
    for name, value in (("SRC_ADDR", 0), ("DST_ADDR", 0x8000), ("LENGTH", 0x8000), ("ADD", 0)):
        fast_sim.write_reg(name, value)
    fast_sim.write_reg("CTRL", START)
    start = time.monotonic()
    with pytest.raises(FastSimTimeout, match="max_cycles = 500"):
        fast_sim.run(500)
    assert time.monotonic() - start < 5
    assert fast_sim.run(100_000).status is RunStatus.DONE


def test_register_errors(fast_sim):
    assert fast_sim.try_read(0x3F0) == (0, Resp.SLVERR)
    assert fast_sim.try_write(0x3F0, 1) is Resp.SLVERR
    with pytest.raises(BusError, match="SLVERR"):
        fast_sim.read_reg(0x3F0)
    with pytest.raises(BusError, match="SLVERR"):
        fast_sim.write_reg("ID_MAGIC", 0)
    with pytest.raises(ValueError, match="64-bit read-only"):
        fast_sim.write_reg("BYTES_READ", 0)
    with pytest.raises(KeyError, match="NOPE"):
        fast_sim.read_reg("NOPE")
    assert fast_sim.read_reg("ID_MAGIC") == COPY_MAP.constants(CFG)["ID_MAGIC"]


def test_driver_identity_check(fast_sim):
    COPY_MAP.check_identity(CFG, fast_sim.read_reg)
    with pytest.raises(ConfigError, match=r"CONFIG_ARRAY: rows=8 \(expected 4\)"):
        COPY_MAP.check_identity(CFG.replace(rows=4), fast_sim.read_reg)


def test_reads_beyond_memory_get_decerr(fast_sim):
    fast_sim.clear_errors()
    fast_sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
    for name, value in (("SRC_ADDR", MEM_BYTES - 64), ("DST_ADDR", 0), ("LENGTH", 256)):
        fast_sim.write_reg(name, value)
    fast_sim.write_reg("CTRL", START)
    result = fast_sim.run(10_000)
    assert result.status is RunStatus.ERROR and result.cause is ErrorCause.BUS_READ_ERROR
    assert fast_sim.read_reg("ERROR_ADDR") == MEM_BYTES


def test_two_models_in_one_process_stay_separate(fast_sim):
    narrow_cfg = AccelConfig(mem_bytes_per_cycle=8)
    with FastSim(lambda: MemCopyTop(narrow_cfg), narrow_cfg, 1 << 14, regmap=COPY_MAP) as narrow:
        rng = np.random.default_rng(3)
        narrow.mem[:] = rng.integers(0, 256, narrow.mem.size, dtype=np.uint8)
        fast_sim.mem[:] = rng.integers(0, 256, fast_sim.mem.size, dtype=np.uint8)
        wide_before, narrow_before = fast_sim.mem.copy(), narrow.mem.copy()
        for sim, add in ((fast_sim, 5), (narrow, 6)):
            sim.clear_errors()
            sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
            for name, value in (("SRC_ADDR", 0), ("DST_ADDR", 0x2000), ("LENGTH", 0x1000)):
                sim.write_reg(name, value)
            sim.write_reg("ADD", add)
            sim.write_reg("CTRL", START)
        assert narrow.run(100_000).status is RunStatus.DONE
        assert fast_sim.run(100_000).status is RunStatus.DONE
        np.testing.assert_array_equal(
            narrow.mem, expected_copy(narrow_before, 0, 0x2000, 0x1000, 6)
        )
        np.testing.assert_array_equal(
            fast_sim.mem, expected_copy(wide_before, 0, 0x2000, 0x1000, 5)
        )
        assert narrow.read_reg("CYCLES_TOTAL") >= 0x1000 // 8
        if not narrow.build.cached:  # a new model reuses Verilator's cached runtime objects
            log = (narrow.build.library.parent.parent / "build.log").read_text()
            assert "include/verilated.cpp" not in log


def test_only_the_harness_api_is_exported(fast_sim):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("binutils' nm is not installed")
    out = subprocess.run(
        [nm, "-D", "--defined-only", str(fast_sim.build.library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    exported = {line.split()[-1] for line in out.splitlines() if line.strip()}
    assert "fastsim_run" in exported
    assert {name for name in exported if not name.startswith("fastsim_")} == set()


def test_inputs_are_registered_so_nothing_is_input_combinational(fast_sim):
    """`RegisteredPorts`: Verilator generates no input-combinational ("ico") code, which
    it would otherwise run on both `eval()`s of every cycle (docs/simulation.md)."""
    sources = list(fast_sim.build.library.parent.glob(f"{PREFIX}*.cpp"))
    assert sources
    assert not [src.name for src in sources if "_ico_sequent" in src.read_text()]


def test_build_is_cached_and_keyed_on_the_design(fast_sim):
    start = time.monotonic()
    again = FastSim(lambda: MemCopyTop(CFG), CFG, 4096, regmap=COPY_MAP, name="memcopy")
    assert again.build.cached and again.build.library == fast_sim.build.library
    assert time.monotonic() - start < 5
    again.close()
    with pytest.raises(Exception, match="closed"):
        again.read_reg("STATUS")


def test_waveform_trace(tmp_path):
    vcd = tmp_path / "copy.vcd"
    with FastSim(
        lambda: MemCopyTop(CFG), CFG, 4096, regmap=COPY_MAP, trace=vcd, name="memcopy"
    ) as sim:
        for name, value in (("SRC_ADDR", 0), ("DST_ADDR", 0x800), ("LENGTH", 64)):
            sim.write_reg(name, value)
        sim.write_reg("CTRL", START)
        assert sim.run(1000).status is RunStatus.DONE
    text = vcd.read_text()
    assert "m_axi__arvalid" in text and "#" in text


def test_throughput():
    """Simulated cycles per second of long copies (print it with -s)."""
    with FastSim(
        lambda: MemCopyTop(CFG), CFG, 1 << 20, regmap=COPY_MAP, read_latency=12, name="memcopy"
    ) as sim:
        assert sim.build.cached  # the module fixture built it
        for name, value in (("SRC_ADDR", 0), ("DST_ADDR", 1 << 19), ("LENGTH", 1 << 19)):
            sim.write_reg(name, value)
        results = []
        for _ in range(8):
            sim.write_reg("STATUS", STATUS.pack(done=1))
            sim.write_reg("CTRL", START)
            results.append(sim.run(1_000_000, poll_interval=256))
        job_cycles = sim.read_reg("CYCLES_TOTAL")
    cycles = sum(r.cycles for r in results)
    wall = sum(r.wall_s for r in results)
    print(f"\nfast backend: {cycles} cycles in {wall:.3f} s = {cycles / wall / 1e6:.2f} M cycles/s")
    assert all(r.status is RunStatus.DONE for r in results)
    assert (1 << 19) // 16 <= job_cycles <= results[-1].cycles
    assert cycles / wall > 1e5


def test_bad_arguments():
    class NoBus(wiring.Component):
        s_axil: In(AXILiteSignature())

        def elaborate(self, platform):
            from amaranth import Module

            return Module()

    with pytest.raises(TypeError, match="no 'm_axi'"):
        FastSim(NoBus(), CFG, 4096)
    with pytest.raises(ConfigError, match="multiple of the 16-byte beat"):
        FastSim(lambda: MemCopyTop(CFG), CFG, 100, regmap=COPY_MAP)
    with pytest.raises(ConfigError, match=r"2\^32\] \(AccelConfig.addr_bits\)"):
        FastSim(lambda: MemCopyTop(CFG), CFG, 2**32 + 16, regmap=COPY_MAP)
    with pytest.raises(ConfigError, match="read_latency"):
        FastSim(lambda: MemCopyTop(CFG), CFG, 4096, regmap=COPY_MAP, read_latency=-1)
    with pytest.raises(ValueError, match=r"\.vcd or \.fst"):
        FastSim(lambda: MemCopyTop(CFG), CFG, 4096, regmap=COPY_MAP, trace="x.txt")
    if not _fst_supported():
        with pytest.raises(SimulationError, match="liblz4-dev"):
            FastSim(lambda: MemCopyTop(CFG), CFG, 4096, regmap=COPY_MAP, trace="x.fst")


def test_only_all_zero_memory_initialisers_are_stripped():
    verilog = (
        "  reg [7:0] zeros [1:0];\n"
        "  initial begin\n"
        "    zeros[0] = 8'h00;\n"
        "    zeros[1] = 8'h00;\n"
        "  end\n"
        "  reg [7:0] table [1:0];\n"
        "  initial begin\n"
        "    table[0] = 8'h00;\n"
        "    table[1] = 8'h2a;\n"
        "  end\n"
    )
    stripped = strip_zero_memory_init(verilog)
    assert "zeros[0]" not in stripped and "zeros [1:0];" in stripped
    assert stripped.endswith(verilog[verilog.index("  reg [7:0] table") :])


def copy_job(sim: FastSim, src: int, dst: int, length: int) -> RunStatus:
    """One MemCopyTop copy (adding 0) from `src` to `dst`; its final status."""
    sim.clear_errors()
    sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
    for name, value in (("SRC_ADDR", src), ("DST_ADDR", dst), ("LENGTH", length), ("ADD", 0)):
        sim.write_reg(name, value)
    sim.write_reg("CTRL", START)
    return sim.run(100_000).status


def test_lazy_regions_are_filled_only_when_the_master_first_reads_them(fast_sim):
    payload = np.random.default_rng(5).integers(0, 256, 512, dtype=np.uint8)
    fills: list[str] = []

    def fill_used() -> None:
        fills.append("used")
        fast_sim.mem[0x2000:0x2200] = payload

    fast_sim.reset()
    fast_sim.clear_lazy_regions()
    used = fast_sim.add_lazy_region(0x2000, 0x2200, fill_used)
    fast_sim.add_lazy_region(0x2400, 0x2600, lambda: fills.append("unused"))
    with pytest.raises(ValueError, match="overlaps one not filled yet"):
        fast_sim.add_lazy_region(0x2100, 0x2300, fill_used)
    with pytest.raises(ValueError, match="not inside the memory"):
        fast_sim.add_lazy_region(MEM_BYTES - 16, MEM_BYTES + 16, fill_used)
    assert fills == []
    # The copy reads the region's second half first only through its own bursts:
    # the fill comes with the first burst that touches the region.
    assert copy_job(fast_sim, 0x2100, 0xA000, 256) is RunStatus.DONE
    assert fills == ["used"] and fast_sim.filled == [used]
    assert np.array_equal(fast_sim.mem[0xA000:0xA100], payload[256:])
    assert copy_job(fast_sim, 0x2000, 0xB000, 512) is RunStatus.DONE
    assert fills == ["used"], "a filled region is ordinary memory"
    assert np.array_equal(fast_sim.mem[0xB000:0xB200], payload)
    fast_sim.clear_lazy_regions()
    assert fast_sim.filled == []


def test_a_failing_fill_stops_the_run_with_its_exception(fast_sim):
    def broken() -> None:
        raise RuntimeError("no weights for this expert")

    fast_sim.reset()
    fast_sim.clear_lazy_regions()
    fast_sim.add_lazy_region(0x3000, 0x3100, broken)
    with pytest.raises(SimulationError, match="no weights for this expert"):
        copy_job(fast_sim, 0x3000, 0xA000, 256)
    fast_sim.clear_lazy_regions()
    fast_sim.reset()
    assert copy_job(fast_sim, 0x3000, 0xA000, 256) is RunStatus.DONE


def test_clear_memory_zeroes_the_memory(fast_sim):
    fast_sim.mem[0x100:0x200] = 7
    fast_sim.clear_memory()
    assert not fast_sim.mem[0x100:0x200].any()


def test_a_sparse_mapping_beyond_4_gib_costs_only_its_written_pages():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mem = np.frombuffer(sparse_mapping(1 << 40), dtype=np.uint8)  # a whole 40-bit space
    mem[(1 << 40) - 16 :] = 9
    mem[5 << 32] = 3
    assert mem.size == 1 << 40 and mem[-1] == 9 and mem[5 << 32] == 3 and mem[1 << 39] == 0
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 64 * 1024


def _copy(sim: FastSim, src: int, dst: int, length: int) -> int:
    """One MemCopyTop job (add 0); its CYCLES_TOTAL."""
    sim.write_reg("STATUS", STATUS.pack(done=1, error=1))
    for name, value in (("SRC_ADDR", src), ("DST_ADDR", dst), ("LENGTH", length), ("ADD", 0)):
        sim.write_reg(name, value)
    sim.write_reg("CTRL", START)
    assert sim.run(400_000).status is RunStatus.DONE
    return sim.read_reg("CYCLES_TOTAL")


def test_host_tier_serves_its_range_slower_and_counts_per_tier():
    """Reads above the host base wait the link's latency and move at its bandwidth; device
    reads keep their cycles exactly; each tier counts its own bytes."""
    host_base, length = MEM_BYTES // 2, 4096
    link = HostLink(bytes_per_cycle=2.5, latency=300)
    with FastSim(lambda: MemCopyTop(CFG), CFG, MEM_BYTES, regmap=COPY_MAP, name="memcopy") as sim:
        sim.mem[:] = np.random.default_rng(MEM_SEED).integers(0, 256, MEM_BYTES, dtype=np.uint8)
        device_only = _copy(sim, 0x1000, 0x4000, length)
        sim.set_host_tier(host_base, link)
        assert _copy(sim, 0x1000, 0x4000, length) == device_only
        counters = sim.tier_counters(clear=True)
        assert counters["host"] == {"bytes_read": 0, "bytes_written": 0, "busy_cycles": 0}
        assert counters["device"]["bytes_read"] == counters["device"]["bytes_written"] == length
        expect = sim.mem.copy()
        from_host = _copy(sim, host_base + 0x2000, 0x6000, length)
        expect[0x6000 : 0x6000 + length] = expect[host_base + 0x2000 : host_base + 0x2000 + length]
        np.testing.assert_array_equal(sim.mem, expect)
        counters = sim.tier_counters()
        assert counters["host"]["bytes_read"] == length
        assert counters["device"]["bytes_written"] == length
        assert counters["device"]["bytes_read"] == 0
        # The link's bandwidth bounds the copy from below (less the two beats of credit an
        # idle link holds); busy covers it.
        assert from_host >= link.latency + (length - 2 * CFG.mem_bytes_per_cycle) / 2.5
        assert counters["host"]["busy_cycles"] >= length / link.bytes_per_cycle
        assert from_host < 1.2 * (link.latency + length / link.bytes_per_cycle) + device_only


def test_host_tier_bad_arguments(fast_sim):
    with pytest.raises(ConfigError, match="4096-byte-aligned"):
        fast_sim.set_host_tier(0x1001, HostLink(bytes_per_cycle=4, latency=10))
    with pytest.raises(ConfigError, match="needs a HostLink"):
        fast_sim.set_host_tier(0x1000, (4, 10))
    with pytest.raises(ConfigError, match="finer than 1/1000"):
        HostLink(bytes_per_cycle=0.0005)
