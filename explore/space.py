"""What an exploration varies: `AccelConfig` fields, each a range of ints or a list of values.

A `SearchSpace` maps field names to `IntRange` or `Choice`; the fields not in
it come from a base config. `parse_param("rows=4:12")` and
`parse_param("mem_bytes_per_cycle=8,16,32")` are the command line's forms.
Every value a space admits is checked against `AccelConfig`'s and the
accelerator top's own rules (`contract.layout.check_top_config`: rows and cols are
powers of two) when the space is built, so a trial never meets an invalid
config by surprise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import optuna

from contract.layout import check_top_config
from pymodel.config import AccelConfig, ConfigError

from .errors import ExploreError

__all__ = [
    "DEFAULT_SPACE",
    "EXPLORABLE",
    "Choice",
    "IntRange",
    "SearchSpace",
    "config_hash",
    "parse_param",
]

EXPLORABLE: tuple[str, ...] = (
    "rows",
    "cols",
    "m_tile",
    "mem_bytes_per_cycle",
    "max_tokens",
)
"""The `AccelConfig` fields a study may vary: the array, the row tile, the bus and the token
buffer (which also caps the accumulator depth, `m_block`). `weight_buffers` is not one: the
GEMM engine is built double-buffered only.
The other fields size RTL buffers to a workload or fix the numeric contract: they come
from the base config."""


@dataclass(frozen=True)
class IntRange:
    """Every int from `low` to `high`, both included."""

    low: int
    high: int

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(self.low, self.high)

    def values(self) -> tuple[int, ...]:
        return tuple(range(self.low, self.high + 1))

    def __str__(self) -> str:
        return f"{self.low}:{self.high}"


@dataclass(frozen=True)
class Choice:
    """One of the listed values."""

    options: tuple[int, ...]

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution(self.options)

    def values(self) -> tuple[int, ...]:
        return self.options

    def __str__(self) -> str:
        return ",".join(str(v) for v in self.options)


Domain = IntRange | Choice

DEFAULT_SPACE: dict[str, Domain] = {
    "rows": Choice((2, 4, 8, 16, 32)),
    "cols": Choice((2, 4, 8, 16, 32)),
    "m_tile": Choice((1, 2, 4, 8, 16)),
    "mem_bytes_per_cycle": Choice((4, 8, 16, 32, 64)),
    "max_tokens": Choice((64, 128, 256, 512)),
}
"""The space of a study that names no `--param`."""


def parse_param(text: str) -> tuple[str, Domain]:
    """`name=low:high`, `name=v1,v2,...` or `name=value` as (field, domain)."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not spec.strip():
        raise ExploreError(f"--param {text!r}: expected NAME=LOW:HIGH, NAME=V1,V2,... or NAME=V")
    if name not in EXPLORABLE:
        raise ExploreError(
            f"--param {text!r}: unknown parameter {name!r}; explorable: {', '.join(EXPLORABLE)}"
        )
    try:
        if ":" in spec:
            low_s, high_s = spec.split(":", 1)
            low, high = int(low_s), int(high_s)
            if low > high:
                raise ExploreError(f"--param {text!r}: empty range ({low} > {high})")
            return name, IntRange(low, high)
        options = tuple(int(v) for v in spec.split(","))
    except ValueError:
        raise ExploreError(f"--param {text!r}: values must be integers") from None
    if len(set(options)) != len(options):
        raise ExploreError(f"--param {text!r}: a value is listed twice")
    return name, Choice(options)


class SearchSpace:
    """The fields a study varies (`domains`) over a fixed `base` config."""

    def __init__(self, domains: Mapping[str, Domain], base: AccelConfig | None = None) -> None:
        self.base = AccelConfig() if base is None else base
        if not domains:
            raise ExploreError("the search space is empty: give at least one --param")
        for name, domain in domains.items():
            if name not in EXPLORABLE:
                raise ExploreError(
                    f"unknown parameter {name!r}; explorable: {', '.join(EXPLORABLE)}"
                )
            for value in domain.values():
                try:
                    check_top_config(dataclasses.replace(self.base, **{name: value}))
                except ConfigError as exc:
                    raise ExploreError(f"--param {name}={domain}: {exc}") from None
        self.domains = dict(domains)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        return {name: d.distribution() for name, d in self.domains.items()}

    def config(self, params: Mapping[str, int]) -> AccelConfig:
        """The config of one trial's parameters (`ConfigError` if the combination is invalid)."""
        return dataclasses.replace(self.base, **dict(params))

    def describe(self) -> dict[str, str]:
        """JSON-ready form, stored with the study so a resumed study can be checked against it."""
        return {name: str(d) for name, d in self.domains.items()} | {"base": config_hash(self.base)}


def config_hash(cfg: AccelConfig) -> str:
    """A short stable hash of every field of `cfg`: the key of stored RTL and synthesis results."""
    text = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
