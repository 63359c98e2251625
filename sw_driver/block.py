"""`run_block`: any supported HuggingFace MoE block on a backend, in one call.

What the CLI's `run` reports, for a block the user already has: import its
weights (`sw_driver.hf.import_hf_block`), check the input, calibrate and
quantise on the input itself, run the layer on the backend and on the golden
model, run the block's own forward and the PyTorch reference, and compare.
Input is a float tensor (torch or NumPy) of shape `[..., T, d]`; tokens of
all leading positions go to the hardware in runs of at most `max_tokens`
(a layer with a `capacity` — Switch — counts it per sequence, as HF does, so
each sequence is its own run). The output has the input's shape, dtype and
torch device.

Expert weight formats (`weights="int8"|"int4"`, `sparsity="dense"|"2:4"`,
`int4_group`): the imported block's routed and shared experts are pruned and
quantised per the format (the router stays int8 dense); the report gives
the error against the float block and, for 2:4, against the pruned float
block (`pymodel.reference.pruned_weights`). The `verilator` backend runs
int8 dense only for now (`check_backend_format`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pymodel.config import AccelConfig, ConfigError
from pymodel.cycles import expert_weight_bytes
from pymodel.families import rel_l2_bounds
from pymodel.layer import quantize_input, routing_guaranteed
from pymodel.quantize import calibrate, quantize_layer
from pymodel.reference import moe_forward_float, pruned_weights
from pymodel.weight_formats import WeightFormat

from .compile import check_image_format
from .device import Device, DeviceResult, GoldenDevice, make_device
from .report import LayerReport, add_hardware_metrics, expert_set_agreement, rel_l2, revision

__all__ = ["BACKENDS", "BlockRun", "check_backend_format", "run_block"]

BACKENDS = ("golden", "verilator")
"""Backends a block runs on."""


@dataclass
class BlockRun:
    """What `run_block` returns: the output and one report per hardware run."""

    y: Any
    """The dequantised layer output, shaped, typed and placed like the input."""
    reports: list[LayerReport]
    results: list[DeviceResult]
    """The backend's raw results (integer outputs, routing, counters), one per run."""

    @property
    def report(self) -> LayerReport:
        """The report of a call that was one hardware run."""
        if len(self.reports) != 1:
            raise ValueError(f"this call made {len(self.reports)} runs; see .reports")
        return self.reports[0]

    @property
    def bit_exact(self) -> bool | None:
        """Every run equal to the golden model bit for bit (None on the golden backend)."""
        flags = [r.bit_exact_vs_golden for r in self.reports]
        return None if flags[0] is None else all(bool(f) for f in flags)


