"""Run a policy on an env and collect episodes: increments, catastrophes, the guard's verdict.

>>> import gymnasium as gym
>>> episodes = rollout(lambda: gym.make("CartPole-v1"), lambda env: (lambda obs: 0), seeds=range(3), objective="reward")
>>> [e.length for e in episodes], episodes[0].score
([11, 10, 9], 11.0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from mesaguard.objective import Objective, Transition, make_objective

__all__ = ["Episode", "Policy", "rollout", "run_episode"]

Policy = Callable[[Any], Any]
EnvFactory = Callable[[], gym.Env]
PolicyFactory = Callable[[gym.Env], Policy]


@dataclass
class Episode:
    """One episode as the bench sees it."""

    seed: int
    increments: np.ndarray
    catastrophes: np.ndarray  # steps (1-based) at which info["catastrophe"] was true
    alarm_step: int | None = None
    detector: str | None = None
    stopped: bool = False  # the guard ended the episode
    acting: list[str] = field(default_factory=list)  # who acted, per step, under a guard
    states: np.ndarray | None = None  # with ``record_states``: the observations the policy acted on

    @property
    def length(self) -> int:
        return int(self.increments.size)

    @property
    def score(self) -> float:
        return float(self.increments.sum())

    @property
    def first_harm(self) -> int | None:
        """First step (1-based) with a negative increment: where harm began, if it did."""
        harm = np.flatnonzero(self.increments < 0)
        return int(harm[0]) + 1 if harm.size else None


def run_episode(env: gym.Env, policy: Policy, seed: int, objective: Objective, record_states: bool = False) -> Episode:
    """Play one episode with ``policy`` from ``env.reset(seed=seed)``."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    states: list[Any] = []
    increments: list[float] = []
    catastrophes: list[int] = []
    acting: list[str] = []
    guard: dict[str, Any] = {}
    done = False
    while not done:
        if record_states:
            states.append(obs)
        action = policy(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        if info.get("mesaguard", {}).get("refused", False):  # a guard stopped it before the action: no step
            guard = info["mesaguard"]
            states = states[:-1]
            break
        step = len(increments) + 1
        increments.append(objective.increment(Transition(float(reward), info, obs, action, next_obs), step))
        if info.get("catastrophe", False):
            catastrophes.append(step)
        guard = info.get("mesaguard", guard)
        if guard:
            acting.append(guard["acting"])
        obs, done = next_obs, terminated or truncated
    alarm = bool(guard.get("alarm", False))
    return Episode(
        seed=int(seed),
        increments=np.asarray(increments),
        catastrophes=np.asarray(catastrophes, dtype=np.int64),
        alarm_step=guard.get("alarm_step") if alarm else None,
        detector=guard.get("detector") if alarm else None,
        stopped=alarm and bool(truncated) and not terminated,
        acting=acting,
        states=np.asarray(states) if record_states else None,
    )


def _run_chunk(
    make_env: EnvFactory, make_policy: PolicyFactory, seeds: Sequence[int], objective: Any, record_states: bool
) -> list[Episode]:
    env = make_env()
    policy = make_policy(env)
    objective = make_objective(objective)
    try:
        return [run_episode(env, policy, s, objective, record_states) for s in seeds]
    finally:
        env.close()


def rollout(
    make_env: EnvFactory,
    make_policy: PolicyFactory,
    seeds: Iterable[int],
    *,
    objective: str | Objective | Callable[[Transition], float] | None = "info:base_objective",
    workers: int = 1,
    on_episode: Callable[[Episode], None] | None = None,
    record_states: bool = False,
) -> list[Episode]:
    """Episodes of ``make_policy(env)`` on ``make_env()``, one per seed, in seed order.

    ``workers > 1`` runs chunks of seeds in worker processes; then ``make_env``,
    ``make_policy`` and ``objective`` must be picklable (module-level functions,
    ``functools.partial`` of them). ``on_episode`` is called as episodes finish
    (for progress bars). ``record_states`` keeps each episode's observations (for
    fitting a :class:`~mesaguard.detectors.scope.Scope`).
    """
    seeds = [int(s) for s in seeds]
    if workers <= 1 or len(seeds) < 2:
        env = make_env()
        policy = make_policy(env)
        obj = make_objective(objective)
        out = []
        try:
            for s in seeds:
                out.append(run_episode(env, policy, s, obj, record_states))
                if on_episode:
                    on_episode(out[-1])
        finally:
            env.close()
        return out
    chunks = [seeds[i::workers] for i in range(workers)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_run_chunk, make_env, make_policy, c, objective, record_states) for c in chunks if c]
        by_seed: dict[int, Episode] = {}
        for f in futures:
            for e in f.result():
                by_seed[e.seed] = e
                if on_episode:
                    on_episode(e)
    return [by_seed[s] for s in seeds]
