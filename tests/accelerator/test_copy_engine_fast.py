# amaranth: UnusedElaboratable=no
"""The copy engine and the bus arbiter inside MoEAccel, on the fast backend with a host tier.

They exist only in builds with `AccelConfig.copy_engine` (`COPY_TOP`); on the
default small top the copy registers are a `ConfigError` by name and SLVERR by
address. Copies alone (bytes exact, counters), copies concurrent with a layer (the layer
bit-exact and its bursts unchanged, every copied byte exact, both masters
granted and counted), a layer beside copies over a slow link (slowed by the copies'
bus beats only, never by the link), a copy hitting a read or write bus error (status, cause
and address; the queue dropped; the next copy runs), a malformed descriptor and
a full queue. Random contents log their seed; replay one with
`pytest tests/accelerator/test_copy_engine_fast.py -k <test>`.
"""

from collections.abc import Iterator

import numpy as np
import pytest

from contract.regs import COPY_QUEUE_DEPTH, REGISTER_MAP, ErrorCause
from pymodel.config import ConfigError
from pymodel.expert_cache import HostLink
from rtl.axi import Resp
from sim.accelerator import accelerator_top
from sim.fast import FastSim, RunStatus
from sim.tb.layer_cases import SMALL_TOP, check_outputs, load_case, make_case, mode_specs
from sw_driver.compile import read_expert_counts, read_outputs

COPY_TOP = SMALL_TOP.replace(copy_engine=True)
"""The small top with the copy engine and the arbiter."""

MEM_BYTES = 1 << 18
"""The model's memory, as the shared small top's (conftest)."""
HOST_BASE = MEM_BYTES // 2
"""Host memory: the upper half of the model memory."""
LINK = HostLink(bytes_per_cycle=2, latency=150)
BEAT = SMALL_TOP.mem_bytes_per_cycle
BURST_BYTES = 16 * BEAT
COPY_STATUS = REGISTER_MAP["COPY_STATUS"].register
CLEAR = REGISTER_MAP["COPY_CTRL"].register.pack(clear_counters=1)
PUSH = REGISTER_MAP["COPY_CTRL"].register.pack(push=1)
SPEC = mode_specs(32, 64, 8)["mixtral"]


@pytest.fixture(scope="module")
def copy_sim() -> Iterator[FastSim]:
    """`MoEAccel(COPY_TOP)` on the fast backend: the build `VerilatorDevice(COPY_TOP)` uses
    (same top factory, name and flags), so tests/sw_driver/test_offload.py reuses it."""
    with FastSim(
        accelerator_top(COPY_TOP), COPY_TOP, MEM_BYTES, read_latency=12, name="moe_accel"
    ) as s:
        yield s


@pytest.fixture
def host_sim(copy_sim):
    """The copy-engine top with the host tier on and the copy state cleared."""
    sim = copy_sim
    sim.reset()
    sim.clear_errors()
    sim.set_host_tier(HOST_BASE, LINK)
    sim.write_reg("COPY_CTRL", CLEAR)
    sim.write_reg("COPY_STATUS", COPY_STATUS.pack(done=1, error=1))
    return sim


def push(sim, src: int, dst: int, length: int) -> None:
    for reg, value in (("COPY_SRC", src), ("COPY_DST", dst), ("COPY_LENGTH", length)):
        sim.write_reg(reg, value)
    sim.write_reg("COPY_CTRL", PUSH)


def status(sim) -> dict[str, int]:
    return COPY_STATUS.unpack(sim.read_reg("COPY_STATUS"))


