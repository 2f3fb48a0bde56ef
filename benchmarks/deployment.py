"""The deployment monitor: realized deployment false-alarm probability and episodes to detection.

What it measures
----------------
On Gymnasium's ``Pendulum-v1`` driven by the hand-written swing-up controller
(``false_alarms.py``; reward is the base objective, every increment <= 0):

1. **False alarms over long deployments.** The probability that a deployment of
   1,000 in-distribution episodes raises *any* deployment alarm, over 1,000
   simulated deployments, in anytime mode and in fixed-horizon mode (h = 1,000),
   at alpha in {0.05, 0.1}, with its Clopper-Pearson 95% interval.
2. **Episodes to detection** when every deployment episode's return drops by
   ``delta`` standard deviations of the in-distribution return (each increment
   lowered by ``delta * sd / T``): 0.1, 0.2 and 0.5 sd, at alpha = 0.05, per
   detector. The mean over 200 simulated deployments (capped at 20,000 episodes),
   the median, and the step inside the detecting episode (mid-episode evidence),
   against

   * the **fixed-sample oracle** that knows the null law and the shift: the number
     of episodes a one-sided z-test on returns at level alpha needs for power 0.8
     (``((z_{1-alpha} + z_{0.8}) / delta)^2``) and for power 0.5;
   * a **per-episode test with a Bonferroni-style correction**, the best a user
     can do without adding evidence up: episode ``j``'s return z-score (known mean
     and sd) against level ``alpha / (j (j + 1))`` (these sum to alpha over an
     unbounded deployment), and ``alpha / h`` for the fixed horizon.

How (exact, and fast)
---------------------
Episodes are resampled from a pool of held-out rollouts. The reference bag *and*
the deployment episodes are drawn (with replacement) from the same pool, so under
the null they are exactly exchangeable and the guarantee applies as stated. Each
pool episode's statistic is computed once with the detector's streaming
``update`` (``statistic_traces``); the monitor's evidence at the end of each
episode depends only on those per-episode maxima, so deployments are simulated
offline with :func:`~mesaguard.monitor.sequential_pvalues` and
:func:`~mesaguard.monitor.log_wealth_path`, the twins of what
:class:`~mesaguard.monitor.DeploymentMonitor` computes online
(``tests/test_monitor.py`` holds them equal). Any alarm inside an episode implies
one at its end, so "any alarm in the deployment" is exact; the step of the alarm
inside the detecting episode is found by replaying its running maximum.
A check also runs 30 episodes through ``GuardedEnv`` with a monitor and compares
its evidence with the offline twin.

Run: ``.venv/bin/python benchmarks/deployment.py [--quick] [--out FILE]`` (about 5 minutes on one core).
Results: printed and written to ``benchmarks/results/deployment.json``.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
import harness  # noqa: E402
from false_alarms import rollouts, swing_up  # noqa: E402

from mesaguard.calibration import Calibration, statistic_traces  # noqa: E402
from mesaguard.guard import GuardedEnv  # noqa: E402
from mesaguard.metrics import rate  # noqa: E402
from mesaguard.monitor import (  # noqa: E402
    DeploymentMonitor,
    first_deployment_alarm,
    horizon_threshold,
    log_wealth_path,
    sequential_pvalues,
)
from mesaguard.protocols import Alert  # noqa: E402


@dataclass(frozen=True)
class Config:
    fit_seeds: tuple[int, int] = (0, 400)  # calibration rollouts: detectors fitted on the first half
    pool_seeds: tuple[int, int] = (30_000, 32_000)  # held-out rollouts to resample from
    reference: int = 1_000  # reference episodes per simulated deployment (a calibration's held-out half)
    null_deployments: int = 1_000
    null_length: int = 1_000
    alphas: tuple[float, ...] = (0.05, 0.1)
    shifts: tuple[float, ...] = (0.1, 0.2, 0.5)
    shifted_deployments: int = 200
    cap: int = 20_000  # episodes before a shifted deployment is counted as undetected
    horizon: int = 1_000
    detectors: tuple[str, ...] = ("threshold", "cusum", "meanshift")
    gaussian_references: tuple[int, ...] = (1_000, 5_000)  # reference sizes for the Gaussian case
    check_episodes: int = 30


CONFIG = Config()
QUICK = Config(fit_seeds=(0, 60), pool_seeds=(30_000, 30_060), reference=50, null_deployments=20, null_length=50,
               shifted_deployments=5, cap=2_000, horizon=100, gaussian_references=(100,), check_episodes=3)


def maxima(traces: np.ndarray) -> np.ndarray:
    return traces.max(axis=1)


def any_alarm_rate(pool: np.ndarray, cfg: Config, alpha: float, rng: np.random.Generator) -> dict:
    """Share of null deployments with any alarm, anytime and fixed-horizon."""
    log_c = {"anytime": math.log(1 / alpha), "fixed": horizon_threshold(cfg.null_length, alpha)}
    counts = {"anytime": 0, "fixed": 0}
    for _ in range(cfg.null_deployments):
        reference = rng.choice(pool, cfg.reference)
        stream = rng.choice(pool, cfg.null_length)
        path = log_wealth_path(sequential_pvalues(reference, stream, rng.random(cfg.null_length)))
        top = path.max()
        for mode in counts:
            counts[mode] += bool(top >= log_c[mode])
    return {
        mode: {**asdict(rate(k, cfg.null_deployments)), "alarms": k, "deployments": cfg.null_deployments}
        for mode, k in counts.items()
    }


def detection(pool: np.ndarray, traces: np.ndarray, cfg: Config, alpha: float, rng: np.random.Generator) -> dict:
    """Episodes (and steps) to detection in deployments whose every episode is shifted.

    ``traces`` are the shifted episodes' per-step statistics; the stream is
    extended in blocks until the anytime monitor has fired (or the cap).
    """
    log_c = {"anytime": math.log(1 / alpha), "fixed": horizon_threshold(cfg.horizon, alpha)}
    found: dict[str, list[float]] = {"anytime": [], "fixed": []}
    steps_in = traces.shape[1]
    for d in range(cfg.shifted_deployments):
        reference = rng.choice(pool, cfg.reference)
        picks = rng.integers(0, len(traces), cfg.cap)
        for mode, limit in (("anytime", cfg.cap), ("fixed", cfg.horizon)):
            n, hit = min(limit, 1_000), None
            while hit is None:
                hit = first_deployment_alarm(reference, traces[picks[:n]], log_c[mode], seed=d)
                if hit is not None or n == limit:
                    break
                n = min(limit, 4 * n)
            if hit is not None:
                found[mode].append(hit[0] - 1 + hit[1] / steps_in)
    out = {}
    for mode, limit in (("anytime", cfg.cap), ("fixed", cfg.horizon)):
        e = np.array(found[mode])
        out[mode] = {
            "detected": int(e.size),
            "deployments": cfg.shifted_deployments,
            "mean_episodes": float(e.mean()) if e.size else None,
            "median_episodes": float(np.median(e)) if e.size else None,
            "mean_steps": float(e.mean() * steps_in) if e.size else None,
            "limit": limit,
        }
    return out


def gaussian(cfg: Config, alpha: float, rng: np.random.Generator) -> dict:
    """The clean case for the oracle: Gaussian episode statistics, a drop of delta sd in each.

    One-step episodes whose statistic is N(0, 1) in calibration and N(delta, 1) in
    deployment: the z-test the oracle runs is then the most powerful test there is.
    """
    out = {}
    log_c = {"anytime": math.log(1 / alpha), "fixed": horizon_threshold(cfg.horizon, alpha)}
    for size, delta in ((size, delta) for size in cfg.gaussian_references for delta in cfg.shifts):
        found: dict[str, list[int]] = {"anytime": [], "fixed": []}
        for d in range(cfg.shifted_deployments):
            reference = rng.standard_normal(size)
            stream = (delta + rng.standard_normal(cfg.cap))[:, None]
            for mode, limit in (("anytime", cfg.cap), ("fixed", cfg.horizon)):
                n, hit = min(limit, 1_000), None
                while True:
                    hit = first_deployment_alarm(reference, stream[:n], log_c[mode], seed=d)
                    if hit is not None or n == limit:
                        break
                    n = min(limit, 4 * n)
                if hit is not None:
                    found[mode].append(hit[0])
        out[f"{size}/{delta}"] = {
            mode: {
                "detected": len(e),
                "deployments": cfg.shifted_deployments,
                "mean_episodes": float(np.mean(e)) if e else None,
                "median_episodes": float(np.median(e)) if e else None,
            }
            for mode, e in found.items()
        }
    return out


def bonferroni(returns: np.ndarray, shifted_returns: np.ndarray, cfg: Config, alpha: float, rng) -> dict:
    """Per-episode z-test on the return at level alpha/(j(j+1)) (anytime) or alpha/h (fixed)."""
    mu, sd = returns.mean(), returns.std(ddof=1)
    out = {}
    for mode, limit in (("anytime", cfg.cap), ("fixed", cfg.horizon)):
        j = np.arange(1, limit + 1)
        level = alpha / (j * (j + 1)) if mode == "anytime" else np.full(limit, alpha / cfg.horizon)
        cut = -stats.norm.ppf(level)  # reject when the return's drop in sd units exceeds this
        hits = []
        for _ in range(cfg.shifted_deployments):
            z = (mu - rng.choice(shifted_returns, limit)) / sd
            where = np.flatnonzero(z >= cut)
            if where.size:
                hits.append(where[0] + 1)
        out[mode] = {
            "detected": len(hits),
            "deployments": cfg.shifted_deployments,
            "mean_episodes": float(np.mean(hits)) if hits else None,
            "limit": limit,
        }
    return out


def check_online(cal: Calibration, fresh: list[np.ndarray], cfg: Config) -> dict:
    """GuardedEnv with a monitor against the offline twin, on real episodes."""
    env = gym.make("Pendulum-v1")
    name = cfg.detectors[1]
    monitor = DeploymentMonitor(cal, detectors=[name], seed=7)
    guarded = GuardedEnv(env, cal, detectors=[name], protocol=Alert(lambda a: None), monitor=monitor)
    online = []
    for seed in range(cfg.pool_seeds[0], cfg.pool_seeds[0] + cfg.check_episodes):
        obs, _ = guarded.reset(seed=seed)
        done = False
        while not done:
            obs, _, terminated, truncated, info = guarded.step(swing_up(obs))
            done = terminated or truncated
        online.append(math.log(info["mesaguard"]["deployment"]["evidence"]))
    d = cal.detectors[name]
    x = (maxima(statistic_traces(d.build(len(fresh)), fresh[: cfg.check_episodes])) - d.location) / d.scale
    u = np.random.default_rng(7).random(cfg.check_episodes)
    offline = log_wealth_path(sequential_pvalues(cal.joint_maxima([name]), x, u))
    return {"episodes": cfg.check_episodes, "max_abs_difference": float(np.max(np.abs(np.array(online) - offline)))}


def null_rates(cal: Calibration, pool: list[np.ndarray], cfg: Config, rng: np.random.Generator) -> dict:
    """Per detector and alpha: the any-alarm rate over in-distribution deployments."""
    out = {}
    for name in cfg.detectors:
        det = cal.detectors[name].build(len(pool))
        pool_max = maxima(statistic_traces(det, pool))
        out[name] = {str(a): any_alarm_rate(pool_max, cfg, a, rng) for a in cfg.alphas}
    return out


def shift_rows(
    cal: Calibration, pool: list[np.ndarray], returns: np.ndarray, cfg: Config, alpha: float, rng: np.random.Generator
) -> dict:
    """Per return drop (in sds): the oracle's episodes, Bonferroni's and each detector's episodes to detection."""
    sd, length = returns.std(ddof=1), pool[0].size
    z_a = stats.norm.ppf(1 - alpha)
    out = {}
    for delta in cfg.shifts:
        shifted_pool = [e - delta * sd / length for e in pool]
        row: dict = {
            "oracle_power_0.8": ((z_a + stats.norm.ppf(0.8)) / delta) ** 2,
            "oracle_power_0.5": (z_a / delta) ** 2,
            "bonferroni": bonferroni(returns, np.array([e.sum() for e in shifted_pool]), cfg, alpha, rng),
        }
        for name in cfg.detectors:
            null_max = maxima(statistic_traces(cal.detectors[name].build(len(pool)), pool))
            traces = statistic_traces(cal.detectors[name].build(len(pool)), shifted_pool)
            row[name] = detection(null_max, traces, cfg, alpha, rng)
        out[str(delta)] = row
    return out


