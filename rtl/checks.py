"""Simulation-only invariants: `Assert`s kept in the RTL, generated only when asked for.

Why a switch: an invariant written next to the logic it guards (a credit
count, a FIFO bound, the stream rule, an environment assumption a formal
proof made) catches a violation in every simulation of every layer, not only
in the unit test that thought of it. Synthesis and the exported Verilog must
not carry them, so they are off by default and switched on for an
elaboration by `simulation_checks()`: the test suite's Amaranth simulations
run inside it, and Verilator builds made with `checks=True` (`sim.build`,
`sim.fast`) elaborate inside it and compile with `--assert`, so a broken
invariant stops the simulation with its message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from amaranth import Module, ResetSignal, Signal, Value
from amaranth.hdl import Assert
from amaranth.lib import stream, wiring

__all__ = [
    "checks_enabled",
    "invariant",
    "sent_stream_invariants",
    "simulation_checks",
    "stream_invariant",
    "stream_rule",
]

_ENABLED: ContextVar[bool] = ContextVar("moe_accel_simulation_checks", default=False)


@contextmanager
def simulation_checks(enabled: bool = True) -> Iterator[None]:
    """Elaborations inside this block generate the invariants (or not, with `enabled=False`)."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def checks_enabled() -> bool:
    """Whether an elaboration now would generate the invariants."""
    return _ENABLED.get()


def invariant(m: Module, condition: Value, message: str) -> None:
    """`condition` holds at every rising edge of `sync` (checked only in simulation builds).

    Checked at the edge, as the flip-flops see it (a testbench that changes an
    input just after an edge trips nothing), and not at an edge that resets
    the unit: what was in flight is being discarded.
    """
    if _ENABLED.get():
        with m.If(~ResetSignal()):
            m.d.sync += Assert(condition, message)


def stream_rule(
    m: Module, port: object, name: str, statement: type = Assert, domain: str = "comb"
) -> None:
    """`statement` (`Assert` or `Assume`) of the stream rule on `port`, always generated.

    Once valid without ready, valid and the payload hold until ready. A reset
    clears the record of the pending beat with everything else, so a beat
    dropped by a reset is no violation. `port` is anything with `valid`,
    `ready` and `payload` (a `lib.stream` interface or an AXI channel's).
    `domain` "sync" checks at the clock edge instead of every settled cycle,
    and not at an edge that resets the unit.
    """
    held = Signal(name=f"{name}_held")
    payload = Value.cast(port.payload)
    held_payload = Signal(len(payload), name=f"{name}_held_payload")
    m.d.sync += [held.eq(port.valid & ~port.ready), held_payload.eq(payload)]
    checked = held if domain == "comb" else held & ~ResetSignal()
    with m.If(checked):
        m.d[domain] += [
            statement(port.valid, f"{name}: valid fell before ready"),
            statement(payload == held_payload, f"{name}: payload changed before ready"),
        ]


def stream_invariant(m: Module, port: stream.Interface, name: str) -> None:
    """The stream rule on a stream this unit sends (checked only in simulation builds)."""
    if _ENABLED.get():
        stream_rule(m, port, name, domain="sync")


def sent_stream_invariants(m: Module, component: wiring.Component) -> None:
    """`stream_invariant` on every `lib.stream` the component sends (its `Out` streams)."""
    if not _ENABLED.get():
        return
    for name, member in component.signature.members.items():
        if (
            member.is_signature
            and member.flow is wiring.Out
            and isinstance(member.signature, stream.Signature)
        ):
            stream_invariant(m, getattr(component, name), f"{type(component).__name__}.{name}")
