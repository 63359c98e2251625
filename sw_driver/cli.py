"""`moe-accel`: run MoE layers of the six families beside the PyTorch reference.

`moe-accel run --family mixtral ...` builds the family's HuggingFace block
offline (seeded weights), imports it, runs it on the chosen backend and on
the torch reference, and prints a report table (and writes JSON with
`--json`). `moe-accel demo` is the README's main job; `moe-accel synth`
groups the FPGA flow (`synth run`, `synth verilog`, `synth sweep`);
`moe-accel generate` runs greedy generation with a tiny model's MoE blocks on a
backend (`sw_driver.accelerate`); `moe-accel explore` runs a design-space study
(`explore`, docs/explore.md).

Every argument is checked before any work starts (input files exist and
parse, output files can be written, shapes fit the configuration); an
error is one line on stderr naming the argument, exit status 2 for bad
usage or configuration and 1 for a run that failed. `--debug` shows the
traceback instead. Progress goes to stderr through `logging` (`-q` quiet,
`-v` verbose); docs/cli.md describes the commands and the JSON report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from flow.paths import DEFAULT_CONFIG, FPGA_BUILD_ROOT, VERILOG_BUILD_ROOT
from pymodel.config import AccelConfig, ConfigError, MoESpec
from pymodel.families import FAMILIES, family_spec
from pymodel.layer import golden_layer
from pymodel.numerics import NumericsError
from pymodel.weight_formats import GROUP_SIZES, SPARSITY_CHOICES, WEIGHT_CHOICES, WeightFormat

from .block import BACKENDS, check_backend_format
from .device import Device, DeviceError, make_device
from .report import (
    LayerReport,
    package_version,
    revision,
)

__all__ = [
    "BACKENDS",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "CliError",
    "TraceEstimate",
    "estimate_trace",
    "load_accel_config",
    "main",
    "run_family_layer",
]

EXIT_FAILURE = 1
"""Exit status of a run that started and failed (simulation, tool or write error)."""
EXIT_USAGE = 2
"""Exit status of bad usage or configuration, found before any work starts."""

logger = logging.getLogger(__name__)


class CliError(Exception):
    """A problem the user can fix; the message names the argument, `code` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- checks of paths and configuration files ------------------------------------------------


def check_input_file(arg: str, path: Path, suffixes: Sequence[str]) -> Path:
    """`path` is a readable file ending in one of `suffixes`, else a `CliError` naming `arg`."""
    if not path.exists():
        raise CliError(f"{arg} {path}: no such file")
    if path.is_dir():
        raise CliError(f"{arg} {path}: is a directory, expected a {'/'.join(suffixes)} file")
    if path.suffix.lower() not in suffixes:
        raise CliError(f"{arg} {path}: expected a {' or '.join(suffixes)} file")
    try:
        path.open("rb").close()
    except OSError as exc:
        raise CliError(f"{arg} {path}: cannot be read ({exc.strerror})") from None
    return path


def check_output_file(arg: str, path: Path, suffixes: Sequence[str]) -> Path:
    """`path` can be written (its folder exists and is writable) and ends in one of `suffixes`."""
    if path.is_dir():
        raise CliError(f"{arg} {path}: is a directory, expected a {'/'.join(suffixes)} file name")
    if path.suffix.lower() not in suffixes:
        raise CliError(f"{arg} {path}: the file name must end in {' or '.join(suffixes)}")
    parent = path.parent
    if not parent.exists():
        raise CliError(f"{arg} {path}: folder {parent} does not exist")
    if not parent.is_dir():
        raise CliError(f"{arg} {path}: {parent} is not a folder")
    existed = path.exists()
    try:
        with path.open("a" if existed else "x"):
            pass
    except OSError as exc:
        raise CliError(f"{arg} {path}: cannot be written ({exc.strerror})") from None
    if not existed:
        path.unlink()
    return path


