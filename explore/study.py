"""A design-space study: Optuna's sampler proposes configs, Dask evaluates them, storage keeps them.

The loop, one generation (`population` trials) at a time:

1. the sampler (NSGA-II by default) asks for a generation on an in-memory
   copy of the study (asking against an RDB re-reads every running trial per
   ask: 70 ms a trial here, where the whole generation costs ~1 ms a trial);
2. configs not evaluated before (by `config_hash`: the model is a pure
   function of config and workload) go to Dask as a few `evaluate_batch`
   tasks; the answers come back in order, so a seed gives the same study;
3. every trial is told its objectives, its constraint values (fits the
   device, reaches `min_mhz` where Fmax is known) and its metrics, then the
   whole generation is written to the Optuna storage (`add_trials`).

A trial is finished when it is in the storage: a study killed at any point
resumes from what is there (the in-memory copy is rebuilt from it), and
never loses or repeats a stored trial. RTL checks and syntheses of the
front (`verify_top`, `synth_top`) are Dask tasks too; their results are
study attributes keyed by config hash, so a rerun does not repeat them.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from flow.devices import DEVICES
from pymodel.config import AccelConfig, ConfigError
from pymodel.resources import known_fmax

from .checks import rtl_check, synth_check
from .cluster import busy_workers, open_client
from .errors import ExploreError
from .objectives import Objective, evaluate_batch
from .space import SearchSpace, config_hash
from .workload import Workload

__all__ = ["DEVICE_CHOICES", "StudyResult", "StudySettings", "pareto_front", "run_study"]

DEVICE_CHOICES = ("ecp5-85f", "none")
"""`--device`: the FPGA a design must fit (the resource model is ECP5's), or none."""


@dataclass
class StudySettings:
    """Everything one study needs; `describe()` is what a resumed study must match."""

    space: SearchSpace
    workload: Workload
    objectives: tuple[Objective, ...]
    n_trials: int
    storage: str
    study_name: str = "explore"
    seed: int = 0
    population: int = 100
    sampler: str = "nsga2"
    device: str = "ecp5-85f"
    min_mhz: float | None = None
    scheduler: str | None = None
    workers: int | None = None
    verify_top: int = 0
    synth_top: int = 0
    progress: bool = True
    connect_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ExploreError(f"--trials must be at least 1, got {self.n_trials}")
        if self.population < 2:
            raise ExploreError(f"--population must be at least 2, got {self.population}")
        if self.sampler not in SAMPLERS:
            raise ExploreError(f"--sampler {self.sampler!r}: choose from {', '.join(SAMPLERS)}")
        if self.device not in DEVICE_CHOICES:
            raise ExploreError(f"--device {self.device!r}: choose from {', '.join(DEVICE_CHOICES)}")
        if self.min_mhz is not None and not 1.0 <= self.min_mhz <= 1000.0:
            raise ExploreError(f"--min-mhz {self.min_mhz} is out of range [1, 1000]")
        for name in ("verify_top", "synth_top"):
            if getattr(self, name) < 0:
                raise ExploreError(f"--{name.replace('_', '-')} must be ≥ 0")

    def describe(self) -> dict[str, Any]:
        return {
            "objectives": [o.name for o in self.objectives],
            "space": self.space.describe(),
            "workload": self.workload.key(),
            "device": self.device,
            "min_mhz": self.min_mhz,
            "sampler": self.sampler,
            "seed": self.seed,
            "population": self.population,
        }


def _nsga2(s: StudySettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(population_size=s.population, seed=s.seed)


def _tpe(s: StudySettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.TPESampler(seed=s.seed)


def _random(s: StudySettings) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=s.seed)


SAMPLERS = {"nsga2": _nsga2, "tpe": _tpe, "random": _random}
"""`--sampler`: Optuna's multi-objective samplers by name (NSGA-II is the default)."""


@dataclass
class StudyResult:
    """What a study produced: every stored trial as a row, the front, the checks."""

    rows: list[dict[str, Any]]
    front: list[dict[str, Any]]
    settings: StudySettings
    evaluated: int = 0
    resumed: int = 0
    wall_s: float = 0.0
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)


def storage_url(storage: str) -> str:
    """An Optuna storage URL: a plain path is an SQLite file."""
    if "://" in storage:
        return storage
    return f"sqlite:///{Path(storage).resolve()}"


def _check_sqlite(url: str) -> None:
    """An existing SQLite storage file must be a database; nothing is written if it is not."""
    if not url.startswith("sqlite:///"):
        return
    path = Path(url.removeprefix("sqlite:///"))
    if not path.exists():
        if not path.parent.is_dir():
            raise ExploreError(f"--storage {path}: folder {path.parent} does not exist")
        return
    if path.is_dir():
        raise ExploreError(f"--storage {path}: is a directory")
    with path.open("rb") as fh:
        head = fh.read(16)
    if head and head != b"SQLite format 3\x00":
        raise ExploreError(f"--storage {path}: not an SQLite database (corrupt?); left unchanged")
    if head:
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
                bad = con.execute("PRAGMA quick_check").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ExploreError(
                f"--storage {path}: unreadable database ({exc}); left unchanged"
            ) from None
        if bad != "ok":
            raise ExploreError(f"--storage {path}: damaged database ({bad}); left unchanged")


def _open_study(s: StudySettings) -> optuna.Study:
    url = storage_url(s.storage)
    directions = [o.direction for o in s.objectives]
    try:
        study = optuna.create_study(
            storage=url, study_name=s.study_name, directions=directions, load_if_exists=True
        )
    except (ImportError, ValueError) as exc:
        raise ExploreError(f"--storage {s.storage}: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # SQLAlchemy's errors (bad URL, server down, not a database)
        reason = str(exc).splitlines()[0]
        raise ExploreError(f"--storage {s.storage}: cannot open ({reason})") from None
    wanted = s.describe()
    stored = study.user_attrs.get("settings")
    if stored is None:
        study.set_user_attr("settings", wanted)
    elif stored != wanted:
        diff = sorted(k for k in wanted if stored.get(k) != wanted[k])
        raise ExploreError(
            f"study {s.study_name!r} in {s.storage} was started with other settings "
            f"({', '.join(diff)} differ); resume it with the same ones or choose another --study"
        )
    return study


def _constraints(s: StudySettings, cfg: AccelConfig, m: dict[str, float]) -> dict[str, float]:
    """Optuna constraint values by name (≤ 0 is satisfied): device capacity, known Fmax."""
    out: dict[str, float] = {}
    if s.device != "none":
        cap = DEVICES[s.device].capacity
        out |= {f"fits_{k}": (m[k] - cap[k]) / cap[k] for k in ("luts", "ffs", "dsps", "brams")}
    if s.min_mhz is not None:
        fmax = known_fmax(cfg)
        out["fmax"] = 0.0 if fmax is None else (s.min_mhz - fmax) / s.min_mhz
    return out


def pareto_front(points: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Indices of the non-dominated rows of `points` (`[n, objectives]`)."""
    sign = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    v = points * sign
    keep = []
    for i in range(len(v)):
        dominated = np.all(v <= v[i], axis=1) & np.any(v < v[i], axis=1)
        if not dominated.any():
            keep.append(i)
    return np.array(keep, dtype=np.int64)


def _row(t: FrozenTrial, s: StudySettings) -> dict[str, Any]:
    row: dict[str, Any] = {"trial": t.number, "state": t.state.name.lower(), **t.params}
    row["config_hash"] = t.user_attrs.get("config_hash", "")
    row.update(t.user_attrs.get("metrics", {}))
    row["feasible"] = t.user_attrs.get("feasible", False)
    if "error" in t.user_attrs:
        row["error"] = t.user_attrs["error"]
    for o in s.objectives:
        row[f"source_{o.name}"] = "model"
    return row


def _spread(n_front: int, n: int) -> list[int]:
    """`n` indices spread evenly over a front of `n_front` points sorted by its first objective."""
    if n >= n_front:
        return list(range(n_front))
    return sorted({round(float(x)) for x in np.linspace(0, n_front - 1, n)})


def run_study(s: StudySettings, console: Console | None = None) -> StudyResult:
    """Run (or resume) study `s` to `n_trials` stored trials, then check its front."""
    console = console or Console(stderr=True)
    start = time.monotonic()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_sqlite(storage_url(s.storage))
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
        disable=not s.progress,
        transient=False,
    )
    with open_client(s.scheduler, workers=s.workers, timeout_s=s.connect_timeout_s) as client:
        disk = _open_study(s)
        stored = disk.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL))
        result = StudyResult(rows=[], front=[], settings=s, resumed=len(stored))
        with progress:
            _run_trials(s, disk, stored, client, result, progress)
            result.rows = [_row(t, s) for t in disk.get_trials(deepcopy=False)]
            result.front = _front(result.rows, s)
            _run_checks(s, disk, client, result, progress)
    result.wall_s = round(time.monotonic() - start, 1)
    return result


def _run_trials(
    s: StudySettings,
    disk: optuna.Study,
    stored: list[FrozenTrial],
    client: Any,
    result: StudyResult,
    progress: Progress,
) -> None:
    """Ask, evaluate on Dask, tell and store generations until the study holds `n_trials`."""
    mem = optuna.create_study(
        directions=[o.direction for o in s.objectives], sampler=SAMPLERS[s.sampler](s)
    )
    mem.add_trials(stored)
    cache: dict[str, dict[str, float] | str] = {}
    for t in stored:
        key = t.user_attrs.get("config_hash")
        if key:
            cache[key] = t.user_attrs.get("metrics") or t.user_attrs.get("error", "failed")
    dists = s.space.distributions()
    bar = progress.add_task("trials", total=s.n_trials, completed=len(stored), note="")
    n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    wl = client.scatter(s.workload, broadcast=True)
    done = len(stored)
    while done < s.n_trials:
        trials = [mem.ask(dists) for _ in range(min(s.population, s.n_trials - done))]
        cfgs: list[AccelConfig | str] = []
        for t in trials:
            try:
                cfgs.append(s.space.config(t.params))
            except ConfigError as exc:
                cfgs.append(str(exc))
        todo: dict[str, AccelConfig] = {}
        for c in cfgs:
            if isinstance(c, AccelConfig) and config_hash(c) not in cache:
                todo.setdefault(config_hash(c), c)
        if todo:
            keys = list(todo)
            parts = np.array_split(np.arange(len(keys)), min(len(keys), 2 * n_workers))
            futures = [
                client.submit(evaluate_batch, [todo[keys[i]] for i in p], wl, pure=False)
                for p in parts
            ]
            busy, total = busy_workers(client)
            progress.update(bar, note=f"workers busy {busy}/{total}")
            for p, answers in zip(parts, client.gather(futures), strict=True):
                for i, answer in zip(p, answers, strict=True):
                    cache[keys[i]] = answer
            result.evaluated += len(keys)
        for t, c in zip(trials, cfgs, strict=True):
            answer = c if isinstance(c, str) else cache[config_hash(c)]
            if isinstance(c, AccelConfig):
                t.set_user_attr("config_hash", config_hash(c))
            if isinstance(answer, str):
                t.set_user_attr("error", answer)
                mem.tell(t, state=TrialState.FAIL)
                continue
            cons = _constraints(s, c, answer)  # type: ignore[arg-type]
            t.set_user_attr("metrics", answer)
            t.set_user_attr("feasible", all(v <= 0 for v in cons.values()))
            for name, value in cons.items():
                t.set_constraint(name, value)
            mem.tell(t, [answer[o.name] for o in s.objectives])
        disk.add_trials(mem.get_trials(deepcopy=False)[-len(trials) :])
        done += len(trials)
        progress.update(bar, completed=done, note=_best_note(mem, s))


def _best_note(study: optuna.Study, s: StudySettings) -> str:
    vals = [
        t.values
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get("feasible")
    ]
    if not vals:
        return "no feasible design yet"
    arr = np.array(vals)
    best = [
        (arr[:, i].min() if o.direction == "minimize" else arr[:, i].max())
        for i, o in enumerate(s.objectives)
    ]
    return "best " + ", ".join(f"{o.name} {b:.4g}" for o, b in zip(s.objectives, best, strict=True))


def _front(rows: list[dict[str, Any]], s: StudySettings) -> list[dict[str, Any]]:
    ok = [r for r in rows if r["state"] == "complete" and r["feasible"]]
    # One design per objective vector: the first trial that reached it (later configs with
    # the same numbers, e.g. a token buffer the workload never fills, add nothing).
    seen: dict[tuple[float, ...], dict[str, Any]] = {}
    for r in sorted(ok, key=lambda r: r["trial"]):
        seen.setdefault(tuple(r[o.name] for o in s.objectives), r)
    uniq = list(seen.values())
    if not uniq:
        return []
    pts = np.array([[r[o.name] for o in s.objectives] for r in uniq])
    idx = pareto_front(pts, [o.direction for o in s.objectives])
    front = [uniq[i] for i in idx]
    first = s.objectives[0]
    sign = 1 if first.direction == "minimize" else -1
    front.sort(key=lambda r: (sign * r[first.name], r["config_hash"]))
    for r in front:
        r["on_front"] = True
    return front


def _run_checks(
    s: StudySettings, disk: optuna.Study, client: Any, result: StudyResult, progress: Progress
) -> None:
    """RTL checks and syntheses of the front's spread points, as Dask tasks, stored by hash."""
    wanted: list[tuple[str, dict[str, Any]]] = []
    for kind, n in (("rtl", s.verify_top), ("synth", s.synth_top)):
        wanted += [(kind, result.front[i]) for i in _spread(len(result.front), n)]
    if not wanted:
        return
    attrs = disk.user_attrs
    futures = {}
    for kind, row in wanted:
        key = f"{kind}:{row['config_hash']}"
        if kind == "rtl":
            key += f":{s.workload.key()}:{s.seed}"
        if key in attrs:
            result.checks[key] = attrs[key]
            continue
        cfg = s.space.config({p: row[p] for p in s.space.domains})
        if kind == "rtl":
            futures[key] = client.submit(rtl_check, cfg, s.workload, s.seed, pure=False)
        else:
            futures[key] = client.submit(
                synth_check, cfg, "ecp5-85f", f"explore-{row['config_hash']}", pure=False
            )
    if futures:
        task = progress.add_task("checks", total=len(futures), note="RTL / synthesis")
        for key, fut in futures.items():
            answer = fut.result()
            disk.set_user_attr(key, answer)
            result.checks[key] = answer
            progress.advance(task)
    for kind, row in wanted:
        key = f"{kind}:{row['config_hash']}"
        if kind == "rtl":
            key += f":{s.workload.key()}:{s.seed}"
        _attach(row, kind, result.checks[key], s)


def _attach(row: dict[str, Any], kind: str, check: dict[str, Any], s: StudySettings) -> None:
    """Put a check's numbers into a front row; measured resources replace the estimates."""
    if kind == "rtl":
        row["rtl_bit_exact"] = check.get("bit_exact", False)
        for step in ("decode", "prefill"):
            for what in ("measured", "predicted"):
                row[f"rtl_{step}_cycles_{what}"] = check.get(f"{step}_cycles_{what}", "")
        if "error" in check:
            row["rtl_error"] = check["error"]
        return
    row["synth_status"] = check.get("status", "error")
    row["synth_fmax_mhz"] = check.get("fmax_mhz", "")
    if check.get("status") in ("ok", "timing-fail", "no-fit"):
        for name in ("luts", "ffs", "dsps", "brams"):
            row[name] = check[name]
            if any(o.name == name for o in s.objectives):
                row[f"source_{name}"] = "synthesis"
