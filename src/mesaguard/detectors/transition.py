"""The transition detector: does the world still move the way the learned model says it does?

The state scope asks whether a state looks like the reference states; a change of
physics (a heavier torso, a longer pole, other traffic) can leave every state
looking ordinary and the reward normal while the *dynamics* differ. This detector
watches the one-step prediction error of a learned world model
(:class:`~mesaguard.safeguards.learned.LearnedModel`, fitted on reference-variant
transitions) on each transition ``(obs, action, next_obs)`` the deployed env
produced.

The nonconformity of a transition is the root mean square over the observation's
dimensions of the normalized error of the members' mean prediction::

    s = sqrt(mean_j ((next_obs_j - predict(obs, action)_j) / spread_j) ** 2)

``spread_j`` is the error's root mean square in dimension ``j`` on the fit fold of
reference transitions (floored at :data:`SPREAD_FLOOR`), so a dimension the model
predicts well is held to that standard and a noisy one does not dominate.

Everything after the score is the state scope's: conformal p-values against the
reference fold's scores, evidence ``-log p~``, CUSUM with slack and the statistic
``max(e_t, C_t)`` (:mod:`mesaguard.detectors.scope`; :class:`TransitionDetector` *is*
a :class:`~mesaguard.detectors.scope.ScopeDetector` whose "states" are transition
rows). A row is ``[obs, action, next_obs]`` flattened (a ``Discrete`` action as one
number), so the evidence's cache and the scalar/vector agreement carry over.

Fail closed: a model that raises, or a score that is not a finite number (a model
returning NaN), raises :class:`~mesaguard.detectors.base.DetectorError` or the
model's own error; the guard turns either into an alarm with detector ``"error"``.
It knows no threshold: :class:`mesaguard.transition_scope.TransitionScope` holds the
conformal one.
"""

from __future__ import annotations

from typing import Any, Protocol, Self, cast

import numpy as np
from gymnasium import spaces

from mesaguard.detectors.base import DetectorError
from mesaguard.detectors.scope import ScopeDetector, StateEvidence

__all__ = [
    "SPREAD_FLOOR",
    "OneStepModel",
    "TransitionDetector",
    "TransitionScorer",
    "action_size",
    "fit_spread",
    "transition_evidence",
    "transition_rows",
]

SPREAD_FLOOR = 1e-6  # a dimension the model predicts exactly on the fit fold still has a finite error scale


class OneStepModel(Protocol):
    """What the detector needs of a model: its spaces (read only) and a batched mean one-step prediction."""

    @property
    def observation_space(self) -> spaces.Space[Any]: ...

    @property
    def action_space(self) -> spaces.Space[Any]: ...

    def predict(self, obs: Any, action: Any) -> np.ndarray: ...


def action_size(action_space: spaces.Space[Any]) -> int:
    """Numbers one action takes in a transition row: 1 for a ``Discrete`` space, the flat size of a ``Box``."""
    if isinstance(action_space, spaces.Discrete):
        return 1
    if isinstance(action_space, spaces.Box):
        return int(np.prod(action_space.shape))
    raise DetectorError(f"action space {action_space}; a transition detector needs a Box or a Discrete")


def transition_rows(obs: Any, action: Any, next_obs: Any, obs_size: int, act_size: int) -> np.ndarray:
    """``(n, 2 * obs_size + act_size)``: each transition's observation, action and next observation, flat, float64."""
    x = np.asarray(obs, dtype=np.float64).reshape(-1, obs_size)
    n = x.shape[0]
    a = np.asarray(action, dtype=np.float64).reshape(n, act_size)
    y = np.asarray(next_obs, dtype=np.float64).reshape(n, obs_size)
    return np.concatenate([x, a, y], axis=1)


