"""The cocotb side of `sim.build.run_cocotb(params=…)`: one parameter file per run.

Why: each bench used to pass its settings as ad-hoc environment variables
(strings parsed by hand on the other side); one JSON file carries typed
values, configs included, and a missing one is named.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pymodel.config import AccelConfig
from sim.build import PARAMS_ENV

__all__ = ["BenchParams", "tb_params"]


class BenchParams(dict):
    """The run's parameters; a missing key names what the pytest side forgot to pass."""

    def __missing__(self, key: str) -> Any:
        raise KeyError(f"cocotb parameter {key!r} was not passed (run_cocotb(params=…))")

    def config(self, key: str = "cfg") -> AccelConfig:
        """The `AccelConfig` passed as `key`."""
        return AccelConfig.from_dict(self[key])

    def path(self, key: str) -> Path:
        """The path passed as `key`."""
        return Path(self[key])


def tb_params() -> BenchParams:
    """This run's parameters (raises when the test was not started by `run_cocotb`)."""
    path = os.environ.get(PARAMS_ENV)
    if path is None:
        raise RuntimeError(f"${PARAMS_ENV} is not set: start this test with sim.build.run_cocotb")
    return BenchParams(json.loads(Path(path).read_text()))
