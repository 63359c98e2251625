"""What an exploration measures designs on: MoE layers and the decode / prefill token counts.

A layer is a real model's (`pymodel.models.REAL_MODELS`, e.g. `Mixtral-8x7B`)
or a family preset at chosen sizes (`mixtral:d_model=64,d_ff=128`), the form
for shapes the RTL admits (`--verify-top`). Routing is the load-balanced
distribution of `pymodel.models.uniform_routing`, drawn once per layer and
token count from the study's seed, so every trial sees the same tokens.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from pymodel.config import ConfigError, MoESpec
from pymodel.families import FAMILIES, family_spec
from pymodel.models import REAL_MODELS, uniform_routing

from .errors import ExploreError

__all__ = ["Workload", "parse_layer"]

_INT_KEYS = ("d_model", "d_ff", "n_experts", "top_k", "shared_d_ff", "capacity", "n_group")
_INT_KEYS += ("topk_group",)


def parse_layer(text: str) -> tuple[str, MoESpec]:
    """A real model's name, or `FAMILY[:key=value,...]` (`family_spec`'s arguments)."""
    if text in REAL_MODELS:
        return text, REAL_MODELS[text]
    family, _, rest = text.partition(":")
    if family not in FAMILIES:
        raise ExploreError(
            f"--layer {text!r}: not a model ({', '.join(REAL_MODELS)}) "
            f"nor a family ({', '.join(FAMILIES)})"
        )
    kwargs: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise ExploreError(f"--layer {text!r}: {item!r} is not key=value")
        try:
            if key in _INT_KEYS:
                kwargs[key] = int(value)
            elif key == "renormalize":
                kwargs[key] = {"true": True, "false": False}[value.lower()]
            elif key == "routed_scaling_factor":
                kwargs[key] = float(value)
            else:
                raise ExploreError(f"--layer {text!r}: unknown key {key!r}")
        except (ValueError, KeyError):
            raise ExploreError(f"--layer {text!r}: bad value for {key}: {value!r}") from None
    try:
        return text, family_spec(family, **kwargs)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ExploreError(f"--layer {text!r}: {exc}") from None


@dataclass(frozen=True)
class Workload:
    """Layers (name → spec) run at `decode_tokens` and at `prefill_tokens` tokens each."""

    layers: tuple[tuple[str, MoESpec], ...]
    decode_tokens: int = 1
    prefill_tokens: int = 512
    seed: int = 0
    routing: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, compare=False)

    @classmethod
    def parse(
        cls, layers: Sequence[str], decode_tokens: int, prefill_tokens: int, seed: int
    ) -> Workload:
        if not layers:
            raise ExploreError("the workload is empty: give at least one --layer")
        for name, value in (
            ("--decode-tokens", decode_tokens),
            ("--prefill-tokens", prefill_tokens),
        ):
            if value < 1:
                raise ExploreError(f"{name} must be at least 1, got {value}")
        parsed = tuple(parse_layer(t) for t in layers)
        if len({n for n, _ in parsed}) != len(parsed):
            raise ExploreError("a --layer is given twice")
        return cls(parsed, decode_tokens, prefill_tokens, seed)

    def __post_init__(self) -> None:
        for i, (_, spec) in enumerate(self.layers):
            for tokens in (self.decode_tokens, self.prefill_tokens):
                rng = np.random.default_rng([self.seed, i, tokens])
                self.routing[(self.layers[i][0], tokens)] = uniform_routing(spec, tokens, rng)

    def counts(self, name: str, tokens: int) -> np.ndarray:
        """Kept pairs per expert of layer `name` at `tokens` tokens (fixed for the study)."""
        return self.routing[(name, tokens)]

    def describe(self) -> dict[str, object]:
        """JSON-ready form, stored with the study."""
        return {
            "layers": {name: asdict(spec) for name, spec in self.layers},
            "decode_tokens": self.decode_tokens,
            "prefill_tokens": self.prefill_tokens,
            "seed": self.seed,
        }

    def key(self) -> str:
        text = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
