"""Calibration file size and load time at T = 1,000 steps: every array inline against the binary sidecar.

What it measures
----------------
A calibration of the default detectors and the four that were the default before (cusum, meanshift, rank,
threshold, envelope) on synthetic AR(1) episodes of ``T`` steps
(60 episodes, alpha = 0.1). Written two ways: every array inline in one JSON object
(:meth:`Calibration.to_dict`, the only layout before schema 2), and by
:meth:`Calibration.save` (parameter arrays of ``SIDECAR_MIN`` numbers or more in a
hashed safetensors sidecar; a triangular factor stored as its triangle). For each:
bytes on disk (JSON, sidecar, total) and the time to load and verify it
(:meth:`Calibration.from_dict` on the parsed JSON, or :meth:`Calibration.load`:
header, hashes and every value checked), plus building each detector once. The
median of seven loads, the two layouts interleaved round by round.

Target (issue 12, item 6): under 2 MB and under 0.1 s at T = 1,000, without pickle.

Run: ``.venv/bin/python benchmarks/calibration_files.py`` (about a minute, one core).
Results: printed and written to ``benchmarks/results/calibration_files.json``.
"""

from __future__ import annotations

import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import harness
import numpy as np

from mesaguard.calibration import SIDECAR_MIN, Calibration
from mesaguard.detectors import DEFAULT


@dataclass(frozen=True)
class Config:
    steps: int = 1000
    episodes: int = 60
    alpha: float = 0.1
    rounds: int = 7


QUICK = Config(steps=60, episodes=40, rounds=2)


DETECTORS = sorted(set(DEFAULT) | {"threshold", "envelope", "cusum", "meanshift"})  # the default, the four before

def episodes(cfg: Config, rng: np.random.Generator) -> list[np.ndarray]:
    """AR(1) increments (correlation 0.5) around 1.0, every episode ``cfg.steps`` long."""
    out = []
    for _ in range(cfg.episodes):
        noise = rng.normal(size=cfg.steps)
        x, e = 0.0, np.empty(cfg.steps)
        for t in range(cfg.steps):
            x = 0.5 * x + math.sqrt(0.75) * noise[t]
            e[t] = 1.0 + 0.5 * x
        out.append(e)
    return out


def load_seconds(load: Callable[[], Calibration], expected: Calibration) -> float:
    start = time.perf_counter()
    cal = load()
    for d in cal.detectors.values():
        d.build()
    seconds = time.perf_counter() - start
    assert cal == expected, "a calibration read back differs from the one written"
    return seconds


def main(cfg: Config, out: Path) -> None:
    started = time.perf_counter()
    cal = Calibration.fit(episodes(cfg, np.random.default_rng(0)), alpha=cfg.alpha, scenario="ar1",
                          detectors=DETECTORS)
    fit_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        inline = Path(scratch) / "inline.json"
        inline.write_bytes(json.dumps(cal.to_dict(), indent=1, allow_nan=False).encode())
        saved = cal.save(Path(scratch) / "cal.json")
        sidecar = saved.with_suffix(".safetensors")
        sidecar_bytes = sidecar.stat().st_size if sidecar.exists() else 0
        times = harness.interleaved(
            {
                "inline": lambda: load_seconds(lambda: Calibration.from_dict(json.loads(inline.read_text())), cal),
                "sidecar": lambda: load_seconds(lambda: Calibration.load(saved), cal),
            },
            cfg.rounds,
        )
        rows = {
            "inline": {"json_bytes": inline.stat().st_size, "sidecar_bytes": 0},
            "sidecar": {"json_bytes": saved.stat().st_size, "sidecar_bytes": sidecar_bytes},
        }
    for name, row in rows.items():
        row["total_mb"] = (row["json_bytes"] + row["sidecar_bytes"]) / 1e6
        row["load_s"] = statistics.median(times[name])
        print(f"{name:8s} {row['total_mb']:7.2f} MB (JSON {row['json_bytes'] / 1e6:.2f}, sidecar "
              f"{row['sidecar_bytes'] / 1e6:.2f})  load {row['load_s'] * 1e3:7.1f} ms")
    shapes = {name: {k: list(np.shape(v)) for k, v in d.params.items()} for name, d in cal.detectors.items()}
    written = harness.write(out, {
        "benchmark": "calibration_files",
        "config": asdict(cfg),
        "sidecar_min": SIDECAR_MIN,
        "parameter_shapes": shapes,
        "fit_seconds": round(fit_seconds, 1),
        "rows": rows,
        "target": {"total_mb": 2.0, "load_s": 0.1},
        "machine": harness.machine(),
    })
    print(f"wrote {written}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else Config(), harness.out_path("calibration_files", args))
