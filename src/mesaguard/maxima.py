"""A detector's statistic over whole recorded episodes, and each episode's maximum: what a calibration is made of.

The conformal rule thresholds per-episode maxima (:mod:`mesaguard.calibration`); the joint rule matches detectors
on their cross-fitted maxima (:mod:`mesaguard.matching`). Both are computed here, with the same streaming
``update`` the guard runs in deployment, vectorized over episodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mesaguard.detectors import Detector
from mesaguard.detectors.base import check_episodes, padded

__all__ = ["CROSSFIT_FOLDS", "crossfit_maxima", "episode_maxima", "statistic_traces"]

CROSSFIT_FOLDS = 10  # folds of the fitting split for its cross-fitted maxima (see crossfit_maxima)


def statistic_traces(detector: Detector, episodes: Sequence[np.ndarray]) -> np.ndarray:
    """Run ``detector``'s streaming form over whole episodes at once: ``(n, T_max)``, NaN after each end.

    The same ``update`` code the guard runs in deployment, vectorized over episodes.
    """
    increments, lengths = padded(check_episodes(episodes, minimum=1))
    det = detector.with_envs(len(lengths))
    T = increments.shape[1]
    traces = np.empty((len(lengths), T))
    for t in range(T):
        traces[:, t] = det.update(increments[:, t])
    traces[np.arange(T)[None, :] >= lengths[:, None]] = np.nan
    return traces


def episode_maxima(detector: Detector, episodes: Sequence[np.ndarray]) -> np.ndarray:
    """Each episode's maximum statistic over the steps it really had."""
    maxima: np.ndarray = np.nanmax(statistic_traces(detector, episodes), axis=1)
    return maxima


def crossfit_maxima(
    cls: type[Detector], fitting: list[np.ndarray], options: Mapping[str, Any], folds: int = CROSSFIT_FOLDS
) -> np.ndarray:
    """Per-episode maxima of ``cls`` on the fitting split, cross-fitted: each of ``folds`` contiguous folds (at most
    one per episode) taken under the detector fitted on the other folds, in fold order.

    They stand for the held-out maxima of the detector fitted on the whole split, so each fold's detector is fitted
    on nearly as many episodes (nine tenths): a detector's spreads, floors and covariance depend on how many
    episodes it was fitted on, and one fitted on half of them can have tails of another size (``docs/guard.md``).
    """
    parts = np.array_split(np.arange(len(fitting)), min(int(folds), len(fitting)))
    out = []
    for part in parts:
        inside = set(part.tolist())
        train = [e for i, e in enumerate(fitting) if i not in inside]
        out.append(episode_maxima(cls.fit(train, **options), [fitting[i] for i in part]))
    return np.concatenate(out)
