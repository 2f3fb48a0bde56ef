"""Per-episode detectors against the deployment monitor on the cheetah's deploy variants.

What it measures
----------------
The shipped PPO agent of the ``cheetah`` scenario (MuJoCo HalfCheetah). Calibration:
400 episodes of ``train`` (detectors fitted on 200, thresholds and the monitor's
reference on the other 200), alpha = 0.05. Pools of held-out episodes of every
variant (300 each, fresh seeds). For each detector alone and all four jointly:

* **per episode**: the share of pool episodes whose guard raises an alarm (false
  alarms on ``train``, detection on ``deploy-cost``, where the control cost weighs
  1.1x and nothing else changes, and on ``deploy-dynamics``, a 25% heavier torso);
* **deployment monitor**, anytime and fixed-horizon (h = 500): over 200 simulated
  deployments of episodes drawn from a variant's pool, the mean number of episodes
  (counting the detecting one) until the deployment alarm, and the share of ``train``
  deployments of 500 episodes with any alarm (its realized false-alarm probability;
  these deployments are drawn from 300 held-out episodes against a reference of 200
  real ones, so the estimate, not the guarantee, depends on that pool).

The monitor's evidence is computed offline with the same functions the bench uses
(:func:`~mesaguard.monitor.episode_statistics`, :func:`~mesaguard.monitor.first_deployment_alarm`),
held equal to the online monitor by ``tests/test_monitor.py``.

Run: ``.venv/bin/python benchmarks/deployment_cheetah.py [--quick] [--out FILE]`` (about 5 minutes on one
core). Results: printed and written to ``benchmarks/results/deployment_cheetah.json``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import harness
import numpy as np
from rich.console import Console
from rich.table import Table

from mesaguard.calibration import Calibration
from mesaguard.experiment import CALIBRATION_SEED, EVALUATION_SEED, OBJECTIVE, plain_env, policy_factory
from mesaguard.metrics import rate
from mesaguard.monitor import episode_statistics, first_deployment_alarm, horizon_threshold
from mesaguard.rollout import rollout

SCENARIO = "cheetah"
VARIANTS = ("train", "deploy-cost", "deploy-dynamics")
DETECTORS = ("threshold", "envelope", "cusum", "meanshift")
ALPHA = 0.05


@dataclass(frozen=True)
class Config:
    calibration: int = 400  # train episodes to calibrate on
    pool: int = 300  # episodes per variant to draw deployments from
    deployments: int = 200
    cap: int = 3_000  # anytime deployments longer than this count as undetected
    horizon: int = 500


CONFIG = Config()
QUICK = Config(calibration=40, pool=8, deployments=4, cap=200, horizon=50)


def episodes(variant: str, seeds: range) -> list[np.ndarray]:
    make_env = functools.partial(plain_env, SCENARIO, variant)
    return [e.increments for e in rollout(make_env, policy_factory(SCENARIO, "agent"), seeds, objective=OBJECTIVE)]


def deployment(reference, stats, log_c, limit, rng, seed) -> int | None:
    """Episodes until the alarm (counting the detecting one) in a deployment drawn from ``stats``, or None."""
    picks = rng.integers(0, len(stats), limit)
    n = min(limit, 250)
    while True:
        hit = first_deployment_alarm(reference, [stats[i] for i in picks[:n]], log_c, seed=seed)
        if hit is not None or n == limit:
            return None if hit is None else hit[0]
        n = min(limit, 4 * n)


def main(cfg: Config = CONFIG, out: Path = harness.RESULTS / "deployment_cheetah.json") -> None:
    console = Console()
    started = time.perf_counter()
    cal_runs = episodes("train", range(CALIBRATION_SEED, CALIBRATION_SEED + cfg.calibration))
    pools = {v: episodes(v, range(EVALUATION_SEED, EVALUATION_SEED + cfg.pool)) for v in VARIANTS}
    console.print(f"rolled out {cfg.calibration + cfg.pool * len(VARIANTS)} episodes in "
                  f"{time.perf_counter() - started:.0f} s")
    cal = Calibration.fit(cal_runs, alpha=ALPHA, detectors=list(DETECTORS), scenario=SCENARIO)
    scores = {v: np.array([e.sum() for e in pool]) for v, pool in pools.items()}
    sd = scores["train"].std(ddof=1)
    results: dict = {
        "config": asdict(cfg),
        "scores": {v: {"mean": float(s.mean()), "sd": float(s.std(ddof=1)), "shift_sd": float((s.mean() -
                   scores["train"].mean()) / sd)} for v, s in scores.items()},
        "configs": {},
    }
    log_c = {"anytime": math.log(1 / ALPHA), "fixed": horizon_threshold(cfg.horizon, ALPHA)}
    rng = np.random.default_rng(0)
    for names in [[d] for d in DETECTORS] + [list(DETECTORS)]:
        key = "+".join(names)
        threshold = cal.thresholds_for(names)
        tau = min((threshold[n] - cal.detectors[n].location) / cal.detectors[n].scale for n in names)
        reference = cal.joint_maxima(names)
        row: dict = {}
        for variant, pool in pools.items():
            stats = episode_statistics(cal, names, pool)
            per_episode = sum(float(np.max(x)) > tau for x in stats)
            entry = {"per_episode": asdict(rate(per_episode, len(stats)))}
            anytime_limit = cfg.cap if variant != "train" else cfg.horizon * 2
            for mode, limit in (("anytime", anytime_limit), ("fixed", cfg.horizon)):
                found = [deployment(reference, stats, log_c[mode], limit, rng, seed=d) for d in range(cfg.deployments)]
                hits = [f for f in found if f is not None]
                entry[mode] = {
                    "alarmed": asdict(rate(len(hits), cfg.deployments)),
                    "mean_episodes": float(np.mean(hits)) if hits else None,
                    "median_episodes": float(np.median(hits)) if hits else None,
                    "limit": limit,
                }
            row[variant] = entry
        results["configs"][key] = row
        console.print(f"{key}: done ({time.perf_counter() - started:.0f} s)")
    results["machine"] = harness.machine()
    results["seconds"] = round(time.perf_counter() - started, 1)

    table = Table(title=f"cheetah, alpha = {ALPHA}: per-episode alarm rate | monitor: deployments alarmed, "
                  "mean episodes to the alarm")
    for col in ("detectors", "variant", "per episode", "anytime", f"fixed h={cfg.horizon}"):
        table.add_column(col)
    for key, row in results["configs"].items():
        for variant, e in row.items():

            def cell(m: dict) -> str:
                r = m["alarmed"]
                mean = "-" if m["mean_episodes"] is None else f"{m['mean_episodes']:.0f}"
                return f"{r['rate']:.3f} in {m['limit']}; {mean}"

            table.add_row(key, variant, f"{e['per_episode']['rate']:.3f}", cell(e["anytime"]), cell(e["fixed"]))
    console.print(table)
    console.print(f"scores: {results['scores']}")
    console.print(f"wrote {harness.write(out, results)} in {results['seconds']} s")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("deployment_cheetah", args))