def print_null(console: Console, null: dict, cfg: Config) -> None:
    table = Table(title=f"Any deployment alarm in {cfg.null_length:,} in-distribution episodes "
                  f"({cfg.null_deployments:,} deployments)")
    for col in ("detector", "alpha", "anytime [95% CI]", "fixed h=1000 [95% CI]"):
        table.add_column(col)
    for name, by_alpha in null.items():
        for a, r in by_alpha.items():
            cells = [f"{r[m]['rate']:.3f} [{r[m]['low']:.3f}, {r[m]['high']:.3f}]" for m in ("anytime", "fixed")]
            table.add_row(name, a, *cells)
    console.print(table)


def _detection_cell(r: dict) -> str:
    mean = "-" if r["mean_episodes"] is None else f"{r['mean_episodes']:.0f}"
    return f"{mean} ({r['detected']}/{r['deployments']})"


def print_shifts(console: Console, shifts: dict, cfg: Config) -> None:
    table = Table(title="Episodes to detection at alpha = 0.05 (mean over detected deployments; "
                  f"detected/{cfg.shifted_deployments})")
    for col in ("drop (sd)", "oracle 0.8 / 0.5", "bonferroni anytime", *[f"{n} anytime" for n in cfg.detectors],
                *[f"{n} fixed h=1000" for n in cfg.detectors]):
        table.add_column(col)
    for delta, row in shifts.items():
        table.add_row(
            delta,
            f"{row['oracle_power_0.8']:.0f} / {row['oracle_power_0.5']:.0f}",
            _detection_cell(row["bonferroni"]["anytime"]),
            *[_detection_cell(row[n]["anytime"]) for n in cfg.detectors],
            *[_detection_cell(row[n]["fixed"]) for n in cfg.detectors],
        )
    console.print(table)


