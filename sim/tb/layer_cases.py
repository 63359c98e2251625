"""Random MoE layer cases for the top-level tests: spec + weights + tokens → image + golden.

Why here: the cocotb top-level test (`tests/accelerator/test_top.py`) and the fast
backend test (`tests/accelerator/test_top_fast.py`) run the same kinds of layers
and check them the same way, bit for bit against `pymodel.layer.golden_layer`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from contract.regs import REGISTER_MAP, ErrorCause
from contract.timing import DMA_MAX_OUTSTANDING, burst_beats
from pymodel.config import AccelConfig, MoESpec
from pymodel.families import FAMILIES, family_spec
from pymodel.layer import LayerResult, golden_layer, quantize_input
from pymodel.quantize import QuantizedLayer, calibrate, quantize_layer
from pymodel.weight_formats import WeightFormat
from pymodel.weights import MoEWeights
from sw_driver.compile import (
    HwOutputs,
    LayerImage,
    compile_layer,
    read_expert_counts,
    read_outputs,
)

if TYPE_CHECKING:
    from pathlib import Path

    from sim.fast import FastSim

__all__ = [
    "SMALL_TOP",
    "LayerCase",
    "case_from",
    "check_outputs",
    "check_start_while_busy",
    "expect_error",
    "load_case",
    "make_case",
    "mode_specs",
    "run_case",
    "top_bench_params",
]

SMALL_TOP = AccelConfig(
    max_experts=8, max_top_k=4, max_groups=4, max_tokens=16, max_d_model=32, max_d_ff=64
)
"""The small top the RTL tests build (8×8 array, 16-byte bus, T ≤ 16, d ≤ 32, f ≤ 64, E ≤ 8)."""


@dataclass(frozen=True)
class LayerCase:
    """One layer to run: its integer image, tokens, memory image and golden result."""

    name: str
    ql: QuantizedLayer
    x_q: np.ndarray
    golden: LayerResult
    image: LayerImage


def top_bench_params(cfg: AccelConfig, jobs: Path | str, mem_bytes: int, **extra) -> dict:
    """`run_cocotb` parameters of `tests/accelerator/cocotb_top.py` for a top built from `cfg`.

    The AXI checker there needs the bus width and the top's DMA limits
    (`rtl.dma.DMA`'s defaults: `burst_beats`, `DMA_MAX_OUTSTANDING`); every
    caller gets them from here, so none can forget one.
    """
    return {
        "jobs": str(jobs),
        "mem_bytes": mem_bytes,
        "beat_bytes": cfg.mem_bytes_per_cycle,
        "max_burst": burst_beats(cfg),
        "max_outstanding": DMA_MAX_OUTSTANDING,
        **extra,
    }


def mode_specs(d_model: int, d_ff: int, n_experts: int) -> dict[str, MoESpec]:
    """One spec per routing mode / FFN kind the hardware implements."""
    shared = d_ff // 2 + 8
    specs = {
        name: family_spec(
            name,
            d_model=d_model,
            d_ff=d_ff,
            n_experts=n_experts,
            **({"shared_d_ff": shared} if name in ("qwen2_moe", "deepseek_v3") else {}),
        )
        for name in FAMILIES
    }
    specs["switch_drops"] = family_spec(
        "switch", d_model=d_model, d_ff=d_ff, n_experts=n_experts, capacity=1
    )
    specs["softmax_gelu_k3"] = MoESpec(
        d_model=d_model, d_ff=d_ff, n_experts=n_experts, top_k=3, ffn="gelu", name="gelu"
    )
    return specs


def make_case(
    name: str,
    spec: MoESpec,
    cfg: AccelConfig,
    tokens: int,
    seed: int,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
    **compile_args: int,
) -> LayerCase:
    """Seeded random weights and tokens for `spec`, calibrated on the tokens themselves;
    the experts' weights in `weight_format`."""
    weights = MoEWeights.random(spec, seed=seed)
    x = np.random.default_rng(seed + 1000).standard_normal((tokens, spec.d_model))
    return case_from(name, spec, weights, x.astype(np.float32), cfg, weight_format, **compile_args)


def case_from(
    name: str,
    spec: MoESpec,
    weights: MoEWeights,
    x: np.ndarray,
    cfg: AccelConfig,
    weight_format: WeightFormat = WeightFormat.DENSE_INT8,
    **compile_args: int,
) -> LayerCase:
    """The case of float `weights` and tokens `x`: calibrated on `x`, quantised (experts in
    `weight_format`), compiled."""
    calib = calibrate(spec, weights, x, weight_format)
    ql = quantize_layer(spec, weights, calib, cfg, weight_format)
    x_q = quantize_input(ql, x)
    golden = golden_layer(ql, x_q, cfg)
    image = compile_layer(ql, x_q, cfg, **compile_args)
    return LayerCase(name=name, ql=ql, x_q=x_q, golden=golden, image=image)


def check_outputs(case: LayerCase, out: HwOutputs, counts: np.ndarray | None = None) -> None:
    """Raise AssertionError naming the first output that differs from the golden layer."""
    g = case.golden
    np.testing.assert_array_equal(out.expert_ids, g.routing.expert_ids, err_msg="expert ids")
    np.testing.assert_array_equal(out.gate_weights, g.routing.gate_weights, err_msg="weights")
    np.testing.assert_array_equal(out.y_q, g.y_q, err_msg=f"{case.name}: layer output y_q")
    if counts is not None:
        np.testing.assert_array_equal(counts, g.dispatch.counts, err_msg="per-expert counts")


def load_case(sim: FastSim, case: LayerCase, *, start: bool = True) -> None:
    """Put `case`'s image in `sim`'s memory (the rest zeroed) and write its register program.

    With `start=False` the final write (`CTRL.start`) is left to the caller.
    """
    sim.mem[:] = 0
    sim.mem[: case.image.mem_bytes] = case.image.mem
    program = case.image.program if start else case.image.program[:-1]
    for reg, value in program:
        sim.write_reg(reg, value)


def run_case(sim: FastSim, case: LayerCase, max_cycles: int = 4_000_000) -> int:
    """Load and start `case`, run it to DONE and check it bit for bit; returns CYCLES_TOTAL.

    Checked: routing, layer output, per-expert counts (the EXPERT_INDEX window) and
    DROPPED_TOKENS against the golden layer.
    """
    from sim.fast import RunStatus

    load_case(sim, case)
    result = sim.run(max_cycles)
    assert result.status is RunStatus.DONE, result
    counts = read_expert_counts(sim.write_reg, sim.read_reg, case.image)
    check_outputs(case, read_outputs(sim.mem, case.image), counts)
    assert sim.read_reg("DROPPED_TOKENS") == case.golden.dispatch.dropped
    return sim.read_reg("CYCLES_TOTAL")


def expect_error(sim: FastSim, cause: ErrorCause, max_cycles: int = 2_000_000) -> None:
    """Run to the end and require the ERROR status with `cause`, the accelerator idle after."""
    from sim.fast import RunStatus

    result = sim.run(max_cycles)
    assert result.status is RunStatus.ERROR and result.cause is cause, result
    assert not REGISTER_MAP["STATUS"].register.unpack(sim.read_reg("STATUS"))["busy"]


def check_start_while_busy(sim: FastSim, case: LayerCase) -> None:
    """A second CTRL.start 200 cycles into `case` is refused (START_WHILE_BUSY) and the
    running layer still ends with its bit-exact outputs."""
    status = REGISTER_MAP["STATUS"].register
    start = case.image.program[-1]
    load_case(sim, case, start=False)
    sim.write_reg(*start)
    sim.step(200)
    sim.write_reg(*start)
    for _ in range(1000):
        fields = status.unpack(sim.read_reg("STATUS"))
        if not fields["busy"]:
            break
        sim.step(1000)
    assert fields["done"] and fields["error"], fields
    assert sim.read_reg("ERROR_CAUSE") == ErrorCause.START_WHILE_BUSY
    check_outputs(case, read_outputs(sim.mem, case.image))
