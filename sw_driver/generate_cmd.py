"""`moe-accel generate`: greedy generation on a tiny model, every MoE block on a backend."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pymodel.families import FAMILIES

from .accelerate import generate_compare, tiny_model
from .block import BACKENDS

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction, **parser_args: object) -> None:
    """Register `generate` on the `moe-accel` sub-command parser."""
    p = sub.add_parser(
        "generate",
        description="Greedy generation with a tiny random-weight model of a family, once in "
        "float and once with every MoE block on the backend; token agreement and per-layer "
        "errors.",
        epilog="examples:\n  moe-accel generate --family mixtral --tokens 16\n"
        "  moe-accel generate --family deepseek_v3 --backend verilator --tokens 4 "
        "--config small.json",
        **parser_args,
    )
    p.add_argument("--family", choices=FAMILIES, default="mixtral", help="MoE model family")
    p.add_argument("--tokens", type=int, default=16, help="tokens to generate")
    p.add_argument("--prompt-length", type=int, default=4, help="random prompt tokens")
    p.add_argument("--layers", type=int, default=2, help="decoder layers of the tiny model")
    p.add_argument("--backend", choices=BACKENDS, default="golden", help="where MoE blocks run")
    p.add_argument("--seed", type=int, default=0, help="weights and prompt seed")
    p.add_argument("--config", type=Path, default=None, help="AccelConfig JSON")
    p.add_argument("--json", type=Path, default=None, help="also write the comparison as JSON")
    p.set_defaults(handler=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    """Build the tiny model, generate twice, print the comparison."""
    import numpy as np

    from .cli import CliError, check_output_file, load_accel_config

    for name in ("tokens", "prompt_length", "layers"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name.replace('_', '-')} must be at least 1")
    if args.json is not None:
        check_output_file("--json", args.json, (".json",))
    cfg = load_accel_config(args.config)
    length = args.prompt_length + args.tokens
    if length > cfg.max_tokens:
        raise CliError(
            f"--prompt-length + --tokens = {length} exceeds AccelConfig.max_tokens = "
            f"{cfg.max_tokens}: every step runs the whole sequence"
        )
    model = tiny_model(args.family, seed=args.seed, layers=args.layers)
    prompt = [int(t) for t in np.random.default_rng(args.seed).integers(2, 100, args.prompt_length)]
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]generating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    ) as bar:
        task = bar.add_task("tokens", total=2 * args.tokens)
        result = generate_compare(
            model,
            prompt,
            args.tokens,
            backend=args.backend,
            config=cfg,
            step=lambda: bar.advance(task),
        )
    table = Table(title=f"moe-accel · {args.family} tiny model, MoE blocks on {args.backend}")
    for col in (
        "layer",
        "calls",
        "tokens",
        "rel. L2 vs block (mean / max)",
        "routing",
        "bit-exact",
    ):
        table.add_column(col)
    for layer in result.layers:
        exact = layer["bit_exact"]
        table.add_row(
            layer["layer"],
            str(layer["calls"]),
            str(layer["tokens"]),
            f"{layer['rel_l2_vs_block_mean']:.4f} / {layer['rel_l2_vs_block_max']:.4f}",
            f"{100 * layer['routing_agreement']:.1f} %",
            "—" if exact is None else ("yes" if exact else "NO"),
        )
    out = Console()
    out.print(table)
    first = result.first_difference
    out.print(
        f"prompt {result.prompt}\nfloat      {result.float_tokens}\n{args.backend:<10} "
        f"{result.accel_tokens}\ntoken agreement {100 * result.agreement:.1f} % "
        f"({'all equal' if first is None else f'first difference at token {first}'})",
        markup=False,
        highlight=False,
    )
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result) | {"agreement": result.agreement}, indent=1))
    failed = any(layer["bit_exact"] is False for layer in result.layers)
    return 1 if failed else 0