def check_output_dir(arg: str, path: Path) -> Path:
    """`path` is a writable folder or can be created (its nearest existing parent is writable)."""
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise CliError(f"{arg} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise CliError(f"{arg} {path}: {probe} is not writable")
    try:
        probe_file = probe / f".moe-accel-probe-{os.getpid()}"
        probe_file.touch()
        probe_file.unlink()
    except OSError as exc:
        raise CliError(f"{arg} {path}: {probe} is not writable ({exc.strerror})") from None
    return path


def load_accel_config(path: Path | None, arg: str = "--config") -> AccelConfig:
    """The `AccelConfig` in the JSON file `path` (the default config for None).

    A field the file leaves out takes its default, and the defaults used are
    reported in one warning line; unknown fields, wrong types and values out
    of range are `CliError`s naming `arg`, the file and the field.
    """
    if path is None:
        return AccelConfig()
    check_input_file(arg, path, (".json",))
    try:
        text = path.read_text()
        data = json.loads(text)
    except UnicodeDecodeError:
        raise CliError(f"{arg} {path}: not a text file") from None
    except json.JSONDecodeError as exc:
        raise CliError(f"{arg} {path}: invalid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CliError(f"{arg} {path}: the JSON document must be an object of AccelConfig fields")
    try:
        cfg = AccelConfig.from_dict(data)
    except (ConfigError, TypeError) as exc:
        raise CliError(f"{arg} {path}: {exc}") from None
    missing = [f.name for f in dataclasses.fields(AccelConfig) if f.name not in data]
    if missing:
        defaults = ", ".join(f"{name}={getattr(cfg, name)!r}" for name in missing)
        logger.warning("%s %s: using defaults for %d fields: %s", arg, path, len(missing), defaults)
    return cfg


# -- progress -------------------------------------------------------------------------------


@contextmanager
def progress(message: str, console: Console | None = None) -> Iterator[None]:
    """Log `message …` at INFO (and show a spinner on a terminal) while a step runs."""
    logger.info("%s …", message)
    start = time.monotonic()
    if console is not None and console.is_terminal and logger.isEnabledFor(logging.INFO):
        with console.status(message):
            yield
    else:
        yield
    elapsed = time.monotonic() - start
    if elapsed >= 1.0:
        logger.info("%s: done in %.1f s", message, elapsed)


@contextmanager
def heartbeat(describe: Callable[[float], str], interval: float = 15.0) -> Iterator[None]:
    """Log `describe(elapsed seconds)` every `interval` s while the body runs (C code included).

    An empty description skips that beat.
    """
    stop = threading.Event()
    start = time.monotonic()

    def beat() -> None:
        while not stop.wait(interval):
            message = describe(time.monotonic() - start)
            if message:
                logger.info("%s", message)

    thread = threading.Thread(target=beat, name="moe-accel-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _about(seconds: float) -> str:
    return f"about {seconds:.0f} s" if seconds < 90 else f"about {seconds / 60:.0f} min"


# -- waveforms ------------------------------------------------------------------------------

TRACE_SUFFIXES = (".vcd", ".fst")
VCD_BYTES_PER_CYCLE_PER_PE = 880.0
"""Measured: a full VCD of a T = 8 layer on the default 8×8 top is 904 MB for 16,028 cycles."""
FST_SHRINK = 13.0
"""Measured: FST is ~13 times smaller than VCD for the same run (67 MB against 904 MB)."""
TRACED_CYCLES_PER_S = 4_000.0
"""Measured: ~4.9 k cycles/s with every cycle traced to VCD (2 shared cores)."""
UNTRACED_CYCLES_PER_S = 100_000.0
"""Measured: cycles/s of a traced build outside the trace window."""
CYCLES_VS_ROOFLINE = 1.4
"""Measured layer cycles ÷ `pymodel.perf.roofline`, with margin (1.29 at T = 8, 1.26 at T = 32)."""


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
    """What a traced run will cost, estimated before it starts."""

    cycles: int
    """Cycles of the layer (estimated) that fall inside the trace window."""
    megabytes: float
    seconds: float


def estimate_trace(
    spec: MoESpec,
    cfg: AccelConfig,
    tokens: int,
    tokens_per_expert: np.ndarray,
    fmt: str,
    window: tuple[int, int] | None = None,
) -> TraceEstimate:
    """Size and time of a traced run, from the roofline bound and measured trace rates."""
    from pymodel.perf import roofline

    layer = int(CYCLES_VS_ROOFLINE * roofline(spec, cfg, tokens, tokens_per_expert).bound_cycles)
    traced = layer if window is None else max(0, min(layer, window[1]) - min(layer, window[0]))
    size = VCD_BYTES_PER_CYCLE_PER_PE * cfg.rows * cfg.cols * traced
    if fmt == "fst":
        size /= FST_SHRINK
    seconds = traced / TRACED_CYCLES_PER_S + (layer - traced) / UNTRACED_CYCLES_PER_S
    return TraceEstimate(traced, size / 1e6, seconds)


def _parse_window(text: str) -> tuple[int, int]:
    start, sep, end = text.partition(":")
    try:
        lo, hi = int(start), int(end)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not START:END (two cycle counts, e.g. 0:2000)"
        ) from None
    if not sep or lo < 0 or hi <= lo:
        raise argparse.ArgumentTypeError(f"{text!r} needs 0 <= START < END")
    return lo, hi


def _resolve_waves(path: Path) -> tuple[Path, str]:
    """The trace path and format to use: FST falls back to VCD (with a warning) without lz4."""
    from sim.build import _fst_supported

    fmt = path.suffix.lower()[1:]
    if fmt == "fst" and not _fst_supported():
        fallback = path.with_suffix(".vcd")
        logger.warning(
            "--waves %s: FST needs the lz4 development headers (Debian: apt-get install "
            "liblz4-dev); writing VCD to %s instead",
            path,
            fallback,
        )
        check_output_file("--waves", fallback, (".vcd",))
        return fallback, "vcd"
    return path, fmt


# -- the layer run --------------------------------------------------------------------------


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
    trace_window: tuple[int, int] | None = None,
    trace_scope: str | None = None,
    device: Device | None = None,
    console: Console | None = None,
    build_dir: Path | None = None,
    layer_options: dict[str, Any] | None = None,
    weights: str = "int8",
    sparsity: str = "dense",
    int4_group: int | None = None,
) -> LayerReport:
    """Build `family`'s HF block, run it on `backend` and on torch, and compare.

    Everything is validated (shapes against the hardware, finite values, a
    routing the gate implements) before any simulation starts. `trace`
    (Verilator only) writes a `.vcd`/`.fst` waveform, `trace_window` limits
    it to cycles [start, end) after the model's reset and `trace_scope` to one
    instance (e.g. `core.dispatcher`) and the top's ports; `build_dir` is where
    the Verilator model is built and cached; `layer_options` are further
    `family_spec` keywords (shared_d_ff, capacity, n_group, topk_group,
    renormalize, routed_scaling_factor); `weights`, `sparsity` and
    `int4_group` the experts' weight format (`run_block`'s). Progress is logged.
    """
    from .block import run_block
    from .hf import build_hf_block

    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; allowed: {list(BACKENDS)}")
    if trace is not None and backend == "golden":
        raise ConfigError("the golden backend has no waveforms; trace needs backend='verilator'")
    if (trace_window is not None or trace_scope is not None) and trace is None:
        raise ConfigError("trace_window and trace_scope need a trace path")
    cfg = cfg or AccelConfig()
    check_backend_format(backend, WeightFormat.parse(weights, sparsity, int4_group), cfg)
    console = console or Console(stderr=True)
    options = {"d_model": d_model, "d_ff": d_ff, "n_experts": n_experts, "top_k": top_k}
    options |= layer_options or {}
    with progress(f"building the {family} HF block (seed {seed})", console):
        block = build_hf_block(family, seed=seed, **options)
    cfg.check_fits(family_spec(family, **options), tokens)
    x = np.random.default_rng(seed + 1).standard_normal((tokens, d_model)).astype(np.float32)
    if device is None and trace is not None:
        device = make_device(
            backend,
            cfg,
            trace=trace,
            trace_window=trace_window,
            trace_scope=trace_scope,
            **({"build_dir": build_dir} if build_dir is not None else {}),
        )
    run_device = None
    if trace is not None:

        def run_device(dev: Device, ql: Any, x_q: np.ndarray) -> Any:
            counts = golden_layer(ql, x_q, cfg).dispatch.counts
            fmt = trace.suffix.lower()[1:]
            est = estimate_trace(ql.spec, cfg, tokens, counts, fmt, trace_window)
            logger.info(
                "tracing ~%s cycles to %s: about %.0f MB and %s (m:ss) once the model is built%s",
                f"{est.cycles:,}",
                trace,
                est.megabytes,
                _clock(est.seconds),
                "" if trace_window else "; --waves-window START:END keeps it smaller",
            )

            def traced(elapsed: float) -> str:
                if not trace.exists():  # the model is still being built (its own progress)
                    return ""
                size = trace.stat().st_size / 1e6
                return f"traced run: {_clock(elapsed)} elapsed, {trace.name} {size:.0f} MB so far"

            with heartbeat(traced):
                return dev.run(ql, x_q)

    run = run_block(
        block,
        x,
        backend=backend,
        config=cfg,
        device=device,
        seed=seed,
        progress=lambda message: progress(message, console),
        run_device=run_device,
        build_dir=build_dir,
        weights=weights,
        sparsity=sparsity,
        int4_group=int4_group,
    )
    report = run.report
    report.waves = str(trace) if trace is not None else None
    return report


def _apply_layer_config(args: argparse.Namespace) -> dict[str, Any]:
    """`--layer-config`: the file's family and sizes into `args`; its other keywords returned."""
    from .layer_config import load_layer_config

    if args.layer_config is None:
        return {}
    check_input_file("--layer-config", args.layer_config, (".json",))
    try:
        args.family, options = load_layer_config(args.layer_config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    for key, attr in (("d_model", "d_model"), ("d_ff", "d_ff"), ("n_experts", "experts")):
        if key in options:
            setattr(args, attr, options.pop(key))
    args.top_k = options.pop("top_k", args.top_k)
    return options


def _weight_format(args: argparse.Namespace, cfg: AccelConfig, config_name: str) -> WeightFormat:
    """`--weights`, `--sparsity`, `--int4-group` as a format the backend runs, naming the option."""
    if args.int4_group is not None and args.weights != "int4":
        raise CliError(f"--int4-group {args.int4_group}: group-wise scales need --weights int4")
    fmt = WeightFormat.parse(args.weights, args.sparsity, args.int4_group)
    try:
        check_backend_format(args.backend, fmt, cfg)
    except ConfigError as exc:
        group = f" --int4-group {args.int4_group}" if args.int4_group is not None else ""
        raise CliError(
            f"--weights {args.weights} --sparsity {args.sparsity}{group} on --backend "
            f"{args.backend} with {config_name}: {exc}"
        ) from None
    return fmt


def _check_layer(
    args: argparse.Namespace,
    cfg: AccelConfig,
    config_name: str,
    extra: dict[str, Any],
    fmt: WeightFormat = WeightFormat.DENSE_INT8,
) -> None:
    """The layer options against `cfg` and the weight format, naming the option (no torch,
    no HF block yet)."""
    limits = (
        ("--tokens", args.tokens, "max_tokens"),
        ("--d-model", args.d_model, "max_d_model"),
        ("--d-ff", args.d_ff, "max_d_ff"),
        ("--experts", args.experts, "max_experts"),
        ("--top-k", args.top_k, "max_top_k"),
    )
    for flag, value, limit in limits:
        if value is not None and value > getattr(cfg, limit):
            raise CliError(
                f"{flag} {value} exceeds AccelConfig.{limit} = {getattr(cfg, limit)} "
                f"of {config_name}"
            )
    if args.top_k is not None and args.top_k > args.experts:
        raise CliError(f"--top-k {args.top_k} exceeds --experts {args.experts}")
    try:
        spec = family_spec(
            args.family,
            d_model=args.d_model,
            d_ff=args.d_ff,
            n_experts=args.experts,
            top_k=args.top_k,
            **extra,
        )
        cfg.check_fits(spec, args.tokens)
    except ConfigError as exc:
        source = (
            f"--layer-config {args.layer_config}"
            if extra or args.layer_config
            else (f"--family {args.family}")
        )
        raise CliError(f"{source}: {exc}") from None
    for k, what in (
        (spec.d_model, "d_model"),
        (spec.d_ff, "d_ff"),
        (spec.shared_d_ff, "shared_d_ff"),
    ):
        if k:
            try:
                fmt.check_k(k, f"expert ({what})")
            except ConfigError as exc:
                option = "--int4-group" if fmt.group_size is not None else "--sparsity"
                value = fmt.group_size if fmt.group_size is not None else fmt.sparsity
                raise CliError(f"{option} {value}: {exc}") from None


def _cmd_run(args: argparse.Namespace) -> int:
    if args.json is not None:
        check_output_file("--json", args.json, (".json",))
    for option, value in (("--waves-window", args.waves_window), ("--waves-scope", args.scope)):
        if value is not None and args.waves is None:
            raise CliError(f"{option} needs --waves")
    waves = None
    if args.waves is not None:
        if args.backend != "verilator":
            raise CliError(
                f"--waves {args.waves}: the {args.backend} backend has no waveforms; "
                "add --backend verilator"
            )
        check_output_file("--waves", args.waves, TRACE_SUFFIXES)
    config_name = str(args.config) if args.config else "the default config"
    cfg = load_accel_config(args.config)
    if args.backend == "verilator":
        _check_top_config(cfg, config_name)
    fmt = _weight_format(args, cfg, config_name)
    extra = _apply_layer_config(args)
    _check_layer(args, cfg, config_name, extra, fmt)
    if args.waves is not None:
        waves, _ = _resolve_waves(args.waves)
    console = Console(stderr=True)
    report = run_family_layer(
        args.family,
        tokens=args.tokens,
        d_model=args.d_model,
        d_ff=args.d_ff,
        n_experts=args.experts,
        top_k=args.top_k,
        seed=args.seed,
        backend=args.backend,
        cfg=cfg,
        trace=waves,
        trace_window=args.waves_window,
        trace_scope=args.scope,
        console=console,
        build_dir=args.build_dir,
        layer_options=extra,
        weights=args.weights,
        sparsity=args.sparsity,
        int4_group=args.int4_group,
    )
    report.render(Console())
    if args.json is not None:
        _write_text("--json", args.json, json.dumps(report.to_json_dict(), indent=2) + "\n")
        logger.info("wrote %s", args.json)
    if waves is not None and waves.is_file():
        logger.info("wrote %s (%.1f MB)", waves, waves.stat().st_size / 1e6)
    elif waves is not None:
        logger.warning("--waves %s: the run wrote no waveform file", waves)
    return 0


def _check_top_config(
    cfg: AccelConfig, config_name: str, arg: str = "--config", why: str = "--backend verilator"
) -> None:
    """The whole accelerator (`MoEAccel`) can be built from `cfg` (rows, cols powers of two)."""
    from contract.layout import check_top_config

    try:
        check_top_config(cfg)
    except ConfigError as exc:
        raise CliError(f"{arg} {config_name}: {exc} (needed by {why})") from None


def _write_text(arg: str, path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise CliError(f"{arg} {path}: cannot be written ({exc.strerror})", EXIT_FAILURE) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    cfg = AccelConfig()
    console = Console(stderr=True)
    device = make_device("verilator", cfg, build_dir=args.build_dir)
    for family in ("mixtral", "deepseek_v3"):
        report = run_family_layer(
            family,
            tokens=32,
            seed=0,
            backend="verilator",
            cfg=cfg,
            device=device,
            console=console,
        )
        report.render(Console())
    return 0


# -- synthesis ------------------------------------------------------------------------------

SYNTH_TIMINGS = "timings.json"
"""File under `--out` where each synthesis records its wall time (the next run's estimate)."""
FIRST_SYNTH_GUESS_S = {"ecp5-85f": 900.0, "ice40-up5k": 120.0}
"""Rough wall time of a first synthesis of the default design (docs/fpga.md), per device."""


def _timings_key(device: str, top: str, config_name: str) -> str:
    return f"{device}/{top}/{config_name}"


def _read_timings(out: Path) -> dict[str, float]:
    try:
        data = json.loads((out / SYNTH_TIMINGS).read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _record_timing(out: Path, key: str, seconds: float) -> None:
    timings = _read_timings(out)
    timings[key] = round(seconds, 1)
    try:
        (out / SYNTH_TIMINGS).write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
    except OSError as exc:
        logger.debug("could not record the synthesis time: %s", exc)


def _expected(out: Path, device: str, top: str, config_name: str) -> tuple[float, str]:
    last = _read_timings(out).get(_timings_key(device, top, config_name))
    if last is not None:
        return last, f"the last run took {_clock(last)}"
    guess = FIRST_SYNTH_GUESS_S.get(device, 900.0)
    return guess, f"no earlier run recorded; the default design's first run on {device}"


def _synth_config(path: Path, arg: str, top: str) -> AccelConfig:
    cfg = load_accel_config(path, arg)
    if top == "moe_accel":
        _check_top_config(cfg, str(path), arg, "--top moe_accel")
    return cfg


def _synth_one(args: argparse.Namespace, path: Path, arg: str, cfg: AccelConfig) -> Any:
    from flow.runs import synth

    name = path.stem
    expected, why = _expected(args.out, args.device, args.top, name)
    logger.info(
        "synthesis of %s (%s, %s): expected to take %s (%s); a cached result returns at once",
        name,
        args.top,
        args.device,
        _about(expected),
        why,
    )

    def beat(elapsed: float) -> str:
        return f"synthesis of {name}: {_clock(elapsed)} elapsed of ~{_clock(expected)}"

    start = time.monotonic()
    with heartbeat(beat, interval=30.0):
        report = synth(
            cfg,
            top=args.top,
            device=args.device,
            freq_mhz=getattr(args, "freq", None),
            out_root=args.out,
            config_name=name,
            seed=getattr(args, "seed", 1),
            force=args.force,
        )
    if not report.cached:
        _record_timing(args.out, _timings_key(args.device, args.top, name), report.wall_s)
    logger.info(
        "synthesis of %s: finished in %s%s",
        name,
        _clock(time.monotonic() - start),
        " (cached result)" if report.cached else "",
    )
    return report


def _cmd_synth_run(args: argparse.Namespace) -> int:
    check_output_dir("--out", args.out)
    if args.freq is not None and not 1.0 <= args.freq <= 1000.0:
        raise CliError(f"--freq {args.freq:g}: must be in [1, 1000] MHz")
    cfg = _synth_config(args.config, "--config", args.top)
    if args.dry_run:
        expected, why = _expected(args.out, args.device, args.top, args.config.stem)
        print(
            f"would synthesise {args.top} of {args.config} ({cfg.rows}×{cfg.cols}) for "
            f"{args.device} at {args.freq or cfg.clock_mhz:g} MHz, seed {args.seed}, under "
            f"{args.out}{' (ignoring the cache)' if args.force else ''}: {_about(expected)} "
            f"({why}), at once when the result is cached"
        )
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report = _synth_one(args, args.config, "--config", cfg)
    print(report.summary())
    return EXIT_FAILURE if args.strict and not report.timing_met else 0


def _cmd_synth_verilog(args: argparse.Namespace) -> int:
    import re

    from flow.tops import build_top
    from flow.verilog_export import export_verilog

    check_output_dir("--out", args.out)
    cfg = _synth_config(args.config, "--config", args.top)
    name = re.sub(r"\W", "_", args.config.stem)
    with progress(f"emitting Verilog of {args.top} ({args.config})"):
        v_path, md_path = export_verilog(
            build_top(args.top, cfg), f"{args.top}_{name}", args.out, cfg=cfg
        )
    print(f"wrote {v_path}\nwrote {md_path}")
    return 0


def _cmd_synth_sweep(args: argparse.Namespace) -> int:
    from flow.reports import SWEEP_BEGIN, SWEEP_END, markdown_table, rtl_revision, update_doc

    check_output_dir("--out", args.out)
    if args.doc is not None:
        check_input_file("--doc", args.doc, (".md",))
        check_output_file("--doc", args.doc, (".md",))
        text = args.doc.read_text(errors="replace")
        if SWEEP_BEGIN not in text or SWEEP_END not in text:
            raise CliError(f"--doc {args.doc}: lacks the markers {SWEEP_BEGIN} … {SWEEP_END}")
    configs = [(p, _synth_config(p, "configs", args.top)) for p in args.configs]
    if args.dry_run:
        total = 0.0
        for path, cfg in configs:
            expected, why = _expected(args.out, args.device, args.top, path.stem)
            total += expected
            print(
                f"would synthesise {args.top} of {path} ({cfg.rows}×{cfg.cols}) for "
                f"{args.device}: {_about(expected)} ({why})"
            )
        print(f"{_about(total)} in all, one config at a time; cached results return at once")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    reports = [_synth_one(args, path, "configs", cfg) for path, cfg in configs]
    print(markdown_table(reports))
    if args.doc is not None:
        update_doc(args.doc, reports, rtl_revision())
        print(f"updated {args.doc}")
    return 0


# -- argument parsing -----------------------------------------------------------------------


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions and examples kept as written.

    Flags and options without a default (None) say so in their own help instead.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one-line `CliError`s (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CliError(f"{self.prog}: {message} (see {self.prog} --help)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{value} must be in [0, 2^32)")
    return value


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    quiet_default = argparse.SUPPRESS if suppress else False
    common.add_argument(
        "-q", "--quiet", action="store_true", default=quiet_default, help="errors and warnings only"
    )
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if suppress else 0,
        help="more detail (debug logging, third-party warnings)",
    )
    common.add_argument(
        "--debug",
        action="store_true",
        default=quiet_default,
        help="show the Python traceback of an error",
    )
    return common


RUN_EXAMPLES = """examples:
  moe-accel run --family deepseek_v3 --backend verilator --tokens 32 --json out.json
  moe-accel run --family switch                       # the NumPy golden model only
  moe-accel run --backend verilator --tokens 8 --waves run.fst --waves-window 0:2000
  moe-accel run --config configs/4x4.json --backend verilator -v
  moe-accel run --weights int4 --sparsity 2:4          # compressed experts, golden model
"""

SYNTH_EXAMPLES = """examples:
  moe-accel synth run --dry-run                       # what would run, and how long
  moe-accel synth run --config configs/4x4.json --top gemm_engine
  moe-accel synth verilog --top moe_accel --out build/verilog
  moe-accel synth sweep configs/4x4.json configs/default.json --doc docs/fpga.md
"""


def _version() -> str:
    return f"moe-accel {package_version()} ({revision()})"


def _add_build_dir(parser: argparse.ArgumentParser) -> None:
    from flow.paths import FAST_BUILD_ROOT

    parser.add_argument(
        "--build-dir",
        type=Path,
        default=FAST_BUILD_ROOT,
        metavar="DIR",
        help="folder of cached Verilator models ($MOE_ACCEL_BUILD_DIR/fast when set)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The `moe-accel` argument parser (also what `--help` documents)."""
    from flow.devices import DEVICES
    from flow.tops import TOPS

    common = _common_options(suppress=True)
    parser = _Parser(
        prog="moe-accel",
        description=__doc__,
        formatter_class=_Formatter,
        parents=[_common_options(suppress=False)],
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        parents=[common],
        formatter_class=_Formatter,
        help="run one MoE layer beside the torch reference",
        description="Run one MoE layer of a family on a backend beside the PyTorch reference.",
        epilog=RUN_EXAMPLES,
    )
    run.add_argument("--family", choices=FAMILIES, default="mixtral", help="MoE model family")
    run.add_argument("--tokens", type=_positive, default=32, help="tokens T in the layer")
    run.add_argument("--d-model", type=_positive, default=64, help="hidden size d")
    run.add_argument("--d-ff", type=_positive, default=128, help="expert FFN width f")
    run.add_argument("--experts", type=_positive, default=8, help="routed experts E")
    run.add_argument(
        "--top-k", type=_positive, default=None, help="experts per token (default: 2, 1 for switch)"
    )
    run.add_argument(
        "--layer-config",
        type=Path,
        default=None,
        metavar="JSON",
        help='the layer from a file instead of --family and the sizes: {"family": ..., '
        "family_spec's keywords} or a HuggingFace config.json (docs/cli.md)",
    )
    run.add_argument("--seed", type=_seed, default=0, help="seed of the weights and tokens")
    run.add_argument(
        "--weights",
        choices=WEIGHT_CHOICES,
        default="int8",
        help="expert weight width (the router stays int8); int4 is two weights a byte",
    )
    run.add_argument(
        "--sparsity",
        choices=SPARSITY_CHOICES,
        default="dense",
        help="2:4: the experts' weights pruned to 2 of every 4 along K (docs/numerics.md)",
    )
    run.add_argument(
        "--int4-group",
        type=int,
        choices=GROUP_SIZES,
        default=None,
        metavar="N",
        help=f"int4 scales per N K positions, N in {list(GROUP_SIZES)} (golden backend only); "
        "default one scale per output channel",
    )
    run.add_argument(
        "--backend",
        choices=BACKENDS,
        default="golden",
        help="golden: the NumPy model; verilator: the RTL compiled by Verilator",
    )
    run.add_argument(
        "--config",
        type=Path,
        default=None,
        help="AccelConfig JSON file (default: the built-in AccelConfig(), as configs/default.json)",
    )
    run.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    run.add_argument(
        "--waves",
        type=Path,
        default=None,
        help="waveform file, .vcd or .fst (verilator only; FST needs liblz4-dev, else VCD)",
    )
    run.add_argument(
        "--waves-window",
        type=_parse_window,
        default=None,
        metavar="START:END",
        help="trace only cycles [START, END) after the model's reset (docs/cli.md)",
    )
    run.add_argument(
        "--waves-scope",
        dest="scope",
        default=None,
        metavar="INSTANCE",
        help="trace only this instance and the top's ports, e.g. core.dispatcher or dma",
    )
    _add_build_dir(run)
    run.set_defaults(handler=_cmd_run)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        formatter_class=_Formatter,
        help="the main job: Mixtral and DeepSeek-V3 layers on the Verilator backend",
        description="Mixtral and DeepSeek-V3 layers (T=32) on the Verilator backend; "
        "the first run builds the Verilator model (~1–2 min).",
        epilog="example:\n  moe-accel demo",
    )
    _add_build_dir(demo)
    demo.set_defaults(handler=_cmd_demo)

    synth = sub.add_parser(
        "synth",
        parents=[common],
        formatter_class=_Formatter,
        help="FPGA flow: synth run | synth verilog | synth sweep",
        description="FPGA synthesis with yosys + nextpnr (YoWASP), and standalone Verilog.",
        epilog=SYNTH_EXAMPLES,
    )
    synth_sub = synth.add_subparsers(dest="synth_command", required=True, metavar="SUBCOMMAND")
    top_help = "top to build: gemm_engine (the GEMM engine), moe_accel (the whole accelerator)"
    s_run = synth_sub.add_parser(
        "run",
        parents=[common],
        formatter_class=_Formatter,
        help="synthesise, place and route one config (~15 min for the default on ECP5)",
        description="Synthesise, place and route one design; results are cached by design.",
        epilog=SYNTH_EXAMPLES,
    )
    s_run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="AccelConfig JSON")
    s_run.add_argument("--top", default="gemm_engine", choices=sorted(TOPS), help=top_help)
    s_run.add_argument("--device", default="ecp5-85f", choices=sorted(DEVICES), help="FPGA")
    s_run.add_argument(
        "--freq", type=float, default=None, help="target MHz (default: the config's clock_mhz)"
    )
    s_run.add_argument("--seed", type=_seed, default=1, help="nextpnr placement seed")
    s_run.add_argument("--out", type=Path, default=FPGA_BUILD_ROOT, help="cache and report folder")
    s_run.add_argument("--force", action="store_true", help="ignore a cached result")
    s_run.add_argument("--strict", action="store_true", help="exit 1 unless timing is met")
    s_run.add_argument("--dry-run", action="store_true", help="say what would run, and how long")
    s_run.set_defaults(handler=_cmd_synth_run)
    s_ver = synth_sub.add_parser(
        "verilog",
        parents=[common],
        formatter_class=_Formatter,
        help="standalone Verilog and a Markdown port description",
        description="Standalone Verilog of a top and a Markdown description of its ports.",
        epilog="example:\n  moe-accel synth verilog --top moe_accel --config configs/default.json",
    )
    s_ver.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="AccelConfig JSON")
    s_ver.add_argument("--top", default="gemm_engine", choices=sorted(TOPS), help=top_help)
    s_ver.add_argument("--out", type=Path, default=VERILOG_BUILD_ROOT, help="output folder")
    s_ver.set_defaults(handler=_cmd_synth_verilog)
    s_sweep = synth_sub.add_parser(
        "sweep",
        parents=[common],
        formatter_class=_Formatter,
        help="synthesise several configs, optionally updating a doc's table",
        description="Synthesise several configs one after the other (nextpnr is CPU-heavy).",
        epilog=SYNTH_EXAMPLES,
    )
    s_sweep.add_argument("configs", type=Path, nargs="+", help="AccelConfig JSON files")
    s_sweep.add_argument("--top", default="gemm_engine", choices=sorted(TOPS), help=top_help)
    s_sweep.add_argument("--device", default="ecp5-85f", choices=sorted(DEVICES), help="FPGA")
    s_sweep.add_argument(
        "--out", type=Path, default=FPGA_BUILD_ROOT, help="cache and report folder"
    )
    s_sweep.add_argument(
        "--doc", type=Path, default=None, help="Markdown file whose sweep table to update"
    )
    s_sweep.add_argument("--force", action="store_true", help="ignore cached results")
    s_sweep.add_argument("--dry-run", action="store_true", help="say what would run, and how long")
    s_sweep.set_defaults(handler=_cmd_synth_sweep)

    from explore.cli import add_parser as add_explore_parser

    from .generate_cmd import add_parser as add_generate_parser

    add_generate_parser(sub, parents=[common], formatter_class=_Formatter)
    add_explore_parser(sub, parents=[common], formatter_class=_Formatter)
    return parser


# -- logging --------------------------------------------------------------------------------

_OWN_LOGGERS = ("sw_driver", "sim", "rtl", "flow", "pymodel")


class _StderrHandler(logging.Handler):
    """Plain lines on whatever `sys.stderr` is at the time (pytest swaps it per test)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr, flush=True)
        except Exception:  # logging must never end the run
            self.handleError(record)


class _Formatter1Line(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"moe-accel: {record.levelname.lower()}: {message}"
        return f"moe-accel: {message}"


@contextmanager
def _logging(verbose: int, quiet: bool) -> Iterator[None]:
    """Route our loggers to stderr (rich on a terminal) for one command; undone afterwards."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    if sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(
            console=Console(stderr=True), show_path=False, show_time=False
        )
    else:
        handler = _StderrHandler()
        handler.setFormatter(_Formatter1Line())
    root = logging.getLogger()
    third_party = ("py.warnings", "transformers", "torch", "amaranth", "cocotb")
    saved = {name: logging.getLogger(name).level for name in (*_OWN_LOGGERS, *third_party)}
    saved_root = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING if verbose else logging.ERROR)  # third-party loggers
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in third_party:
        logging.getLogger(name).setLevel(logging.WARNING if verbose else logging.CRITICAL)
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        root.setLevel(saved_root)
        for name, value in saved.items():
            logging.getLogger(name).setLevel(value)


def _one_line(message: str) -> str:
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    return lines[0] + (" (details: rerun with --debug)" if len(lines) > 1 else "")


def _fail(message: str) -> None:
    print(f"moe-accel: error: {_one_line(message)}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `moe-accel` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except CliError as exc:
        _fail(str(exc))
        return exc.code
    from flow.errors import SynthError
    from sim.build import SimulationError

    with _logging(args.verbose, args.quiet):
        try:
            return int(args.handler(args))
        except CliError as exc:
            if debug:
                raise
            _fail(str(exc))
            return exc.code
        except (ConfigError, NumericsError) as exc:
            if debug:
                raise
            _fail(str(exc))
            return EXIT_USAGE
        except (DeviceError, SimulationError, SynthError, RuntimeError, OSError) as exc:
            if debug:
                raise
            _fail(f"{type(exc).__name__}: {exc}")
            return EXIT_FAILURE
        except KeyboardInterrupt:
            if debug:
                raise
            _fail("interrupted")
            return 130
        except Exception as exc:  # a bug: still one line, the traceback with --debug
            if debug:
                raise
            _fail(f"internal error, {type(exc).__name__}: {exc}")
            return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
