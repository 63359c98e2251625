"""`moe-accel explore`: the command line of a design-space study (see `explore.study`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flow.paths import BUILD_ROOT

from .errors import ExploreError
from .objectives import OBJECTIVES, check_objectives
from .space import DEFAULT_SPACE, EXPLORABLE, SearchSpace, parse_param
from .study import DEVICE_CHOICES, SAMPLERS, StudySettings, run_study
from .workload import Workload

__all__ = ["EXPLORE_ROOT", "add_parser", "settings_from_args"]

EXPLORE_ROOT = BUILD_ROOT / "explore"
"""Default home of studies: `<study>.db` (the storage) and `<study>/` (the outputs)."""

EXAMPLES = """examples:
  moe-accel explore --layer Mixtral-8x7B --layer DeepSeek-V3 --trials 5000
  moe-accel explore --objective decode_latency_us --objective prefill_tokens_per_s \\
      --objective dsps --param rows=4,8,16 --param mem_bytes_per_cycle=16,32,64
  moe-accel explore --layer mixtral:d_model=32,d_ff=64 --prefill-tokens 16 \\
      --base-config small.json --param max_tokens=16 --param rows=4,8 --param cols=4,8 \\
      --device none --verify-top 3
  moe-accel explore --scheduler tcp://127.0.0.1:8786 --storage sqlite:////tmp/s.db
"""


def add_parser(sub: argparse._SubParsersAction, **parser_args: object) -> None:
    """Register `explore` on the `moe-accel` sub-command parser."""
    p = sub.add_parser(
        "explore",
        description="Pareto fronts of latency, throughput, energy and FPGA resources over "
        "AccelConfig parameters, on Optuna (storage, samplers) and Dask (trials as tasks).",
        epilog=EXAMPLES,
        **parser_args,
    )
    p.add_argument(
        "--layer",
        action="append",
        default=None,
        metavar="MODEL|FAMILY[:k=v,...]",
        help="workload layer: a real model (Mixtral-8x7B, DeepSeek-V3, Qwen3-30B-A3B, "
        "OLMoE-1B-7B, Switch-base-128) or a family at sizes (default: Mixtral-8x7B)",
    )
    p.add_argument("--decode-tokens", type=int, default=1, help="tokens of a decode step")
    p.add_argument("--prefill-tokens", type=int, default=512, help="tokens of a prefill step")
    p.add_argument(
        "--objective",
        action="append",
        default=None,
        metavar="NAME",
        help=f"objective, repeatable: {', '.join(OBJECTIVES)} "
        "(default: decode_latency_us and dsps)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=None,
        metavar="NAME=LOW:HIGH|V1,V2|V",
        help=f"override one dimension of the default space ({', '.join(EXPLORABLE)}: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_SPACE.items())
        + ")",
    )
    p.add_argument(
        "--base-config",
        type=Path,
        default=None,
        metavar="JSON",
        help="AccelConfig JSON for the fields the space does not vary (default: AccelConfig())",
    )
    p.add_argument("--trials", type=int, default=1000, help="trials the study should hold")
    p.add_argument("--population", type=int, default=100, help="trials per generation")
    p.add_argument("--sampler", choices=sorted(SAMPLERS), default="nsga2", help="Optuna sampler")
    p.add_argument("--seed", type=int, default=0, help="sampler and routing seed")
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage: an SQLite file path or any RDB URL (default: "
        "build/explore/<study>.db)",
    )
    p.add_argument("--study", default="explore", help="study name in the storage")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default build/explore/<study>)"
    )
    p.add_argument(
        "--device", choices=DEVICE_CHOICES, default="ecp5-85f", help="must fit this FPGA"
    )
    p.add_argument("--min-mhz", type=float, default=None, help="Fmax constraint (where measured)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address (default: local)")
    p.add_argument(
        "--connect-timeout", type=float, default=10.0, help="seconds to reach --scheduler"
    )
    p.add_argument("--workers", type=int, default=None, help="local cluster workers (default 2)")
    p.add_argument("--verify-top", type=int, default=0, help="RTL-check N points of the front")
    p.add_argument("--synth-top", type=int, default=0, help="synthesise N points of the front")
    p.set_defaults(handler=cmd_explore)


def settings_from_args(args: argparse.Namespace) -> StudySettings:
    """The study the arguments describe (every check made before anything is opened)."""
    from sw_driver.cli import load_accel_config

    base = load_accel_config(args.base_config, "--base-config")
    domains = dict(DEFAULT_SPACE)
    for text in args.param or []:
        name, domain = parse_param(text)
        domains[name] = domain
    objectives = check_objectives(args.objective or ["decode_latency_us", "dsps"])
    workload = Workload.parse(
        args.layer or ["Mixtral-8x7B"], args.decode_tokens, args.prefill_tokens, args.seed
    )
    storage = args.storage or str(EXPLORE_ROOT / f"{args.study}.db")
    if args.storage is None:
        EXPLORE_ROOT.mkdir(parents=True, exist_ok=True)
    return StudySettings(
        space=SearchSpace(domains, base),
        workload=workload,
        objectives=objectives,
        n_trials=args.trials,
        storage=storage,
        study_name=args.study,
        seed=args.seed,
        population=args.population,
        sampler=args.sampler,
        device=args.device,
        min_mhz=args.min_mhz,
        scheduler=args.scheduler,
        workers=args.workers,
        verify_top=args.verify_top,
        synth_top=args.synth_top,
        progress=not args.quiet,
        connect_timeout_s=args.connect_timeout,
    )


def cmd_explore(args: argparse.Namespace) -> int:
    """Run or resume the study, write its outputs, print the front."""
    from sw_driver.cli import CliError

    from .report import summary_markdown, write_outputs

    try:
        settings = settings_from_args(args)
        result = run_study(settings)
    except ExploreError as exc:
        raise CliError(str(exc)) from None
    out = args.out or EXPLORE_ROOT / args.study
    paths = write_outputs(result, out)
    print(summary_markdown(result))
    print(
        f"{result.evaluated} configs evaluated, {result.resumed} trials resumed from the "
        f"storage, {result.wall_s:g} s; wrote {', '.join(str(p) for p in paths.values())}"
    )
    failed = [k for k, v in result.checks.items() if k.startswith("rtl:") and not v["bit_exact"]]
    return 1 if failed else 0
