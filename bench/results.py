"""Where every benchmark's results go: one section of `results.json`, a table in `results.md`.

Why one helper: `make bench` runs several scripts into one `bench/results.json`
(a section each) and one `bench/results.md` (the first script starts it, the
others append), and each exits 1 when it missed a documented bound.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["publish"]


def publish(
    out_dir: Path,
    section: str,
    result: dict[str, Any],
    table: str,
    failures: list[str],
    *,
    first: bool = False,
) -> int:
    """Store `result` as `section` of `results.json`, the table in `results.md` (started anew
    when `first`), print the table and each failure; returns the exit status (1 on a failure)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[section] = result
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    with (out_dir / "results.md").open("w" if first else "a") as md:
        md.write(table if first else "\n" + table)
    print(table)
    for failure in failures:
        print(f"FAIL: {failure}")
    return 1 if failures else 0
