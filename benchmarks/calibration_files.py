"""Calibration file size and load time at T = 1,000 steps: all arrays inline (schema 1) against the sidecar (schema 2).

What it measures
----------------
A calibration of all four detectors on synthetic AR(1) episodes of 1,000 steps
(60 episodes, alpha = 0.1), so that ``meanshift``'s Cholesky factor is 1,000 x 1,000.
Written two ways: every array inline in the JSON (:meth:`Calibration.to_dict`, the
only form before schema 2), and by :meth:`Calibration.save` (large parameter arrays
in a hashed safetensors sidecar; a triangular factor stored as its triangle).
For each: bytes on disk (JSON, sidecar, total) and the time to load and verify it
(:meth:`Calibration.from_dict` on the parsed JSON, or :meth:`Calibration.load`),
header, hashes and every value checked, detectors built once. Median of 7 loads.

Target (issue 12, item 6): under 2 MB and under 0.1 s at T = 1,000, without pickle.

Run: ``.venv/bin/python benchmarks/calibration_files.py`` (about a minute, one core).
Results: printed and written to ``benchmarks/results/calibration_files.json``.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mesaguard.calibration import Calibration
from mesaguard.files import write_atomic

RESULTS = Path(__file__).parent / "results" / "calibration_files.json"
T, EPISODES, ALPHA, REPEATS = 1000, 60, 0.1, 7


def episodes(rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    for _ in range(EPISODES):
        noise = rng.normal(size=T)
        x, e = 0.0, np.empty(T)
        for t in range(T):
            x = 0.5 * x + math.sqrt(0.75) * noise[t]
            e[t] = 1.0 + 0.5 * x
        out.append(e)
    return out


def timed(load) -> tuple[float, Calibration]:
    times, cal = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        cal = load()
        for d in cal.detectors.values():
            d.build()
        times.append(time.perf_counter() - start)
    return statistics.median(times), cal


def main() -> None:
    started = time.perf_counter()
    cal = Calibration.fit(episodes(np.random.default_rng(0)), alpha=ALPHA, scenario="ar1-1000")
    fit_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        inline = Path(scratch) / "inline.json"
        inline.write_text(json.dumps(cal.to_dict(), indent=1, allow_nan=False))
        inline_s, a = timed(lambda: Calibration.from_dict(json.loads(inline.read_text()), str(inline)))
        saved = cal.save(Path(scratch) / "cal.json")
        sidecar = saved.with_suffix(".safetensors")
        sidecar_s, b = timed(lambda: Calibration.load(saved))
        assert a == cal and b == cal, "a calibration read back differs from the one written"
        rows = {
            "inline (schema 1 layout)": {"json_bytes": inline.stat().st_size, "sidecar_bytes": 0, "load_s": inline_s},
            "sidecar (schema 2)": {
                "json_bytes": saved.stat().st_size,
                "sidecar_bytes": sidecar.stat().st_size,
                "load_s": sidecar_s,
            },
        }
    for name, r in rows.items():
        r["total_mb"] = (r["json_bytes"] + r["sidecar_bytes"]) / 1e6
        print(f"{name:26s} {r['total_mb']:7.2f} MB  (JSON {r['json_bytes'] / 1e6:.2f}, sidecar "
              f"{r['sidecar_bytes'] / 1e6:.2f})  load {r['load_s'] * 1e3:7.1f} ms")
    chol = T * (T + 1) // 2 * 8
    print(f"meanshift's factor alone, its triangle in float64: {chol / 1e6:.2f} MB")
    results = {
        "benchmark": "calibration_files",
        "config": {
            "T": T, "episodes": EPISODES, "alpha": ALPHA, "detectors": sorted(cal.detectors), "repeats": REPEATS
        },
        "fit_seconds": round(fit_seconds, 1),
        "rows": rows,
        "meanshift_triangle_bytes": chol,
        "target": {"total_mb": 2.0, "load_s": 0.1},
        "machine": {
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "numpy": np.__version__,
        },
    }
    write_atomic(RESULTS, json.dumps(results, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
