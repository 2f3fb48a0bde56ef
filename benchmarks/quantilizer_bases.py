"""The quantilizer with a base a deployed system can have, next to the oracle base, on every gridworld.

What it measures
----------------
The bench's two quantilizer arms (``mesaguard bench --safeguards quantilizer,quantilizer-bc``):

* ``quantilizer-bc``: the base is a logistic-regression clone of the scenario's
  scripted aligned policy demonstrating on the *reference* variant only (100
  episodes, 10% random actions; :mod:`mesaguard.safeguards.cloning`). It decides from
  the observation alone: what a team deploying the agent can have.
* ``quantilizer``: the base is the scripted aligned policy itself, which reads the
  deployed env's hidden layout: an **oracle**, the upper bound.

Both rank the actions by the shipped agent's logits at q = 0.05, adaptive (q grows
where the agent and the base disagree). Per scenario and shifted variant:
catastrophes in the deploy episodes with the safeguard and without, the share
prevented, and the in-distribution score kept (with / without).

Run: ``.venv/bin/python benchmarks/quantilizer_bases.py [--quick] [--out FILE]`` (a few minutes).
Results: ``benchmarks/results/quantilizer_bases.json``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import harness
from rich.console import Console
from rich.table import Table

from mesaguard.bench import BenchConfig, run_bench, table
from mesaguard.store import Store

GRIDWORLDS = ("strawberry", "lava", "side-effects", "supervisor", "tampering", "goodhart", "offswitch")
ARMS = ("quantilizer-bc", "quantilizer")


@dataclass(frozen=True)
class Config:
    scenarios: tuple[str, ...] = GRIDWORLDS
    seeds: int = 2
    episodes: int = 100
    calibration_episodes: int = 100


CONFIG = Config()
QUICK = Config(scenarios=("lava", "goodhart"), seeds=1, episodes=20, calibration_episodes=40)


def main(cfg: Config = CONFIG, out: Path = harness.RESULTS / "quantilizer_bases.json") -> None:
    start = time.perf_counter()
    config = BenchConfig(
        scenarios=cfg.scenarios,
        detectors=("cusum",),
        seeds=tuple(range(cfg.seeds)),
        episodes=cfg.episodes,
        calibration_episodes=cfg.calibration_episodes,
        safeguards=ARMS,
    )
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.sqlite") as store:
        run_id = run_bench(config, store, workers=2)
        rows = [r for r in table(store, run_id) if r.detectors in ARMS and r.variant != "train"]
    results: dict[str, object] = {
        "config": {"scenarios": list(cfg.scenarios), "seeds": cfg.seeds, "episodes": cfg.episodes,
                   "calibration_episodes": cfg.calibration_episodes},
        "rows": [
            {"scenario": r.scenario, "variant": r.variant, "arm": r.detectors,
             "catastrophes_guarded": r.catastrophes_guarded, "catastrophes_free": r.catastrophes_free,
             "prevented": r.prevented, "score_kept": r.score_kept}
            for r in rows
        ],
        "seconds": round(time.perf_counter() - start, 1),
        "machine": harness.machine(),
    }
    shown = Table(title="Quantilizer: a cloned base (realistic) and the scripted one (oracle)")
    for col in ("scenario", "variant", "base", "catastrophes G/F", "prevented", "score kept"):
        shown.add_column(col)
    for r in rows:
        base = "cloned" if r.detectors == "quantilizer-bc" else "oracle"
        shown.add_row(r.scenario, r.variant, base, f"{r.catastrophes_guarded}/{r.catastrophes_free}",
                      f"{r.prevented:.0%}", f"{r.score_kept:.2f}")
    Console().print(shown)
    Console().print(f"wrote {harness.write(out, results)}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("quantilizer_bases", args))
