"""Covariance-weighted mean-shift test, after Greenberg and Mannor (ICML 2021)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from scipy.linalg import solve_triangular

from mesaguard.detectors.base import Detector, DetectorError, ScalarDetector, check_episodes, padded

__all__ = ["MeanShift"]


class MeanShift(Detector):
    """Optimal test for a uniform drop of the per-step rewards, weighted by their covariance.

    Greenberg and Mannor, "Detecting Rewards Deterioration in Episodic
    Reinforcement Learning" (ICML 2021): rewards within an episode are correlated,
    so a drop is tested on the whole vector of the episode so far, with the
    in-distribution per-step means ``mu`` and covariance ``Sigma``. After ``t``
    steps, with deficits ``d = mu[:t] - r[:t]``, the statistic is

        ``1' Sigma_t^{-1} d / sqrt(1' Sigma_t^{-1} 1)``

    which is standard normal in distribution and the most powerful linear test of
    a uniform drop. With ``Sigma = L L'`` (Cholesky), ``Sigma_t`` is the leading
    block and ``L_t`` its factor, so the statistic is ``sum_k y_k e_k /
    sqrt(sum_k y_k**2)`` with ``y = L^{-1} 1`` fixed and ``e = L^{-1} d`` found by
    one forward-substitution row per step. Past the longest reference episode the
    statistic stays at its last value.

    Parameters
    ----------
    mu
        Per-step mean increment (zero after an episode ended), length ``T``.
    chol
        Lower Cholesky factor of the ``T x T`` covariance of increments, estimated
        with Ledoit-Wolf shrinkage (scikit-learn) so that it is well conditioned
        with fewer episodes than steps.

    >>> det = MeanShift(mu=[1.0, 1.0, 1.0], chol=np.eye(3))
    >>> [round(det.update_scalar(u), 3) for u in [1.0, 0.0, 0.0]]
    [0.0, 0.707, 1.155]
    """

    name = "meanshift"

    def __init__(self, mu: Sequence[float], chol: Sequence[Sequence[float]], n_envs: int = 1) -> None:
        super().__init__(n_envs)
        self.mu = np.asarray(mu, dtype=np.float64)
        self.chol = np.tril(np.asarray(chol, dtype=np.float64))
        T = self.mu.size
        if self.mu.ndim != 1 or T == 0 or self.chol.shape != (T, T):
            raise DetectorError(f"meanshift mu {self.mu.shape} and chol {self.chol.shape} must be (T,) and (T, T)")
        diag = np.diag(self.chol)
        if not (diag > 0).all():
            raise DetectorError("meanshift chol must be a Cholesky factor with a positive diagonal")
        self.y = solve_triangular(self.chol, np.ones(T), lower=True)
        self.norm = np.sqrt(np.cumsum(self.y**2))
        self.e = np.zeros((self.n_envs, T))
        self.num = np.zeros(self.n_envs)
        self.stat = np.zeros(self.n_envs)
        self.t = np.zeros(self.n_envs, dtype=np.int64)
        self._rows = np.empty((self.n_envs, T))

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        from sklearn.covariance import LedoitWolf

        episodes = check_episodes(episodes)
        increments, _ = padded(episodes)
        cov = LedoitWolf(assume_centered=False).fit(increments).covariance_
        # Steps every reference episode had already finished have zero variance;
        # a tiny ridge, relative to the largest variance, keeps the factor defined.
        ridge = 1e-9 * max(float(np.diag(cov).max()), 1e-12)
        chol = np.linalg.cholesky(cov + ridge * np.eye(cov.shape[0]))
        return cls(mu=increments.mean(axis=0), chol=chol, **options)

    def params(self) -> dict[str, Any]:
        return {"mu": self.mu.tolist(), "chol": self.chol.tolist()}

    def reset(self, mask: np.ndarray | None = None) -> None:
        m = self._mask(mask)
        self.e[m] = 0.0
        self.num[m] = 0.0
        self.stat[m] = 0.0
        self.t[m] = 0

    def _update(self, u: np.ndarray) -> np.ndarray:
        live = self.t < self.mu.size
        if not live.any():
            return self.stat.copy()
        if live.all() and (self.t == self.t[0]).all():
            # Every env at the same step (calibration, synchronized starts): one matrix-vector product.
            t = int(self.t[0])
            d = self.mu[t] - u
            e = (d - self.e @ self.chol[t]) / self.chol[t, t]
            self.e[:, t] = e
            self.num += self.y[t] * e
            self.stat[:] = self.num / self.norm[t]
            self.t += 1
            return self.stat.copy()
        rows = np.flatnonzero(live)
        t = self.t[rows]
        # Row t of the factor for each live env (entries past t are zero), in a reused buffer.
        if self._rows.shape[0] != rows.size:
            self._rows = np.empty((rows.size, self.mu.size))
        np.take(self.chol, t, axis=0, out=self._rows)
        past = np.einsum("ij,ij->i", self._rows, self.e[rows] if rows.size < self.n_envs else self.e)
        e = (self.mu[t] - u[rows] - past) / self.chol[t, t]
        self.e[rows, t] = e
        self.num[rows] += self.y[t] * e
        self.stat[rows] = self.num[rows] / self.norm[t]
        self.t[rows] += 1
        return self.stat.copy()

    def scalar(self) -> _ScalarMeanShift:
        return _ScalarMeanShift(self)


class _ScalarMeanShift(ScalarDetector):
    """One forward-substitution row per step: a dot product over the history so far."""

    def __init__(self, det: MeanShift) -> None:
        self.chol, self.T = det.chol, det.mu.size
        self.mu, self.y, self.norm = det.mu.tolist(), det.y.tolist(), det.norm.tolist()
        self.diag = np.diag(det.chol).tolist()
        self.e = np.zeros(self.T)
        self.num, self.stat, self.t = 0.0, 0.0, 0

    def reset(self) -> None:
        self.e[: self.t] = 0.0
        self.num, self.stat, self.t = 0.0, 0.0, 0

    def update(self, u: float) -> float:
        t = self.t
        if t >= self.T:
            return self.stat
        past = float(self.chol[t, :t] @ self.e[:t]) if t else 0.0
        e = (self.mu[t] - u - past) / self.diag[t]
        self.e[t] = e
        self.num += self.y[t] * e
        self.stat = self.num / self.norm[t]
        self.t = t + 1
        return self.stat
