"""Read the throughput/latency tables of `docs/units.md`, so the RTL tests can check them.

Each table row starts with the unit's name (`| gate |`, `| dispatch |`,
`| combine |`); the header row above it names the columns. The unit tests
rebuild every documented example, simulate it without backpressure and
compare the measured cycle count with the documented one.
"""

from __future__ import annotations

from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "units.md"


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def documented_rows(unit: str) -> list[dict[str, str]]:
    """Rows of the `unit` table as {column header: cell text}; raises if there are none."""
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if cells[0] == "unit":
            header = cells
        elif header is not None and cells[0] == unit:
            rows.append(dict(zip(header, cells, strict=True)))
    if not rows:
        raise AssertionError(f"{DOC} documents no rows for unit {unit!r}")
    return rows
