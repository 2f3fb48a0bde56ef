"""A fitted scope: the state scope's folds, its conformal threshold and its file.

The streaming statistic is :class:`mesaguard.detectors.scope.ScopeDetector`'s (a
detector like the others); this module fits it and calibrates it by the one rule of
:mod:`mesaguard.calibration`. Three folds of in-distribution episodes, split by
episode so that no state is used twice:

1. **fit** (first half of ``fit_split(n)``): the reference states the scorer
   measures against (:mod:`mesaguard.detectors.scorers`);
2. **reference** (second half): the scores of its states make the per-state
   conformal p-values;
3. **threshold** (the held-out rest): the statistic is run over each episode and the
   episode's maximum kept; the threshold is their conformal quantile. A new
   in-distribution episode raises a false alarm with probability at most ``alpha``,
   exactly, whatever the dependence within episodes.

In a guard: ``det = scope.detector(n_envs)`` (or ``.scalar()`` for one env);
``det.reset(mask)`` when episodes start; ``det.update(obs)`` on the observation
that reset or step returned, before the agent acts on it; the alarm is
``statistic > scope.threshold``, so the protocol takes the action that would have
been taken in that state.

Files: ``scope.save("scope.json")`` writes the JSON (the header of
:mod:`mesaguard.artifacts`: format, schema version, content hash, and a signature
with ``signing_key=``; method, parameters, threshold, per-episode maxima, obs
shape, scenario, and the sha256 of the arrays) and ``scope.npz`` beside it (the
fit fold's distinct states or the Mahalanobis location and precision, and the
reference scores), loaded with ``allow_pickle=False``. :meth:`Scope.load` checks
every value for what it means (see there) and, with ``verify_key=``, the signature.

What it catches, misses and costs on the shipped agents: ``benchmarks/scope.py``, its
figures in ``benchmarks/results/scope.json``, shown in ``docs/results.md``. An
observation-based scope sees only what the observation shows: in ``strawberry`` a
deployment room (two red balls, one yellow) looks exactly like a training room (only
the hidden kind of each ball moved), so no scope catches that shift.

>>> rng = np.random.default_rng(0)
>>> episodes = [rng.normal(size=(20, 2)) for _ in range(80)]
>>> scope = Scope.fit(episodes, method="knn", k=5, alpha=0.1)
>>> scope.n_fit, scope.n_reference, scope.n_cal, scope.rank
(20, 20, 40, 37)
>>> det = scope.detector(n_envs=2)
>>> stat = det.update(np.array([[0.1, -0.2], [6.0, 6.0]]))  # before the agent acts
>>> (stat > scope.threshold).tolist()
[False, True]
>>> float(scope.p_values(np.array([[6.0, 6.0]]))[0]) == 1 / (scope.n_reference_states + 1)
True
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesaguard.artifacts import Kind, VerifyKeys, arrays_hash
from mesaguard.calibration import (
    CalibrationError,
    check_alpha,
    conformal_rank,
)
from mesaguard.conformal import ThresholdFit
from mesaguard.detectors.base import DetectorError
from mesaguard.detectors.scope import ScopeDetector, StateEvidence, check_states
from mesaguard.detectors.scorers import METHODS, StateScorer, check_k
from mesaguard.files import write_atomic

__all__ = ["METHODS", "SCHEMA_VERSION", "Scope", "ScopeError"]

SCHEMA_VERSION = 1
FORMAT = "mesaguard.scope"


class ScopeError(CalibrationError, DetectorError):
    """Bad scope input: NaN or misshapen observations, too few episodes, a corrupt, foreign or unsigned file."""


KIND = Kind("scope", FORMAT, SCHEMA_VERSION, ScopeError, "Fit the scope again with this version.")


def _check_k(k: Any) -> int:
    try:
        return check_k(k)
    except DetectorError as exc:
        raise ScopeError(str(exc)) from None


def _states(states: Any, obs_shape: tuple[int, ...], what: str) -> np.ndarray:
    """:func:`~mesaguard.detectors.scope.check_states`, its error a :class:`ScopeError`."""
    try:
        return check_states(states, obs_shape, what)
    except DetectorError as exc:
        raise ScopeError(str(exc)) from None


def _check_slack(slack: Any) -> float | None:
    number = isinstance(slack, (int, float)) and not isinstance(slack, bool)
    if slack is not None and not (number and math.isfinite(slack) and slack >= 0):
        raise ScopeError(f"slack={slack!r}; expected a non-negative number of nats, or None for per-state only")
    return None if slack is None else float(slack)


def _check_episodes(episodes: Sequence[Any]) -> tuple[list[np.ndarray], tuple[int, ...]]:
    """Episodes of observations, each ``(T_i, *obs_shape)`` with ``T_i >= 1``, one shape for all."""
    arrays = [np.asarray(e, dtype=np.float64) for e in episodes]
    if not arrays:
        raise ScopeError("got no episodes; expected arrays of shape (T, *obs_shape), the states the agent acted in")
    shape = arrays[0].shape[1:]
    if arrays[0].ndim < 2:
        raise ScopeError(
            f"episode 0 has shape {arrays[0].shape}; expected (T, *obs_shape) with at least one obs dimension"
        )
    out = []
    for i, e in enumerate(arrays):
        if e.ndim < 2 or e.shape[0] == 0:
            raise ScopeError(f"episode {i} has shape {e.shape}; expected (T, {', '.join(map(str, shape))}) with T >= 1")
        out.append(_states(e, shape, f"episode {i}"))
    return out, tuple(int(s) for s in shape)


@dataclass(frozen=True, eq=False)
class Scope(ThresholdFit):
    """A fitted scope: state scorer, per-state p-values, and the episode threshold at ``alpha``.

    Build one with :meth:`fit` or :meth:`load`; stream it with :meth:`detector`.

    Attributes
    ----------
    method, k
        ``"knn"`` (distance to the k-th nearest distinct fit state) or
        ``"mahalanobis"`` (``k`` unused).
    slack
        Page's k for the CUSUM on ``-log p``, in nats: evidence accumulates while
        states are on average rarer than ``p = exp(-slack)``; ``None``: per-state only.
    alpha, threshold, maxima
        False-alarm rate per in-distribution episode, the conformal threshold on the
        statistic, and the threshold fold's per-episode maxima it was taken from.
    n_fit, n_reference, n_cal
        Episodes in each fold.
    """

    method: str
    k: int
    slack: float | None
    alpha: float
    threshold: float
    obs_shape: tuple[int, ...]
    n_fit: int
    n_reference: int
    n_cal: int
    maxima: list[float]
    arrays: dict[str, np.ndarray] = field(repr=False)
    scenario: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    _evidence: StateEvidence = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ScopeError(f"method={self.method!r}; expected one of {list(METHODS)}")
        _check_k(self.k)
        _check_slack(self.slack)
        check_alpha(self.alpha)
        try:
            scorer = StateScorer(self.method, int(self.k), self.arrays)
        except DetectorError as exc:
            raise ScopeError(str(exc)) from None
        object.__setattr__(self, "_evidence", StateEvidence(scorer, self.reference_scores))

    @classmethod
    def fit(
        cls,
        episodes: Sequence[Any],
        *,
        method: str = "mahalanobis",
        k: int = 1,
        alpha: float = 0.05,
        slack: float | None = 2.0,
        fit_fraction: float = 0.5,
        scenario: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> Scope:
        """Fit on in-distribution episodes of observations, each ``(T_i, *obs_shape)``.

        ``episodes`` are the states the agent acted in (the observation after reset and
        after each step but the last), of episodes held out from training, in any
        order (they are split by position: shuffle them first if that order means
        something). The first ``fit_split(n, fit_fraction)`` are split in halves, fit
        and reference; the rest set the threshold and must number at least
        ``min_episodes(alpha)``.
        """
        alpha = check_alpha(alpha)
        k = _check_k(k)
        slack = _check_slack(slack)
        if method not in METHODS:
            raise ScopeError(f"method={method!r}; expected one of {list(METHODS)}")
        states, obs_shape = _check_episodes(episodes)
        n = len(states)
        n_fit, n_fitting = cls.split(n, alpha, fit_fraction, ScopeError)
        held = n - n_fitting
        try:
            _, arrays = StateEvidence.fit(states[:n_fit], states[n_fit:n_fitting], method, k)
        except DetectorError as exc:
            raise ScopeError(str(exc)) from None
        provisional = cls(
            method, k, slack, alpha, math.inf, obs_shape,
            n_fit, n_fitting - n_fit, held, [], arrays, scenario, dict(metadata or {}),
        )  # fmt: skip
        maxima = np.nanmax(provisional.traces(states[n_fitting:]), axis=1)
        rank = conformal_rank(held, alpha)
        scope = cls(
            method, k, provisional.slack, alpha, float(np.sort(maxima)[rank - 1]), obs_shape,
            n_fit, n_fitting - n_fit, held, maxima.tolist(), arrays, scenario, dict(metadata or {}),
        )  # fmt: skip
        object.__setattr__(scope, "_evidence", provisional._evidence)  # same arrays, same scores (and cache)
        return scope

    # -- per state ---------------------------------------------------------------------------

    @property
    def reference_scores(self) -> np.ndarray:
        """The reference fold's state scores, sorted."""
        return self.arrays["reference_scores"]

    @property
    def n_reference_states(self) -> int:
        return int(self.reference_scores.size)

    def scores(self, states: Any) -> np.ndarray:
        """Nonconformity of each state (larger = further out of scope); ``states`` is ``(n, *obs_shape)``."""
        return self._evidence.lookup(_states(states, self.obs_shape, "states"))[:, 0]

    def p_values(self, states: Any) -> np.ndarray:
        """Per-state conformal p-values in ``(0, 1]``: small = out of scope."""
        return self._evidence.lookup(_states(states, self.obs_shape, "states"))[:, 1]

    def evidence(self, states: Any) -> np.ndarray:
        """What each state adds to the statistic: ``-log`` of its interpolated p-value (:meth:`evidence_of_scores`)."""
        return self._evidence.lookup(_states(states, self.obs_shape, "states"))[:, 2]

    def p_values_of_scores(self, scores: Any) -> np.ndarray:
        """Conformal p-values ``(1 + #{reference >= s}) / (n + 1)`` of nonconformity scores."""
        return self._evidence.p_values_of_scores(scores)

    def evidence_of_scores(self, scores: Any) -> np.ndarray:
        """``-log p~(s)``, the p-value made continuous and unbounded (:meth:`StateEvidence.evidence_of_scores`)."""
        return self._evidence.evidence_of_scores(scores)

    def clear_cache(self) -> None:
        """Forget the scores of the states seen so far (to time the scorer itself)."""
        self._evidence.cache.clear()

    # -- per episode -------------------------------------------------------------------------


    def detector(self, n_envs: int = 1) -> ScopeDetector:
        """A streaming detector over ``n_envs`` envs (the alarm: its statistic above :attr:`threshold`)."""
        if isinstance(n_envs, bool) or int(n_envs) < 1:
            raise ScopeError(f"n_envs={n_envs!r}; expected a positive integer")
        return ScopeDetector(self._evidence, self.slack, self.obs_shape, n_envs)

    def traces(self, episodes: Sequence[Any]) -> np.ndarray:
        """The statistic at every state of whole episodes: ``(n, T_max)``, NaN after each end.

        The streaming :meth:`ScopeDetector.update` the guard runs, over all episodes at once.
        """
        states = [_states(e, self.obs_shape, f"episode {i}") for i, e in enumerate(episodes)]
        return self.detector(max(len(states), 1)).traces(states)

    def first_alarms(self, episodes: Sequence[Any]) -> list[int | None]:
        """Offline evaluation: per episode of observations, the first step (1-based) the scope fires, or None.

        Step ``t`` is the ``t``-th action: an alarm at step ``t`` fires on the state that
        action would be taken in, before it; so it comes in time to prevent a catastrophe
        at step ``c`` when ``t <= c``.
        """
        over = self.traces(episodes) > self.threshold  # NaN after each end compares False
        return [int(np.argmax(row)) + 1 if row.any() else None for row in over]

    def check(self, scenario: str | None = None, obs_shape: Sequence[int] | None = None) -> None:
        """Raise :class:`ScopeError` if this scope was fitted for another env."""
        shape = None if obs_shape is None else tuple(int(s) for s in obs_shape)
        if (scenario is not None and self.scenario and scenario != self.scenario) or (
            shape is not None and shape != self.obs_shape
        ):
            raise ScopeError(
                f"scope was fitted on scenario {self.scenario!r} with observation shape {self.obs_shape}; "
                f"this env is {scenario!r} with {shape}. Fit a scope on this scenario's reference variant."
            )

    # -- files ------------------------------------------------------------------------------

    def to_dict(self, arrays_file: str = "", signing_key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """The file's JSON object: header, fields, the arrays file's name and hash, content hash (and signature)."""
        body = {
            "scenario": self.scenario,
            "obs_shape": list(self.obs_shape),
            "method": self.method,
            "k": int(self.k),
            "slack": self.slack,
            **self.threshold_fields(),
            "arrays": {"file": arrays_file, "hash": arrays_hash(self.arrays)},
            "metadata": self.metadata,
        }
        return KIND.seal(body, signing_key)

    def save(self, path: str | os.PathLike[str], signing_key: Ed25519PrivateKey | None = None) -> Path:
        """Write ``path`` (JSON) and its arrays beside it (``<stem>.npz``), each atomically.

        With ``signing_key`` the JSON is signed; its signature covers the arrays' hash too.
        """
        path = Path(path)
        arrays_path = path.with_name(path.stem + ".npz")
        if arrays_path == path:
            raise ScopeError(f"scope path {path} would be overwritten by its own arrays; give it a .json name")
        buffer = io.BytesIO()
        np.savez_compressed(buffer, allow_pickle=False, **self.arrays)
        write_atomic(arrays_path, buffer.getvalue())
        return write_atomic(path, json.dumps(self.to_dict(arrays_path.name, signing_key), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify_key: VerifyKeys = None) -> Scope:
        """Read and verify a scope file and its arrays (:func:`mesaguard.scope_file.read_scope` says what is
        checked); with ``verify_key`` (one Ed25519 public key or several), its signature too."""
        from mesaguard.scope_file import read_scope

        return read_scope(Path(path), verify_key)