def wait_copies(sim, limit: int = 200_000) -> dict[str, int]:
    """Step until the copy engine is idle; its status."""
    for _ in range(limit // 64):
        st = status(sim)
        if not st["busy"]:
            return st
        sim.step(64)
    raise AssertionError(f"copies still busy after {limit} cycles: {status(sim)}")


def fill_host(sim, seed: int, lo: int, hi: int) -> None:
    print(f"host contents seed {seed}")
    sim.mem[lo:hi] = np.random.default_rng(seed).integers(0, 256, hi - lo, dtype=np.uint8)


def bursts(addr: int, length: int) -> int:
    """Bursts the DMA splits [addr, addr + length) into (16 beats, no 4 KiB crossing)."""
    count, end = 0, addr + length
    while addr < end:
        addr = min(end, addr + BURST_BYTES, (addr // 4096 + 1) * 4096)
        count += 1
    return count


def test_copies_alone_move_exact_bytes_and_count(host_sim):
    sim = host_sim
    fill_host(sim, 21, HOST_BASE, HOST_BASE + 0x8000)
    jobs = [(HOST_BASE, 0x10000, 4096), (HOST_BASE + 0x1F00, 0x12010, 1040), (HOST_BASE, 0, 0)]
    for job in jobs:
        push(sim, *job)
    st = wait_copies(sim)
    assert st["done"] == 1 and st["error"] == 0 and st["pending"] == 0
    for src, dst, n in jobs:
        np.testing.assert_array_equal(sim.mem[dst : dst + n], sim.mem[src : src + n])
    total = sum(n for _, _, n in jobs)
    assert sim.read_reg("COPY_COMPLETED") == len(jobs)
    assert sim.read_reg("COPY_BYTES") == total
    assert sim.read_reg("ARB_COPY_BURSTS") == sum(bursts(s, n) + bursts(d, n) for s, d, n in jobs)
    assert sim.read_reg("ARB_LAYER_BURSTS") == 0
    # Host bytes went over the link: the copy took at least their link time.
    tiers = sim.tier_counters()
    assert tiers["host"]["bytes_read"] == total
    assert sim.read_reg("COPY_BUSY_CYCLES") >= total / LINK.bytes_per_cycle


def run_layer(sim, case, copies=()) -> int:
    """Load `case`, queue `copies`, start the layer, check it bit for bit; CYCLES_TOTAL."""
    load_case(sim, case, start=False)
    fill_host(sim, 33, HOST_BASE, HOST_BASE + 0x4000)
    fill_host(sim, 34, 0x18000, 0x1C000)  # device-to-device sources: copies that contend
    sim.write_reg("COPY_CTRL", CLEAR)
    for job in copies:
        push(sim, *job)
    reg, value = case.image.program[-1]
    sim.write_reg(reg, value)
    assert sim.run(2_000_000).status is RunStatus.DONE
    counts = read_expert_counts(sim.write_reg, sim.read_reg, case.image)
    check_outputs(case, read_outputs(sim.mem, case.image), counts)
    return sim.read_reg("CYCLES_TOTAL")


def test_copies_concurrent_with_a_layer(host_sim):
    """The layer stays bit-exact with its bursts unchanged; the copies (two within device
    memory, then two from host memory) are exact; each master's bursts are counted apart."""
    sim = host_sim
    case = make_case("copy_concurrent", SPEC, COPY_TOP, tokens=4, seed=5)
    assert case.image.mem_bytes <= 0x10000
    alone = run_layer(sim, case)
    layer_bursts = sim.read_reg("ARB_LAYER_BURSTS")
    assert sim.read_reg("ARB_COPY_BURSTS") == 0 and sim.read_reg("ARB_LAYER_WAIT") == 0
    jobs = [(0x18000 + i * 0x1000, 0x12000 + i * 0x1000, 0x1000) for i in range(2)]
    jobs += [(HOST_BASE + i * 0x1000, 0x10000 + i * 0x1000, 0x1000) for i in range(2)]
    with_copies = run_layer(sim, case, jobs)
    wait_copies(sim)
    for src, dst, n in jobs:
        np.testing.assert_array_equal(sim.mem[dst : dst + n], sim.mem[src : src + n])
    assert sim.read_reg("ARB_LAYER_BURSTS") == layer_bursts
    assert sim.read_reg("ARB_COPY_BURSTS") == sum(bursts(s, n) + bursts(d, n) for s, d, n in jobs)
    assert sim.read_reg("COPY_BYTES") == 4 * 0x1000
    waits = sim.read_reg("ARB_LAYER_WAIT"), sim.read_reg("COPY_WAIT_CYCLES")
    print(f"layer alone {alone} cycles, beside 16 KiB of copies {with_copies}; waits {waits}")
    assert with_copies >= alone


SLOW_LINK = HostLink(bytes_per_cycle=1, latency=1000)
"""A link far slower than the layer: a copy burst's data takes 1,000 + 16 * 16 cycles to cross."""
W_BUBBLE = 4
"""Bus cycles a copy write burst may cost beyond its beats: the cycle of its AW grant and
the DMA's W set-up (AW accepted -> burst set up -> W register loaded) before its first beat."""


def test_a_layer_beside_copies_over_a_slow_link_waits_only_for_their_bus_beats(host_sim):
    """A copy's write burst leaves only with its data buffered, so the layer loses at most the
    bus cycles the copies' device writes take (their W beats, `W_BUBBLE` a burst), never the
    link's latency or bandwidth (before that fix: 11,478 cycles here for a 4,725-cycle layer)."""
    sim = host_sim
    case = make_case("copy_slow_link", SPEC, COPY_TOP, tokens=4, seed=6)
    alone = run_layer(sim, case)
    sim.set_host_tier(HOST_BASE, SLOW_LINK)
    jobs = [(HOST_BASE + i * 0x1400, 0x10000 + i * 0x1400, 0x1400) for i in range(2)]
    with_copies = run_layer(sim, case, jobs)
    wait_copies(sim, limit=400_000)
    for src, dst, n in jobs:
        np.testing.assert_array_equal(sim.mem[dst : dst + n], sim.mem[src : src + n])
    beats = sum(n for _, _, n in jobs) // BEAT
    bound = beats + W_BUBBLE * sum(bursts(d, n) for _, d, n in jobs)
    print(
        f"layer alone {alone}, beside 2 x 5 KiB copies over {SLOW_LINK}: {with_copies} "
        f"(+{with_copies - alone}, bound +{bound})"
    )
    assert alone <= with_copies <= alone + bound


@pytest.mark.parametrize("side", ["read", "write"])
def test_a_bus_error_ends_the_copy_with_its_cause_and_drops_the_queue(host_sim, side):
    sim = host_sim
    bad = HOST_BASE + 0x2000 if side == "read" else 0x11000
    sim.inject_error(bad + 0x100, bad + 0x110, write=side == "write", resp=Resp.SLVERR)
    if side == "read":
        push(sim, bad, 0x11000, 0x800)
    else:
        push(sim, HOST_BASE, bad, 0x800)
    push(sim, HOST_BASE + 0x3000, 0x13000, 0x400)  # queued behind: dropped
    st = wait_copies(sim)
    assert st["error"] == 1 and st["pending"] == 0
    cause = ErrorCause.BUS_READ_ERROR if side == "read" else ErrorCause.BUS_WRITE_ERROR
    assert sim.read_reg("COPY_ERROR_CAUSE") == cause
    addr = sim.read_reg("COPY_ERROR_ADDR")
    assert bad <= addr <= bad + 0x100
    assert sim.read_reg("COPY_COMPLETED") == 0
    sim.clear_errors()
    sim.write_reg("COPY_STATUS", COPY_STATUS.pack(error=1))
    fill_host(sim, 44, HOST_BASE, HOST_BASE + 0x400)
    push(sim, HOST_BASE, 0x14000, 0x400)
    st = wait_copies(sim)
    assert st["error"] == 0 and st["done"] == 1, (st, sim.read_reg("COPY_COMPLETED"))
    np.testing.assert_array_equal(sim.mem[0x14000:0x14400], sim.mem[HOST_BASE : HOST_BASE + 0x400])


def test_a_malformed_descriptor_and_a_full_queue_are_errors_not_hangs(host_sim):
    sim = host_sim
    push(sim, HOST_BASE + 8, 0x10000, 64)  # not beat-aligned
    st = wait_copies(sim)
    assert st["error"] == 1
    assert sim.read_reg("COPY_ERROR_CAUSE") == ErrorCause.BAD_DESCRIPTOR
    sim.write_reg("COPY_STATUS", COPY_STATUS.pack(error=1))
    for i in range(COPY_QUEUE_DEPTH + 1):
        push(sim, HOST_BASE, 0x10000 + i * 0x1000, 0x1000)
    sim.step(4)  # the push's pulse, the engine's error pulse, the status register
    assert status(sim)["error"] == 1
    assert sim.read_reg("COPY_ERROR_CAUSE") == ErrorCause.COPY_QUEUE_FULL
    wait_copies(sim)
    assert sim.read_reg("COPY_COMPLETED") == COPY_QUEUE_DEPTH


def test_a_build_without_the_copy_engine_has_no_copy_registers(sim):
    """The default small top: a copy register by name is a ConfigError naming the switch, by
    address an unmapped SLVERR; never a silent 0 that reads as an idle copy engine."""
    assert not SMALL_TOP.copy_engine
    for access in (lambda: sim.read_reg("COPY_STATUS"), lambda: push(sim, 0, 0x1000, 64)):
        with pytest.raises(ConfigError, match=r"COPY_\w+ \(copy block\).*copy_engine = True"):
            access()
    offset = REGISTER_MAP.offset("COPY_STATUS")
    assert sim.try_read(offset)[1] is Resp.SLVERR
    assert sim.try_write(REGISTER_MAP.offset("COPY_CTRL"), PUSH) is Resp.SLVERR
