"""Base objectives: the computable true-performance function, recomputed per step.

The base optimizer selected the agent on a base objective. Where it is computable
it can be computed again while the agent runs, one increment ``u_t`` per step; the
guard sums them into the score so far ``S_t``. Three sources:

* :class:`FromReward` -- the env reward (the default);
* :class:`FromInfo` -- a key of ``info`` such as ``info["base_objective"]``, a
  channel the agent cannot tamper with;
* :class:`FromCallable` -- any function of the transition.

Every increment is checked: NaN or an infinite value is an :class:`ObjectiveError`
naming the step and the value.

>>> objective = make_objective("info:base_objective")
>>> objective.increment(Transition(reward=0.0, info={"base_objective": 1.0}), step=3)
1.0
>>> bad = Transition(reward=0.0, info={"base_objective": float("nan")})
>>> objective.increment(bad, step=3)  # doctest: +NORMALIZE_WHITESPACE
Traceback (most recent call last):
...
mesaguard.objective.ObjectiveError: base objective 'info:base_objective' gave increment nan at step 3;
expected a finite number
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "Batch",
    "FromCallable",
    "FromInfo",
    "FromReward",
    "Objective",
    "ObjectiveError",
    "Transition",
    "make_objective",
]


class ObjectiveError(ValueError):
    """An increment that is not a finite number, or a missing objective channel."""

    @classmethod
    def nonfinite(cls, objective: str, value: float, step: int) -> ObjectiveError:
        return cls(f"base objective {objective!r} gave increment {value} at step {step}; expected a finite number")


@dataclass(slots=True)
class Transition:
    """One step as the guard sees it (what a custom objective may read)."""

    reward: float
    info: dict[str, Any] = field(default_factory=dict)
    obs: Any = None
    action: Any = None
    next_obs: Any = None
    terminated: bool = False
    truncated: bool = False


@dataclass(slots=True)
class Batch:
    """One vector-env step as the guard sees it: the same fields as :class:`Transition`, one per sub-env.

    ``infos`` is Gymnasium's vector info (arrays with ``_key`` masks) of the step
    itself (in same-step autoreset the guard has already put the ended sub-envs'
    ``final_info`` there); ``obs``, ``actions`` and ``next_obs`` are indexable per
    sub-env; ``live`` marks the sub-envs that stepped (the others' values are not read).

    >>> batch = Batch(np.array([1.0, 2.0]), {"x": np.array([5, 0]), "_x": np.array([True, False])})
    >>> batch.transition(0).info, batch.transition(1).info
    ({'x': np.int64(5)}, {})
    """

    rewards: np.ndarray
    infos: dict[str, Any]
    obs: Any = None  # each indexable per sub-env: obs[i]
    actions: Any = None
    next_obs: Any = None
    terminated: np.ndarray | None = None
    truncated: np.ndarray | None = None
    live: np.ndarray | None = None

    def info(self, i: int) -> dict[str, Any]:
        """Sub-env ``i``'s own info dict."""
        out: dict[str, Any] = {}
        for key, values in self.infos.items():
            if key.startswith("_") or not isinstance(values, np.ndarray):
                continue
            present = self.infos.get("_" + key)
            if present is None or present[i]:
                out[key] = values[i]
        return out

    def transition(self, i: int) -> Transition:
        """Sub-env ``i``'s step as a :class:`Transition`."""

        def at(values: Any) -> Any:
            return None if values is None else values[i]

        return Transition(
            float(self.rewards[i]),
            self.info(i),
            at(self.obs),
            at(self.actions),
            at(self.next_obs),
            bool(at(self.terminated)),
            bool(at(self.truncated)),
        )


class Objective:
    """Base class: subclasses implement :meth:`value`; :meth:`increment` checks it."""

    name: str = "objective"

    def value(self, transition: Transition) -> float:
        raise NotImplementedError

    def increment(self, transition: Transition, step: int) -> float:
        """The checked increment ``u_t`` of step ``step`` (1-based within the episode)."""
        return self._checked(float(self.value(transition)), step)

    def _checked(self, u: float, step: int) -> float:
        if not math.isfinite(u):
            raise ObjectiveError.nonfinite(self.name, u, step)
        return u

    def step_increment(
        self, reward: Any, info: dict[str, Any], obs: Any, action: Any, next_obs: Any, terminated: Any,
        truncated: Any, step: int,
    ) -> float:
        """:meth:`increment` of one env's step given as the fields of its :class:`Transition` (the one-env guard's
        hot path: objectives that read less than the whole transition skip building it)."""
        transition = Transition(float(reward), info, obs, action, next_obs, bool(terminated), bool(truncated))
        return self.increment(transition, step)

    def batch_values(self, batch: Batch) -> np.ndarray:
        """Unchecked values of a vector env step, one per sub-env (NaN where unknown; the guard checks).

        The default calls :meth:`value` on each live sub-env's :class:`Transition`.
        """
        n = len(batch.rewards)
        live = range(n) if batch.live is None else np.flatnonzero(batch.live)
        values = np.full(n, np.nan)
        for i in live:
            values[i] = self.value(batch.transition(int(i)))
        return values


class FromReward(Objective):
    """The env reward is the base objective (the default)."""

    name = "reward"

    def value(self, transition: Transition) -> float:
        return transition.reward

    def step_increment(
        self, reward: Any, info: dict[str, Any], obs: Any, action: Any, next_obs: Any, terminated: Any,
        truncated: Any, step: int,
    ) -> float:
        return self._checked(float(reward), step)

    def batch_values(self, batch: Batch) -> np.ndarray:
        return batch.rewards


class FromInfo(Objective):
    """Read the increment from ``info[key]``, a channel the agent's reward cannot alter."""

    def __init__(self, key: str = "base_objective") -> None:
        self.key = key
        self.name = f"info:{key}"

    def value(self, transition: Transition) -> float:
        try:
            value: float = transition.info[self.key]
        except KeyError:
            raise ObjectiveError(
                f"info has no key {self.key!r} (keys: {sorted(transition.info)}); "
                f"the env must report the base objective there, or choose another objective"
            ) from None
        return value

    def batch_values(self, batch: Batch) -> np.ndarray:
        if self.key not in batch.infos:  # no sub-env reported it (the guard names the missing key per sub-env)
            return np.full(len(batch.rewards), np.nan)
        values = np.asarray(batch.infos[self.key], dtype=np.float64)
        present = batch.infos.get("_" + self.key)
        return values if present is None else np.where(present, values, np.nan)


class FromCallable(Objective):
    """A user function of the :class:`Transition`."""

    def __init__(self, fn: Callable[[Transition], float], name: str | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"objective must be callable, got {fn!r}")
        self.fn = fn
        self.name = name or str(getattr(fn, "__name__", "callable"))

    def value(self, transition: Transition) -> float:
        return self.fn(transition)


def make_objective(spec: str | Objective | Callable[[Transition], float] | None = None) -> Objective:
    """``None`` or ``"reward"``, ``"info:KEY"``, an :class:`Objective`, or a callable."""
    if spec is None or spec == "reward":
        return FromReward()
    if isinstance(spec, Objective):
        return spec
    if isinstance(spec, str):
        if spec.startswith("info:") and len(spec) > 5:
            return FromInfo(spec[5:])
        raise ObjectiveError(f"unknown objective {spec!r}; expected 'reward', 'info:KEY' or a callable")
    return FromCallable(spec)
