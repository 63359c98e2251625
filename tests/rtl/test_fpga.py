# amaranth: UnusedElaboratable=no
"""The FPGA flow: harness, report parsing, Verilog export, and one real iCE40 build.

The real build (the smallest configuration, yosys + nextpnr-ice40) is the
default-run smoke test: ~1 min on 2 cores once YoWASP's WebAssembly is
compiled (the first call on a fresh machine adds 1–3 min, cached under
~/.cache/YoWASP). The ECP5 timing check of the default configuration is
`slow` (several minutes; `make synth` does the same).
"""

import json
import re
from pathlib import Path

import pytest
from amaranth import Module, signed
from amaranth.back import rtlil
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from pymodel.config import AccelConfig, ConfigError
from rtl.fpga import (
    _NO_FIT,
    DEVICES,
    TOPS,
    SynthError,
    SynthHarness,
    SynthReport,
    build_top,
    critical_path_hops,
    load_config,
    main,
    markdown_table,
    parse_nextpnr_report,
    parse_yosys_stat,
    synth,
    update_doc,
)
from rtl.systolic import SystolicArray
from rtl.verilog_export import describe_ports, export_verilog

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


def test_unknown_device_and_bad_frequency():
    with pytest.raises(SynthError, match="ecp5-85f"):
        synth(AccelConfig(rows=2, cols=2), device="virtex")
    with pytest.raises(SynthError, match="frequency"):
        synth(AccelConfig(rows=2, cols=2), freq_mhz=0.5)


_REPORT = {
    "fmax": {
        "$glbnet$clk": {"achieved": 93.5, "constraint": 100.0},
        "$PACKER_GND_NET_$glb_clk": {"achieved": 250.0, "constraint": 100.0},
    },
    "utilization": {
        "TRELLIS_COMB": {"used": 8364, "available": 83640},
        "MULT18X18D": {"used": 64, "available": 156},
    },
    "critical_paths": [
        {
            "from": "posedge $glbnet$clk",
            "to": "posedge $glbnet$clk",
            "path": [
                {
                    "type": "clk-to-q",
                    "net": "a",
                    "delay": 0.5,
                    "from": {"cell": "ff0"},
                    "to": {"cell": "ff0"},
                },
                {"type": "routing", "net": "a", "delay": 2.0, "to": {"cell": "mul"}},
                {"type": "logic", "net": "p", "delay": 4.0, "from": {"cell": "mul"}},
                {"type": "setup", "net": "s", "delay": 4.2, "to": {"cell": "ff1"}},
            ],
        }
    ],
}


def test_parse_nextpnr_report():
    parsed = parse_nextpnr_report(_REPORT)
    assert parsed["fmax"] == {"clk": 93.5}  # decorations gone, ice40's constant "clock" dropped
    assert parsed["constraints"] == {"clk": 100.0}
    assert parsed["utilization"]["MULT18X18D"] == {"used": 64, "available": 156}
    assert [s["type"] for s in parsed["path"]] == ["clk-to-q", "routing", "logic", "setup"]
    assert sum(s["delay_ns"] for s in parsed["path"]) == pytest.approx(10.7)
    assert parsed["path"][0]["from_cell"] == "ff0"
    hops = critical_path_hops(parsed["path"])
    assert [h.split()[-1] for h in hops] == ["ff0", "mul", "ff1"]
    assert hops[-1].startswith("  10.70 ns")


def test_critical_path_hops_merge_primitives_of_one_signal():
    path = [
        {"type": "logic", "delay_ns": 1.0, "to_cell": "dut.pe.psum_TRELLIS_COMB_A"},
        {"type": "routing", "delay_ns": 0.5, "to_cell": "dut.pe.psum$CCU2_COMB1"},
        {"type": "setup", "delay_ns": 0.2, "to_cell": "dut.acc.total_SB_DFF_Q"},
    ]
    assert [h.split()[-1] for h in critical_path_hops(path)] == ["dut.pe.psum", "dut.acc.total"]


