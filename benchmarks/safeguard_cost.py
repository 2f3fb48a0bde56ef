"""What each preventive safeguard costs: agent steps per second, against the unguarded agent.

The shipped agent on each gridworld's reference variant (where a safeguard has the
least to do: its cost there is its overhead), the safeguards built exactly as the
bench builds them (:data:`mesaguard.bench.SAFEGUARDS`, fitted on 100 calibration
episodes), episodes interleaved round by round in one process so machine noise hits
all alike; the median of 3 rounds of 30 episodes each. Steps per second include the
agent's own forward pass (torch, one thread), as a deployment would.

``continual`` (:data:`mesaguard.bench.LEARNING`) is the agent learning as it runs:
PPO's sampling, its value head and an update per 64 steps, under every detector
jointly; each round builds the PPO model afresh (a deployment's start) and plays
the round's 30 episodes. ``impact`` has no run-time cost (the same network, trained
on another reward) and is not measured.

Driving and the cheetah come last (the quantilizer is not run on the cheetah's
continuous actions). Run: ``.venv/bin/python benchmarks/safeguard_cost.py [--quick] [--out FILE]`` (about 20
minutes; ``--quick``: lava alone, one round of 2 episodes). Results: printed and written to
``benchmarks/results/safeguard_cost.json``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import gymnasium as gym
import harness
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from mesaguard.bench import LEARNING, SAFEGUARDS, BenchConfig, calibrate, fit_safeguards
from mesaguard.experiment import OBJECTIVE, plain_env, policy_factory
from mesaguard.objective import make_objective
from mesaguard.rollout import run_episode
from mesaguard.scenarios import get

SCENARIOS = ("lava", "side-effects", "strawberry", "goodhart", "driving", "cheetah")
NAMES = ("scope", "shield[simulator]", "shield[learned]", "shield[copy]", "quantilizer", "combined[copy]")
COLUMNS = (*NAMES, "continual")
ROUNDS, EPISODES = 3, 30


def main(
    scenarios: tuple[str, ...] = SCENARIOS,
    rounds: int = ROUNDS,
    episodes: int = EPISODES,
    out: Path = harness.RESULTS / "safeguard_cost.json",
) -> None:
    ROUNDS, EPISODES = rounds, episodes  # this run's settings (the body reads these names)
    torch.set_num_threads(1)
    console = Console()
    objective = make_objective(OBJECTIVE)
    results = {}
    for scenario in scenarios:
        discrete = isinstance(get(scenario).make(get(scenario).reference_variant).action_space, gym.spaces.Discrete)
        names = [n for n in NAMES if discrete or n != "quantilizer"]  # the quantilizer needs discrete actions
        spec = BenchConfig((scenario,), ("threshold", "envelope", "cusum", "meanshift"), (0,), ROUNDS * EPISODES, 100,
                           safeguards=(*names, "continual")).jobs()[0]
        variant = get(scenario).reference_variant
        cal_runs, cal = calibrate(spec, policy_factory(scenario, "agent"), "agent", record_states=True)
        cal = dataclasses.replace(cal, match="linear")  # the joint rule the recorded tables were measured with
        fitted = fit_safeguards(spec, cal_runs)
        runners = {"none": (functools.partial(plain_env, scenario, variant), policy_factory(scenario, "agent"))}
        runners.update({name: SAFEGUARDS[name](spec, variant, cal, fitted) for name in names})
        built = {name: (make_env(), make_policy) for name, (make_env, make_policy) in runners.items()}
        policies = {name: make_policy(env) for name, (env, make_policy) in built.items()}
        speed: dict[str, list[float]] = {name: [] for name in [*built, "continual"]}
        seeds = list(spec.seeds("evaluation"))
        for r in range(ROUNDS):
            for name, (env, _) in built.items():
                start, steps = time.perf_counter(), 0
                for seed in seeds[r * EPISODES : (r + 1) * EPISODES]:
                    steps += run_episode(env, policies[name], seed, objective).length
                speed[name].append(steps / (time.perf_counter() - start))
            start = time.perf_counter()
            played = LEARNING["continual"](dataclasses.replace(spec, episodes=EPISODES), variant, fitted, None)
            speed["continual"].append(sum(e.length for e in played) / (time.perf_counter() - start))
        med = {name: float(np.median(v)) for name, v in speed.items()}
        results[scenario] = {"steps_per_s": med, "ratio": {n: med[n] / med["none"] for n in med}}
        console.print(f"{scenario}: {results[scenario]['ratio']}")
    table = Table(title="steps per second, as a share of the unguarded agent's (reference variant)")
    table.add_column("scenario")
    table.add_column("unguarded steps/s")
    for name in COLUMNS:
        table.add_column(name)
    for scenario, r in results.items():
        cells = [f"{r['ratio'][n]:.2f}" if n in r["ratio"] else "-" for n in COLUMNS]
        table.add_row(scenario, f"{r['steps_per_s']['none']:.0f}", *cells)
    console.print(table)
    console.print(f"wrote {harness.write(out, {**results, 'machine': harness.machine()})}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    if args.quick:
        main(("lava",), rounds=1, episodes=2, out=harness.out_path("safeguard_cost", args))
    else:
        main(out=harness.out_path("safeguard_cost", args))
