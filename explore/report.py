"""A study's outputs for people: the trial table (CSV), front plots (PNG), a Markdown summary.

`results.csv` has one row per stored trial: the config's parameters, the
workload's key, every metric, whether it is feasible and on the front, and
for each objective where its number came from (`model`, `synthesis`), plus
the RTL checks' bit-exactness and measured / predicted cycles. One PNG per
pair of objectives shows the feasible trials and the front; `summary.md`
lists the front.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Any

from .objectives import METRICS
from .study import StudyResult

__all__ = ["write_outputs"]

_CHECK_COLUMNS = (
    "rtl_bit_exact",
    "rtl_decode_cycles_measured",
    "rtl_decode_cycles_predicted",
    "rtl_prefill_cycles_measured",
    "rtl_prefill_cycles_predicted",
    "rtl_error",
    "synth_status",
    "synth_fmax_mhz",
)


def _columns(result: StudyResult) -> list[str]:
    s = result.settings
    return [
        "trial",
        "state",
        *s.space.domains,
        "config_hash",
        "workload",
        *METRICS,
        "feasible",
        "on_front",
        *(f"source_{o.name}" for o in s.objectives),
        *_CHECK_COLUMNS,
        "error",
    ]


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_csv(result: StudyResult, path: Path) -> None:
    cols = _columns(result)
    key = result.settings.workload.key()
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for row in result.rows:
            full = {"workload": key, "on_front": False} | row
            writer.writerow({c: _fmt(full.get(c, "")) for c in cols})


def plot_fronts(result: StudyResult, out_dir: Path) -> list[Path]:
    """One PNG per pair of objectives: feasible trials in grey, the front in colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objs = result.settings.objectives
    feasible = [r for r in result.rows if r["state"] == "complete" and r.get("feasible")]
    paths = []
    for a, b in itertools.combinations(objs, 2):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        ax.scatter(
            [r[a.name] for r in feasible],
            [r[b.name] for r in feasible],
            s=6,
            c="0.75",
            label=f"feasible trials ({len(feasible)})",
        )
        front = sorted(result.front, key=lambda r: r[a.name])
        ax.plot(
            [r[a.name] for r in front],
            [r[b.name] for r in front],
            "o-",
            ms=4,
            color="tab:blue",
            label=f"Pareto front ({len(front)})",
        )
        checked = [r for r in front if "rtl_bit_exact" in r or "synth_status" in r]
        if checked:
            ax.scatter(
                [r[a.name] for r in checked],
                [r[b.name] for r in checked],
                s=60,
                facecolors="none",
                edgecolors="tab:red",
                label="RTL-checked / synthesised",
            )
        ax.set_xlabel(f"{a.name} ({a.unit}, {a.direction})")
        ax.set_ylabel(f"{b.name} ({b.unit}, {b.direction})")
        for axis, o in (("x", a), ("y", b)):
            values = [r[o.name] for r in feasible if r[o.name] > 0]
            if values and max(values) / min(values) > 100:
                getattr(ax, f"set_{axis}scale")("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"{result.settings.study_name}: {a.name} vs {b.name}", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"front_{a.name}_vs_{b.name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def summary_markdown(result: StudyResult) -> str:
    s = result.settings
    layers = ", ".join(name for name, _ in s.workload.layers)
    n_ok = sum(1 for r in result.rows if r["state"] == "complete")
    n_feasible = sum(1 for r in result.rows if r["state"] == "complete" and r.get("feasible"))
    lines = [
        f"# Study `{s.study_name}`",
        "",
        f"- workload: {layers}; decode {s.workload.decode_tokens} token(s), "
        f"prefill {s.workload.prefill_tokens} tokens (routing seed {s.workload.seed})",
        f"- objectives: {', '.join(f'{o.name} ({o.direction})' for o in s.objectives)}",
        f"- constraints: device {s.device}"
        + (f", Fmax ≥ {s.min_mhz:g} MHz where measured" if s.min_mhz else ""),
        f"- space: {', '.join(f'{k}={v}' for k, v in s.space.domains.items())}",
        f"- sampler {s.sampler}, seed {s.seed}, population {s.population}",
        f"- trials stored: {len(result.rows)} ({n_ok} complete, {n_feasible} feasible); "
        f"front: {len(result.front)} design{'' if len(result.front) == 1 else 's'}",
        "",
    ]
    params = list(s.space.domains)
    head = params + [o.name for o in s.objectives] + ["source", "RTL check"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for r in result.front:
        sources = sorted({r[f"source_{o.name}"] for o in s.objectives})
        rtl = ""
        if "rtl_bit_exact" in r:
            rtl = "bit-exact" if r["rtl_bit_exact"] else f"FAILED: {r.get('rtl_error', '')}"
            if r.get("rtl_decode_cycles_measured") not in (None, ""):
                rtl += (
                    f", decode {r['rtl_decode_cycles_measured']} / "
                    f"{r['rtl_decode_cycles_predicted']} cycles (measured / model)"
                )
        cells = [str(r[p]) for p in params]
        cells += [f"{r[o.name]:.4g}" for o in s.objectives]
        cells += ["+".join(sources), rtl]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(result: StudyResult, out_dir: Path) -> dict[str, Path]:
    """`results.csv`, `summary.md` and the front PNGs under `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"table": out_dir / "results.csv", "summary": out_dir / "summary.md"}
    write_csv(result, paths["table"])
    paths["summary"].write_text(summary_markdown(result))
    for i, p in enumerate(plot_fronts(result, out_dir)):
        paths[f"plot{i}"] = p
    return paths