class TransitionScorer:
    """Nonconformity of transition rows: the RMS normalized one-step error of ``model`` (module docstring).

    The same ``__call__(x: (n, D)) -> (n,)`` interface as the state scope's scorers, so the
    state scope's evidence (p-values, cache) runs on it unchanged.
    """

    method = "transition"
    k = 1

    def __init__(self, model: OneStepModel, spread: np.ndarray) -> None:
        self.model = model
        self.obs_size = int(np.prod(model.observation_space.shape or ()))
        self.act_size = action_size(model.action_space)
        self.discrete = isinstance(model.action_space, spaces.Discrete)
        spread = np.asarray(spread, dtype=np.float64)
        if spread.shape != (self.obs_size,) or not (np.isfinite(spread).all() and (spread > 0).all()):
            raise DetectorError(f"spread has shape {spread.shape}; expected ({self.obs_size},) positive finite numbers")
        self.spread = spread

    @property
    def row_size(self) -> int:
        return 2 * self.obs_size + self.act_size

    def errors(self, x: np.ndarray) -> np.ndarray:
        """``(n, obs_size)``: ``next_obs - predict(obs, action)`` for each row; raises if not finite."""
        d, a = self.obs_size, self.act_size
        action = x[:, d : d + a]
        act: np.ndarray = np.rint(action[:, 0]).astype(np.int64) if self.discrete else action
        predicted = np.asarray(self.model.predict(x[:, :d], act), dtype=np.float64)
        if predicted.shape != (x.shape[0], d):
            raise DetectorError(f"the model predicted shape {predicted.shape}; expected ({x.shape[0]}, {d})")
        error = x[:, d + a :] - predicted
        if not np.isfinite(error).all():
            raise DetectorError("the model's one-step prediction holds NaN or infinity; the transition can't be judged")
        return error

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Each row's score ``sqrt(mean_j (error_j / spread_j) ** 2)``."""
        scores: np.ndarray = np.sqrt(np.mean((self.errors(x) / self.spread) ** 2, axis=1))
        return scores


def fit_spread(model: OneStepModel, rows: np.ndarray) -> np.ndarray:
    """Per-dimension RMS one-step error of ``model`` on ``rows`` (the fit fold), floored at :data:`SPREAD_FLOOR`."""
    probe = TransitionScorer(model, np.ones(int(np.prod(model.observation_space.shape or ()))))
    error = probe.errors(rows)
    spread: np.ndarray = np.maximum(np.sqrt(np.mean(error**2, axis=0)), SPREAD_FLOOR)
    return spread


class TransitionDetector(ScopeDetector):
    """The transition statistic over ``n_envs`` envs; call :meth:`update_transition` after each step.

    The state scope's detector on transition rows (module docstring): ``reset(mask)`` at
    the start of episodes, ``update_transition(obs, action, next_obs, mask)`` with each
    env's previous observation, the action executed and the observation it led to; it
    returns the statistic per env. ``score``, ``p_value``, ``cusum`` stay readable.
    """

    name = "transition"

    def __init__(self, evidence: StateEvidence, slack: float | None, n_envs: int = 1) -> None:
        scorer = cast(TransitionScorer, evidence.scorer)
        super().__init__(evidence, slack, (scorer.row_size,), n_envs)
        self.obs_size, self.act_size = scorer.obs_size, scorer.act_size

    def with_envs(self, n_envs: int) -> Self:
        return type(self)(self.evidence, self.slack, n_envs)

    def rows(self, obs: Any, action: Any, next_obs: Any) -> np.ndarray:
        """The transition rows of ``n_envs`` (or one) transitions."""
        return transition_rows(obs, action, next_obs, self.obs_size, self.act_size)

    def update_transition(self, obs: Any, action: Any, next_obs: Any, mask: np.ndarray | None = None) -> np.ndarray:
        """Feed each env's transition; only the envs of ``mask`` take a step (the others' rows are ignored)."""
        x = self.rows(obs, action, next_obs)
        if mask is not None:
            x = np.where(np.asarray(mask, dtype=bool)[:, None], x, 0.0)  # rows of envs that did not step never count
        return self.update(x, mask)


def transition_evidence(model: OneStepModel, spread: np.ndarray, reference_scores: np.ndarray) -> StateEvidence:
    """The state scope's evidence with the transition scorer (a scorer with its ``__call__`` interface)."""
    return StateEvidence(cast(Any, TransitionScorer(model, spread)), reference_scores)
