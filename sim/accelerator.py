"""The whole accelerator as the simulation backends build it.

Why here: the driver (`sw_driver.device`) must not import Amaranth, so it
never names `rtl.top`; it asks this module, on the simulation side, for the
top to hand `sim.fast.FastSim`.
"""

from __future__ import annotations

from collections.abc import Callable

from amaranth.lib import wiring

from pymodel.config import AccelConfig
from rtl.top import MoEAccel

__all__ = ["accelerator_top"]


def accelerator_top(cfg: AccelConfig) -> Callable[[], wiring.Component]:
    """A factory of `MoEAccel(cfg)` (FastSim elaborates it only when its build is not cached)."""
    return lambda: MoEAccel(cfg)
