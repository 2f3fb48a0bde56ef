"""Greenberg and Mannor's Pendulum and HalfCheetah scenarios: every mesaguard detector next to the paper's tests.

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

And on HalfCheetah-v5 (1,000-step episodes, never terminated; the reward's spread
is even over time), with the project's shipped PPO agent (``load_agent("cheetah")``,
trained on the stock reward; its actions are deterministic given the observation):

* ``ccost1.3`` / ``ccost1.15``: the control-cost weight 1.3 / 1.15 times the stock 0.1,
  the agent unchanged.

HalfCheetah-v5's reward is ``reward_forward + reward_ctrl`` with ``reward_ctrl =
-0.1 * |a|^2``: a larger weight ``w`` changes no observation and no action, only the
reward, to ``reward_forward + w * reward_ctrl``. The shifted episodes are therefore
the first in-distribution test episodes (the same seeds, the same trajectories) with
their rewards recomputed that way: each shifted episode is paired with an
in-distribution one. The script checks that this is exact (to float32 rounding) against
HalfCheetah-v5 built with ``ctrl_cost_weight=0.1 * w``, on one episode per weight.

Per scenario and detector (alone at its own threshold, and the joint sets of ``Config.joints`` at
``thresholds_for``: the default set first), each joint set at the thresholds the calibration of every detector
gives it, which are those of a calibration of that set alone on the same episodes, what a user who calibrates it
gets (a member's fit, maxima and scale do not depend on the other detectors; a test holds this). Per test:
the detected share of shifted episodes, the mean step of the first alarm, and
the per-episode false-alarm rate on fresh in-distribution episodes with its
Clopper-Pearson 95% upper bound. Beside them, the paper's reference tests, at the
paper's resolution (``PAPER_BLOCKS``: 50 blocks an episode, HalfCheetah's 1,000 steps in
blocks of 20, Pendulum's 200 in blocks of 4; see ``reference_tests``; mesaguard's
detectors run at up to 100 blocks, where the paper's CUSUM catches fewer on the cheetah): Mean
(the standardized deficit of the score so far), CUSUM (the paper's baseline:
Page's one-sided CUSUM on each block's deficit standardized by that block's own
in-distribution spread, ``C_b = max(0, C_{b-1} + (mu_b - x_b) / sd_b - K)`` with
the paper's reference value ``K = 0.5``; mesaguard's ``cusum`` is the project's
own, with its own slack and time-indexed references), Hotelling (``(|e|^2 - j) /
sqrt(2 j)`` over the ``j`` whitened blocks so far, two-sided) and UDT (mesaguard's
``meanshift`` is that test). Every test is thresholded by the same conformal
rule on the same held-out calibration episodes.

Differences from the paper
--------------------------
The Pendulum agent is PPO (``agents/pendulum_ppo.py``, RL Baselines3 Zoo's
recipe without its state-dependent exploration; shipped as JSON + safetensors),
not the paper's SAC, deployed deterministically; an earlier version of this
benchmark deployed a hand-written swing-up controller, whose balance shrugged off
a 3% longer pole. The cheetah agent is PPO too, not the paper's agent. The paper's
bootstrap thresholds are replaced by the conformal rule (an exact finite-sample
guarantee instead of an approximate one).

Sequentially: the deployment monitor in anytime mode (``P(ever a false alarm) <=
alpha``) over the default joint set (HalfCheetah), and with each per-episode statistic
of ``STATISTICS`` (``DeploymentMonitor(detectors=...)``: the default joint maximum, the
episode's UDT, its return rank, CUSUM) on Pendulum ``cost1.3`` and HalfCheetah
``ccost1.3``, both uniform drops, replayed offline
(:func:`~mesaguard.monitor.first_deployment_alarm`, the online monitor's twin): the
share of deployments that alarm within the first ``within`` episodes, each deployment
a random order of the ``ccost1.3`` episodes; and the share of deployments that ever
alarm over all the fresh in-distribution episodes, each a random order of the same
episodes. The orders share their episodes, so the deployments are not independent:
the shares estimate the two probabilities without a binomial interval.

Run: ``.venv/bin/python benchmarks/greenberg_mannor.py [--quick] [--out FILE]`` (minutes: the
HalfCheetah rollouts; ``--quick`` seconds).
Results: ``benchmarks/results/greenberg_mannor.json`` (Pendulum at the top level,
HalfCheetah under ``"cheetah"`` in the same shape, plus ``"sequential"``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import harness
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy import stats
from scipy.linalg import solve_triangular

from mesaguard.calibration import Calibration, conformal_rank, statistic_traces
from mesaguard.detectors import DEFAULT, DETECTORS, MeanShift
from mesaguard.monitor import episode_statistics, first_deployment_alarm, log_threshold
from mesaguard.policies import load_agent, load_policy


@dataclass(frozen=True)
class Config:
    calibration: int = 500  # in-distribution episodes for Calibration.fit (half fit, half thresholds)
    episodes: int = 300  # per shift, and fresh in-distribution episodes for the false-alarm rate
    alpha: float = 0.05
    joints: tuple[tuple[str, ...], ...] = (  # the default set, the defaults before it, and five
        DEFAULT, ("cusum", "meanshift", "rank"), ("threshold", "envelope", "cusum", "meanshift"),
        ("envelope", "cusum", "meanshift", "pdt", "rank"))
    cheetah_calibration: int = 500
    cheetah_episodes: int = 300  # per shift: the first of the fresh in-distribution episodes, rewards recomputed
    cheetah_null: int = 1000  # fresh in-distribution episodes: the false-alarm rates and the sequential check
    cheetah_steps: int = 1000  # HalfCheetah-v5's episode length
    deployments: int = 200  # random orders, for each sequential figure
    within: int = 20  # episodes: the detection window of the sequential check


CONFIG = Config()
QUICK = Config(calibration=120, episodes=60, cheetah_calibration=80, cheetah_episodes=40, cheetah_null=60,
               cheetah_steps=200, deployments=20)
SHIFTS = {
    "noise0.01": {"noise": 0.01},
    "noise0.3": {"noise": 0.3},
    "length1.03": {"length": 1.03},
    "length1.2": {"length": 1.2},
    "cost1.3": {"cost": 1.3},
}
CHEETAH_SHIFTS = {"ccost1.3": 1.3, "ccost1.15": 1.15}  # the control-cost weight relative to HalfCheetah-v5's 0.1
CTRL_COST_WEIGHT = 0.1


PENDULUM_AGENT = Path(__file__).resolve().parent / "agents" / "pendulum"  # agents/pendulum_ppo.py trains it


def episodes(n: int, seed: int, noise: float = 0.0, length: float = 1.0, cost: float = 1.0) -> list[np.ndarray]:
    """Rewards of ``n`` 200-step episodes of the shipped PPO agent, seeds ``seed * 100_000 + k``."""
    agent = load_policy(PENDULUM_AGENT)
    env = gym.make("Pendulum-v1").unwrapped
    env.l = length
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        obs, _ = env.reset(seed=seed * 100_000 + k)
        rewards = np.empty(200)
        for t in range(200):
            obs, reward, *_ = env.step(agent(obs))
            if noise:
                env.state[1] += rng.normal(0.0, noise)
                theta, w = env.state
                obs = np.array([np.cos(theta), np.sin(theta), w], dtype=np.float32)
            rewards[t] = cost * reward
        out.append(rewards)
    return out


def cheetah_runs(n: int, seed: int, steps: int, weight: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``reward_forward`` and ``reward_ctrl`` (``(n, steps)`` each) of the shipped agent on HalfCheetah-v5.

    Seeds ``seed * 100_000 + k``; ``weight`` scales the env's control-cost weight (only for the exactness check).
    """
    agent = load_agent("cheetah")
    env = gym.make("HalfCheetah-v5", ctrl_cost_weight=CTRL_COST_WEIGHT * weight).unwrapped
    forward, ctrl = np.empty((n, steps)), np.empty((n, steps))
    for k in range(n):
        obs, _ = env.reset(seed=seed * 100_000 + k)
        for t in range(steps):
            obs, _, _, _, info = env.step(agent(obs))
            forward[k, t], ctrl[k, t] = info["reward_forward"], info["reward_ctrl"]
    env.close()
    return forward, ctrl


