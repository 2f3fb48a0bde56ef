"""A trusted base distribution learned from demonstrations on the reference variant (behaviour cloning).

A quantilizer needs a base distribution of actions it can trust. The scripted
aligned policy of a scenario is written knowing the deploy variant's hidden layout,
so as a base it is an oracle (an upper bound). What a deployed system can have is
demonstrations on the *reference* variant, where the agent was checked: a
demonstrator (a person, a scripted controller) acting there, its observations and
actions recorded. :func:`demonstrations` records them, mixing in uniformly random
actions with probability ``noise`` (so every action is seen, and the clone spreads
its mass where the demonstrator was indifferent); :func:`behaviour_clone` fits a
multinomial logistic regression (scikit-learn) of the action on the flattened
observation. The clone's distribution is mixed with the uniform one by ``floor``, so
no action has probability zero (a base of zero mass can never be chosen, however
the agent ranks it).

The clone decides from the observation alone; it never sees the deploy variant.

>>> import gymnasium as gym
>>> env = gym.make("CartPole-v1")
>>> xs, ys = demonstrations(lambda: env, lambda e: (lambda obs: int(obs[2] > 0)), range(20), noise=0.1, seed=0)
>>> base = behaviour_clone(xs, ys, n_actions=2)
>>> p = base(np.array([0.0, 0.0, 0.1, 0.0]))
>>> bool(p[1] > p[0]) and bool(abs(p.sum() - 1) < 1e-9)  # leaning right: push right, mostly
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import gymnasium as gym
import numpy as np

__all__ = ["behaviour_clone", "demonstrations"]


def demonstrations(
    make_env: Callable[[], gym.Env],
    demonstrator: Callable[[gym.Env], Callable[[Any], Any]],
    seeds: Iterable[int],
    noise: float = 0.1,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(observations, actions) of ``demonstrator(env)`` on ``make_env()``, one episode per seed.

    With probability ``noise`` a step's action is uniformly random instead (recorded as taken).
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise={noise!r}; expected a share in [0, 1]")
    env = make_env()
    n = int(env.action_space.n)  # type: ignore[attr-defined]  # discrete actions only
    act = demonstrator(env)
    rng = np.random.default_rng(seed)
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for s in seeds:
        obs, _ = env.reset(seed=int(s))
        done = False
        while not done:
            action = int(rng.integers(n)) if rng.random() < noise else int(act(obs))
            xs.append(np.asarray(obs, dtype=np.float64).ravel())
            ys.append(action)
            obs, _, terminated, truncated, _ = env.step(action)
            done = bool(terminated or truncated)
    if not xs:
        raise ValueError("no demonstration steps; expected at least one seed")
    return np.stack(xs), np.array(ys)


def behaviour_clone(
    observations: np.ndarray, actions: np.ndarray, n_actions: int, floor: float = 0.01
) -> Callable[[Any], np.ndarray]:
    """``base(obs) -> probabilities`` over ``n_actions``: a logistic-regression clone of the demonstrations.

    Actions the demonstrations never show get the ``floor`` share only.
    """
    from sklearn.linear_model import LogisticRegression

    if not 0.0 < floor < 1.0:
        raise ValueError(f"floor={floor!r}; expected a share in (0, 1)")
    x = np.asarray(observations, dtype=np.float64)
    y = np.asarray(actions)
    seen = np.unique(y)
    if seen.size < 2:
        only = np.full(n_actions, floor / n_actions)
        only[int(seen[0])] += 1.0 - floor
        return lambda obs: only.copy()
    clf = LogisticRegression(max_iter=1000).fit(x, y)
    columns = clf.classes_.astype(int)
    uniform = floor / n_actions

    def base(obs: Any) -> np.ndarray:
        p = np.full(n_actions, uniform)
        p[columns] += (1.0 - floor) * clf.predict_proba(np.asarray(obs, dtype=np.float64).reshape(1, -1))[0]
        return p

    return base
