"""What gets synthesised: the tops by name, their configs, and the harness around them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from amaranth import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from pymodel.config import AccelConfig, ConfigError
from rtl.axi_arbiter import AXI4Arbiter
from rtl.copy_engine import CopyEngine
from rtl.gemm_engine import GemmEngine
from rtl.systolic import SystolicArray
from rtl.top import MoEAccel

from .errors import SynthError

__all__ = ["TOPS", "SynthHarness", "build_top", "load_config"]

TOPS: dict[str, Callable[[AccelConfig], wiring.Component]] = {
    "gemm_engine": GemmEngine,
    "moe_accel": MoEAccel,
    "systolic_array": SystolicArray,
    "copy_engine": CopyEngine,
    "axi_arbiter": AXI4Arbiter,
}
"""Synthesisable tops by name (`--top`): the GEMM engine (the default), the whole accelerator,
the array, and the copy engine and the arbiter alone (`bench/copy_units_sweep.py`)."""


def build_top(name: str, cfg: AccelConfig) -> wiring.Component:
    """The synthesisable top `name` (a key of `TOPS`) built from `cfg`."""
    if name not in TOPS:
        raise SynthError(f"unknown top {name!r}; choose one of {sorted(TOPS)}")
    if not isinstance(cfg, AccelConfig):
        raise ConfigError(f"build_top needs an AccelConfig, got {type(cfg).__name__}")
    return TOPS[name](cfg)


def load_config(path: str | Path) -> AccelConfig:
    """An `AccelConfig` from a JSON file, with an error naming the file when it is bad."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        return AccelConfig.from_json(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


class SynthHarness(wiring.Component):
    """Registers every port of `dut` behind serial shift chains (3 pins + clock/reset).

    Why: a bare component has hundreds of port bits (streams, counters) —
    more than a package has pins — and unregistered ports leave IO paths
    out of the timing analysis. Here each input bit comes from a flip-flop
    of a shift chain fed by `sin`, and each output bit is captured in a
    flip-flop (parallel load on `load`, else shifting towards `sout`), so
    every path is register to register and no logic is optimised away.
    The harness adds `in_bits + out_bits` flip-flops and about `out_bits`
    LUTs, which the report states.
    """

    def __init__(self, dut: wiring.Component) -> None:
        if not isinstance(dut, wiring.Component):
            raise SynthError(f"SynthHarness needs a lib.wiring.Component, got {type(dut).__name__}")
        self.dut = dut
        self._inputs: list[Value] = []
        self._outputs: list[Value] = []
        for _path, member, value in dut.signature.flatten(dut):
            target = self._inputs if member.flow == In else self._outputs
            target.append(Value.cast(value))
        self.in_bits = sum(len(v) for v in self._inputs)
        self.out_bits = sum(len(v) for v in self._outputs)
        if self.out_bits == 0:
            raise SynthError("the design has no outputs: synthesis would remove all of it")
        super().__init__({"sin": In(1), "load": In(1), "sout": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        if self.in_bits:
            chain = Signal(self.in_bits)
            if self.in_bits > 1:
                m.d.sync += chain.eq(Cat(self.sin, chain[:-1]))
            else:
                m.d.sync += chain.eq(self.sin)
            m.d.comb += Cat(*self._inputs).eq(chain)
        capture = Signal(self.out_bits)
        with m.If(self.load):
            m.d.sync += capture.eq(Cat(*self._outputs))
        with m.Else():
            m.d.sync += capture.eq(capture >> 1)
        m.d.comb += self.sout.eq(capture[0])
        return m
