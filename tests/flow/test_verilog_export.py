# amaranth: UnusedElaboratable=no
"""`flow.verilog_export`: the Verilog and its port description agree."""

import re
from pathlib import Path

import pytest

from flow.tops import build_top, load_config
from flow.verilog_export import describe_ports, export_verilog
from pymodel.config import AccelConfig
from rtl.systolic import SystolicArray

from .test_tops import _Adder

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


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
