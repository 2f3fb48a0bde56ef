"""Realized false-alarm rate on fresh in-distribution episodes against the chosen alpha.

What it measures
----------------
The calibration promises that a new in-distribution episode raises a false alarm
with probability at most alpha (conformal, finite-sample), and that conditional on
the calibration set the realized rate is Beta(n + 1 - k, k) distributed. This
script checks both on a real env: Gymnasium's ``Pendulum-v1`` driven by a
hand-written swing-up controller (the in-distribution agent; reward is the base
objective). 200 calibration episodes (seeds 0..199; ``Calibration.fit`` fits the
detectors on the first 100 and thresholds on the other 100), 2,000 fresh episodes
(seeds 10,000..11,999), alpha in {0.05, 0.1, 0.2}, each detector alone and all
four jointly (``cal.thresholds_for(all four, alpha)``).

For each case: the realized false-alarm rate k/n with its Clopper-Pearson 95%
interval (``scipy.stats.binomtest(k, n).proportion_ci()``), the Beta law of the
realized rate given n_cal and the rank (``cal.false_alarm``: mean and 90%
interval), whether alpha lies in the Clopper-Pearson interval and whether the
realized rate lies in the Beta 90% interval. The second is the right check for
one calibration set: the guarantee is on average over calibration sets, and a
single set's rate spreads as that Beta law says (about +-0.03 at alpha = 0.05
with 100 held-out episodes), far more than the Clopper-Pearson interval of 2,000
episodes. For the joint case it also counts, per detector, the fresh episodes in
which that detector passes its joint threshold: how the joint alpha is shared.

How
---
Episodes are rolled out once and their increments kept; each detector's
per-episode maximum statistic is computed offline with ``episode_maxima`` (the
same streaming ``update`` the guard runs); an episode raises a false alarm when
some detector's maximum passes its threshold (the guard's rule, statistic >
threshold). A check first runs 20 of the fresh episodes through ``GuardedEnv``
(``Alert`` protocol, so episodes run to the end) for every alpha and detector
set, and compares its per-step statistics and its alarms (whether, at which step,
which detector) with the offline computation.

Target
------
Realized rate within the Beta law's 90% interval for each alpha; alpha within the
Clopper-Pearson interval in most cases (they are 15 correlated checks on one
calibration set, so a miss or two is expected).

Run: ``.venv/bin/python benchmarks/false_alarms.py [--quick] [--out FILE]`` (under a minute, one core).
Results: printed as tables and written to ``benchmarks/results/false_alarms.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import harness
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import binomtest

from mesaguard.calibration import Calibration, episode_maxima, statistic_traces
from mesaguard.guard import GuardedEnv
from mesaguard.protocols import Alert


@dataclass(frozen=True)
class Config:
    env_id: str = "Pendulum-v1"
    calibration_seeds: tuple[int, int] = (0, 200)  # range(0, 200)
    fresh_seeds: tuple[int, int] = (10_000, 12_000)  # range(10_000, 12_000)
    alphas: tuple[float, ...] = (0.05, 0.1, 0.2)
    check_episodes: int = 20  # fresh episodes also run through GuardedEnv, to check the offline path


CONFIG = Config()
QUICK = Config(fresh_seeds=(10_000, 10_050), check_episodes=3)
DETECTOR_SETS: dict[str, list[str]] = {
    "threshold": ["threshold"],
    "envelope": ["envelope"],
    "cusum": ["cusum"],
    "meanshift": ["meanshift"],
    "all four": ["threshold", "envelope", "cusum", "meanshift"],
}


def swing_up(obs: np.ndarray) -> np.ndarray:
    """A hand-written swing-up controller: pump energy, then balance (about -143 per episode).

    Copied from ``tests/test_guard.py``; it is the in-distribution agent here.
    """
    cos, sin, w = obs
    if cos > 0.8:
        u = -(8.0 * np.arctan2(sin, cos) + 1.5 * w)
    else:
        energy = w**2 / 6 + 5 * (cos - 1)  # zero when upright and at rest
        u = 2.0 * np.sign(w) if energy < 0 else -0.5 * w
    return np.clip(np.array([u], dtype=np.float32), -2, 2)


def rollouts(env: gym.Env, seeds: range) -> list[np.ndarray]:
    """Per-step rewards (the base objective) of one swing-up episode per seed."""
    episodes = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        rewards, done = [], False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(swing_up(obs))
            rewards.append(float(reward))
            done = terminated or truncated
        episodes.append(np.array(rewards))
    return episodes


def offline_alarm(traces: dict[str, np.ndarray], thresholds: dict[str, float], names: list[str]) -> list[tuple]:
    """Per episode: (alarm, first alarm step or None, first detector over at that step or None)."""
    over = np.stack([traces[n] > thresholds[n] for n in names])  # (detectors, episodes, steps); NaN > x is False
    out = []
    for e in range(over.shape[1]):
        any_over = over[:, e].any(axis=0)
        if not any_over.any():
            out.append((False, None, None))
            continue
        t = int(any_over.argmax())
        out.append((True, t + 1, names[int(over[:, e, t].argmax())]))
    return out


def check_guard_matches_offline(cfg: Config, cals: dict[float, Calibration], episodes: list[np.ndarray]) -> dict:
    """Run the first fresh episodes through GuardedEnv and compare with the offline statistics and alarms."""
    env = gym.make(cfg.env_id)
    seeds = range(cfg.fresh_seeds[0], cfg.fresh_seeds[0] + cfg.check_episodes)
    names_all = DETECTOR_SETS["all four"]
    traces = {n: statistic_traces(cals[cfg.alphas[0]].detectors[n].build(), episodes) for n in names_all}
    max_stat_diff, mismatches, alarms_seen, cases = 0.0, [], 0, 0
    for alpha, cal in cals.items():
        for label, names in DETECTOR_SETS.items():
            expected = offline_alarm(traces, cal.thresholds_for(names, alpha), names)
            guarded = GuardedEnv(env, cal, detectors=names, protocol=Alert(lambda alarm: None), scenario="pendulum")
            for e, seed in enumerate(seeds):
                obs, _ = guarded.reset(seed=seed)
                done, t = False, 0
                while not done:
                    obs, _, terminated, truncated, info = guarded.step(swing_up(obs))
                    g = info["mesaguard"]
                    for n in names:
                        max_stat_diff = max(max_stat_diff, abs(g["statistics"][n] - traces[n][e, t]))
                    done, t = terminated or truncated, t + 1
                got = (g["alarm"], g["alarm_step"], g["detector"])
                alarms_seen += got[0]
                cases += 1
                if got != expected[e]:
                    mismatches.append(
                        {"alpha": alpha, "detectors": label, "seed": seed, "guard": got, "offline": expected[e]}
                    )
    return {
        "episodes": cfg.check_episodes,
        "cases": cases,
        "alarms_in_guard": int(alarms_seen),
        "mismatches": mismatches,
        "max_abs_statistic_difference": max_stat_diff,
    }


def main(cfg: Config = CONFIG, out: Path = harness.RESULTS / "false_alarms.json") -> None:
    console = Console(width=140)
    started = time.perf_counter()
    env = gym.make(cfg.env_id)
    calibration = rollouts(env, range(*cfg.calibration_seeds))
    fresh = rollouts(env, range(*cfg.fresh_seeds))
    rolled = time.perf_counter() - started
    # One calibration per alpha: the same fit (deterministic), so GuardedEnv runs at that alpha
    # and ``cal.false_alarm`` is the Beta law at that alpha.
    cals = {
        a: Calibration.fit(calibration, alpha=a, scenario="pendulum", obs_shape=env.observation_space.shape,
                           detectors=DETECTOR_SETS["all four"])
        for a in cfg.alphas
    }
    check = check_guard_matches_offline(cfg, cals, fresh[: cfg.check_episodes])
    console.print(
        f"check: GuardedEnv vs offline episode_maxima on {check['episodes']} fresh episodes x "
        f"{len(cfg.alphas)} alphas x {len(DETECTOR_SETS)} detector sets: "
        f"{check['cases'] - len(check['mismatches'])}/{check['cases']} alarm records "
        f"identical ({check['alarms_in_guard']} alarms among them), largest per-step statistic difference "
        f"{check['max_abs_statistic_difference']:.3g}"
    )
    for m in check["mismatches"]:
        console.print(f"  MISMATCH {m}")

    cal0 = cals[cfg.alphas[0]]
    maxima = {n: episode_maxima(cal0.detectors[n].build(), fresh) for n in cal0.detectors}
    rows = []
    for alpha, cal in cals.items():
        law = cal.false_alarm
        for label, names in DETECTOR_SETS.items():
            thresholds = cal.thresholds_for(names, alpha)
            alarmed = np.any([maxima[n] > thresholds[n] for n in names], axis=0)
            k, n = int(alarmed.sum()), alarmed.size
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95)  # exact: Clopper-Pearson
            rate = k / n
            fired_by = {d: int((maxima[d] > thresholds[d]).sum()) for d in names}  # episodes each detector passes
            rows.append(
                {
                    "alpha": alpha,
                    "detectors": label,
                    "thresholds": thresholds,
                    "alarms": k,
                    "episodes": n,
                    "realized": rate,
                    "clopper_pearson_95": [float(ci.low), float(ci.high)],
                    "alpha_in_ci": bool(ci.low <= alpha <= ci.high),
                    "beta_mean": law["mean"],
                    "beta_90": [law["q05"], law["q95"]],
                    "realized_in_beta_90": bool(law["q05"] <= rate <= law["q95"]),
                    "fired_by": fired_by,
                }
            )
    table = Table(
        title=f"{cfg.env_id}, swing-up controller: false alarms on {len(fresh)} fresh episodes; calibration "
        f"{len(calibration)} episodes (fit on {cal0.n_fit}, thresholds on {cal0.n_cal})"
    )
    for col in ("alpha", "detectors", "alarms", "realized", "Clopper-Pearson 95%", "alpha inside", "Beta mean",
                "Beta 90%", "realized inside Beta 90%"):
        table.add_column(col, justify="left" if col == "detectors" else "right")
    for r in rows:
        table.add_row(
            f"{r['alpha']:g}",
            r["detectors"],
            f"{r['alarms']}/{r['episodes']}",
            f"{r['realized']:.4f}",
            f"[{r['clopper_pearson_95'][0]:.4f}, {r['clopper_pearson_95'][1]:.4f}]",
            "yes" if r["alpha_in_ci"] else "NO",
            f"{r['beta_mean']:.4f}",
            f"[{r['beta_90'][0]:.4f}, {r['beta_90'][1]:.4f}]",
            "yes" if r["realized_in_beta_90"] else "NO",
        )
    console.print(table)
    for r in rows:
        if len(r["fired_by"]) > 1:
            console.print(
                f"all four at alpha={r['alpha']:g}: episodes each detector passes its joint threshold in: "
                + ", ".join(f"{d} {c}" for d, c in r["fired_by"].items())
                + " (joint thresholds: "
                + ", ".join(f"{d} {t:.3g}" for d, t in r["thresholds"].items())
                + ")"
            )
    in_ci = sum(r["alpha_in_ci"] for r in rows)
    in_beta = sum(r["realized_in_beta_90"] for r in rows)
    console.print(f"alpha inside the Clopper-Pearson 95% interval: {in_ci}/{len(rows)}; "
                  f"realized rate inside the Beta 90% interval: {in_beta}/{len(rows)}")
    elapsed = time.perf_counter() - started
    results = {
        "benchmark": "false_alarms",
        "config": asdict(cfg),
        "calibration": {
            "n_fit": cal0.n_fit,
            "n_cal": cal0.n_cal,
            "ranks": {str(a): c.rank for a, c in cals.items()},
        },
        "guard_check": check,
        "rates": rows,
        "summary": {"alpha_in_clopper_pearson": in_ci, "realized_in_beta_90": in_beta, "cases": len(rows)},
        "machine": harness.machine(),
        "rollout_seconds": rolled,
        "seconds": elapsed,
    }
    console.print(f"wrote {harness.write(out, results)} ({elapsed:.0f} s, of which rollouts {rolled:.0f} s)")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("false_alarms", args))
