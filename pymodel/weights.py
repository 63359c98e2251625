"""Float weights of one MoE layer, in the layout every path shares.

The HF importer produces this, the float references consume it, and the
calibration/quantisation step turns it into the integer image the hardware
runs. Layouts are "input dimension first" (x @ W), as the GEMM engine sees them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ConfigError, MoESpec
from .numerics import check_finite


@dataclass(frozen=True)
class MoEWeights:
    """Router, routed experts and optional shared expert of one layer (float32).

    `w1` is the gate projection of a SwiGLU expert, or the only up projection
    of a GELU/ReLU expert; `w3` is the SwiGLU up projection (None otherwise).
    """

    router: np.ndarray  # [d, E]
    w1: np.ndarray  # [E, d, f]
    w2: np.ndarray  # [E, f, d]
    w3: np.ndarray | None = None  # [E, d, f], SwiGLU only
    correction_bias: np.ndarray | None = None  # [E], sigmoid routing only
    shared_w1: np.ndarray | None = None  # [d, fs]
    shared_w3: np.ndarray | None = None  # [d, fs]
    shared_w2: np.ndarray | None = None  # [fs, d]
    shared_gate: np.ndarray | None = None  # [d], Qwen2-MoE sigmoid gate

    def validate(self, spec: MoESpec) -> None:
        """Raise `ConfigError` on any shape, dtype or presence mismatch with `spec`."""
        d, f, e, fs = spec.d_model, spec.d_ff, spec.n_experts, spec.shared_d_ff
        swiglu = spec.ffn == "swiglu"
        expected: dict[str, tuple[int, ...] | None] = {
            "router": (d, e),
            "w1": (e, d, f),
            "w2": (e, f, d),
            "w3": (e, d, f) if swiglu else None,
            "correction_bias": (e,) if spec.correction_bias else None,
            "shared_w1": (d, fs) if fs else None,
            "shared_w3": (d, fs) if fs else None,
            "shared_w2": (fs, d) if fs else None,
            "shared_gate": (d,) if spec.shared_gate else None,
        }
        for name, shape in expected.items():
            value = getattr(self, name)
            if shape is None:
                if value is not None:
                    raise ConfigError(f"MoEWeights.{name} given but spec {spec.name!r} has none")
                continue
            if value is None:
                raise ConfigError(f"MoEWeights.{name} missing; spec needs shape {shape}")
            if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
                kind = getattr(value, "dtype", type(value).__name__)
                raise ConfigError(f"MoEWeights.{name} must be a float numpy array, got {kind}")
            if value.shape != shape:
                raise ConfigError(f"MoEWeights.{name} has shape {value.shape}, expected {shape}")
            check_finite(f"MoEWeights.{name}", value)

    @staticmethod
    def random(spec: MoESpec, seed: int = 0, std: float = 0.05) -> MoEWeights:
        """Seeded random weights for `spec` (tests, demos, benchmarks)."""
        rng = np.random.default_rng(seed)
        d, f, e, fs = spec.d_model, spec.d_ff, spec.n_experts, spec.shared_d_ff

        def normal(*shape: int) -> np.ndarray:
            return (rng.standard_normal(shape) * std).astype(np.float32)

        return MoEWeights(
            router=(rng.standard_normal((d, e)) / np.sqrt(d)).astype(np.float32),
            w1=normal(e, d, f),
            w2=normal(e, f, d),
            w3=normal(e, d, f) if spec.ffn == "swiglu" else None,
            correction_bias=normal(e) if spec.correction_bias else None,
            shared_w1=normal(d, fs) if fs else None,
            shared_w3=normal(d, fs) if fs else None,
            shared_w2=normal(fs, d) if fs else None,
            shared_gate=normal(d) if spec.shared_gate else None,
        )
