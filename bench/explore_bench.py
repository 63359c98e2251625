"""`make bench`, part 4: a 5,000-trial design-space study on the local Dask cluster, twice.

Runs `moe-accel explore`'s study (`explore.study.run_study`: NSGA-II, SQLite
storage, model evaluations as Dask tasks on a `LocalCluster` of this
machine's cores) over the default space on one Mixtral-8x7B and one
DeepSeek-V3 layer at their published sizes, objectives decode latency,
prefill throughput and DSPs, each study in a fresh storage; then runs the
same study again with the same seed. Bounds: each study of 5,000 trials in
≤ 300 s, and the two fronts identical.

Writes the `explore` section of `bench/results.json`, appends its table to
`bench/results.md`, replaces the explore section of `docs/benchmarks.md`,
and exits 1 when a bound is broken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from bench.calibrate import update_doc
from bench.results import publish
from explore.objectives import check_objectives
from explore.space import DEFAULT_SPACE, SearchSpace
from explore.study import StudySettings, run_study
from explore.workload import Workload
from flow.paths import REPO_ROOT

TRIALS = 5000
WALL_MAX_S = 300.0
SEED = 7
DOC_BEGIN = "<!-- explore:begin -->"
DOC_END = "<!-- explore:end -->"


def study(db: Path, trials: int) -> tuple[dict, list[dict]]:
    db.unlink(missing_ok=True)
    settings = StudySettings(
        space=SearchSpace(DEFAULT_SPACE),
        workload=Workload.parse(["Mixtral-8x7B", "DeepSeek-V3"], 1, 512, SEED),
        objectives=check_objectives(["decode_latency_us", "prefill_tokens_per_s", "dsps"]),
        n_trials=trials,
        storage=str(db),
        study_name="bench",
        seed=SEED,
    )
    start = time.monotonic()
    result = run_study(settings)
    wall = time.monotonic() - start
    front = [
        {k: r[k] for k in (*DEFAULT_SPACE, "decode_latency_us", "prefill_tokens_per_s", "dsps")}
        for r in result.front
    ]
    run = {
        "trials": len(result.rows),
        "configs_evaluated": result.evaluated,
        "front": len(front),
        "wall_s": round(wall, 1),
        "trials_per_s": round(len(result.rows) / wall, 1),
    }
    return run, front


def markdown(runs: list[dict], same: bool, trials: int) -> str:
    lines = [
        f"## Design-space exploration: {trials:,} trials on the local Dask cluster (issue #18)",
        "",
        "`bench/explore_bench.py`: NSGA-II over the default space (docs/explore.md), one "
        "Mixtral-8x7B and one DeepSeek-V3 layer at full size, objectives decode latency, "
        f"prefill tokens/s and DSPs, SQLite storage, seed {SEED}; run twice in fresh storages.",
        "",
        "| run | trials | configs evaluated | front | wall s | trials/s |",
        "|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        lines.append(
            f"| {i} | {r['trials']:,} | {r['configs_evaluated']:,} | {r['front']} | "
            f"{r['wall_s']} | {r['trials_per_s']} |"
        )
    lines += [
        "",
        f"Bounds: ≤ {WALL_MAX_S:.0f} s a study; the two fronts identical: "
        f"**{'yes' if same else 'NO'}**.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "bench")
    parser.add_argument("--doc", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    work = REPO_ROOT / "build" / "bench"
    work.mkdir(parents=True, exist_ok=True)
    first, front_a = study(work / "explore-a.db", args.trials)
    second, front_b = study(work / "explore-b.db", args.trials)
    same = front_a == front_b
    failures = [
        f"run {i}: {r['wall_s']} s > {WALL_MAX_S:.0f} s"
        for i, r in enumerate((first, second), 1)
        if r["wall_s"] > WALL_MAX_S
    ]
    if not same:
        failures.append("the same seed gave a different front")
    table = markdown([first, second], same, args.trials)
    result = {
        "seed": SEED,
        "runs": [first, second],
        "same_front": same,
        "front": front_a,
        "bounds": {"wall_max_s": WALL_MAX_S},
        "failures": failures,
    }
    update_doc(args.doc, table, DOC_BEGIN, DOC_END)
    return publish(args.out_dir, "explore", result, table, failures)


if __name__ == "__main__":
    sys.exit(main())