def check_cost_shift(steps: int) -> float:
    """Largest gap, over one episode per weight, between the recomputed rewards and the env's own.

    The env squares the float32 action in float32: the two agree to float32 rounding (``1e-6`` on a control cost
    below 0.6 a step), not to float64's.
    """
    forward, ctrl = cheetah_runs(1, 9, steps)
    gap = 0.0
    for weight in CHEETAH_SHIFTS.values():
        f_w, c_w = cheetah_runs(1, 9, steps, weight)
        gap = max(gap, float(np.abs(forward + weight * ctrl - (f_w + c_w)).max()))
    if gap > 1e-6:
        raise AssertionError(f"the control-cost shift is not a pure reward shift here: gap {gap}")
    return gap


PAPER_CUSUM_K = 0.5  # the paper's CUSUM reference value, in units of each block's spread
PAPER_BLOCKS = 50  # the paper's resolution: blocks per episode of its reference tests


def paper_cusum(x: np.ndarray, mu: np.ndarray, sd: np.ndarray, k: float = PAPER_CUSUM_K) -> np.ndarray:
    """The paper's CUSUM after each block: ``C_b = max(0, C_{b-1} + (mu_b - x_b) / sd_b - k)``, ``C_0 = 0``.

    ``x`` are one episode's block sums, ``mu`` and ``sd`` the in-distribution mean and
    spread of each block sum (Greenberg and Mannor, ICML 2021, their CUSUM baseline:
    Page's CUSUM standardized per time step, for a drop).

    >>> paper_cusum(np.array([0.0, 0.0, 2.0]), np.array([1.0, 2.0, 2.0]), np.ones(3)).tolist()
    [0.5, 2.0, 1.5]
    """
    out = np.empty(x.size)
    c = 0.0
    for b, z in enumerate((mu[: x.size] - x) / sd[: x.size]):
        c = out[b] = max(0.0, c + float(z) - k)
    return out


