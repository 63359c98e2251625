"""The numbers a study can optimise, and how one design is measured on a workload.

`evaluate(cfg, workload)` runs the calibrated cycle model (`pymodel.cycles`),
the energy model (`pymodel.energy`) and the resource model
(`pymodel.resources`) for one config: every metric of `METRICS`, summed over
the workload's layers. Decode latency is one layer step of `decode_tokens`
tokens (every token of the step waits for all of it), prefill throughput is
`prefill_tokens` over the prefill step's time, energy per token is the decode
step's energy over its tokens (generation's cost per token). Times use the
config's `clock_mhz`; whether a design reaches it is a synthesis question
(`--synth-top`, `pymodel.resources.known_fmax`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pymodel.config import AccelConfig, ConfigError
from pymodel.cycles import layer_cycles
from pymodel.energy import layer_energy
from pymodel.resources import estimate

from .errors import ExploreError
from .workload import Workload

__all__ = ["METRICS", "OBJECTIVES", "Objective", "check_objectives", "evaluate", "evaluate_batch"]


@dataclass(frozen=True)
class Objective:
    """A metric a study can optimise: its direction and unit."""

    name: str
    direction: str
    unit: str
    doc: str


OBJECTIVES: dict[str, Objective] = {
    o.name: o
    for o in (
        Objective("decode_latency_us", "minimize", "µs", "one decode step, all layers"),
        Objective("prefill_tokens_per_s", "maximize", "tokens/s", "prefill throughput"),
        Objective("energy_uj_per_token", "minimize", "µJ", "decode energy per token"),
        Objective("dsps", "minimize", "MULT18X18D", "DSP blocks (GEMM engine, ECP5)"),
        Objective("luts", "minimize", "LUT4", "LUT4 + carry logic cells (GEMM engine, ECP5)"),
        Objective("ffs", "minimize", "FF", "flip-flops (GEMM engine, ECP5)"),
        Objective("brams", "minimize", "DP16KD", "block RAMs (GEMM engine, ECP5)"),
    )
}
"""Objectives by name (`--objective`)."""

METRICS: tuple[str, ...] = (*OBJECTIVES, "decode_cycles", "prefill_cycles")
"""Everything `evaluate` returns."""


def check_objectives(names: Sequence[str]) -> tuple[Objective, ...]:
    """The named objectives, or an `ExploreError` naming the one that does not exist."""
    if not names:
        raise ExploreError("no objective: give at least one --objective")
    for name in names:
        if name not in OBJECTIVES:
            raise ExploreError(
                f"--objective {name!r} does not exist; choose from {', '.join(OBJECTIVES)}"
            )
    if len(set(names)) != len(names):
        raise ExploreError("an --objective is given twice")
    return tuple(OBJECTIVES[n] for n in names)


def evaluate(cfg: AccelConfig, workload: Workload) -> dict[str, float]:
    """Every metric of `METRICS` for `cfg` on `workload` (model estimates)."""
    decode = prefill = 0
    energy_pj = 0.0
    for name, spec in workload.layers:
        cfg.check_model_fits(spec, workload.prefill_tokens)
        d_est = layer_cycles(
            cfg, spec, workload.decode_tokens, workload.counts(name, workload.decode_tokens)
        )
        p_est = layer_cycles(
            cfg, spec, workload.prefill_tokens, workload.counts(name, workload.prefill_tokens)
        )
        decode += int(d_est.cycles_total[0])
        prefill += int(p_est.cycles_total[0])
        energy_pj += float(layer_energy(cfg, d_est).total_pj[0])
    res = estimate(cfg)
    return {
        "decode_latency_us": decode / cfg.clock_mhz,
        "prefill_tokens_per_s": workload.prefill_tokens * cfg.clock_mhz * 1e6 / prefill,
        "energy_uj_per_token": energy_pj / workload.decode_tokens / 1e6,
        "dsps": float(res.dsps),
        "luts": float(res.logic_cells),
        "ffs": float(res.ffs),
        "brams": float(res.brams),
        "decode_cycles": float(decode),
        "prefill_cycles": float(prefill),
    }


def evaluate_batch(
    configs: Sequence[AccelConfig], workload: Workload
) -> list[dict[str, float] | str]:
    """`evaluate` for each config: its metrics, or the reason the model cannot represent it.

    The unit of work of a Dask task: one call evaluates a slice of a generation.
    """
    out: list[dict[str, float] | str] = []
    for cfg in configs:
        try:
            out.append(evaluate(cfg, workload))
        except ConfigError as exc:
            out.append(str(exc))
    return out
