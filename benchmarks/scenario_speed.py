"""Steps per second of each scenario against plain MiniGrid of the same size.

What it measures: random actions (the same precomputed sequence for both), resetting
at episode ends, one process; each scenario as the agent sees it (``scenario.make``:
registry, checker, observation wrapper) against ``MiniGrid-Empty-*`` of the nearest
size under ``ImgObsWrapper`` (the cheapest way to get a plain array observation).
Interleaved blocks, median of 5 rounds: a ratio above 1 means the scenario is faster.
Target (issue 3): within 1.5x of plain MiniGrid, i.e. ratio >= 0.67.

Run: ``.venv/bin/python benchmarks/scenario_speed.py [--quick] [--out FILE]`` (about 30 s).
Results: printed, and written to ``benchmarks/results/scenario_speed.json``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import harness
import minigrid  # noqa: F401  registers MiniGrid-*
import numpy as np
from minigrid.minigrid_env import MiniGridEnv
from minigrid.wrappers import ImgObsWrapper
from rich.console import Console
from rich.table import Table

from mesaguard.scenarios import SCENARIOS


@dataclass(frozen=True)
class Config:
    seed: int = 0
    steps: int = 4000  # per round and env
    rounds: int = 5


QUICK = Config(steps=200, rounds=2)

# MiniGrid's Empty rooms come in 5, 6, 8 and 16: the nearest at least as large as each scenario.
PLAIN = {6: "MiniGrid-Empty-6x6-v0", 7: "MiniGrid-Empty-8x8-v0", 8: "MiniGrid-Empty-8x8-v0", 9: "MiniGrid-Empty-8x8-v0"}


def steps_per_second(env: gym.Env, actions: np.ndarray, seed: int) -> float:
    env.reset(seed=seed)
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(int(a))
        if terminated or truncated:
            env.reset()
    return len(actions) / (time.perf_counter() - start)


def main(cfg: Config = Config(), out: Path = harness.RESULTS / "scenario_speed.json") -> None:
    rng = np.random.default_rng(cfg.seed)
    results = []
    for s in SCENARIOS.values():
        env = s.make(s.variants[0])
        if not isinstance(env.unwrapped, MiniGridEnv):  # driving and cheetah: no plain MiniGrid to compare with
            continue
        size = max(env.unwrapped.width, env.unwrapped.height)
        plain = ImgObsWrapper(gym.make(PLAIN[size]))
        actions = rng.integers(0, min(env.action_space.n, plain.action_space.n), cfg.steps)
        speed = harness.interleaved(
            {
                "scenario": lambda env=env, actions=actions: steps_per_second(env, actions, cfg.seed),
                "plain": lambda plain=plain, actions=actions: steps_per_second(plain, actions, cfg.seed),
            },
            cfg.rounds,
        )
        median = {name: float(np.median(v)) for name, v in speed.items()}
        row = {
            "scenario": s.name,
            "size": size,
            "plain": PLAIN[size],
            "scenario_steps_per_s": median["scenario"],
            "plain_steps_per_s": median["plain"],
            "ratio": harness.ratios(median, baseline="plain")["scenario"],
        }
        results.append(row)

    table = Table(title="steps per second, random actions (median of rounds)")
    for col in ("scenario", "plain MiniGrid", "scenario steps/s", "plain steps/s", "ratio (target >= 0.67)"):
        table.add_column(col)
    for r in results:
        table.add_row(r["scenario"], r["plain"], f"{r['scenario_steps_per_s']:,.0f}", f"{r['plain_steps_per_s']:,.0f}",
                      f"{r['ratio']:.2f}")
    Console().print(table)
    written = harness.write(
        out, {"benchmark": "scenario_speed", "config": asdict(cfg), "results": results, "machine": harness.machine()}
    )
    print(f"wrote {written}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else Config(), harness.out_path("scenario_speed", args))
