"""cocotb side of tests/rtl/test_dma.py: the DMA against cocotbext-axi's AxiRam.

Random commands on both engines at once with random backpressure on every
AXI channel and on the streams; a protocol monitor checks burst lengths, the
4 KiB rule and the outstanding-burst limit; bus errors are injected by making
the RAM's read or write handler fail for an address range (cocotbext-axi then
answers SLVERR). With `base` (a multiple of the RAM's size) every address
is offset by it: the RAM answers modulo its size, so a base above 4 GiB runs
the same tests through a wide (`AccelConfig.addr_bits` > 32) bus.
"""

import random

import cocotb
from amaranth import unsigned
from cocotb.triggers import ReadOnly, RisingEdge
from cocotbext.axi import AxiBus, AxiRam

from contract.regs import ErrorCause
from rtl.dma import dma_command_layout, read_beat_layout
from sim.tb import StreamDriver, StreamSink, reset_dut, start_clock
from sim.tb.axi_checker import AxiProtocolChecker
from sim.tb.params import tb_params

P = tb_params()

CFG = P.config("cfg")
BEAT = CFG.mem_bytes_per_cycle
BURST = P["burst"]
MAX_OUT = P["max_outstanding"]
SEED = P.get("seed", 1)
COMMANDS = P.get("commands", 10)
MEM = 1 << 16
HALF = MEM // 2  # reads come from the lower half, writes go to the upper half
BASE = P.get("base", 0)  # the bus address of the RAM's byte 0


def pauses(rng: random.Random, p: float):
    while True:
        yield rng.random() < p


class Bench:
    def __init__(self, dut, rng: random.Random, *, pause: float, ready: float) -> None:
        self.dut, self.rng = dut, rng
        self.ram = AxiRam(
            AxiBus.from_prefix(dut, "m_axi", bus_separator="__"), dut.clk, dut.rst, size=MEM
        )
        if pause:
            for ch in (
                self.ram.write_if.aw_channel,
                self.ram.write_if.w_channel,
                self.ram.write_if.b_channel,
                self.ram.read_if.ar_channel,
                self.ram.read_if.r_channel,
            ):
                ch.set_pause_generator(pauses(random.Random(rng.random()), pause))
        self.image = bytes(rng.getrandbits(8) for _ in range(MEM))
        self.ram.write(0, self.image)
        clk = dut.clk
        cmd = dma_command_layout(CFG.addr_bits)
        self.rd_cmd = StreamDriver.from_prefix(dut, "rd_cmd", clk, cmd, rng=rng)
        self.wr_cmd = StreamDriver.from_prefix(dut, "wr_cmd", clk, cmd, rng=rng)
        self.wr_data = StreamDriver.from_prefix(
            dut, "wr_data", clk, unsigned(8 * BEAT), idle_prob=0.2, rng=rng
        )
        self.rd_data = StreamSink.from_prefix(
            dut, "rd_data", clk, read_beat_layout(CFG), ready_prob=ready, rng=rng
        )
        self.rd_done = self.wr_done = 0
        self.axi = AxiProtocolChecker(
            dut, beat_bytes=BEAT, max_burst=BURST, max_outstanding=MAX_OUT
        ).start()
        cocotb.start_soon(self._count_done())

    async def _count_done(self) -> None:
        d = self.dut
        while True:
            await RisingEdge(d.clk)
            await ReadOnly()
            self.rd_done += int(d.rd_done.value)
            self.wr_done += int(d.wr_done.value)

    async def wait_until(self, predicate, cycles: int, what: str) -> None:
        for _ in range(cycles):
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            if predicate():
                await RisingEdge(self.dut.clk)
                return
        raise AssertionError(f"timeout waiting for {what}")


