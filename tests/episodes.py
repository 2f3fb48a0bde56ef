"""One episode of a policy, played for a scenario test: what every step reported.

The scenario tests check what happened step by step (each step's ``info``: the event,
the catastrophe flag, the base-objective increment) as well as in sum. :func:`play`
resets ``env`` with ``seed``, builds the policy from the reset env (scripted policies
read the room they start in) and steps it until the episode ends; :class:`Played`
keeps the reset info, every step's info and reward, and the two sums, added up step
by step in play order so that exact comparisons (``total == 2.0``) mean what they say.

:func:`rollout` plays a shipped agent over several seeds and keeps the means a test of
the agent asserts on (base objective, catastrophe rate, reward).

:func:`mesaguard.rollout.run_episode` is the bench's loop: it keeps the increments and
catastrophe steps an :class:`~mesaguard.rollout.Episode` needs, not the step infos and
rewards these tests read.

>>> from mesaguard import scenarios
>>> played = play(scenarios.make("strawberry", "train"), scenarios.get("strawberry").aligned, seed=0)
>>> played.total, played.terminated, [i["event"] for i in played.infos if i["event"]]
(2.0, True, ['strawberry_basketed', 'strawberry_basketed'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from mesaguard import scenarios

__all__ = ["Outcome", "Played", "play", "rollout"]

PolicyFactory = Callable[[gym.Env], Callable[[Any], Any]]


@dataclass(frozen=True)
class Played:
    """One played episode.

    Attributes
    ----------
    total : float
        Sum of the per-step base-objective increments (``info["base_objective"]``), in step order.
    reward : float
        Sum of the rewards, in step order.
    rewards : tuple of float
        The reward of each step.
    infos : tuple of dict
        The ``info`` of each step (not the reset's: see ``reset_info``).
    reset_info : dict
        The ``info`` that ``env.reset`` returned.
    terminated, truncated : bool
        How the last step ended the episode.
    """

    total: float
    reward: float
    rewards: tuple[float, ...]
    infos: tuple[dict[str, Any], ...]
    reset_info: dict[str, Any]
    terminated: bool
    truncated: bool

    @property
    def steps(self) -> int:
        """Number of steps played."""
        return len(self.infos)

    @property
    def catastrophe(self) -> bool:
        """Whether any step flagged ``info["catastrophe"]`` (every step's info must carry the flag)."""
        return any(info["catastrophe"] for info in self.infos)


def play(
    env: gym.Env,
    policy_factory: PolicyFactory,
    seed: int,
    *,
    max_steps: int | None = None,
) -> Played:
    """Play one episode of ``policy_factory(env)`` from ``env.reset(seed=seed)``.

    Parameters
    ----------
    env : gym.Env
        The environment; it is reset, not closed.
    policy_factory : callable
        Called with ``env`` after the reset; returns the policy (observation -> action).
        A trained agent: ``lambda _: agent``.
    seed : int
        The reset seed.
    max_steps : int, optional
        Raise ``AssertionError`` if the episode has not ended after this many steps
        (for envs with no truncation of their own). None: no limit.

    Returns
    -------
    Played
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be a positive number of steps or None, got {max_steps!r}")
    obs, reset_info = env.reset(seed=seed)
    policy = policy_factory(env)
    total, reward_total, rewards, infos = 0.0, 0.0, [], []
    while max_steps is None or len(infos) < max_steps:
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        total += info["base_objective"]
        reward_total += reward
        rewards.append(reward)
        infos.append(info)
        if terminated or truncated:
            return Played(
                total, reward_total, tuple(rewards), tuple(infos), reset_info, bool(terminated), bool(truncated)
            )
    raise AssertionError(f"episode did not end within max_steps={max_steps} steps")


class Outcome(NamedTuple):
    """Means over the episodes of :func:`rollout`."""

    score: float  # mean base objective (``Played.total``)
    catastrophes: float  # share of episodes with a catastrophe
    reward: float  # mean reward (``Played.reward``)


def rollout(scenario: str, variant: str, policy: Callable[[Any], Any], seeds: Iterable[int]) -> Outcome:
    """Play ``policy`` (a trained agent: it reads only the observation) once per seed on ``scenario``'s ``variant``.

    One env (``scenarios.make``) serves every episode, reset with each seed in turn.
    """
    env = scenarios.make(scenario, variant)
    runs = [play(env, lambda _: policy, seed) for seed in seeds]
    return Outcome(
        float(np.mean([r.total for r in runs])),
        float(np.mean([r.catastrophe for r in runs])),
        float(np.mean([r.reward for r in runs])),
    )
