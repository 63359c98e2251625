"""`bench/plots.py` turns a results JSON into the two PNGs docs/benchmarks.md shows."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "plots.py"


def load_plots():
    spec = importlib.util.spec_from_file_location("bench_plots", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plots_written_from_results(tmp_path: Path) -> None:
    cycles = {"total": 130, "route": 10, "dispatch": 5, "experts": 100, "combine": 15}
    results = {
        "gemm": {
            "config": {"rows": 8, "cols": 8},
            "bound": 0.95,
            "points": [
                {"m": m, "k": 64, "n": 64, "mode": "REQUANT", "utilisation": u}
                for m, u in ((1, 0.1), (8, 0.6), (64, 0.99))
            ],
        },
        "layer": {
            "bounds": {"cycles_vs_roofline_max": 1.25},
            "points": [
                {"name": "decode", "tokens": 4, "cycles": cycles, "roofline_bound_cycles": 120.0}
            ],
        },
    }
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "img"
    assert load_plots().main(["--results", str(path), "--out-dir", str(out)]) == 0
    for name in ("gemm_utilisation.png", "layer_vs_roofline.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_results_is_a_clear_error(tmp_path: Path, capsys) -> None:
    assert load_plots().main(["--results", str(tmp_path / "none.json")]) == 2
    assert "run `make bench` first" in capsys.readouterr().err
