"""Your own task, end to end: a Gymnasium env, your own SB3 agent, your own base objective, a shift.

The task is CartPole-v1. The agent is a PPO policy trained here (seconds). The base
objective is the user's, not the reward: a *safety margin*, how far the pole
stays from the angle at which the episode fails (1 upright, 0 at the limit),
computed from the observation the agent cannot change. In deployment the pole
is three times longer: the agent, tuned to the short pole, lets it fall more
often, and the margin shrinks before it does.

Steps, all with mesaguard's public API:

1. calibrate the guard on in-distribution episodes (``rollout`` + ``Calibration.fit``);
2. deploy it in a vector env (``GuardedVectorEnv``) on fresh in-distribution
   episodes and on the longer pole, with ``Alert`` (to measure) and a ``Fallback``;
3. report false alarms, detection of the falls and how many steps before the fall
   the alarm came, with 95% intervals (``metrics.rate``).

Run: ``python examples/own_task.py [--quick] [--out FILE]``; it writes
``benchmarks/results/example_own_task.json``, from which ``docs/build.py`` makes the
table in ``docs/own-task.md``. ``tests/test_examples.py`` runs it quickly.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.vector import SyncVectorEnv
from stable_baselines3 import PPO

from mesaguard import Alert, Calibration, Fallback, GuardedVectorEnv
from mesaguard.metrics import rate
from mesaguard.objective import Transition
from mesaguard.protocols import predict_policy
from mesaguard.rollout import rollout

ANGLE_LIMIT = 12 * 2 * np.pi / 360  # CartPole-v1 fails an episode when the pole leans past 12 degrees
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "example_own_task.json"


def margin(t: Transition) -> float:
    """The user's base objective per step: 1 with the pole upright, 0 at the failing angle."""
    return 1.0 - abs(float(t.next_obs[2])) / ANGLE_LIMIT


def make_env(length: float = 0.5) -> gym.Env:
    """CartPole-v1 with a pole of half-length ``length`` (the stock pole: 0.5)."""
    env = gym.make("CartPole-v1")
    cartpole = env.unwrapped
    cartpole.length = length
    cartpole.polemass_length = cartpole.masspole * length
    return env


def train(timesteps: int, seed: int = 0) -> PPO:
    model = PPO("MlpPolicy", make_env(), seed=seed, verbose=0, n_steps=512, batch_size=128, learning_rate=1e-3)
    return model.learn(timesteps)


def deploy(cal: Calibration, policy, length: float, episodes: int, seed: int, fallback=None) -> list[dict]:
    """Guarded episodes in a vector env of 8: per episode, its length, whether it fell, alarm step, acting."""
    protocol = [Alert(lambda alarm: None)] if fallback is None else [Fallback(fallback)]
    env = GuardedVectorEnv(SyncVectorEnv([lambda: make_env(length)] * 8), cal, protocol=protocol, objective=margin)
    obs, _ = env.reset(seed=seed)
    done: list[dict] = []
    while len(done) < episodes:
        obs, _, terminated, truncated, info = env.step(np.array([policy(o) for o in obs]))
        report = info["mesaguard"]
        for i in np.flatnonzero(terminated | truncated):
            done.append({"length": int(report["step"][i]), "fell": bool(terminated[i]),
                         "alarm_step": int(report["alarm_step"][i]) if report["alarm"][i] else None})
    return done[:episodes]


def summary(runs: list[dict]) -> dict:
    falls = [r for r in runs if r["fell"]]
    caught = [r for r in falls if r["alarm_step"] is not None]
    lead = [r["length"] - r["alarm_step"] for r in caught]
    alarms = sum(r["alarm_step"] is not None for r in runs)
    return {"episodes": len(runs), "alarmed": asdict(rate(alarms, len(runs))), "falls": len(falls),
            "falls_caught": asdict(rate(len(caught), len(falls))) if falls else None,
            "mean_steps_before_fall": float(np.mean(lead)) if lead else None}


def main(quick: bool = False, out: Path = RESULTS) -> dict:
    start = time.perf_counter()
    n_cal, n_eval, steps = (120, 60, 20_000) if quick else (400, 300, 30_000)
    model = train(steps)
    policy = predict_policy(model)
    episodes = rollout(make_env, lambda env: policy, range(n_cal), objective=margin)
    cal = Calibration.fit([e.increments for e in episodes], alpha=0.05, detectors=["envelope", "meanshift"],
                          objective=margin)  # recorded: a guard computing another objective is an error
    results = {
        "config": {"quick": quick, "calibration_episodes": n_cal, "episodes": n_eval, "ppo_timesteps": steps},
        "in_distribution": summary(deploy(cal, policy, 0.5, n_eval, seed=10_000)),
        "longer_pole": summary(deploy(cal, policy, 1.5, n_eval, seed=20_000)),
    }
    fallback = deploy(cal, policy, 1.5, n_eval, seed=20_000, fallback=lambda obs: int(obs[2] + 0.5 * obs[3] > 0))
    results["longer_pole_with_fallback"] = summary(fallback)
    results["seconds"] = round(time.perf_counter() - start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    json.dump(main(args.quick, args.out), sys.stdout, indent=1)
