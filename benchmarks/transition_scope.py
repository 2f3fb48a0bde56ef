"""The transition scope on the bench: false alarms on the reference variant, detection of a change of physics.

What it measures
----------------
A :class:`~mesaguard.transition_scope.TransitionScope` (the learned model's one-step
prediction error, conformal p-values, CUSUM at ``slack``) fitted at ``alpha`` on
``calibration`` reference episodes of the agent (seeds ``CALIBRATION_SEED + i``; the
learned models were fitted on other seeds, :mod:`mesaguard.safeguards.learned_fit`), then:

* the false-alarm rate on ``fresh`` reference episodes (seeds ``EVALUATION_SEED + i``),
  with its Clopper-Pearson 95% interval and the Beta law's 90% interval for this
  calibration set;
* per shifted variant (same evaluation seeds): the detection rate (share of episodes
  with an alarm) with its Clopper-Pearson interval and the mean step of the first alarm
  (1-based: the alarm after the t-th transition; the physics differ from the first step,
  so this is the delay). The mean episode return is recorded beside it: the change of
  physics need not show in the reward.

Three envs:

* ``cheetah`` (shipped agent and learned model), ``deploy-dynamics`` (a heavier torso);
* ``driving`` (shipped agent and learned model), ``deploy`` (other traffic);
* CartPole-v1 as a user would bring it, not a registered scenario: an SB3 PPO agent
  trained here (``ppo_steps``), a learned model fitted on its reference env with
  :func:`mesaguard.safeguards.learned_fit.fit_env`, and the pole made longer or heavier.

Run: ``.venv/bin/python benchmarks/transition_scope.py [--quick] [--out FILE]`` (a few minutes on one core).
Results: printed as a table and written to ``benchmarks/results/transition_scope.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import harness
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mesaguard import scenarios
from mesaguard.experiment import CALIBRATION_SEED, EVALUATION_SEED, agent
from mesaguard.metrics import rate
from mesaguard.safeguards.learned import load_learned
from mesaguard.safeguards.learned_fit import FitConfig, Transitions, collect_env, fit_env
from mesaguard.transition_scope import TransitionScope


@dataclass(frozen=True)
class Config:
    calibration: int = 100  # reference episodes: 25 fit (error spread), 25 reference (scores), 50 threshold
    fresh: int = 100  # fresh reference episodes, and episodes per shifted variant
    alpha: float = 0.05
    slack: float = 2.0
    cartpole_steps: int = 200  # the user's CartPole episode limit
    ppo_steps: int = 30_000
    cartpole_fit: tuple[int, int] = (50, 50)  # fit and held-out episodes of the CartPole learned model
    longer_pole: float = 2.0  # the pole's length times this
    heavier_pole: float = 5.0  # the pole's mass times this


CONFIG = Config()
QUICK = Config(calibration=40, fresh=5, ppo_steps=2_000, cartpole_fit=(5, 39))  # 39: the fewest the model needs


def episodes(data: Transitions) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Collected transitions split into episodes of ``(obs, actions, next_obs)``."""
    out = []
    for i in np.unique(data.episode):
        at = data.episode == i
        out.append((data.obs[at], data.action[at], data.next_obs[at]))
    return out


def record(env: gym.Env, policy: Callable[[Any], Any], seeds: range) -> tuple[list[Any], float]:
    """The policy's episodes on ``env`` (as the scope reads them) and their mean return."""
    data = collect_env(env, seeds, policy, increment="reward")
    runs = episodes(data)
    returns = [float(data.increment[data.episode == i].sum()) for i in np.unique(data.episode)]
    env.close()
    return runs, float(np.mean(returns))


def in_distribution(ts: TransitionScope, runs: list[Any]) -> dict[str, Any]:
    alarms = ts.first_alarms(runs)
    far = rate(sum(a is not None for a in alarms), len(alarms))
    law = ts.false_alarm
    return {
        "episodes": far.n,
        "false_alarms": far.k,
        "rate": far.rate,
        "clopper_pearson_95": [far.low, far.high],
        "beta_90": [law["q05"], law["q95"]],
    }


def shifted(ts: TransitionScope, runs: list[Any]) -> dict[str, Any]:
    alarms = ts.first_alarms(runs)
    detected = [a for a in alarms if a is not None]
    found = rate(len(detected), len(alarms))
    return {
        "episodes": found.n,
        "detected": found.k,
        "detection_rate": found.rate,
        "clopper_pearson_95": [found.low, found.high],
        "mean_delay_steps": float(np.mean(detected)) if detected else None,
        "mean_episode_length": float(np.mean([len(r[0]) for r in runs])),
    }


def measure(ts: TransitionScope, fresh: list[Any], shifts: dict[str, tuple[list[Any], float]],
            fresh_return: float) -> dict[str, Any]:
    return {
        "threshold": ts.threshold,
        "n_fit": ts.n_fit,
        "n_reference": ts.n_reference,
        "n_cal": ts.n_cal,
        "in_distribution": {**in_distribution(ts, fresh), "mean_return": fresh_return},
        "shifted": {v: {**shifted(ts, runs), "mean_return": ret} for v, (runs, ret) in shifts.items()},
    }


