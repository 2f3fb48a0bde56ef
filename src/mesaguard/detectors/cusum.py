"""CUSUM on the standardized shortfall of base-objective increments (Page, 1954)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from mesaguard.detectors.base import Detector, DetectorError, ScalarDetector, check_episodes, spread_floor

__all__ = ["Cusum"]


class Cusum(Detector):
    """CUSUM on the shortfall of base-objective increments (Page, 1954).

    ``C_t = max(0, C_{t-1} + (mean - u_t) / std - slack)``, reset each episode.
    With ``slack = shift / 2`` it is the likelihood-ratio CUSUM for a drop of
    ``shift`` standard deviations in Gaussian increments, whose delay meets
    Lorden's bound ``log(ARL) / KL`` as the false-alarm rate goes to zero.

    Parameters
    ----------
    mean, std
        In-distribution mean and spread of one step's increment, from calibration.
    slack
        Shortfall, in stds, ignored per step (Page's k). The default 0.25 is the
        optimal k for a drop of half a standard deviation per step.

    >>> det = Cusum(mean=1.0, std=0.1, slack=0.5, n_envs=1)
    >>> stats = [det.update(np.array([x]))[0] for x in [1.0] * 5 + [0.5] * 5]
    >>> round(float(stats[-1]), 1)
    22.5
    >>> int(np.argmax(np.array(stats) > 0))  # first step with evidence of the drop
    5
    """

    name = "cusum"

    def __init__(self, mean: float, std: float, slack: float = 0.25, n_envs: int = 1) -> None:
        super().__init__(n_envs)
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise DetectorError(f"cusum needs a finite mean and a positive std, got mean={mean}, std={std}")
        if not (np.isfinite(slack) and slack >= 0):
            raise DetectorError(f"cusum slack={slack}; expected a non-negative number of stds")
        self.mean, self.std, self.slack = float(mean), float(std), float(slack)
        self.sum = np.zeros(self.n_envs)

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        episodes = check_episodes(episodes)
        pooled = np.concatenate(episodes)
        return cls(mean=float(pooled.mean()), std=spread_floor(episodes), **options)

    def params(self) -> dict[str, Any]:
        return {"mean": self.mean, "std": self.std, "slack": self.slack}

    def reset(self, mask: np.ndarray | None = None) -> None:
        self.sum[self._mask(mask)] = 0.0

    def _update(self, u: np.ndarray) -> np.ndarray:
        np.maximum(0.0, self.sum + ((self.mean - u) / self.std - self.slack), out=self.sum)
        return self.sum.copy()

    def scalar(self) -> _ScalarCusum:
        return _ScalarCusum(self.mean, self.std, self.slack)


class _ScalarCusum(ScalarDetector):
    def __init__(self, mean: float, std: float, slack: float) -> None:
        self.mean, self.std, self.slack = mean, std, slack
        self.sum = 0.0

    def reset(self) -> None:
        self.sum = 0.0

    def update(self, u: float) -> float:
        s = self.sum + ((self.mean - u) / self.std - self.slack)
        self.sum = s if s > 0.0 else 0.0
        return self.sum