def _gaussian_cell(r: dict) -> str:
    if r["mean_episodes"] is None:
        return f"- ({r['detected']}/{r['deployments']})"
    return f"{r['mean_episodes']:.0f} ({r['median_episodes']:.0f}); {r['detected']}/{r['deployments']}"


def print_gaussian(console: Console, rows: dict, shifts: dict) -> None:
    table = Table(title="Gaussian statistics (the oracle's own case): episodes to detection, alpha = 0.05")
    for col in ("reference", "drop (sd)", "oracle 0.8 / 0.5", "anytime mean (median)", "fixed h=1000 mean (median)"):
        table.add_column(col)
    for key, row in rows.items():
        size, delta = key.split("/")
        shift = shifts[delta]
        table.add_row(size, delta, f"{shift['oracle_power_0.8']:.0f} / {shift['oracle_power_0.5']:.0f}",
                      _gaussian_cell(row["anytime"]), _gaussian_cell(row["fixed"]))
    console.print(table)


def main(cfg: Config = CONFIG, out: Path = harness.RESULTS / "deployment.json") -> None:
    console = Console()
    started = time.perf_counter()
    env = gym.make("Pendulum-v1")
    fit = rollouts(env, range(*cfg.fit_seeds))
    pool = rollouts(env, range(*cfg.pool_seeds))
    console.print(f"rolled out {len(fit) + len(pool)} episodes in {time.perf_counter() - started:.0f} s")
    cal = Calibration.fit(fit, alpha=0.05, detectors=list(cfg.detectors), scenario="pendulum", obs_shape=(3,))
    returns = np.array([e.sum() for e in pool])
    sd = returns.std(ddof=1)
    rng = np.random.default_rng(0)
    results: dict = {"config": asdict(cfg), "return_mean": float(returns.mean()), "return_sd": float(sd)}
    results["online_check"] = check_online(cal, pool, cfg)
    results["null"] = null_rates(cal, pool, cfg, rng)
    alpha = 0.05
    results["shifts"] = shift_rows(cal, pool, returns, cfg, alpha, rng)
    results["gaussian"] = gaussian(cfg, alpha, rng)
    results["machine"] = harness.machine()
    results["seconds"] = round(time.perf_counter() - started, 1)

    print_null(console, results["null"], cfg)
    print_shifts(console, results["shifts"], cfg)
    print_gaussian(console, results["gaussian"], results["shifts"])
    console.print(f"online check: {results['online_check']}; {results['seconds']} s")
    console.print(f"wrote {harness.write(out, results)}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("deployment", args))
