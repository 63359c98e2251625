# amaranth: UnusedElaboratable=no
"""sim.build: Verilog emission, cached Verilator builds, cocotb runs, lint, waves."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from toy_stage import ToyStage

from sim.build import (
    SimulationError,
    build_component,
    emit_verilog,
    lint_verilog,
    run_cocotb,
    setup_environment,
)

HERE = Path(__file__).parent
REPO = HERE.parent.parent
TB = HERE / "cocotb_toy_stage.py"


@pytest.fixture(scope="module")
def toy_build():
    return build_component(ToyStage(), "toy_stage")


def test_verilog_hash_ignores_source_locations():
    # Two instances built from different lines give the same text: the cache key
    # must not change when unrelated Python moves around.
    a = emit_verilog(ToyStage(), "toy_stage")
    b = emit_verilog(ToyStage(), "toy_stage")
    assert a == b
    assert "src =" not in a
    assert emit_verilog(ToyStage(offset=1), "toy_stage") != a


def test_second_build_is_cached_even_in_a_new_process(toy_build):
    again = build_component(ToyStage(), "toy_stage")
    assert again.cached and again.build_dir == toy_build.build_dir
    mtime = toy_build.binary.stat().st_mtime_ns
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(HERE)!r})
        from toy_stage import ToyStage
        from sim.build import build_component
        t = time.monotonic()
        b = build_component(ToyStage(), "toy_stage")
        print(b.cached, time.monotonic() - t)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    cached, seconds = out.stdout.split()
    assert cached == "True"
    assert float(seconds) < 5.0
    assert toy_build.binary.stat().st_mtime_ns == mtime


def test_new_designs_link_cached_verilator_runtime():
    # Two designs with identical flags: the second (at the latest) links the
    # runtime objects the first left in the cache instead of compiling them.
    build_component(ToyStage(offset=5), "toy_stage_rt")
    second = build_component(ToyStage(offset=6), "toy_stage_rt")
    log = (second.build_dir / "build.log").read_text()
    assert "verilated.cpp" not in log
    assert second.binary.is_file()


def test_cocotb_stream_parts_pass_with_backpressure(toy_build):
    results = run_cocotb(toy_build, TB, params={"seed": 7})
    assert results.is_file()


def test_failing_cocotb_test_raises_with_its_name(toy_build):
    with pytest.raises(SimulationError, match="stream_roundtrip_with_backpressure"):
        run_cocotb(toy_build, TB, params={"wrong_model": 1})


def test_missing_test_module_is_a_clear_error(toy_build):
    with pytest.raises(FileNotFoundError, match="not a Python file"):
        run_cocotb(toy_build, HERE / "no_such_module.py")


def test_non_component_needs_ports():
    from amaranth import Module
    from amaranth.hdl import Elaboratable

    class Bare(Elaboratable):
        def elaborate(self, platform):
            return Module()

    with pytest.raises(TypeError, match="pass its ports"):
        emit_verilog(Bare(), "bare")


def test_bad_top_name():
    with pytest.raises(ValueError, match="Verilog identifier"):
        emit_verilog(ToyStage(), "not-a-name")


def test_environment_fixes_are_applied(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.delenv("MAKEFLAGS", raising=False)
    setup_environment()
    import os
    import shutil

    assert "CFG_CXXFLAGS_PCH_I=-include" in os.environ["MAKEFLAGS"]
    assert Path(shutil.which("verilator")).parent.name == "bin"
    assert "site-packages" in shutil.which("verilator")
    assert Path(shutil.which("python")).parent == Path(sys.executable).parent


def test_waves_env_variable(monkeypatch):
    from sim.build import waves_requested

    monkeypatch.setenv("MOE_ACCEL_WAVES", "1")
    assert waves_requested(None) is True
    assert waves_requested(False) is False
    monkeypatch.setenv("MOE_ACCEL_WAVES", "0")
    assert waves_requested(None) is False


def test_toy_lint_is_clean():
    assert lint_verilog(emit_verilog(ToyStage(), "toy_stage"), "toy_stage") == []


def test_waves_build_writes_a_trace(tmp_path):
    with pytest.warns(UserWarning, match="liblz4-dev") if not _fst_ok() else _nothing():
        build = build_component(ToyStage(offset=2), "toy_stage_waves", waves=True)
    assert build.waves in ("fst", "vcd")
    start = time.monotonic()
    with pytest.raises(SimulationError):  # offset=2 disagrees with the model: still traced
        run_cocotb(build, TB, test_dir=tmp_path, waves=True)
    assert time.monotonic() - start < 60
    assert (tmp_path / f"dump.{build.waves}").stat().st_size > 0


def _fst_ok() -> bool:
    from sim.build import _fst_supported

    return _fst_supported()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
