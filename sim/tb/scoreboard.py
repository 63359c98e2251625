"""In-order scoreboard: expected items from the golden model vs items seen at a DUT output."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np

__all__ = ["Scoreboard"]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray | list | tuple) or isinstance(b, np.ndarray | list | tuple):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


class Scoreboard:
    """Compares observed items with expected ones, in order, bit for bit.

    Mismatches are collected rather than raised at once, so `check()` can
    report the first few with their index and both values; `check()` also
    fails when expected items never arrived or unexpected extra items did.
    """

    def __init__(self, name: str, *, max_report: int = 5) -> None:
        self.name = name
        self.max_report = max_report
        self.expected: deque[Any] = deque()
        self.matched = 0
        self.observed = 0
        self.mismatches: list[str] = []
        self.unexpected: list[Any] = []

    def expect(self, item: Any) -> None:
        self.expected.append(item)

    def expect_many(self, items: Any) -> None:
        for item in items:
            self.expect(item)

    def observe(self, item: Any) -> None:
        """Compare `item` with the oldest outstanding expectation."""
        index = self.observed
        self.observed += 1
        if not self.expected:
            self.unexpected.append(item)
            return
        want = self.expected.popleft()
        if _same(want, item):
            self.matched += 1
        else:
            self.mismatches.append(f"item {index}: expected {want!r}, got {item!r}")

    def check(self) -> None:
        """Raise AssertionError unless every expected item arrived and matched."""
        problems = []
        if self.mismatches:
            shown = "\n  ".join(self.mismatches[: self.max_report])
            problems.append(f"{len(self.mismatches)} mismatch(es):\n  {shown}")
        if self.expected:
            problems.append(f"{len(self.expected)} expected item(s) never arrived")
        if self.unexpected:
            problems.append(f"{len(self.unexpected)} unexpected extra item(s)")
        if problems:
            raise AssertionError(f"scoreboard {self.name}: " + "; ".join(problems))
        if self.matched == 0:
            raise AssertionError(f"scoreboard {self.name}: nothing was checked")
