"""AXI4 protocol checker for a master port under cocotb: the fast harness's rules, in Python.

Why: a memory model that tolerates a protocol error hides it (cocotbext-axi's
`AxiRam` accepts a burst across 4 KiB, or a W beat before its AW). This
monitor watches the master's side of one `m_axi` port every cycle and
records each violation with its cycle, by the rules the C++ harness checks
(`sim/harness/harness.cpp`, "Protocol checker"), so the cocotb benches and
the fast backend hold the RTL to the same protocol:

- AR, AW and W keep `valid` and their payload until `ready`;
- bursts are INCR, full-width beats, 1..`max_burst` beats, inside one 4 KiB page;
- at most `max_outstanding` read and write bursts are in flight;
- a W beat only for an accepted AW, WLAST on exactly the burst's last beat.

A reset (`rst` high) clears the checker's state, as it does the master's.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import cocotb
from cocotb.handle import SimHandleBase
from cocotb.triggers import ReadOnly, RisingEdge

BOUNDARY = 4096
INCR = 1


SIGNALS = (
    *(
        f"{ch}{n}"
        for ch in ("ar", "aw")
        for n in ("valid", "ready", "addr", "len", "size", "burst")
    ),
    *("wvalid", "wready", "wdata", "wstrb", "wlast"),
    *("rvalid", "rready", "rlast", "bvalid", "bready"),
)
"""The master-port signals (without the `<prefix>__`) one cycle's sample holds."""


@dataclass
class AxiRules:
    """The rules, fed one sample a cycle: plain Python, so a test can feed it a bad master."""

    beat_bytes: int
    max_burst: int
    max_outstanding: int
    violations: list[str] = field(default_factory=list)
    cycle: int = 0  # samples seen out of reset
    _held: dict[str, tuple[int, ...] | None] = field(default_factory=dict)
    _reads: int = 0
    _writes: int = 0
    _w_bursts: deque[int] = field(default_factory=deque)  # beats of AWs whose W is not done
    _w_beat: int = 0

    def reset(self) -> None:
        """Forget everything in flight (the master was reset)."""
        self._held.clear()
        self._reads = self._writes = self._w_beat = 0
        self._w_bursts.clear()

    def observe(self, s: Mapping[str, int]) -> None:
        """Check one cycle's sample `s` (a value for every name in `SIGNALS`)."""
        self.cycle += 1
        for ch in ("ar", "aw"):
            address = tuple(s[f"{ch}{n}"] for n in ("addr", "len", "size", "burst"))
            self._stable(ch, s[f"{ch}valid"], s[f"{ch}ready"], address)
            if s[f"{ch}valid"] and s[f"{ch}ready"]:
                self._check_burst(ch, *address)
                if ch == "ar":
                    self._reads += 1
                else:
                    self._writes += 1
                    self._w_bursts.append(address[1] + 1)
        if max(self._reads, self._writes) > self.max_outstanding:
            self._violate(
                f"{self._reads} read / {self._writes} write bursts outstanding "
                f"> {self.max_outstanding}"
            )
        w_payload = (s["wdata"], s["wstrb"], s["wlast"])
        self._stable("w", s["wvalid"], s["wready"], w_payload)
        if s["wvalid"] and s["wready"]:
            self._w_beat_taken(s["wlast"])
        if s["rvalid"] and s["rready"] and s["rlast"]:
            self._reads -= 1
        if s["bvalid"] and s["bready"]:
            self._writes -= 1

    def _violate(self, text: str) -> None:
        self.violations.append(f"cycle {self.cycle}: {text}")

    def _stable(self, ch: str, valid: int, ready: int, payload: tuple[int, ...]) -> None:
        held = self._held.get(ch)
        if held is not None and (not valid or payload != held):
            self._violate(f"{ch.upper()} valid or payload changed before {ch.upper()}READY")
        self._held[ch] = payload if valid and not ready else None

    def _check_burst(self, ch: str, addr: int, length: int, size: int, burst: int) -> None:
        beats = length + 1
        if burst != INCR:
            self._violate(f"{ch} burst type {burst} at 0x{addr:x} (only INCR)")
        if 1 << size != self.beat_bytes:
            self._violate(f"{ch} size code {size} at 0x{addr:x} (the bus is {self.beat_bytes} B)")
        if beats > self.max_burst:
            self._violate(f"{ch} burst of {beats} beats at 0x{addr:x} > {self.max_burst}")
        end = addr + beats * self.beat_bytes - 1
        if addr // BOUNDARY != end // BOUNDARY:
            self._violate(f"{ch} burst 0x{addr:x}..0x{end:x} crosses a 4 KiB boundary")

    def _w_beat_taken(self, wlast: int) -> None:
        if not self._w_bursts:
            self._violate("W beat without an accepted AW")
            return
        self._w_beat += 1
        last = self._w_beat == self._w_bursts[0]
        if wlast != last:
            state = "set" if wlast else "missing"
            self._violate(f"WLAST {state} on beat {self._w_beat} of {self._w_bursts[0]}")
        if last:
            self._w_bursts.popleft()
            self._w_beat = 0


class AxiProtocolChecker:
    """Samples `<prefix>__*` of `dut` at every rising `clk` into `AxiRules`."""

    def __init__(
        self,
        dut: SimHandleBase,
        *,
        beat_bytes: int,
        max_burst: int,
        max_outstanding: int,
        prefix: str = "m_axi",
    ) -> None:
        self.dut = dut
        self.prefix = prefix
        self.rules = AxiRules(beat_bytes, max_burst, max_outstanding)

    @property
    def violations(self) -> list[str]:
        return self.rules.violations

    def start(self) -> AxiProtocolChecker:
        """Run the monitor in the background (call once, after the clock starts)."""
        cocotb.start_soon(self._watch())
        return self

    def check(self) -> None:
        """Raise `AssertionError` listing the first violations, if any."""
        if self.violations:
            shown = "\n  ".join(self.violations[:10])
            raise AssertionError(f"{len(self.violations)} AXI4 protocol violations:\n  {shown}")

    async def _watch(self) -> None:
        handles = {name: getattr(self.dut, f"{self.prefix}__{name}") for name in SIGNALS}
        while True:
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            if int(self.dut.rst.value):
                self.rules.reset()
                continue
            self.rules.observe({name: int(h.value) for name, h in handles.items()})