def test_parse_yosys_stat_design_total_and_single_module():
    cells = {"LUT4": 100, "CCU2C": 10, "TRELLIS_FF": 50, "MULT18X18D": 4, "DP16KD": 2}
    ecp5 = DEVICES["ecp5-85f"]
    want = {"luts": 100, "carry": 10, "ffs": 50, "dsps": 4, "brams": 2}
    assert parse_yosys_stat({"design": {"num_cells_by_type": cells}}, ecp5) == want
    assert parse_yosys_stat({"modules": {"\\top": {"num_cells_by_type": cells}}}, ecp5) == want
    ice = {"SB_LUT4": 7, "SB_DFFE": 3, "SB_DFFSR": 2, "SB_MAC16": 1, "SB_RAM40_4K": 1}
    assert parse_yosys_stat({"design": {"num_cells_by_type": ice}}, DEVICES["ice40-up5k"]) == {
        "luts": 7,
        "carry": 0,
        "ffs": 5,
        "dsps": 1,
        "brams": 1,
    }
    with pytest.raises(SynthError, match="modules"):
        parse_yosys_stat({"modules": {"a": {}, "b": {}}}, ecp5)


def _report(**changes) -> SynthReport:
    base = dict(
        top="gemm_engine",
        config_name="default",
        device="ecp5-85f",
        rows=8,
        cols=8,
        target_mhz=100.0,
        status="ok",
        luts=5000,
        carry=900,
        ffs=7000,
        dsps=64,
        brams=10,
        harness_ffs=700,
        logic_cells_used=8364,
        logic_cells_available=83640,
        fmax_mhz={"clk": 120.0},
        wall_s=300.0,
        yosys_s=200.0,
        nextpnr_s=90.0,
        seed=1,
        tools={"yosys": "0.70", "nextpnr": "0.11", "amaranth": "0.5.10"},
        out_dir="build/fpga/x",
    )
    base.update(changes)
    return SynthReport(**base)


def test_report_numbers_and_table():
    ok = _report()
    assert ok.peak_gops == pytest.approx(2 * 64 * 120 / 1000)
    assert ok.logic_pct == pytest.approx(10.0)
    assert SynthReport.from_dict(json.loads(ok.to_json())) == ok
    slow = _report(status="timing-fail", fmax_mhz={"clk": 93.5}, message="timing fails")
    nofit = _report(status="no-fit", fmax_mhz={}, logic_cells_used=None, rows=16, cols=16)
    table = markdown_table([ok, slow, nofit]).splitlines()
    assert len(table) == 5
    assert "| met |" in table[2] and "clk 120.0 (100)" in table[2] and "15.4" in table[2]
    assert "**FAIL**" in table[3] and "clk 93.5" in table[3]
    assert "**does not fit**" in table[4] and "16×16" in table[4]
    assert "MULT18X18D" in table[0] and "DP16KD" in table[0]


def test_update_doc_replaces_only_the_marked_table(tmp_path):
    doc = tmp_path / "fpga.md"
    doc.write_text("intro\n<!-- sweep:begin -->\nold\n<!-- sweep:end -->\noutro\n")
    update_doc(doc, [_report()], "abc123")
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert "old" not in text and "abc123" in text and "| gemm_engine |" in text
    plain = tmp_path / "plain.md"
    plain.write_text("no markers")
    with pytest.raises(SynthError, match="markers"):
        update_doc(plain, [_report()], "abc")


def _verilog_ports(text: str, module: str) -> dict[str, tuple[str, int]]:
    """{port: (direction, width)} from yosys-written Verilog declarations."""
    body = text.split(f"module {module}(", 1)[1].split("endmodule", 1)[0]
    ports = {}
    for direction, msb, name in re.findall(
        r"^\s*(input|output)\s+(?:\[(\d+):0\]\s*)?(\S+?);", body, re.M
    ):
        ports[name.lstrip("\\")] = (direction, int(msb or 0) + 1)
    return ports


