"""The shield's bound: the calibrated floor on one step's increment, below which a step counts as harm.

A shield (:mod:`mesaguard.safeguards.shield`) refuses an action whose simulated step
would fall below this floor. It is fitted like the guard's thresholds, by the
conformal rule, on per-episode minima of increments: the deployed env's
(:func:`increment_bound` over calibration runs) or the model's own
(:mod:`mesaguard.safeguards.model_kinds`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mesaguard.calibration import conformal_rank

__all__ = ["ShieldError", "increment_bound"]


class ShieldError(ValueError):
    """A shield built with arguments it cannot use."""


def increment_bound(episodes: Sequence[np.ndarray], alpha: float) -> float:
    """The calibrated floor on one step's increment: conformal rank of per-episode minima.

    The statistic is ``-u_t`` and an episode's score is its maximum, ``-min(u)``;
    the threshold is the ``ceil((n + 1)(1 - alpha))``-th smallest of the ``n``
    maxima, and the bound is minus it. A new in-distribution episode then has an
    increment strictly below the bound with probability at most ``alpha``.

    >>> episodes = [np.array([0.0, -0.01 * (i % 3), 1.0]) for i in range(40)]
    >>> increment_bound(episodes, alpha=0.05)
    -0.02
    >>> increment_bound(episodes[:5], alpha=0.05)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    mesaguard.calibration.CalibrationError: 5 calibration episodes are too few for alpha=0.05: the conformal rank
    would be 6 > 5; use at least 19 episodes or a larger alpha
    """
    minima = []
    for i, e in enumerate(episodes):
        u = np.asarray(e, dtype=np.float64).ravel()
        if u.size == 0 or not np.all(np.isfinite(u)):
            raise ShieldError(f"episode {i} has increments {u!r}; expected a non-empty array of finite numbers")
        minima.append(-float(u.min()))
    k = conformal_rank(len(minima), alpha)
    return -float(np.sort(minima)[k - 1])
