"""The configuration spine: one hardware config and one layer spec for everything.

`AccelConfig` describes the generated hardware (array shape, widths, limits,
buffers, memory, clock); `MoESpec` describes one MoE layer. The RTL generator,
the golden model, the driver and the performance model all read these two
objects, so a width or a limit is defined exactly once. Both are frozen,
validate on construction with errors that name the field and its allowed
range, and round-trip through JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

SCORINGS: tuple[str, ...] = ("softmax", "sigmoid")
FFN_KINDS: tuple[str, ...] = ("swiglu", "gelu", "relu")


class ConfigError(ValueError):
    """An invalid configuration or layer spec; the message names the field."""


def read_json_file(path: str | os.PathLike[str], where: str) -> Any:
    """The JSON document in `path`; a `ConfigError` starting with `where` if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None


def _check_int(owner: str, name: str, value: Any, lo: int, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{owner}.{name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ConfigError(f"{owner}.{name} = {value} is out of range; allowed {rng}")


def _check_number(owner: str, name: str, value: Any, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{owner}.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or not (lo <= value <= hi):
        raise ConfigError(f"{owner}.{name} = {value} is out of range; allowed [{lo}, {hi}]")


def _check_choice(owner: str, name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{owner}.{name} = {value!r} is not one of {list(choices)}")


class _JSONMixin:
    """JSON round trip shared by the frozen configs (unknown keys are errors)."""

    _kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps({"kind": self._kind, **self.to_dict()}, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        data = dict(data)
        kind = data.pop("kind", cls._kind)
        if kind != cls._kind:
            raise ConfigError(f"expected a {cls._kind} document, got kind={kind!r}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}")
        missing = sorted(
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"{cls.__name__}: missing field(s) {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{cls.__name__}: invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: JSON document must be an object")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Self:
        """A copy with some fields changed (validated again), as Gemmini's `.copy()`."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class AccelConfig(_JSONMixin):
    """The generated accelerator. Every RTL width and buffer size derives from here.

    The GEMM engine is a weight-stationary `rows` × `cols` array: a weight tile
    holds `rows` input channels (K) × `cols` output channels (N), and token rows
    stream through it `m_tile` at a time (the row tile that dispatch pads each
    expert group to). `addr_bits` is the width of the AXI byte address: 32
    reaches 4 GiB; a whole full-size layer (DeepSeek-V3's is 11.3 GB of int8
    weights) needs more. `sparse_2_4` and `int4_weights` build the engine's
    compressed weight paths (2:4 structured sparsity along K; two int4 weights
    a byte; docs/numerics.md): a build without them is the dense int8 engine.
    `copy_engine` builds the copy engine and the AXI arbiter in front of the
    memory port (issue 20): descriptor-queued copies between host and device
    memory for expert offloading and prefetch, beside the layer's own DMA; a
    build without it has neither unit and no COPY_BLOCK registers.
    """

    _kind: ClassVar[str] = "AccelConfig"

    rows: int = 8
    cols: int = 8
    m_tile: int = 8
    act_bits: int = 8
    weight_bits: int = 8
    acc_bits: int = 32
    mult_bits: int = 16
    logit_bits: int = 16
    logit_frac_bits: int = 8
    gate_frac_bits: int = 16
    gate_weight_bits: int = 20
    max_experts: int = 64
    max_top_k: int = 8
    max_groups: int = 8
    max_tokens: int = 256
    max_d_model: int = 1024
    max_d_ff: int = 2048
    weight_buffers: int = 2
    mem_bytes_per_cycle: int = 16
    addr_bits: int = 32
    sparse_2_4: bool = False
    int4_weights: bool = False
    copy_engine: bool = False
    clock_mhz: float = 100.0

    def __post_init__(self) -> None:
        o = "AccelConfig"
        _check_int(o, "rows", self.rows, 1, 64)
        _check_int(o, "cols", self.cols, 1, 64)
        _check_int(o, "m_tile", self.m_tile, 1, 256)
        _check_int(o, "act_bits", self.act_bits, 2, 8)
        _check_int(o, "weight_bits", self.weight_bits, 2, 8)
        _check_int(o, "acc_bits", self.acc_bits, 16, 32)
        _check_int(o, "mult_bits", self.mult_bits, 8, 24)
        _check_int(o, "logit_bits", self.logit_bits, 8, 24)
        _check_int(o, "logit_frac_bits", self.logit_frac_bits, 0, self.logit_bits - 2)
        _check_int(o, "gate_frac_bits", self.gate_frac_bits, 8, 24)
        _check_int(o, "gate_weight_bits", self.gate_weight_bits, self.gate_frac_bits + 1, 32)
        _check_int(o, "max_experts", self.max_experts, 1, 256)
        _check_int(o, "max_top_k", self.max_top_k, 1, min(8, self.max_experts))
        _check_int(o, "max_groups", self.max_groups, 1, self.max_experts)
        _check_int(o, "max_tokens", self.max_tokens, 1, 65536)
        for name in ("max_d_model", "max_d_ff"):
            _check_int(o, name, getattr(self, name), 1)
            if getattr(self, name) > self.max_k:
                raise ConfigError(
                    f"AccelConfig.{name} = {getattr(self, name)} needs longer sums than "
                    f"acc_bits = {self.acc_bits} can hold with act_bits = {self.act_bits} and "
                    f"weight_bits = {self.weight_bits} (sums of at most {self.max_k} terms); "
                    f"raise acc_bits or lower {name}"
                )
        _check_int(o, "weight_buffers", self.weight_buffers, 1, 2)
        if self.mem_bytes_per_cycle not in (4, 8, 16, 32, 64):
            raise ConfigError(
                f"AccelConfig.mem_bytes_per_cycle = {self.mem_bytes_per_cycle} is not one of "
                "[4, 8, 16, 32, 64] (AXI data widths 32..512 bits)"
            )
        _check_int(o, "addr_bits", self.addr_bits, 32, 48)
        for name, unit in (("sparse_2_4", 4), ("int4_weights", 2)):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"AccelConfig.{name} must be a bool")
            if getattr(self, name) and self.rows % unit:
                raise ConfigError(
                    f"AccelConfig.{name} needs rows to be a multiple of {unit} "
                    f"(a tile's compressed rows come in groups of {unit}), got rows = {self.rows}"
                )
        if not isinstance(self.copy_engine, bool):
            raise ConfigError("AccelConfig.copy_engine must be a bool")
        _check_number(o, "clock_mhz", self.clock_mhz, 1.0, 2000.0)

    @property
    def max_k(self) -> int:
        """Largest reduction length whose int accumulation can never overflow `acc_bits`.

        The contract accumulates exactly (no wrap, no saturation needed): with
        |a| ≤ 2^(act_bits-1) and |w| ≤ 2^(weight_bits-1), K products stay
        inside a signed `acc_bits` register when K·2^(act+weight-2) < 2^(acc-1).
        """
        return (2 ** (self.acc_bits - 1) - 1) // (2 ** (self.act_bits + self.weight_bits - 2))

    @property
    def weight_rows_per_beat(self) -> int:
        """Weight rows (of `cols` int8) the GEMM engine writes into its array per cycle.

        As many whole C-byte rows (weights are stored one byte each, whatever
        `weight_bits`) as one memory beat carries, so weight loads run at the
        bus rate: `max(1, min(rows, mem_bytes_per_cycle // cols))`.
        A bus narrower than a row (or one that is not a multiple of it) still
        gets one row per cycle — the resizer gathers beats, or a beat's tail
        bytes beyond the whole rows go unused — and a tile never has more than
        `rows` rows, so more would buy nothing.
        """
        return max(1, min(self.rows, self.mem_bytes_per_cycle // self.cols))

    @property
    def param_words_per_beat(self) -> int:
        """Requantisation parameter words (one channel's (m, s) each) written per cycle.

        A beat carries `mem_bytes_per_cycle // 4` words; the engine writes them
        into adjacent lanes of one parameter row, so the count must divide
        `cols`: the largest power of two that does, capped by the beat.
        """
        words = 1
        while 2 * words <= self.mem_bytes_per_cycle // 4 and self.cols % (2 * words) == 0:
            words *= 2
        return words

    @property
    def lut_entries_per_beat(self) -> int:
        """Activation-LUT entries (one byte each) written per cycle: 4.

        Each post-processing lane's LUT copy is a memory of rows this many
        entries wide; 4 × 8 bits keeps it one block RAM (ECP5 DP16KD as
        512 × 36, iCE40 SB_RAM40_4K pairs), where a whole 16-byte beat would
        make a 16 × 128 memory that lands in LUT RAM or flip-flops. Every
        beat (≥ 4 bytes) and every table (≥ 2² entries) holds 4.
        """
        return 4

    @property
    def macs_per_cycle(self) -> int:
        return self.rows * self.cols

    @property
    def peak_gops(self) -> float:
        """Peak int8 ops/s (2 per MAC) at `clock_mhz`, in GOPS."""
        return 2 * self.macs_per_cycle * self.clock_mhz * 1e6 / 1e9

    def check_fits(self, spec: MoESpec, tokens: int) -> None:
        """Raise `ConfigError` naming the first limit `spec` with `tokens` exceeds."""
        limits = [
            ("tokens", tokens, "max_tokens", self.max_tokens),
            ("d_model", spec.d_model, "max_d_model", self.max_d_model),
            ("d_ff", spec.d_ff, "max_d_ff", self.max_d_ff),
            ("shared_d_ff", spec.shared_d_ff, "max_d_ff", self.max_d_ff),
            ("n_experts", spec.n_experts, "max_experts", self.max_experts),
            ("top_k", spec.top_k, "max_top_k", self.max_top_k),
            ("n_group", spec.n_group, "max_groups", self.max_groups),
        ]
        _check_int("layer", "tokens", tokens, 1)
        for what, value, limit_name, limit in limits:
            if value > limit:
                owner = "the layer's token count" if what == "tokens" else f"MoESpec.{what}"
                raise ConfigError(
                    f"{owner} = {value} exceeds the hardware: AccelConfig.{limit_name} = {limit}"
                )

    def check_model_fits(self, spec: MoESpec, tokens: int) -> None:
        """Raise `ConfigError` if the *models* (cycle, energy) cannot represent the layer.

        Only rules that hold for any size of this accelerator apply: at least one
        token, and reductions (`d_model`, `d_ff`, `shared_d_ff`) no longer than
        `max_k`, the exact-accumulation limit of `acc_bits`. The limits of
        `check_fits` (`max_tokens`, `max_d_model`, `max_d_ff`, `max_experts`,
        `max_top_k`, `max_groups`) size the generated RTL's buffers and fields;
        the models extrapolate past them to real layer sizes (docs/codesign.md).
        """
        _check_int("layer", "tokens", tokens, 1)
        for what in ("d_model", "d_ff", "shared_d_ff"):
            value = getattr(spec, what)
            if value > self.max_k:
                raise ConfigError(
                    f"MoESpec.{what} = {value} exceeds AccelConfig.max_k = {self.max_k}: "
                    f"a reduction that long can overflow the {self.acc_bits}-bit accumulators"
                )


@dataclass(frozen=True)
class MoESpec(_JSONMixin):
    """One MoE layer: shapes, routing mode and its parameters, FFN kind, extras.

    Routing covers the six families of docs/numerics.md §4.2: `softmax` scores with top-k
    (optionally renormalised); `sigmoid` scores with an optional correction
    bias, group-limited selection (`n_group`, `topk_group`) and
    `routed_scaling_factor` (DeepSeek-V3); and `capacity` (tokens per expert,
    in sequence order, Switch). Shared experts are `n_shared_experts` SwiGLU
    experts of width `shared_d_ff` summed into one, optionally scaled by a
    sigmoid gate (Qwen2-MoE).
    """

    _kind: ClassVar[str] = "MoESpec"

    d_model: int
    d_ff: int
    n_experts: int
    top_k: int
    scoring: str = "softmax"
    renormalize: bool = False
    n_group: int = 1
    topk_group: int = 1
    correction_bias: bool = False
    routed_scaling_factor: float = 1.0
    capacity: int | None = None
    ffn: str = "swiglu"
    shared_d_ff: int = 0
    shared_gate: bool = False
    name: str = field(default="moe")

    def __post_init__(self) -> None:
        o = "MoESpec"
        _check_int(o, "d_model", self.d_model, 1)
        _check_int(o, "d_ff", self.d_ff, 1)
        _check_int(o, "n_experts", self.n_experts, 1)
        _check_int(o, "top_k", self.top_k, 1, self.n_experts)
        _check_choice(o, "scoring", self.scoring, SCORINGS)
        _check_choice(o, "ffn", self.ffn, FFN_KINDS)
        if not isinstance(self.renormalize, bool):
            raise ConfigError("MoESpec.renormalize must be a bool")
        if not isinstance(self.correction_bias, bool):
            raise ConfigError("MoESpec.correction_bias must be a bool")
        if not isinstance(self.shared_gate, bool):
            raise ConfigError("MoESpec.shared_gate must be a bool")
        _check_int(o, "n_group", self.n_group, 1, self.n_experts)
        if self.n_experts % self.n_group:
            raise ConfigError(
                f"MoESpec.n_group = {self.n_group} does not divide n_experts = {self.n_experts}"
            )
        _check_int(o, "topk_group", self.topk_group, 1, self.n_group)
        if self.n_group > 1:
            per_group = self.n_experts // self.n_group
            if per_group < 2:
                raise ConfigError(
                    f"MoESpec.n_group = {self.n_group} leaves {per_group} expert per group; "
                    "group scores sum the top-2 experts of a group, so each needs >= 2"
                )
            if self.top_k > self.topk_group * per_group:
                raise ConfigError(
                    f"MoESpec.top_k = {self.top_k} exceeds the experts in the selected groups "
                    f"(topk_group {self.topk_group} × {per_group} per group)"
                )
        elif self.topk_group != 1:
            raise ConfigError("MoESpec.topk_group must be 1 when n_group = 1")
        if self.correction_bias and self.scoring != "sigmoid":
            raise ConfigError("MoESpec.correction_bias requires scoring = 'sigmoid'")
        _check_number(o, "routed_scaling_factor", self.routed_scaling_factor, 1e-3, 15.0)
        if self.capacity is not None:
            _check_int(o, "capacity", self.capacity, 1)
        _check_int(o, "shared_d_ff", self.shared_d_ff, 0)
        if self.shared_gate and self.shared_d_ff == 0:
            raise ConfigError("MoESpec.shared_gate needs a shared expert (shared_d_ff > 0)")
        if not isinstance(self.name, str):
            raise ConfigError("MoESpec.name must be a string")

    @property
    def has_shared(self) -> bool:
        return self.shared_d_ff > 0
