"""`flow.reports`: nextpnr and yosys report parsing, the Markdown table, the doc update."""

import json

import pytest

from flow.devices import DEVICES
from flow.errors import SynthError
from flow.reports import (
    SynthReport,
    critical_path_hops,
    markdown_table,
    parse_nextpnr_report,
    parse_yosys_stat,
    update_doc,
)

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
