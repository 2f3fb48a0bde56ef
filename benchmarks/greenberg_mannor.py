"""Greenberg and Mannor's Pendulum scenarios: every mesaguard detector next to the paper's tests.

What it measures
----------------
The public scenario family of Greenberg and Mannor, "Detecting Rewards
Deterioration in Episodic Reinforcement Learning" (ICML 2021), on Pendulum-v1
(200-step episodes, a swing-up then a balance: the reward's spread changes by
orders of magnitude within the episode). In distribution the pendulum is the
stock one; each shift changes the world, not the agent:

* ``noise0.01`` / ``noise0.3``: Gaussian noise of that std added to the angular
  velocity after every step;
* ``length1.03`` / ``length1.2``: the pole 3% / 20% longer;
* ``cost1.3``: every reward 30% larger in magnitude (a heavier cost, the agent unchanged).

Per scenario and detector (alone at its own threshold, and two joint sets at
``thresholds_for``: the default four, and five without the plain threshold):
the detected share of shifted episodes, the mean step of the first alarm, and
the per-episode false-alarm rate on fresh in-distribution episodes with its
Clopper-Pearson 95% upper bound. Beside them, the paper's reference tests,
computed from the same whitened block deficits (see ``reference_tests``): Mean
(the standardized deficit of the score so far), Hotelling (``(|e|^2 - j) /
sqrt(2 j)`` over the ``j`` blocks so far, two-sided) and UDT (mesaguard's
``meanshift`` is that test). Every test is thresholded by the same conformal
rule on the same held-out calibration episodes.

Differences from the paper
--------------------------
The agent is a hand-written swing-up controller (pump energy, then a PD
balance), not an SAC agent: it is deterministic given the start, needs no
training, and its balance is robust to a 3% longer pole, so ``length1.03`` is a
small shift here. The paper's bootstrap thresholds are replaced by the conformal
rule (an exact finite-sample guarantee instead of an approximate one).

Run: ``.venv/bin/python benchmarks/greenberg_mannor.py [--quick] [--out FILE]`` (about a minute).
Results: ``benchmarks/results/greenberg_mannor.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import gymnasium as gym
import harness
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats
from scipy.linalg import solve_triangular

from mesaguard.calibration import Calibration, conformal_rank, statistic_traces
from mesaguard.detectors import DEFAULT, DETECTORS, MeanShift


@dataclass(frozen=True)
class Config:
    calibration: int = 500  # in-distribution episodes for Calibration.fit (half fit, half thresholds)
    episodes: int = 300  # per shift, and fresh in-distribution episodes for the false-alarm rate
    alpha: float = 0.05
    joints: tuple[tuple[str, ...], ...] = (DEFAULT, ("envelope", "cusum", "meanshift", "pdt", "rank"))


CONFIG = Config()
QUICK = Config(calibration=120, episodes=60)
SHIFTS = {
    "noise0.01": {"noise": 0.01},
    "noise0.3": {"noise": 0.3},
    "length1.03": {"length": 1.03},
    "length1.2": {"length": 1.2},
    "cost1.3": {"cost": 1.3},
}


def swing_up(obs: np.ndarray) -> np.ndarray:
    """Pump energy until near the top, then balance with a PD law (about -150 per episode)."""
    cos, sin, w = obs
    if cos > 0.8:
        u = -(8.0 * np.arctan2(sin, cos) + 1.5 * w)
    else:
        energy = w**2 / 6 + 5 * (cos - 1)  # zero when upright and at rest
        u = 2.0 * np.sign(w) if energy < 0 else -0.5 * w
    return np.clip(np.array([u], dtype=np.float32), -2, 2)


def episodes(n: int, seed: int, noise: float = 0.0, length: float = 1.0, cost: float = 1.0) -> list[np.ndarray]:
    """Rewards of ``n`` 200-step episodes of the controller, seeds ``seed * 100_000 + k``."""
    env = gym.make("Pendulum-v1").unwrapped
    env.l = length
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        obs, _ = env.reset(seed=seed * 100_000 + k)
        rewards = np.empty(200)
        for t in range(200):
            obs, reward, *_ = env.step(swing_up(obs))
            if noise:
                env.state[1] += rng.normal(0.0, noise)
                theta, w = env.state
                obs = np.array([np.cos(theta), np.sin(theta), w], dtype=np.float32)
            rewards[t] = cost * reward
        out.append(rewards)
    return out


def reference_tests(cal_fit: list[np.ndarray], runs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The paper's Mean and Hotelling statistics per step, from a UDT fitted on ``cal_fit`` (traces ``(n, T)``)."""
    udt = MeanShift.fit(cal_fit)
    T = max(r.size for r in runs)
    e = np.zeros((len(runs), udt.mu.size))
    mean_test = np.zeros((len(runs), T))
    hotelling = np.zeros((len(runs), T))
    ref = np.cumsum(np.stack(cal_fit), axis=1)
    mu_s, sd_s = ref.mean(axis=0), np.maximum(ref.std(axis=0, ddof=1), 1e-12)
    for i, r in enumerate(runs):
        x = np.add.reduceat(r, np.arange(0, r.size, udt.block))
        d = udt.mu[: x.size] - x
        e_i = solve_triangular(udt.chol[: x.size, : x.size], d, lower=True)
        e[i, : x.size] = e_i
        j = np.minimum(np.arange(T) // udt.block, x.size)  # complete blocks after each step
        sq = np.concatenate([[0.0], np.cumsum(e_i**2)])
        hotelling[i] = np.where(j > 0, (sq[j] - j) / np.sqrt(2 * np.maximum(j, 1)), 0.0)
        mean_test[i] = (mu_s - np.cumsum(r)) / sd_s
    return {"paper Mean": mean_test, "paper Hotelling": hotelling}


def _row(fired: np.ndarray, first: np.ndarray) -> dict[str, float | None]:
    """Detected share, mean first-alarm step of the detected (None if none), and the alarm count."""
    delay = float(first[fired].mean()) if fired.any() else None
    return {"detected": float(fired.mean()), "delay": delay, "alarms": int(fired.sum())}


def clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    return 1.0 if k == n else float(stats.beta.ppf(level, k + 1, n - k))


def main(cfg: Config = CONFIG, out: object = None) -> None:
    start = time.perf_counter()
    console = Console()
    cal_eps = episodes(cfg.calibration, 1)
    null = episodes(cfg.episodes, 2)
    shifted = {name: episodes(cfg.episodes, 3 + i, **kw) for i, (name, kw) in enumerate(SHIFTS.items())}
    cal = Calibration.fit(cal_eps, alpha=cfg.alpha, detectors=list(DETECTORS), scenario="pendulum")
    n_fit = cal.n_fit
    held = cal_eps[n_fit:]
    k = conformal_rank(len(held), cfg.alpha)

    def traces(runs: list[np.ndarray]) -> dict[str, np.ndarray]:
        out_ = {name: statistic_traces(cal.detectors[name].build(len(runs)), runs) for name in DETECTORS}
        out_.update(reference_tests(cal_eps[:n_fit], runs))
        return out_

    held_traces = traces(held)
    thresholds = {name: cal.thresholds[name] for name in DETECTORS}
    for name in ("paper Mean", "paper Hotelling"):
        thresholds[name] = float(np.sort(held_traces[name].max(axis=1))[k - 1])
    joints = {"joint: " + "+".join(names): cal.thresholds_for(list(names)) for names in cfg.joints}

    def measure(runs: list[np.ndarray]) -> dict[str, dict[str, float | None]]:
        tr = traces(runs)
        rows: dict[str, dict[str, float | None]] = {}
        for name, trace in tr.items():
            over = trace > thresholds[name]
            fired = over.any(axis=1)
            rows[name] = _row(fired, over.argmax(axis=1) + 1)
        for label, joint in joints.items():
            fired = np.zeros(len(runs), dtype=bool)
            first = np.full(len(runs), np.iinfo(np.int64).max)
            for name, threshold in joint.items():
                over = tr[name] > threshold
                hit = over.any(axis=1)
                first = np.where(hit, np.minimum(first, over.argmax(axis=1) + 1), first)
                fired |= hit
            rows[label] = _row(fired, first)
        return rows

    results: dict[str, object] = {"config": asdict(cfg)}
    null_rows = measure(null)
    results["false_alarms"] = {
        name: {"rate": row["detected"], "upper95": clopper_pearson_upper(row["alarms"], len(null))}
        for name, row in null_rows.items()
    }
    results["shifts"] = {name: measure(runs) for name, runs in shifted.items()}
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["machine"] = harness.machine()

    table = Table(title=f"Pendulum-v1, alpha {cfg.alpha}: detected share / mean alarm step; FAR (CP 95% upper)")
    table.add_column("test")
    table.add_column("FAR")
    for name in SHIFTS:
        table.add_column(name.replace("noise", "n").replace("length", "l").replace("cost", "c"), justify="right")
    for name, far in results["false_alarms"].items():  # type: ignore[union-attr]
        cells = []
        for shift in SHIFTS:
            row = results["shifts"][shift][name]  # type: ignore[index]
            delay = "-" if row["delay"] is None else f"{row['delay']:.0f}"
            cells.append(f"{row['detected']:.2f}/{delay}")
        label = name.replace("paper ", "GM ").replace("joint: ", "")
        label = {"+".join(DEFAULT): "default", "envelope+cusum+meanshift+pdt+rank": "5 jointly"}.get(label, label)
        table.add_row(label[:9], f"{far['rate']:.2f} ({far['upper95']:.2f})", *cells)
    console.print(table)
    console.print(f"wrote {harness.write(out, results)}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("greenberg_mannor", args))
