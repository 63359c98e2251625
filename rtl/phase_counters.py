"""The layer's phases and their cycle counters.

Why: the driver reports where a layer's cycles go (route, dispatch, experts,
the shared expert within experts, combine); the layer FSM names its phase
and this counts it, so the two cannot drift apart.
"""

from __future__ import annotations

import types

from amaranth import Module, unsigned
from amaranth.lib import data, enum, wiring
from amaranth.lib.wiring import In, Out

from contract.regs import COUNTER_BITS, PHASE_COUNTERS, LayerPhase

__all__ = ["PHASES", "Phase", "PhaseCounters", "phase_counter_layout"]


Phase = types.new_class(
    "Phase", (enum.Enum,), {"shape": 3}, lambda ns: ns.update({p.name: p.value for p in LayerPhase})
)
"""`contract.regs.LayerPhase` as a 3-bit Amaranth enum: the phase the layer FSM is in."""

PHASES = PHASE_COUNTERS
"""The counters, in layout order (`contract.regs.PHASE_COUNTERS`)."""


def phase_counter_layout() -> data.StructLayout:
    """Cycle counters per phase (`shared` lies within `experts`)."""
    return data.StructLayout({name: unsigned(COUNTER_BITS) for name in PHASES})


class PhaseCounters(wiring.Component):
    """Counts the cycles of a busy layer, in total and per phase.

    Ports
    -----
    busy : In(1)
        A layer is running: `total` counts.
    phase : In(Phase)
        The phase the counter of that name counts; `SHARED` counts in `experts` too.
    clear : In(1)
        Zero every counter (it wins over counting).
    counters : Out(phase_counter_layout())
        The counters.
    """

    def __init__(self) -> None:
        super().__init__(
            {
                "busy": In(1),
                "phase": In(Phase),
                "clear": In(1),
                "counters": Out(phase_counter_layout()),
            }
        )

    def elaborate(self, platform):
        m = Module()
        pc = self.counters
        with m.If(self.clear):
            m.d.sync += pc.eq(0)
        with m.Elif(self.busy):
            m.d.sync += pc.total.eq(pc.total + 1)
            for phase in Phase:
                if phase is not Phase.NONE:
                    name = phase.name.lower()
                    with m.If(self.phase == phase):
                        m.d.sync += pc[name].eq(pc[name] + 1)
            with m.If(self.phase == Phase.SHARED):
                m.d.sync += pc.experts.eq(pc.experts + 1)
        return m
