# amaranth: UnusedElaboratable=no
"""`flow.tops`: the synthesis harness, the tops by name and config loading."""

import re
from pathlib import Path

import pytest
from amaranth import Module, signed
from amaranth.back import rtlil
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from flow.devices import DEVICES
from flow.errors import SynthError
from flow.tops import TOPS, SynthHarness, build_top, load_config
from pymodel.config import AccelConfig, ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class _Adder(wiring.Component):
    """A 2-lane adder with a stream output, to exercise the harness end to end."""

    def __init__(self):
        super().__init__(
            {
                "a": In(data.ArrayLayout(signed(4), 2)),
                "out": Out(stream.Signature(signed(5))),
            }
        )

    def elaborate(self, platform):
        m = Module()
        m.d.comb += [self.out.payload.eq(self.a[0] + self.a[1]), self.out.valid.eq(1)]
        return m


def test_harness_shifts_inputs_in_and_outputs_out():
    dut = _Adder()
    harness = SynthHarness(dut)
    assert (harness.in_bits, harness.out_bits) == (8 + 1, 5 + 1)  # a + out.ready; payload + valid
    a0, a1 = 5, -3  # inputs in flatten order: a (lane 0 low), then out.ready
    bits_in = [(a0 & 0xF) >> i & 1 for i in range(4)] + [(a1 & 0xF) >> i & 1 for i in range(4)]
    bits_in.append(1)
    got = []

    async def bench(ctx):
        # The chain shifts towards the high end: the first bit sent ends up at the top.
        for bit in reversed(bits_in):
            ctx.set(harness.sin, bit)
            await ctx.tick()
        ctx.set(harness.load, 1)
        await ctx.tick()
        ctx.set(harness.load, 0)
        for _ in range(harness.out_bits):
            got.append(ctx.get(harness.sout))
            await ctx.tick()

    sim = Simulator(harness)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    payload = sum(b << i for i, b in enumerate(got[:5]))
    assert payload - 32 * (payload >> 4) == a0 + a1
    assert got[5] == 1  # out.valid


def test_harness_rejects_non_components():
    with pytest.raises(SynthError, match="Component"):
        SynthHarness(Module())


def test_every_top_wraps_in_the_harness():
    for name in TOPS:
        harness = SynthHarness(build_top(name, AccelConfig(rows=2, cols=2)))
        assert harness.in_bits > 0 and harness.out_bits > 0
        rtlil.convert(harness, name="top", emit_src=False)


def test_ecp5_clock_is_pinned_to_the_harness_clock_port():
    option, name, text = DEVICES["ecp5-85f"].constraints
    assert option == "--lpf" and name.endswith(".lpf")
    assert re.findall(r'LOCATE COMP "(\w+)" SITE "(\w+)";', text) == [("clk", "G2")]
    harness = SynthHarness(build_top("systolic_array", AccelConfig(rows=2, cols=2)))
    il = rtlil.convert(harness, name="top", emit_src=False, platform=DEVICES["ecp5-85f"])
    top = il.split("module \\top\n")[1].split("\nend\n")[0]
    assert re.search(r"^\s*wire width 1 input \d+\s+\\clk$", top, re.MULTILINE)


def test_build_top_names_the_choices():
    with pytest.raises(SynthError, match="gemm_engine"):
        build_top("nope", AccelConfig())
    with pytest.raises(ConfigError, match="AccelConfig"):
        build_top("gemm_engine", {"rows": 4})


def test_load_config_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": 0}')
    with pytest.raises(ConfigError, match=r"bad\.json.*rows"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.json")


def test_shipped_configs_load():
    names = sorted(p.stem for p in CONFIGS.glob("*.json"))
    assert {"default", "4x4", "ice40"} <= set(names)
    assert load_config(CONFIGS / "default.json") == AccelConfig()
