"""The detector interface: a small streaming object over ``(n_envs,)`` arrays.

A detector turns the stream of base-objective increments of each running episode
into a statistic (larger = more alarming). Calibration sets its threshold; the
detector itself knows nothing of thresholds, Gymnasium or files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Self

import numpy as np

__all__ = ["Detector", "DetectorError", "ScalarDetector", "as_increments"]


class DetectorError(ValueError):
    """Bad detector input: wrong shape, non-finite values, unusable fit data."""


def as_increments(u: np.ndarray, n_envs: int) -> np.ndarray:
    """Check one step of increments: a finite float array of shape ``(n_envs,)``."""
    u = np.asarray(u, dtype=np.float64)
    if u.shape != (n_envs,):
        raise DetectorError(f"increments have shape {u.shape}; expected ({n_envs},), one per env")
    if not np.isfinite(u).all():
        bad = np.flatnonzero(~np.isfinite(u))
        raise DetectorError(f"increments {u[bad].tolist()} at env {bad.tolist()} are not finite")
    return u


class Detector:
    """Base of every detector: vectorized first, ``update_scalar`` a view of it.

    Subclasses set ``name``, store their parameters as plain attributes listed by
    :meth:`params`, keep per-env state in arrays of shape ``(n_envs,)`` and
    implement :meth:`fit`, :meth:`reset` and :meth:`_update`.
    """

    name: ClassVar[str]
    # The statistic's unit: 1.0 where it is standardized (its in-distribution fluctuations are of order one: standard
    # deviations, a standard normal's units, nats of a p-value); None where it is in the objective's own units. The
    # joint rule resolves a thousandth of this unit at most (mesaguard.matching.tail_floor).
    UNIT: ClassVar[float | None] = 1.0

    def __init__(self, n_envs: int = 1) -> None:
        if int(n_envs) < 1:
            raise DetectorError(f"n_envs={n_envs!r}; expected a positive integer")
        self.n_envs = int(n_envs)

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        """Estimate reference parameters from in-distribution episodes' increments."""
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """JSON-ready parameters; ``type(self)(**params, n_envs=n)`` rebuilds it."""
        raise NotImplementedError

    def with_envs(self, n_envs: int) -> Self:
        """A fresh detector with the same parameters over ``n_envs`` envs."""
        return type(self)(**self.params(), n_envs=n_envs)

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Start a new episode in the envs where ``mask`` is true (all if None)."""
        raise NotImplementedError

    def update(self, u: np.ndarray) -> np.ndarray:
        """Feed one increment per env; return the statistic per env."""
        return self._update(as_increments(u, self.n_envs))

    def _update(self, u: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def update_scalar(self, u: float) -> float:
        """One env, one float in, one float out, through the vectorized form."""
        return float(self.update(np.array([u]))[0])

    def scalar(self) -> ScalarDetector:
        """The scalar form for one env: the same statistic in plain Python floats.

        NumPy's per-call cost (about a microsecond) dominates a one-env update, so
        the single-env guard steps this form; tests hold it equal to the vector form.
        """
        raise NotImplementedError

    @staticmethod
    def _mask(mask: np.ndarray | None) -> slice | np.ndarray:
        """The envs of a boolean ``mask`` (all if None), as indices: found once, then every array a reset clears
        is written at those few places instead of scanned whole again."""
        return slice(None) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))


class ScalarDetector:
    """A detector's scalar form: ``reset()``, then ``update(u: float) -> float`` each step."""

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, u: float) -> float:
        raise NotImplementedError


def check_episodes(episodes: Sequence[np.ndarray], minimum: int = 2) -> list[np.ndarray]:
    """Fit data: at least ``minimum`` non-empty 1-D finite arrays."""
    out = [np.asarray(e, dtype=np.float64) for e in episodes]
    if len(out) < minimum:
        raise DetectorError(f"got {len(out)} episodes to fit on; expected at least {minimum}")
    for i, e in enumerate(out):
        if e.ndim != 1 or e.size == 0:
            raise DetectorError(f"episode {i} has shape {e.shape}; expected a non-empty 1-D array of increments")
        if not np.isfinite(e).all():
            step = int(np.flatnonzero(~np.isfinite(e))[0])
            raise DetectorError(f"episode {i} has increment {e[step]} at step {step + 1}; expected finite numbers")
    return out


def padded(episodes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Stack episodes into ``(n, T_max)`` with zero increments after each end, and their lengths."""
    lengths = np.array([e.size for e in episodes])
    out = np.zeros((len(episodes), lengths.max()))
    for i, e in enumerate(episodes):
        out[i, : e.size] = e
    return out, lengths