def reference_tests(cal_fit: list[np.ndarray], runs: list[np.ndarray]) -> dict[str, np.ndarray]:
    """The paper's Mean, CUSUM and Hotelling statistics per step, at the block resolution of a UDT fitted on
    ``cal_fit`` (traces ``(n, T)``) in :data:`PAPER_BLOCKS` blocks."""
    udt = MeanShift.fit(cal_fit, block=-(-max(r.size for r in cal_fit) // PAPER_BLOCKS))
    T = max(r.size for r in runs)
    e = np.zeros((len(runs), udt.mu.size))
    mean_test = np.zeros((len(runs), T))
    cusum = np.zeros((len(runs), T))
    hotelling = np.zeros((len(runs), T))
    ref = np.cumsum(np.stack(cal_fit), axis=1)
    mu_s, sd_s = ref.mean(axis=0), np.maximum(ref.std(axis=0, ddof=1), 1e-12)
    starts = np.arange(0, len(cal_fit[0]), udt.block)
    block_sums = np.stack([np.add.reduceat(r, starts) for r in cal_fit])
    mu_b, sd_b = block_sums.mean(axis=0), np.maximum(block_sums.std(axis=0, ddof=1), 1e-12)
    for i, r in enumerate(runs):
        x = np.add.reduceat(r, np.arange(0, r.size, udt.block))
        d = udt.mu[: x.size] - x
        e_i = solve_triangular(udt.chol[: x.size, : x.size], d, lower=True)
        e[i, : x.size] = e_i
        j = np.minimum(np.arange(T) // udt.block, x.size)  # complete blocks after each step
        sq = np.concatenate([[0.0], np.cumsum(e_i**2)])
        hotelling[i] = np.where(j > 0, (sq[j] - j) / np.sqrt(2 * np.maximum(j, 1)), 0.0)
        cusum[i] = np.concatenate([[0.0], paper_cusum(x, mu_b, sd_b)])[j]
        mean_test[i] = (mu_s - np.cumsum(r)) / sd_s
    return {"paper Mean": mean_test, "paper CUSUM": cusum, "paper Hotelling": hotelling}


def _row(fired: np.ndarray, first: np.ndarray) -> dict[str, float | None]:
    """Detected share, mean first-alarm step of the detected (None if none), and the alarm count."""
    delay = float(first[fired].mean()) if fired.any() else None
    return {"detected": float(fired.mean()), "delay": delay, "alarms": int(fired.sum())}


def clopper_pearson_upper(k: int, n: int, level: float = 0.95) -> float:
    return 1.0 if k == n else float(stats.beta.ppf(level, k + 1, n - k))


def evaluate(
    cal_eps: list[np.ndarray], null: list[np.ndarray], shifted: dict[str, list[np.ndarray]], cfg: Config, scenario: str
) -> tuple[dict[str, Any], Calibration]:
    """Per-episode FAR on ``null`` and detection on each shift, for every detector, joint set and paper test; and
    the calibration of every detector (the monitor's: each member standardized at its own ``1 - alpha``, a set reads
    the same from it as from a calibration of that set alone)."""
    cal = Calibration.fit(cal_eps, alpha=cfg.alpha, detectors=list(DETECTORS), scenario=scenario)
    n_fit = cal.n_fit
    held = cal_eps[n_fit:]
    k = conformal_rank(len(held), cfg.alpha)

    def traces(runs: list[np.ndarray]) -> dict[str, np.ndarray]:
        out_ = {name: statistic_traces(cal.detectors[name].build(len(runs)), runs) for name in DETECTORS}
        out_.update(reference_tests(cal_eps[:n_fit], runs))
        return out_

    held_traces = traces(held)
    thresholds = {name: cal.thresholds[name] for name in DETECTORS}
    for name in ("paper Mean", "paper CUSUM", "paper Hotelling"):
        thresholds[name] = float(np.sort(held_traces[name].max(axis=1))[k - 1])
    joints = {"joint: " + "+".join(names): cal.thresholds_for(list(names)) for names in cfg.joints}

    def measure(runs: list[np.ndarray]) -> tuple[dict[str, dict[str, float | None]], dict[str, np.ndarray]]:
        """Per test, its row, and which of ``runs`` it detected."""
        tr = traces(runs)
        rows: dict[str, dict[str, float | None]] = {}
        fired_by: dict[str, np.ndarray] = {}
        for name, trace in tr.items():
            over = trace > thresholds[name]
            fired = fired_by[name] = over.any(axis=1)
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
            fired_by[label] = fired
        return rows, fired_by

    null_rows, _ = measure(null)
    false_alarms = {
        name: {"rate": row["detected"], "upper95": clopper_pearson_upper(int(row["alarms"] or 0), len(null))}
        for name, row in null_rows.items()
    }
    shifts, paired = {}, {}
    for name, runs in shifted.items():
        shifts[name], fired_by = measure(runs)
        paired[name] = against_paper(fired_by, "joint: " + "+".join(cfg.joints[0]))
    return {"false_alarms": false_alarms, "shifts": shifts, "paired": paired}, cal


def against_paper(fired_by: dict[str, np.ndarray], default: str) -> dict[str, Any]:
    """The default set against the paper's best test on the same shifted episodes: the discordant pairs and the
    exact two-sided McNemar p-value (the chance of a split at least this uneven if neither detects more)."""
    paper = max((n for n in fired_by if n.startswith("paper")), key=lambda n: int(fired_by[n].sum()))
    only_default = int((fired_by[default] & ~fired_by[paper]).sum())
    only_paper = int((fired_by[paper] & ~fired_by[default]).sum())
    n = only_default + only_paper
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(stats.binom.cdf(min(only_default, only_paper), n, 0.5)))
    return {"paper": paper, "only_default": only_default, "only_paper": only_paper, "mcnemar_p": p}


STATISTICS = {  # the deployment monitor's per-episode statistic: DeploymentMonitor(detectors=...)
    "joint (default)": DEFAULT,
    "udt": ("meanshift",),
    "rank": ("rank",),
    "cusum": ("cusum",),
}


def sequential(
    cal: Calibration, null: list[np.ndarray], shifted: list[np.ndarray], cfg: Config,
    names: tuple[str, ...] = DEFAULT,
) -> dict[str, object]:
    """The anytime deployment monitor with per-episode statistic ``names``: detection within ``cfg.within``
    episodes of ``shifted`` and any false alarm over all of ``null``, each over ``cfg.deployments`` random orders."""
    reference = cal.joint_maxima(list(names))
    log_c = log_threshold("anytime", cfg.alpha)
    rng = np.random.default_rng(0)

    def first_alarms(runs: list[np.ndarray], length: int) -> list[int | None]:
        stats_ = episode_statistics(cal, list(names), runs)
        hits = []
        for d in range(cfg.deployments):
            order = rng.permutation(len(stats_))[:length]
            hit = first_deployment_alarm(reference, [stats_[i] for i in order], log_c, seed=d)
            hits.append(None if hit is None else hit[0])
        return hits

    detected = [h for h in first_alarms(shifted, cfg.within) if h is not None]
    false = [h for h in first_alarms(null, len(null)) if h is not None]
    return {
        "mode": "anytime",
        "detectors": list(names),
        "deployments": cfg.deployments,
        "within": cfg.within,
        "detected_within": len(detected) / cfg.deployments,
        "median_episodes": float(np.median(detected)) if detected else None,
        "null_episodes": len(null),
        "any_false_alarm": len(false) / cfg.deployments,
    }


def statistics_compared(
    cal: Calibration, null: list[np.ndarray], shifted: list[np.ndarray], cfg: Config
) -> dict[str, dict[str, object]]:
    """:func:`sequential` for every per-episode statistic of :data:`STATISTICS` (detectors run to each end)."""
    return {label: sequential(cal, null, shifted, cfg, names) for label, names in STATISTICS.items()}


def print_table(console: Console, title: str, section: dict[str, Any]) -> None:
    """One row per test: its FAR and, per shift, the detected share / the mean first-alarm step."""
    table = Table(title=title)
    table.add_column("test")
    table.add_column("FAR")
    for name in section["shifts"]:
        table.add_column(name.replace("noise", "n").replace("length", "l").replace("cost", "c"), justify="right")
    for name, far in section["false_alarms"].items():
        cells = []
        for shift in section["shifts"].values():
            row = shift[name]
            delay = "-" if row["delay"] is None else f"{row['delay']:.0f}"
            cells.append(f"{row['detected']:.2f}/{delay}")
        label = name.replace("paper ", "GM ").replace("joint: ", "")
        label = {"+".join(DEFAULT): "default", "threshold+envelope+cusum+meanshift": "old 4",
                 "envelope+cusum+meanshift+pdt+rank": "5 jointly"}.get(label, label)
        table.add_row(label[:9], f"{far['rate']:.2f} ({far['upper95']:.2f})", *cells)
    console.print(table)


def main(cfg: Config = CONFIG, out: Path = harness.RESULTS / "greenberg_mannor.json") -> None:
    start = time.perf_counter()
    console = Console()
    cal_eps = episodes(cfg.calibration, 1)
    null = episodes(cfg.episodes, 2)
    shifted = {name: episodes(cfg.episodes, 3 + i, **kw) for i, (name, kw) in enumerate(SHIFTS.items())}
    pendulum, cal_p = evaluate(cal_eps, null, shifted, cfg, "pendulum")
    results: dict[str, Any] = {"config": asdict(cfg), **pendulum}
    results["statistics"] = statistics_compared(cal_p, null, shifted["cost1.3"], cfg)
    console.print(f"Pendulum done ({time.perf_counter() - start:.0f} s)")

    gap = check_cost_shift(cfg.cheetah_steps)
    forward, ctrl = cheetah_runs(cfg.cheetah_calibration, 1, cfg.cheetah_steps)
    cal_c = list(forward + ctrl)
    forward, ctrl = cheetah_runs(cfg.cheetah_null, 2, cfg.cheetah_steps)
    null_c = list(forward + ctrl)
    m = cfg.cheetah_episodes
    shifted_c = {name: list(forward[:m] + w * ctrl[:m]) for name, w in CHEETAH_SHIFTS.items()}
    console.print(f"HalfCheetah rolled out ({time.perf_counter() - start:.0f} s)")
    cheetah, cal = evaluate(cal_c, null_c, shifted_c, cfg, "HalfCheetah-v5")
    seq = cheetah["sequential"] = sequential(cal, null_c, shifted_c["ccost1.3"], cfg)
    cheetah["statistics"] = statistics_compared(cal, null_c, shifted_c["ccost1.3"], cfg)
    cheetah["recomputed_reward_gap"] = gap
    results["cheetah"] = cheetah
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["machine"] = harness.machine()

    what = "detected share / mean alarm step; FAR (CP 95% upper)"
    print_table(console, f"Pendulum-v1, alpha {cfg.alpha}: {what}", results)
    print_table(console, f"HalfCheetah-v5, alpha {cfg.alpha}: {what}", cheetah)
    console.print(f"anytime monitor ({'+'.join(DEFAULT)}): ccost1.3 detected within {cfg.within} episodes in "
                  f"{seq['detected_within']:.3f} of {cfg.deployments} orders (median {seq['median_episodes']}); "
                  f"any false alarm over {len(null_c)} in-distribution episodes: {seq['any_false_alarm']:.3f}")
    for title, section in (("Pendulum cost1.3", results), ("HalfCheetah ccost1.3", cheetah)):
        for label, row in section["statistics"].items():
            console.print(f"{title}, monitor statistic {label}: detected within {cfg.within} in "
                          f"{row['detected_within']:.3f} (median {row['median_episodes']}); "
                          f"any false alarm over {row['null_episodes']}: {row['any_false_alarm']:.3f}")
    console.print(f"wrote {harness.write(out, results)}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("greenberg_mannor", args))