def test_export_verilog_and_port_description_agree(tmp_path):
    cfg = load_config(CONFIGS / "ice40.json")
    v_path, md_path = export_verilog(
        build_top("gemm_engine", cfg), "engine_ice40", tmp_path, cfg=cfg
    )
    verilog_ports = _verilog_ports(v_path.read_text(), "engine_ice40")
    md = md_path.read_text()
    rows = re.findall(r"^\| `(\w+)` \| (input|output) \| (\d+) \|", md, re.M)
    assert {name: (d, int(w)) for name, d, w in rows} == verilog_ports
    assert "`cmd__payload.mode`" in md and "SWIGLU=2" in md
    assert '"rows": 1' in md
    with pytest.raises(ValueError, match="identifier"):
        export_verilog(_Adder(), "bad-name", tmp_path)


def test_describe_ports_long_arrays_use_an_index_formula():
    md = describe_ports(SystolicArray(AccelConfig(rows=8, cols=8)), "arr")
    assert "| `a_in[i]` | `[8·i +: 8]` | signed 8 (i = 0 … 7) |" in md
    assert "| `psum_out[i]` | `[32·i +: 32]` | signed 32 (i = 0 … 7) |" in md


def test_cli_verilog_and_errors(tmp_path, capsys):
    assert main(["verilog", "--config", str(CONFIGS / "ice40.json"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "gemm_engine_ice40.v").exists()
    assert (tmp_path / "gemm_engine_ice40_ports.md").exists()
    assert main(["run", "--config", str(tmp_path / "none.json")]) == 2
    assert "--config" in capsys.readouterr().err.splitlines()[-1]


@pytest.mark.parametrize(
    "line",
    [
        "ERROR: Failed to expand region (0, 0) |_> (25, 31) of 5358 ICESTORM_LCs",
        "ERROR: Unable to place cell 'x', no BELs remaining to implement cell type 'MULT18X18D'",
    ],
)
def test_nextpnr_placement_failures_read_as_no_fit(line):
    """nextpnr's ways of saying the design is too big become a `no-fit` report, not a crash."""
    match = _NO_FIT.search(f"Info: placing\n{line}\n1 error")
    assert match is not None and match.group(1) == line


def test_ice40_smoke_build(tmp_path):
    """The smallest configuration (1×1) through yosys and nextpnr-ice40 (UP5K), twice (cached).

    UP5K has 8 SB_MAC16: the array's product and the post-processing lane's
    multipliers take 7, so 1×1 is the largest engine that fits.
    """
    cfg = load_config(CONFIGS / "ice40.json")
    report = synth(cfg, device="ice40-up5k", out_root=tmp_path, config_name="ice40")
    assert report.status in ("ok", "timing-fail"), report.message
    assert list(report.fmax_mhz) == ["clk"] and report.fmax_min_mhz > 5
    assert 0 < report.logic_cells_used <= report.logic_cells_available == 5280
    assert cfg.rows * cfg.cols <= report.dsps <= 8
    assert report.ffs >= report.harness_ffs
    assert report.critical_path and report.critical_path[-1]["type"] == "setup"
    saved = json.loads(Path(report.out_dir, "synth_report.json").read_text())
    assert saved["status"] == report.status and saved["peak_gops"] == report.peak_gops
    again = synth(cfg, device="ice40-up5k", out_root=tmp_path, config_name="ice40")
    assert again.cached and again.fmax_mhz == report.fmax_mhz


@pytest.mark.slow
def test_default_config_meets_100mhz_on_ecp5():
    """Issue #6: the default 8×8 engine closes 100 MHz on ECP5-85F (~20 min on 2 cores)."""
    cfg = load_config(CONFIGS / "default.json")
    report = synth(cfg, config_name="default")
    # One multiplier per PE, six per post-processing lane, one in the sequencer.
    assert report.dsps == cfg.rows * cfg.cols + 6 * cfg.cols + 1
    assert report.status == "ok", report.summary()
    assert report.fmax_min_mhz >= 100.0
