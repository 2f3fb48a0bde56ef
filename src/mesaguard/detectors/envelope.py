"""Whole-trajectory score envelope: the score so far against its in-distribution band."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from mesaguard.detectors.base import Detector, DetectorError, ScalarDetector, check_episodes
from mesaguard.detectors.reference import StepReference

__all__ = ["ScoreEnvelope"]


class ScoreEnvelope(Detector):
    """Standardized deficit of the score so far against in-distribution runs.

    At step ``t`` the statistic is ``(mean[t] - S_t) / std[t]``: how many
    in-distribution standard deviations the score lags behind where runs of the
    training distribution stood after ``t`` steps. Runs that ended earlier count
    with their final score (a finished run's score stays where it ended); past the
    longest reference run the last step's band is used.

    Parameters
    ----------
    mean, std
        Per-step mean and spread of ``S_t`` (``t = 1..T``) over in-distribution
        episodes, from :meth:`fit`. ``std`` is floored only at the data's resolution
        (:mod:`mesaguard.detectors.reference`), so quiet stretches keep their own band.

    >>> det = ScoreEnvelope(mean=[1.0, 2.0, 3.0, 4.0], std=[0.5, 0.5, 0.5, 0.5])
    >>> [det.update_scalar(u) for u in [1.0, 1.0, 0.0, 0.0]]
    [0.0, 0.0, 2.0, 4.0]
    """

    name = "envelope"

    def __init__(self, mean: Sequence[float] | np.ndarray, std: Sequence[float] | np.ndarray, n_envs: int = 1) -> None:
        super().__init__(n_envs)
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if self.mean.ndim != 1 or self.mean.size == 0 or self.mean.shape != self.std.shape:
            raise DetectorError(
                f"envelope mean {self.mean.shape} and std {self.std.shape} must be equal non-empty 1-D arrays"
            )
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all()):
            raise DetectorError("envelope mean and std must be finite")
        if not (self.std > 0).all():
            raise DetectorError(f"envelope std must be positive, got minimum {self.std.min()}")
        self.score = np.zeros(self.n_envs)
        self.t = np.zeros(self.n_envs, dtype=np.int64)

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        ref = StepReference.fit(check_episodes(episodes), cumulative=True)  # a finished run's score carried on
        return cls(mean=ref.mean, std=ref.std, **options)

    def params(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def reset(self, mask: np.ndarray | None = None) -> None:
        m = self._mask(mask)
        self.score[m] = 0.0
        self.t[m] = 0

    def _update(self, u: np.ndarray) -> np.ndarray:
        self.score += u
        i = np.minimum(self.t, self.mean.size - 1)
        self.t += 1
        return (self.mean[i] - self.score) / self.std[i]

    def scalar(self) -> _ScalarEnvelope:
        return _ScalarEnvelope(self.mean.tolist(), self.std.tolist())


class _ScalarEnvelope(ScalarDetector):
    def __init__(self, mean: list[float], std: list[float]) -> None:
        self.mean, self.std, self.last = mean, std, len(mean) - 1
        self.score, self.t = 0.0, 0

    def reset(self) -> None:
        self.score, self.t = 0.0, 0

    def update(self, u: float) -> float:
        self.score += u
        i = self.t if self.t < self.last else self.last
        self.t += 1
        return (self.mean[i] - self.score) / self.std[i]
