"""How a run of one MoE layer compares with the float reference, as numbers and a table.

The metrics are the ones the project judges itself by: output error against
the PyTorch reference (max abs, relative L2) — with 2:4 expert weights also
against the pruned float block, the one the integer weights approximate —,
agreement of the integer router's expert sets with the float router's, the
expert weight format and the bytes of expert weights it reads, and — for
hardware backends — whether the hardware matched the golden model bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from flow.paths import git_describe
from pymodel.config import AccelConfig, MoESpec
from pymodel.perf import roofline

from .device import DeviceResult


def rel_l2(y: np.ndarray, ref: np.ndarray) -> float:
    """‖y − ref‖₂ / ‖ref‖₂ (0 when both are zero)."""
    y64, r64 = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    denom = float(np.linalg.norm(r64))
    diff = float(np.linalg.norm(y64 - r64))
    return diff / denom if denom > 0 else diff


def expert_set_agreement(ids: np.ndarray, ref_ids: np.ndarray) -> np.ndarray:
    """[T] bool: the token's set of k experts equals the reference's (order ignored)."""
    return np.all(np.sort(ids, axis=1) == np.sort(ref_ids, axis=1), axis=1)


REPORT_SCHEMA_VERSION = 2
"""Version of the `--json` document (docs/cli.md); bumped when a field changes meaning."""


def revision() -> str:
    """`git describe --always --dirty` of the source tree, or "unknown" outside a git checkout."""
    described = git_describe()
    return f"git {described}" if described else "unknown"


def package_version() -> str:
    """The installed `moe-accel` package version ("unknown" when run from a bare tree)."""
    try:
        return version("moe-accel")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class LayerReport:
    """Everything one `moe-accel run` measured; `to_json_dict` is the `--json` document."""

    family: str
    backend: str
    tokens: int
    d_model: int
    d_ff: int
    n_experts: int
    top_k: int
    torch_device: str
    max_abs_vs_torch: float
    rel_l2_vs_torch: float
    rel_l2_bound: float
    rel_l2_vs_torch_agreeing: float
    rel_l2_bound_agreeing: float
    routing_agreement: float
    routing_agreement_guaranteed: float
    guaranteed_tokens: int
    dropped_pairs: int
    tokens_per_expert: list[int]
    bit_exact_vs_golden: bool | None = None
    cycles: dict[str, int] = field(default_factory=dict)
    mac_utilization_expert_phase: float | None = None
    roofline_bound_cycles: float | None = None
    cycles_vs_roofline: float | None = None
    effective_gops: float | None = None
    clock_mhz: float | None = None
    sim_cycles_per_s: float | None = None
    counters: dict[str, int] = field(default_factory=dict)
    """Raw performance counters read from the hardware (register name in lower case)."""
    seed: int | None = None
    accel_config: dict[str, Any] = field(default_factory=dict)
    moe_spec: dict[str, Any] = field(default_factory=dict)
    revision: str = ""
    waves: str | None = None
    """The waveform file written by this run, if any."""
    weight_format: str = "int8 dense"
    """The experts' weight format (`pymodel.weight_formats.WeightFormat.name`)."""
    expert_weight_bytes: int | None = None
    """Bytes of routed and shared expert weights the layer reads (`cycles.expert_weight_bytes`)."""
    rel_l2_vs_torch_pruned: float | None = None
    """2:4 formats: relative L2 error against the pruned float block (None when dense)."""

    def to_json_dict(self) -> dict[str, Any]:
        """The `--json` document: `schema_version`, `moe_accel_version`, then every field."""
        return {
            "schema_version": REPORT_SCHEMA_VERSION,
            "moe_accel_version": package_version(),
            **asdict(self),
        }

    def render(self, console: Console | None = None) -> None:
        """Print the report as a readable table."""
        console = console or Console()
        table = Table(title=f"moe-accel · {self.family} layer on the {self.backend} backend")
        table.add_column("metric")
        table.add_column("value", justify="right")
        table.add_row(
            "shape",
            f"T={self.tokens} d={self.d_model} f={self.d_ff} E={self.n_experts} k={self.top_k}",
        )
        table.add_row("expert weights", self.weight_format)
        if self.expert_weight_bytes is not None:
            table.add_row("expert weight bytes read", f"{self.expert_weight_bytes:,}")
        if self.bit_exact_vs_golden is not None:
            table.add_row("bit-exact vs golden model", "yes" if self.bit_exact_vs_golden else "NO")
        pruned = self.rel_l2_vs_torch_pruned
        judged = self.rel_l2_vs_torch if pruned is None else pruned
        ok = "within" if judged <= self.rel_l2_bound else "OVER"
        bound = f"({ok} bound {self.rel_l2_bound:.3f})"
        name = f"rel. L2 error vs torch ({self.torch_device})"
        if pruned is None:
            table.add_row(name, f"{self.rel_l2_vs_torch:.4f} {bound}")
        else:
            table.add_row(name, f"{self.rel_l2_vs_torch:.4f} (the unpruned float block)")
            table.add_row("  vs the pruned float block", f"{pruned:.4f} {bound}")
        ok = "within" if self.rel_l2_vs_torch_agreeing <= self.rel_l2_bound_agreeing else "OVER"
        table.add_row(
            "  on tokens routed like the float router",
            f"{self.rel_l2_vs_torch_agreeing:.4f} ({ok} bound {self.rel_l2_bound_agreeing:.3f})",
        )
        table.add_row("max abs error vs torch", f"{self.max_abs_vs_torch:.4g}")
        table.add_row("routing agreement (expert sets)", f"{100 * self.routing_agreement:.1f} %")
        table.add_row(
            f"  on the {self.guaranteed_tokens} tokens with a clear float margin",
            f"{100 * self.routing_agreement_guaranteed:.1f} %",
        )
        table.add_row("dropped (token, slot) pairs", str(self.dropped_pairs))
        table.add_row("tokens per expert", " ".join(str(c) for c in self.tokens_per_expert))
        for phase, cycles in self.cycles.items():
            table.add_row(f"cycles: {phase}", f"{cycles:,}")
        if self.mac_utilization_expert_phase is not None:
            table.add_row(
                "MAC utilisation, expert phase", f"{100 * self.mac_utilization_expert_phase:.1f} %"
            )
        if self.cycles_vs_roofline is not None:
            table.add_row(
                "layer cycles ÷ roofline bound",
                f"{self.cycles_vs_roofline:.2f} (bound {self.roofline_bound_cycles:,.0f})",
            )
        if self.effective_gops is not None:
            table.add_row(f"effective GOPS at {self.clock_mhz:g} MHz", f"{self.effective_gops:.2f}")
        if self.sim_cycles_per_s is not None:
            table.add_row("simulated cycles / s", f"{self.sim_cycles_per_s:,.0f}")
        console.print(table)