def scenario(name: str, variants: tuple[str, ...], cfg: Config) -> dict[str, Any]:
    """A shipped scenario: its agent, its shipped learned model, its reference and shifted variants."""
    spec = scenarios.get(name)
    model = load_learned(name)
    policy = agent(name, spec.make(spec.reference_variant))
    started = time.perf_counter()
    cal, _ = record(spec.make(spec.reference_variant), policy,
                    range(CALIBRATION_SEED, CALIBRATION_SEED + cfg.calibration))
    ts = TransitionScope.fit(cal, model, alpha=cfg.alpha, slack=cfg.slack, scenario=name)
    evaluation = range(EVALUATION_SEED, EVALUATION_SEED + cfg.fresh)
    fresh, fresh_return = record(spec.make(spec.reference_variant), policy, evaluation)
    shifts = {v: record(spec.make(v), policy, evaluation) for v in variants}
    return {"env": name, "reference_variant": spec.reference_variant, "learned_model": "shipped",
            **measure(ts, fresh, shifts, fresh_return), "seconds": round(time.perf_counter() - started, 1)}


# -- CartPole, as a user would write it ----------------------------------------------------------


def make_cartpole(cfg: Config, length: float = 1.0, mass: float = 1.0) -> gym.Env:
    """CartPole-v1 with the pole's length and mass scaled (the user's deployment changes)."""
    env = gym.make("CartPole-v1", max_episode_steps=cfg.cartpole_steps)
    pole = env.unwrapped
    pole.length *= length  # type: ignore[attr-defined]  # CartPoleEnv's half pole length
    pole.masspole *= mass  # type: ignore[attr-defined]
    pole.total_mass = pole.masspole + pole.masscart  # type: ignore[attr-defined]
    pole.polemass_length = pole.masspole * pole.length  # type: ignore[attr-defined]
    return env


def cartpole(cfg: Config) -> dict[str, Any]:
    from stable_baselines3 import PPO

    started = time.perf_counter()
    ppo = PPO("MlpPolicy", make_cartpole(cfg), seed=0, device="cpu", verbose=0)
    ppo.learn(total_timesteps=cfg.ppo_steps)

    def policy(obs: Any) -> int:
        return int(ppo.predict(obs, deterministic=True)[0])

    trained = round(time.perf_counter() - started, 1)
    fit_episodes, held_out = cfg.cartpole_fit
    model = fit_env(lambda: make_cartpole(cfg), policy, config=FitConfig(episodes=fit_episodes, held_out=held_out),
                    name="CartPole-v1 (user env)")
    cal, _ = record(make_cartpole(cfg), policy, range(CALIBRATION_SEED, CALIBRATION_SEED + cfg.calibration))
    ts = TransitionScope.fit(cal, model, alpha=cfg.alpha, slack=cfg.slack)
    evaluation = range(EVALUATION_SEED, EVALUATION_SEED + cfg.fresh)
    fresh, fresh_return = record(make_cartpole(cfg), policy, evaluation)
    shifts = {
        f"pole x{cfg.longer_pole:g} longer": record(make_cartpole(cfg, length=cfg.longer_pole), policy, evaluation),
        f"pole x{cfg.heavier_pole:g} heavier": record(make_cartpole(cfg, mass=cfg.heavier_pole), policy, evaluation),
    }
    return {"env": "CartPole-v1", "reference_variant": "CartPole-v1 as made", "learned_model": "fit_env",
            "ppo_steps": cfg.ppo_steps, "ppo_seconds": trained, "max_episode_steps": cfg.cartpole_steps,
            **measure(ts, fresh, shifts, fresh_return), "seconds": round(time.perf_counter() - started, 1)}


def main(cfg: Config = CONFIG, out_file: Path = harness.RESULTS / "transition_scope.json") -> None:
    torch.set_num_threads(1)
    console = Console(width=160)
    results: dict[str, Any] = {"benchmark": "transition_scope", "config": asdict(cfg), "envs": []}
    runs: list[Callable[[], dict[str, Any]]] = [
        lambda: scenario("cheetah", ("deploy-dynamics",), cfg), lambda: scenario("driving", ("deploy",), cfg),
        lambda: cartpole(cfg),
    ]
    for run in runs:
        row = run()
        results["envs"].append(row)
        console.print(f"{row['env']}: {row['seconds']} s")
    table = Table(title=f"transition scope, alpha={cfg.alpha}, slack={cfg.slack}")
    for col in ("env", "false alarms (95% CI)", "variant", "detected (95% CI)", "mean delay (steps)",
                "mean return ref | shifted"):
        table.add_column(col)
    for row in results["envs"]:
        ind = row["in_distribution"]
        for v, out in row["shifted"].items():
            delay = "-" if out["mean_delay_steps"] is None else f"{out['mean_delay_steps']:.1f}"
            far, found = ind["clopper_pearson_95"], out["clopper_pearson_95"]
            table.add_row(
                row["env"], f"{ind['rate']:.3f} ({far[0]:.3f}-{far[1]:.3f})",
                v, f"{out['detection_rate']:.3f} ({found[0]:.3f}-{found[1]:.3f})",
                delay, f"{ind['mean_return']:.1f} | {out['mean_return']:.1f}",
            )
    console.print(table)
    results["machine"] = harness.machine()
    console.print(f"written to {harness.write(out_file, results)}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("transition_scope", args))
