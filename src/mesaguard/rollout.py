"""Run a policy on an env and collect episodes: increments, catastrophes, the guard's verdict.

>>> import gymnasium as gym
>>> episodes = rollout(lambda: gym.make("CartPole-v1"), lambda env: (lambda obs: 0), seeds=range(3), objective="reward")
>>> [e.length for e in episodes], episodes[0].score
([11, 10, 9], 11.0)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import gymnasium as gym
import numpy as np

from mesaguard.objective import Objective, Transition, make_objective

__all__ = ["Episode", "EpisodeLog", "Policy", "policy_for", "rollout", "run_episode"]

Policy = Callable[[Any], Any]
EnvFactory = Callable[[], gym.Env]
PolicyFactory = Callable[[gym.Env], Policy]


def _takes_env(fn: Callable[..., Any]) -> bool:
    """The factory convention: the first parameter is named ``env``."""
    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False
    return bool(params) and params[0] == "env"


def policy_for(policy: Any, env: gym.Env) -> Policy:
    """The policy ``obs -> action`` that ``policy`` stands for on ``env``, whatever the user holds.

    * a model with Stable-Baselines3's ``predict`` (an SB3 model as it is): wrapped
      with :func:`mesaguard.protocols.predict_policy` (``predict`` returns a tuple);
    * a callable whose first parameter is named ``env``: a factory ``env -> policy``;
    * any other callable: the policy itself.

    >>> import gymnasium as gym
    >>> env = gym.make("CartPole-v1")
    >>> policy_for(lambda obs: 1, env)(None), policy_for(lambda env: (lambda obs: 0), env)(None)
    (1, 0)
    """
    if callable(getattr(policy, "predict", None)) and not inspect.isroutine(policy):
        from mesaguard.protocols import predict_policy

        return predict_policy(policy)
    if not callable(policy):
        raise TypeError(f"policy={policy!r}: a {type(policy).__name__}; expected a callable obs -> action, a factory "
                        f"whose first parameter is env, or a model with predict (Stable-Baselines3)")
    return cast(Policy, policy(env) if _takes_env(policy) else policy)


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
    actions: list[Any] | None = None  # with ``record_states``: the actions it took on them

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


class EpisodeLog:
    """One episode being played, step by step: what :class:`Episode` holds, built as it goes.

    :func:`run_episode` drives it from a loop; a wrapper can drive it from inside an
    env (continual deployment, where SB3 runs the loop). A step the guard refused
    (``info["mesaguard"]["refused"]``) is not a step: it ends the log without an
    increment.
    """

    def __init__(self, seed: int, objective: Objective, record_states: bool = False) -> None:
        self.seed, self.objective, self.record_states = int(seed), objective, record_states
        self.states: list[Any] = []
        self.actions: list[Any] = []
        self.increments: list[float] = []
        self.catastrophes: list[int] = []
        self.acting: list[str] = []
        self.guard: dict[str, Any] = {}
        self.terminated = self.truncated = False

    def step(self, obs: Any, action: Any, reward: float, next_obs: Any, terminated: bool, truncated: bool,
             info: dict[str, Any]) -> bool:
        """Log one transition; returns True when the episode is over (ended, or the step was refused)."""
        if info.get("mesaguard", {}).get("refused", False):  # a guard stopped it before the action: no step
            self.guard = info["mesaguard"]
            return True
        if self.record_states:
            self.states.append(obs)
            self.actions.append(action)
        step = len(self.increments) + 1
        self.increments.append(self.objective.increment(Transition(float(reward), info, obs, action, next_obs), step))
        if info.get("catastrophe", False):
            self.catastrophes.append(step)
        self.guard = info.get("mesaguard", self.guard)
        if self.guard:
            self.acting.append(self.guard["acting"])
        self.terminated, self.truncated = bool(terminated), bool(truncated)
        return self.terminated or self.truncated

    def episode(self) -> Episode:
        alarm = bool(self.guard.get("alarm", False))
        return Episode(
            seed=self.seed,
            increments=np.asarray(self.increments),
            catastrophes=np.asarray(self.catastrophes, dtype=np.int64),
            alarm_step=self.guard.get("alarm_step") if alarm else None,
            detector=self.guard.get("detector") if alarm else None,
            stopped=alarm and self.truncated and not self.terminated,
            acting=self.acting,
            states=np.asarray(self.states) if self.record_states else None,
            actions=self.actions if self.record_states else None,
        )


def run_episode(env: gym.Env, policy: Policy, seed: int, objective: Objective, record_states: bool = False) -> Episode:
    """Play one episode with ``policy`` from ``env.reset(seed=seed)``."""
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    log = EpisodeLog(seed, objective, record_states)
    done = False
    while not done:
        action = policy(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        done = log.step(obs, action, float(reward), next_obs, terminated, truncated, info)
        obs = next_obs
    return log.episode()


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
    objective: str | Objective | Callable[[Transition], float] | None = None,
    workers: int = 1,
    on_episode: Callable[[Episode], None] | None = None,
    record_states: bool = False,
) -> list[Episode]:
    """Episodes of ``make_policy(env)`` on ``make_env()``, one per seed, in seed order.

    ``workers > 1`` runs chunks of seeds in worker processes; then ``make_env``,
    ``make_policy`` and ``objective`` must be picklable (module-level functions,
    ``functools.partial`` of them). ``on_episode`` is called as episodes finish
    (for progress bars). ``record_states`` keeps each episode's observations and
    actions (for fitting a :class:`~mesaguard.scope.Scope`, or a shield's bound on its model).
    ``objective`` defaults to the reward, as everywhere in the library
    (:func:`mesaguard.objective.make_objective`); the scenarios report theirs as ``"info:base_objective"``.
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
