"""Greenberg and Mannor's uniform degradation test (UDT, ICML 2021): covariance-weighted, in blocks."""

from __future__ import annotations

from collections.abc import Sequence
from operator import mul
from typing import Any, Self

import numpy as np
from scipy.linalg import solve_triangular

from mesaguard.detectors.base import Detector, DetectorError, ScalarDetector, check_episodes, padded
from mesaguard.detectors.reference import (
    MAX_BLOCKS,
    blocks,
    check_block,
    complete_blocks,
    resolution,
    unseen_event,
)

__all__ = ["MeanShift"]


class MeanShift(Detector):
    """Greenberg and Mannor's uniform degradation test (UDT): the optimal test of a drop of every step's reward.

    Greenberg and Mannor, "Detecting Rewards Deterioration in Episodic
    Reinforcement Learning" (ICML 2021): rewards within an episode are correlated,
    so a drop is tested on the whole vector of the episode so far, with the
    in-distribution means ``mu`` and covariance ``Sigma``. As in the paper the
    increments are summed in blocks of ``block`` steps (the test's resolution: a
    ``B x B`` covariance, ``B = ceil(T / block)``; by default every step is its own
    block up to :attr:`MAX_BLOCKS` steps, as CUSUM's, and at most that many blocks
    beyond). After ``j`` complete blocks, with
    deficits ``d = mu[:j] - x[:j]`` of the block sums ``x``, the statistic is

        ``1' Sigma_j^{-1} d / sqrt(1' Sigma_j^{-1} 1)``

    (``Sigma_j`` the leading block), standard normal in distribution and the most
    powerful linear test of a uniform drop given the first ``j`` blocks. With
    ``Sigma = L L'`` (Cholesky), ``L_j`` is the leading block of ``L``, so the
    statistic is ``sum_k y_k e_k / sqrt(sum_k y_k**2)`` with ``y = L^{-1} 1`` fixed and
    the whitened deficits ``e = L^{-1} d`` found by one forward-substitution row per
    block. Within a block the statistic holds; past the longest reference episode
    it stays at its last value.

    The covariance is estimated with shrinkage of the *correlations* only
    (Ledoit-Wolf on the block sums standardized by their own spreads, then scaled
    back): each block keeps its own variance, however small, where shrinking the
    covariance itself would lift near-zero variances toward the average and throw
    away the quiet blocks in which a deviation is most surprising. Spreads are
    floored at the data's resolution (:func:`mesaguard.detectors.reference.resolution`).

    Parameters
    ----------
    mu
        Mean of each block's increment sum (zero after an episode ended), length ``B``.
    chol
        Lower Cholesky factor of the ``B x B`` covariance of block sums.
    block
        Steps per block (1: every step is its own block).

    >>> det = MeanShift(mu=[1.0, 1.0, 1.0], chol=np.eye(3))
    >>> [round(det.update_scalar(u), 3) for u in [1.0, 0.0, 0.0]]
    [0.0, 0.707, 1.155]
    >>> blocked = MeanShift(mu=[2.0, 2.0], chol=np.eye(2), block=2)
    >>> [round(blocked.update_scalar(u), 3) for u in [1.0, 0.0, 0.0, 0.0]]
    [0.0, 1.0, 1.0, 2.121]
    """

    name = "meanshift"
    MAX_BLOCKS = MAX_BLOCKS  # default resolution (reference.MAX_BLOCKS): a B x B covariance, B <= 100 whatever T

    def __init__(
        self,
        mu: Sequence[float] | np.ndarray,
        chol: Sequence[Sequence[float]] | np.ndarray,
        block: int = 1,
        n_envs: int = 1,
    ) -> None:
        super().__init__(n_envs)
        self.mu = np.asarray(mu, dtype=np.float64)
        self.chol = np.tril(np.asarray(chol, dtype=np.float64))
        B = self.mu.size
        if self.mu.ndim != 1 or B == 0 or self.chol.shape != (B, B):
            raise DetectorError(f"meanshift mu {self.mu.shape} and chol {self.chol.shape} must be (B,) and (B, B)")
        if not (np.isfinite(self.mu).all() and np.isfinite(self.chol).all()):
            raise DetectorError("meanshift mu and chol must be finite")
        diag = np.diag(self.chol)
        if not (diag > 0).all():
            raise DetectorError("meanshift chol must be a Cholesky factor with a positive diagonal")
        self.block = check_block(self.name, block)
        self._diag = diag.copy()  # the factor's diagonal, read per block
        self.y = solve_triangular(self.chol, np.ones(B), lower=True)
        self.norm = np.sqrt(np.cumsum(self.y**2))
        self.e = np.zeros((self.n_envs, B))
        self.num = np.zeros(self.n_envs)
        self.stat = np.zeros(self.n_envs)
        self.t = np.zeros(self.n_envs, dtype=np.int64)  # complete blocks so far
        self.acc = np.zeros(self.n_envs)  # the current block's increment sum
        self.k = np.zeros(self.n_envs, dtype=np.int64)  # steps into the current block
        self._rows = np.empty((self.n_envs, B))  # gathered factor rows, reused
        self._e_rows = np.empty((self.n_envs, B))  # gathered whitened deficits, reused
        self._every = np.arange(self.n_envs)  # every env's index (read only)

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        from sklearn.covariance import LedoitWolf

        episodes = check_episodes(episodes)
        T = max(e.size for e in episodes)
        block = check_block(cls.name, options.pop("block", -(-T // cls.MAX_BLOCKS)))
        increments, _ = padded(episodes)
        sums = np.stack([blocks(row, block) for row in increments])
        spread = sums.std(axis=0, ddof=1)
        unseen = unseen_event(list(sums)) / np.sqrt(len(episodes) + 1.0)  # blocks all references agreed on
        spread = np.maximum(np.where(spread > 0, spread, unseen), resolution(episodes) * np.sqrt(block))
        z = (sums - sums.mean(axis=0)) / spread
        shrunk = LedoitWolf(assume_centered=True).fit(z).covariance_
        d = np.sqrt(np.diag(shrunk))
        d = np.where(d > 0, d, 1.0)  # a block that never varied: uncorrelated with the rest
        corr = shrunk / np.outer(d, d)
        np.fill_diagonal(corr, 1.0)  # unit diagonal: each block keeps its own variance below
        cov = corr * np.outer(spread, spread)
        chol = np.linalg.cholesky(cov + 1e-12 * np.diag(np.diag(cov)))
        return cls(mu=sums.mean(axis=0), chol=chol, block=block, **options)

    def params(self) -> dict[str, Any]:
        return {"mu": self.mu.tolist(), "chol": self.chol.tolist(), "block": self.block}

    def reset(self, mask: np.ndarray | None = None) -> None:
        m = self._mask(mask)
        self.e[m] = 0.0
        self.num[m] = 0.0
        self.stat[m] = 0.0
        self.t[m] = 0
        self.acc[m] = 0.0
        self.k[m] = 0

    def _update(self, u: np.ndarray) -> np.ndarray:
        if self.block > 1:
            rows = complete_blocks(self.acc, self.k, u, self.block)
            if rows.size:
                x = self.acc[rows]
                self.acc[rows] = 0.0
                self._blocks(rows, x)
        else:
            self._blocks(self._every, u)
        return self.stat.copy()

    def _blocks(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Feed the complete block sums ``x`` of the envs ``rows`` (ascending indices); return the envs that took
        them (those not yet past the last block)."""
        B = self.mu.size
        if rows.size == self.n_envs and self.t[0] < B and (self.t == self.t[0]).all():
            # Every env at the same block (calibration, synchronized starts): one matrix-vector product.
            t = int(self.t[0])
            e = (self.mu[t] - x - self.e @ self.chol[t]) / self._diag[t]
            self.e[:, t] = e
            self.num += self.y[t] * e
            self.stat[:] = self.num / self.norm[t]
            self.t += 1
            return rows
        ts = self.t[rows]  # each env's own block index
        open_ = ts < B
        if not open_.all():
            rows, x, ts = rows[open_], x[open_], ts[open_]
        if not rows.size:
            return rows
        # Row ts[i] of the factor for each env i (entries past ts[i] are zero) and its deficits so far, gathered into
        # reused buffers; the indices are in range (ts < B, rows are envs), and mode="clip" spares take's checked
        # copy (a buffered second pass with mode="raise" and out=).
        factor_rows = np.take(self.chol, ts, axis=0, out=self._rows[: rows.size], mode="clip")
        e_rows = self.e if rows.size == self.n_envs else np.take(self.e, rows, axis=0, out=self._e_rows[: rows.size],
                                                                  mode="clip")
        past = np.einsum("ij,ij->i", factor_rows, e_rows)
        e = (self.mu[ts] - x - past) / self._diag[ts]
        self.e[rows, ts] = e
        num = self.num[rows] + self.y[ts] * e
        self.num[rows] = num
        self.stat[rows] = num / self.norm[ts]
        self.t[rows] = ts + 1
        return rows

    def scalar(self) -> _ScalarMeanShift:
        return _ScalarMeanShift(self)


class _ScalarMeanShift(ScalarDetector):
    """One forward-substitution row per block: a dot product over the history so far.

    Rows of the first :attr:`LISTED` blocks are Python lists (a short dot product in
    plain floats costs less than one NumPy call); later rows stay in NumPy.
    """

    LISTED = MAX_BLOCKS  # every row at the default resolution

    def __init__(self, det: MeanShift) -> None:
        self.chol, self.T, self.block = det.chol, det.mu.size, det.block
        self.mu, self.y, self.norm = det.mu.tolist(), det.y.tolist(), det.norm.tolist()
        self.diag = det._diag.tolist()
        self.rows = [det.chol[t, :t].tolist() for t in range(min(self.T, self.LISTED))]
        self.e = [0.0] * self.T
        self.num, self.stat, self.t, self.acc, self.k = 0.0, 0.0, 0, 0.0, 0

    def reset(self) -> None:
        self.num, self.stat, self.t, self.acc, self.k = 0.0, 0.0, 0, 0.0, 0  # e[t:] is never read before written

    def update(self, u: float) -> float:
        if self.block > 1:
            self.acc += u
            self.k += 1
            if self.k < self.block:
                return self.stat
            u, self.acc, self.k = self.acc, 0.0, 0
        t = self.t
        if t >= self.T:
            return self.stat
        if t < self.LISTED:
            past = sum(map(mul, self.rows[t], self.e))
        else:
            past = float(self.chol[t, :t] @ np.array(self.e[:t]))
        e = (self.mu[t] - u - past) / self.diag[t]
        self.e[t] = e
        self.num += self.y[t] * e
        self.stat = self.num / self.norm[t]
        self.t = t + 1
        return self.stat