def router_mac_cycles(spec: MoESpec, cfg: AccelConfig, tokens: int) -> int:
    """MAC-issue cycles of the router GEMM: one per token row, K-tile and N-tile.

    The array issues one activation row per cycle into a loaded R×C weight
    tile, so a GEMM of M rows takes M·⌈K/R⌉·⌈N/C⌉ issue cycles whatever its
    M-blocking; the router has N = E columns (+1 for a gated shared expert).
    """
    cols = spec.n_experts + (1 if spec.shared_gate else 0)
    return tokens * -(-spec.d_model // cfg.rows) * -(-cols // cfg.cols)


def expert_phase_mac_cycles(
    counters: dict[str, int], spec: MoESpec, cfg: AccelConfig, tokens: int
) -> int:
    """MAC-issue cycles of the experts phase: the layer's `MAC_CYCLES` less the router's."""
    return counters["mac_cycles"] - router_mac_cycles(spec, cfg, tokens)


def add_hardware_metrics(
    report: LayerReport, result: DeviceResult, spec: MoESpec, cfg: AccelConfig
) -> None:
    """Fill the cycle-based metrics of `report` from a hardware backend's counters.

    Expert-phase MAC utilisation = cycles the array issued MACs during the
    experts phase ÷ cycles of that phase; effective GOPS = 2 × useful MACs ÷
    layer time at the config's clock; the roofline bound is `pymodel.perf`'s.
    """
    c = result.counters
    report.cycles = result.cycles
    report.counters = dict(c)
    total = c["cycles_total"]
    if c["cycles_experts"]:
        experts = expert_phase_mac_cycles(c, spec, cfg, report.tokens)
        report.mac_utilization_expert_phase = experts / c["cycles_experts"]
    bound = roofline(spec, cfg, report.tokens, result.tokens_per_expert)
    report.roofline_bound_cycles = bound.bound_cycles
    report.cycles_vs_roofline = total / bound.bound_cycles
    report.clock_mhz = cfg.clock_mhz
    report.effective_gops = 2 * c["useful_macs"] * cfg.clock_mhz * 1e6 / total / 1e9
    report.sim_cycles_per_s = result.sim_cycles_per_s