def random_command(rng: random.Random, base: int) -> tuple[int, int]:
    """(bus addr, length) at `base` in the RAM: sometimes just below a 4 KiB boundary,
    lengths 1..70 beats."""
    beats = rng.choice([1, 2, BURST, BURST + 1, rng.randint(1, 70)])
    if rng.random() < 0.4:
        page = rng.randrange(1, HALF // 4096)
        addr = page * 4096 - BEAT * rng.randint(1, 2 * BURST)
    else:
        addr = rng.randrange(0, HALF - beats * BEAT) // BEAT * BEAT
    addr = min(addr, HALF - beats * BEAT)
    return BASE + base + addr, beats * BEAT


async def start(dut, *, pause: float = 0.3, ready: float = 0.6, seed: int = SEED) -> Bench:
    start_clock(dut.clk)
    dut.clear.value = 0
    dut.clear_counters.value = 0
    rng = random.Random(seed)
    bench = Bench(dut, rng, pause=pause, ready=ready)
    await reset_dut(dut, dut.clk)
    return bench


def expected_beats(image: bytes, commands: list[tuple[int, int]]) -> list[dict]:
    beats = []
    for addr, length in commands:
        n = length // BEAT
        for i in range(n):
            at = addr - BASE + i * BEAT
            chunk = image[at : at + BEAT]
            beats.append({"data": int.from_bytes(chunk, "little"), "last": int(i == n - 1)})
    return beats


@cocotb.test()
async def random_reads_and_writes_with_backpressure(dut):
    bench = await start(dut)
    rng = bench.rng
    reads = [random_command(rng, 0) for _ in range(COMMANDS)]
    writes, data, image = [], [], bytearray(bench.image)
    for _ in range(COMMANDS):
        addr, length = random_command(rng, HALF)
        payload = bytes(rng.getrandbits(8) for _ in range(length))
        writes.append((addr, length))
        image[addr - BASE : addr - BASE + length] = payload
        data += [int.from_bytes(payload[i : i + BEAT], "little") for i in range(0, length, BEAT)]
    bench.rd_cmd.send_many([{"addr": a, "length": n} for a, n in reads])
    bench.wr_cmd.send_many([{"addr": a, "length": n} for a, n in writes])
    bench.wr_data.send_many(data)
    expect = expected_beats(bench.image, reads)
    await bench.rd_data.wait_for(len(expect), timeout_cycles=4000 * COMMANDS)
    await bench.wait_until(lambda: bench.wr_done == len(writes), 2000 * COMMANDS, "writes")
    assert bench.rd_data.items == expect
    assert bench.rd_done == len(reads)
    assert bench.ram.read(0, MEM) == bytes(image)
    bench.axi.check()
    assert int(dut.error.value) == 0 and int(dut.busy.value) == 0
    assert int(dut.bytes_read.value) == sum(n for _, n in reads)
    assert int(dut.bytes_written.value) == sum(n for _, n in writes)


@cocotb.test()
async def read_error_ends_the_transfer_without_hanging(dut):
    bench = await start(dut)
    bad = BASE + 0x1000 + 5 * BEAT
    read_if = bench.ram.read_if
    healthy = read_if._read

    async def failing(address, length):
        if address <= bad < address + length:
            raise OSError("injected read fault")
        return await healthy(address, length)

    read_if._read = failing
    addr, length = BASE + 0x1000 - 3 * BEAT, 40 * BEAT
    bench.rd_cmd.send({"addr": addr, "length": length})
    # A concurrent write is aborted too: its producer never blocks.
    bench.wr_cmd.send({"addr": BASE + HALF, "length": 64 * BEAT})
    bench.wr_data.send_many(list(range(64)))
    await bench.wait_until(lambda: int(dut.error.value) and not int(dut.busy.value), 5000, "abort")
    assert int(dut.error_cause.value) == ErrorCause.BUS_READ_ERROR
    assert int(dut.error_addr.value) == bad
    good = (bad - addr) // BEAT
    assert bench.rd_data.items == expected_beats(bench.image, [(addr, length)])[:good]
    await bench.wr_data.wait_drained(timeout_cycles=500)
    bench.axi.check()
    # Clear, then the engine works again.
    read_if._read = healthy
    dut.clear.value = 1
    await RisingEdge(dut.clk)
    dut.clear.value = 0
    await bench.wait_until(lambda: not int(dut.error.value), 10, "error cleared")
    assert int(dut.error_cause.value) == ErrorCause.NONE
    bench.rd_cmd.send({"addr": BASE, "length": 4 * BEAT})
    expect = expected_beats(bench.image, [(BASE, 4 * BEAT)])
    await bench.rd_data.wait_for(good + 4, timeout_cycles=2000)
    assert bench.rd_data.items[good:] == expect


@cocotb.test()
async def write_error_names_the_failing_burst(dut):
    bench = await start(dut, pause=0.2, ready=1.0)
    bad = BASE + HALF + 0x2000 + 3 * BEAT
    write_if = bench.ram.write_if
    healthy = write_if._write

    async def failing(address, data):
        if address <= bad < address + len(data):
            raise OSError("injected write fault")
        await healthy(address, data)

    write_if._write = failing
    addr, beats = BASE + HALF + 0x2000 - 2 * BEAT, 5 * BURST
    bench.wr_cmd.send({"addr": addr, "length": beats * BEAT})
    bench.wr_data.send_many(list(range(beats)))
    await bench.wait_until(lambda: int(dut.error.value) and not int(dut.busy.value), 5000, "abort")
    assert int(dut.error_cause.value) == ErrorCause.BUS_WRITE_ERROR
    assert int(dut.error_addr.value) == BASE + HALF + 0x2000  # the burst after the 4 KiB split
    await bench.wr_data.wait_drained(timeout_cycles=500)
    assert bench.wr_done == 0
    bench.axi.check()


@cocotb.test()
async def bad_and_empty_commands(dut):
    bench = await start(dut, pause=0.0, ready=1.0)
    bench.rd_cmd.send({"addr": BASE + 0x100, "length": 0})
    bench.wr_cmd.send({"addr": BASE + HALF, "length": 0})
    await bench.wait_until(lambda: bench.rd_done == 1 and bench.wr_done == 1, 50, "empty done")
    assert int(dut.error.value) == 0
    bench.rd_cmd.send({"addr": BASE + 0x100 + BEAT // 2, "length": BEAT})
    await bench.wait_until(lambda: int(dut.error.value), 50, "bad descriptor")
    assert int(dut.error_cause.value) == ErrorCause.BAD_DESCRIPTOR
    assert int(dut.error_addr.value) == BASE + 0x100 + BEAT // 2
    dut.clear.value = 1
    await RisingEdge(dut.clk)
    dut.clear.value = 0
    await bench.wait_until(lambda: not int(dut.error.value), 10, "error cleared")
    top = 2**CFG.addr_bits  # a transfer running past the address space
    bench.wr_cmd.send({"addr": (top - 16) // BEAT * BEAT, "length": 4 * BEAT})
    await bench.wait_until(lambda: int(dut.error.value), 50, "wrap-around descriptor")
    assert int(dut.error_cause.value) == ErrorCause.BAD_DESCRIPTOR
    assert not bench.rd_data.items
