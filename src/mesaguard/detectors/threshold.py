"""The plain score threshold: the seed's idea in its simplest form, kept as baseline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from mesaguard.detectors.base import Detector, ScalarDetector, check_episodes

__all__ = ["ScoreThreshold"]


class ScoreThreshold(Detector):
    """Alarm when the score so far ``S_t`` falls below a calibrated constant.

    The statistic is ``-S_t``; calibration puts the threshold at the conformal
    quantile of the per-episode maxima, i.e. of ``-min_t S_t``. It has no
    parameters of its own: it is the baseline every other detector must beat.

    >>> det = ScoreThreshold(n_envs=1)
    >>> [det.update_scalar(u) for u in [1.0, -0.5, -2.0]]
    [-1.0, -0.5, 1.5]
    """

    name = "threshold"
    UNIT = None  # -S_t, in the objective's own units

    def __init__(self, n_envs: int = 1) -> None:
        super().__init__(n_envs)
        self.score = np.zeros(self.n_envs)

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        check_episodes(episodes)
        return cls(**options)

    def params(self) -> dict[str, Any]:
        return {}

    def reset(self, mask: np.ndarray | None = None) -> None:
        self.score[self._mask(mask)] = 0.0

    def _update(self, u: np.ndarray) -> np.ndarray:
        self.score += u
        return -self.score

    def scalar(self) -> _ScalarThreshold:
        return _ScalarThreshold()


class _ScalarThreshold(ScalarDetector):
    def __init__(self) -> None:
        self.score = 0.0

    def reset(self) -> None:
        self.score = 0.0

    def update(self, u: float) -> float:
        self.score += u
        return -self.score
