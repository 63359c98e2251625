"""`moe-accel`: run MoE layers of the six families beside the PyTorch reference.

`moe-accel run --family mixtral ...` builds the family's HuggingFace block
offline (seeded weights), imports it, runs it on the chosen backend and on
the torch reference, and prints a report table (and writes JSON with
`--json`). `moe-accel demo` is the README's main job.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console

from pymodel.config import AccelConfig, ConfigError
from pymodel.families import FAMILIES, REL_L2_BOUND, REL_L2_BOUND_AGREEING
from pymodel.layer import quantize_input, routing_guaranteed
from pymodel.numerics import NumericsError
from pymodel.quantize import calibrate, quantize_layer
from pymodel.reference import moe_forward_float

from .device import Device, GoldenDevice, make_device
from .report import LayerReport, add_hardware_metrics, expert_set_agreement, rel_l2

BACKENDS = ("golden", "verilator")


def run_family_layer(
    family: str,
    *,
    tokens: int = 32,
    d_model: int = 64,
    d_ff: int = 128,
    n_experts: int = 8,
    top_k: int | None = None,
    seed: int = 0,
    backend: str = "golden",
    cfg: AccelConfig | None = None,
    trace: Path | None = None,
    device: Device | None = None,
    console: Console | None = None,
) -> LayerReport:
    """Build `family`'s HF block, run it on `backend` and on torch, and compare.

    Everything is validated (shapes against the hardware, finite values, a
    routing the gate implements) before any simulation starts.
    """
    import torch

    from .hf import build_hf_block, import_hf_block
    from .reference import default_device, run_hf_block, torch_moe_forward

    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {list(BACKENDS)}")
    cfg = cfg or AccelConfig()
    console = console or Console(stderr=True)
    options = {"d_model": d_model, "d_ff": d_ff, "n_experts": n_experts, "top_k": top_k}
    with console.status(f"building the {family} HF block (seed {seed})"):
        block = build_hf_block(family, seed=seed, **options)
        spec, weights = import_hf_block(block)
    cfg.check_fits(spec, tokens)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((tokens, spec.d_model)).astype(np.float32)

    with console.status("calibrating and quantising the layer"):
        ql = quantize_layer(spec, weights, calibrate(spec, weights, x), cfg)
        x_q = quantize_input(ql, x)
        if device is None:
            device = make_device(backend, cfg, **({"trace": trace} if trace else {}))
    with console.status("running the PyTorch reference"):
        hf_y = run_hf_block(block, x)
        torch_device = default_device()
        ref = torch_moe_forward(spec, weights, x, device=torch_device, dtype=torch.float32)
        if float(np.max(np.abs(ref.y - hf_y))) > 1e-4:
            raise RuntimeError("torch reference disagrees with the HF block itself")
    with console.status("running the golden model"):
        golden = GoldenDevice(cfg).run(ql, x_q)
    if backend == "golden":
        result = golden
    else:
        with console.status(f"running the layer on the {backend} backend"):
            result = device.run(ql, x_q)

    y = (result.y_q * ql.s_y).astype(np.float32)
    agree = expert_set_agreement(result.expert_ids, ref.expert_ids)
    guaranteed = routing_guaranteed(ql, weights, x, moe_forward_float(spec, weights, x), cfg)
    n_guaranteed = int(guaranteed.sum())
    report = LayerReport(
        family=family,
        backend=backend,
        tokens=tokens,
        d_model=spec.d_model,
        d_ff=spec.d_ff,
        n_experts=spec.n_experts,
        top_k=spec.top_k,
        torch_device=f"{torch_device.type} fp32",
        max_abs_vs_torch=float(np.max(np.abs(y - ref.y))),
        rel_l2_vs_torch=rel_l2(y, ref.y),
        rel_l2_bound=REL_L2_BOUND[family],
        rel_l2_vs_torch_agreeing=rel_l2(y[agree], ref.y[agree]) if agree.any() else 0.0,
        rel_l2_bound_agreeing=REL_L2_BOUND_AGREEING,
        routing_agreement=float(agree.mean()),
        routing_agreement_guaranteed=float(agree[guaranteed].mean()) if n_guaranteed else 1.0,
        guaranteed_tokens=n_guaranteed,
        dropped_pairs=int(result.dropped),
        tokens_per_expert=[int(c) for c in result.tokens_per_expert],
    )
    if backend != "golden":
        report.bit_exact_vs_golden = bool(
            np.array_equal(result.y_q, golden.y_q)
            and np.array_equal(result.expert_ids, golden.expert_ids)
            and np.array_equal(result.gate_weights, golden.gate_weights)
        )
        add_hardware_metrics(report, result, spec, cfg)
    return report


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moe-accel", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one MoE layer beside the torch reference")
    run.add_argument("--family", choices=FAMILIES, default="mixtral")
    run.add_argument("--tokens", type=int, default=32)
    run.add_argument("--d-model", type=int, default=64)
    run.add_argument("--d-ff", type=int, default=128)
    run.add_argument("--experts", type=int, default=8)
    run.add_argument("--top-k", type=int, default=None, help="default: 2 (1 for switch)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--backend", choices=BACKENDS, default="golden")
    run.add_argument("--config", type=Path, help="AccelConfig JSON (default: the default config)")
    run.add_argument("--json", type=Path, help="write the report as JSON here")
    run.add_argument(
        "--waves", type=Path, default=None, help="waveform file, .vcd or .fst (verilator)"
    )
    sub.add_parser(
        "demo", help="the main job: Mixtral and DeepSeek-V3 layers on the Verilator backend"
    )
    sub.add_parser("synth", help="FPGA synthesis (yosys + nextpnr); see `moe-accel synth --help`")
    return parser


def _config(path: Path | None) -> AccelConfig:
    return AccelConfig() if path is None else AccelConfig.from_json(path.read_text())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `moe-accel` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["synth"]:
        from rtl.fpga import main as fpga_main

        return fpga_main(argv)
    args = _parser().parse_args(argv)
    console = Console()
    try:
        if args.command == "run":
            report = run_family_layer(
                args.family,
                tokens=args.tokens,
                d_model=args.d_model,
                d_ff=args.d_ff,
                n_experts=args.experts,
                top_k=args.top_k,
                seed=args.seed,
                backend=args.backend,
                cfg=_config(args.config),
                trace=args.waves,
            )
            report.render(console)
            if args.json:
                args.json.write_text(json.dumps(report.to_json_dict(), indent=2))
            return 0
        cfg = AccelConfig()
        device = make_device("verilator", cfg)
        for family in ("mixtral", "deepseek_v3"):
            report = run_family_layer(
                family, tokens=32, seed=0, backend="verilator", cfg=cfg, device=device
            )
            report.render(console)
        return 0
    except (ConfigError, NumericsError) as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