def check_backend_format(backend: str, fmt: WeightFormat, cfg: AccelConfig) -> None:
    """Raise unless `backend`, built as `cfg`, runs whole layers with expert weights in `fmt`.

    Checked before anything is imported or built. The golden model runs every
    format; the hardware, what `compile.check_image_format` admits.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {list(BACKENDS)}")
    if backend == "golden":
        return
    check_image_format(fmt, cfg)


def _tokens(
    x: Any, d_model: int
) -> tuple[np.ndarray, tuple[int, ...], Callable[[np.ndarray], Any]]:
    """x as float32 `[N, d]` rows, its leading shape, and how to give a result x's form."""
    import torch

    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            raise ConfigError(f"x has dtype {x.dtype}; expected a float tensor")
        rows = x.detach().to("cpu", torch.float32).numpy()

        def back(y: np.ndarray) -> Any:
            return torch.from_numpy(y).to(device=x.device, dtype=x.dtype)

    elif isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.floating):
            raise ConfigError(f"x has dtype {x.dtype}; expected a float array")
        rows = x.astype(np.float32)

        def back(y: np.ndarray) -> Any:
            return y.astype(x.dtype)

    else:
        raise ConfigError(f"x must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if rows.ndim < 2 or rows.shape[-1] != d_model:
        raise ConfigError(f"x has shape {tuple(rows.shape)}; expected [..., T, {d_model}]")
    if rows.shape[-2] < 1 or rows.size == 0:
        raise ConfigError(f"x has shape {tuple(rows.shape)}: no tokens")
    if not np.isfinite(rows).all():
        raise ConfigError("x holds NaN or Inf")
    lead = tuple(rows.shape[:-1])
    return rows.reshape(-1, d_model), lead, back


def _runs(lead: tuple[int, ...], per_sequence: bool, max_tokens: int) -> list[slice]:
    """Row slices of the flattened tokens, one per hardware run."""
    total = int(np.prod(lead))
    step = lead[-1] if per_sequence else total
    if per_sequence and step > max_tokens:
        raise ConfigError(
            f"a sequence of {step} tokens exceeds AccelConfig.max_tokens = {max_tokens}; a "
            "layer with a capacity counts it per sequence, so the sequence cannot be split"
        )
    out = []
    for start in range(0, total, step):
        for lo in range(start, start + step, max_tokens):
            out.append(slice(lo, min(lo + max_tokens, start + step)))
    return out


def run_block(
    block: Any,
    x: Any,
    *,
    backend: str = "golden",
    config: AccelConfig | None = None,
    device: Device | None = None,
    seed: int | None = None,
    progress: Callable[[str], AbstractContextManager[None]] | None = None,
    run_device: Callable[[Device, Any, np.ndarray], DeviceResult] | None = None,
    build_dir: Path | None = None,
    weights: str = "int8",
    sparsity: str = "dense",
    int4_group: int | None = None,
) -> BlockRun:
    """Run HF MoE `block` on tokens `x` `[..., T, d]` on `backend`, beside the references.

    `config` is the accelerator (default `AccelConfig()`); `device` a backend
    instance to reuse (built on first use otherwise, its model cached under
    `build_dir`); `seed` is only recorded in the reports. `progress` wraps each
    step (a context manager factory taking a description) and `run_device`
    replaces `device.run` (the CLI uses both for its progress and waveforms).
    `weights` (`int8`/`int4`), `sparsity` (`dense`/`2:4`) and `int4_group`
    (32/64/128: group-wise int4 scales, golden backend only) are the experts'
    weight format (`pymodel.weight_formats.WeightFormat.parse`).
    """
    import torch

    from .hf import block_family, import_hf_block
    from .reference import default_device, run_hf_block, torch_moe_forward

    cfg = config or AccelConfig()
    fmt = WeightFormat.parse(weights, sparsity, int4_group)
    check_backend_format(backend, fmt, cfg)
    step = progress or (lambda _: nullcontext())
    family = block_family(block)
    with step(f"importing the {family} block"):
        spec, floats = import_hf_block(block)
    rows, lead, back = _tokens(x, spec.d_model)
    runs = _runs(lead, spec.capacity is not None, cfg.max_tokens)
    for part in runs:
        cfg.check_fits(spec, part.stop - part.start)
    with step(f"pruning and quantising the layer ({fmt.name})"):
        pruned = pruned_weights(floats, fmt)
        ql = quantize_layer(spec, floats, calibrate(spec, floats, rows, fmt), cfg, fmt)
    if device is None:
        options = {"build_dir": build_dir} if backend == "verilator" and build_dir else {}
        device = make_device(backend, cfg, **options)
    torch_device = default_device()
    y = np.zeros_like(rows)
    reports, results = [], []
    for i, part in enumerate(runs):
        xs = rows[part]
        label = f" ({i + 1}/{len(runs)})" if len(runs) > 1 else ""
        x_q = quantize_input(ql, xs)
        with step(f"running the PyTorch reference{label}"):
            hf_y = run_hf_block(block, xs)
            ref = torch_moe_forward(spec, floats, xs, device=torch_device, dtype=torch.float32)
            if float(np.max(np.abs(ref.y - hf_y))) > 1e-4:
                raise RuntimeError("torch reference disagrees with the HF block itself")
            ref_pruned = (
                torch_moe_forward(spec, pruned, xs, device=torch_device, dtype=torch.float32)
                if fmt.sparse
                else None
            )
        with step(f"running the golden model{label}"):
            golden = GoldenDevice(cfg).run(ql, x_q)
        if backend == "golden":
            result = golden
        else:
            with step(f"running the layer on the {backend} backend{label}"):
                result = (run_device or _run)(device, ql, x_q)
        y[part] = result.y
        report = _report(family, backend, cfg, ql, pruned, xs, y[part], ref, ref_pruned, result)
        report.torch_device = f"{torch_device.type} fp32"
        report.seed = seed
        if backend != "golden":
            report.bit_exact_vs_golden = result.same_outputs(golden)
            add_hardware_metrics(report, result, spec, cfg)
        reports.append(report)
        results.append(result)
    return BlockRun(y=back(y.reshape(*lead, spec.d_model)), reports=reports, results=results)


def _run(device: Device, ql: Any, x_q: np.ndarray) -> DeviceResult:
    return device.run(ql, x_q)


def _report(
    family: str,
    backend: str,
    cfg: AccelConfig,
    ql: Any,
    pruned: Any,
    xs: np.ndarray,
    y: np.ndarray,
    ref: Any,
    ref_pruned: Any,
    result: DeviceResult,
) -> LayerReport:
    """The run's report; errors against the float block, and the pruned one for 2:4.

    The bounds (`pymodel.families.rel_l2_bounds`) and the agreeing-token error
    judge the error against the float block the format's integer weights
    approximate: the pruned block for 2:4, the block itself for dense formats.
    """
    spec, fmt = ql.spec, ql.weight_format
    agree = expert_set_agreement(result.expert_ids, ref.expert_ids)
    guaranteed = routing_guaranteed(ql, pruned, xs, moe_forward_float(spec, pruned, xs), cfg)
    n_guaranteed = int(guaranteed.sum())
    approximated = ref if ref_pruned is None else ref_pruned
    bound, bound_agreeing = rel_l2_bounds(family, fmt)
    weight_bytes = expert_weight_bytes(cfg, spec, xs.shape[0], result.tokens_per_expert, fmt)
    return LayerReport(
        family=family,
        backend=backend,
        tokens=int(xs.shape[0]),
        d_model=spec.d_model,
        d_ff=spec.d_ff,
        n_experts=spec.n_experts,
        top_k=spec.top_k,
        torch_device="",
        max_abs_vs_torch=float(np.max(np.abs(y - ref.y))),
        rel_l2_vs_torch=rel_l2(y, ref.y),
        rel_l2_bound=bound,
        rel_l2_vs_torch_agreeing=(rel_l2(y[agree], approximated.y[agree]) if agree.any() else 0.0),
        rel_l2_bound_agreeing=bound_agreeing,
        routing_agreement=float(agree.mean()),
        routing_agreement_guaranteed=float(agree[guaranteed].mean()) if n_guaranteed else 1.0,
        guaranteed_tokens=n_guaranteed,
        dropped_pairs=int(result.dropped),
        tokens_per_expert=[int(c) for c in result.tokens_per_expert],
        accel_config=cfg.to_dict(),
        moe_spec=spec.to_dict(),
        revision=revision(),
        weight_format=fmt.name,
        expert_weight_bytes=int(weight_bytes[0]),
        rel_l2_vs_torch_pruned=None if ref_pruned is None else rel_l2(y, ref_pruned.y),
    )
