"""The score's rank among in-distribution scores at the same step: a distribution-free envelope and return test."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from mesaguard.detectors.base import Detector, DetectorError, ScalarDetector, check_episodes, padded
from mesaguard.detectors.reference import unseen_event

__all__ = ["ScoreRank"]


class ScoreRank(Detector):
    """``-log`` of the score so far's rank among the reference scores after as many steps.

    At step ``t`` the statistic is ``-log((1 + #{k: q_k[t] < S_t}) / (K + 1))`` with
    ``q[t]`` the ``K`` reference quantiles of the score after ``t`` steps (a run that
    ended keeps its final score): 0 when the score is above every reference
    quantile, ``log(K + 1)`` below all of them. No mean, spread or shape is
    assumed, so heavy tails, skew and spreads that change by orders of magnitude
    within an episode cost it nothing; at an episode's last step it is the
    final-return rank test, the strongest single test where episodes are short
    and their spreads even. Below the lowest quantile the statistic goes on
    growing, by the distance below it in units of the step's quantile range
    (``q_K - q_1``): otherwise it would stop at ``log(K + 1)``, which a long
    in-distribution episode reaches at some step, and no threshold could be
    passed. Past the longest reference episode the last step's quantiles are used.

    Where every reference score agreed exactly at a step (a deterministic agent
    repeats its episodes), the range is zero; it is then ``floor``, the size of an
    event none of the ``n`` reference episodes showed there
    (:func:`~mesaguard.detectors.reference.unseen_event` over ``sqrt(n + 1)``, the
    rule of the time-indexed references), not the resolution of the numbers, or a
    score a hair below would look astronomically unusual and set every joint
    threshold (a statistic of ``1e16`` on a repeated gridworld episode did).

    Parameters
    ----------
    quantiles
        ``(T, K)``: per step, ``K`` quantiles of the reference scores, ascending.
    floor
        The range at steps where all ``K`` quantiles agree; ``0``: the resolution of the numbers.

    >>> det = ScoreRank(quantiles=[[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    >>> [round(det.update_scalar(u), 3) for u in [1.5, 1.0]]  # 1.5 beats two of three; 2.5 beats two of three
    [0.288, 0.288]
    >>> round(det.update_scalar(-9.0), 3)  # score -6.5: 7.5 below the last step's quantiles, range 2
    5.136
    """

    name = "rank"
    QUANTILES = 32  # per step: the test's resolution is 1 / (K + 1)

    def __init__(
        self, quantiles: Sequence[Sequence[float]] | np.ndarray, floor: float = 0.0, n_envs: int = 1
    ) -> None:
        super().__init__(n_envs)
        self.quantiles = np.asarray(quantiles, dtype=np.float64)
        if self.quantiles.ndim != 2 or 0 in self.quantiles.shape:
            raise DetectorError(f"rank quantiles {self.quantiles.shape}: expected a non-empty (T, K) array")
        if not np.isfinite(self.quantiles).all() or (np.diff(self.quantiles, axis=1) < 0).any():
            raise DetectorError("rank quantiles must be finite and ascending at every step")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0.0 <= floor < np.inf:
            raise DetectorError(f"rank floor={floor!r}: expected a finite number >= 0")
        self.floor = float(floor)
        K = self.quantiles.shape[1]
        self._log = np.log(K + 1) - np.log(np.arange(1, K + 2))  # -log((1 + below) / (K + 1)) by count below
        self._low = self.quantiles[:, 0]
        width = self.quantiles[:, -1] - self.quantiles[:, 0]
        self._range = np.maximum(np.where(width > 0, width, self.floor), np.spacing(1.0 + np.abs(self._low)))
        self._width = 1 << max(K - 1, 1).bit_length()  # K rounded up to a power of two (at least 2)
        padded = np.full((self.quantiles.shape[0], self._width), np.inf)
        padded[:, :K] = self.quantiles
        self._flat = padded.ravel()  # row t at [t * width, (t + 1) * width), +inf past its K quantiles
        # Per step s of the binary search (width / 2, ..., 1), the flat rows seen from entry s - 1 on: views of one
        # copy padded at the end, so that a halving reads its entries without adding s - 1 to every index.
        tail = np.concatenate([self._flat, np.full(self._width, np.inf)])
        steps = [self._width >> k for k in range(1, self._width.bit_length())]
        self._shifted = {s: tail[s - 1 : s - 1 + self._flat.size] for s in steps}
        self.score = np.zeros(self.n_envs)
        self.t = np.zeros(self.n_envs, dtype=np.int64)

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        episodes = check_episodes(episodes)
        increments, _ = padded(episodes)
        scores = np.cumsum(increments, axis=1)  # zero increments after the end: final score carried on
        K = int(options.pop("k", cls.QUANTILES))
        levels = (np.arange(1, K + 1) - 0.5) / K
        floor = unseen_event(episodes) / np.sqrt(len(episodes) + 1.0)
        return cls(quantiles=np.quantile(scores, levels, axis=0).T, floor=floor, **options)

    def params(self) -> dict[str, Any]:
        return {"quantiles": self.quantiles.tolist(), "floor": self.floor}

    def reset(self, mask: np.ndarray | None = None) -> None:
        m = self._mask(mask)
        self.score[m] = 0.0
        self.t[m] = 0

    def _update(self, u: np.ndarray) -> np.ndarray:
        self.score += u
        i = np.minimum(self.t, self.quantiles.shape[0] - 1)
        self.t += 1
        below = self._below(i)
        stat: np.ndarray = self._log[below]
        under = below == 0  # below every quantile: the distance below the lowest, in units of the step's range
        if under.any():
            j = i[under]
            stat[under] += np.maximum(self._low[j] - self.score[under], 0.0) / self._range[j]
        return stat

    def _below(self, i: np.ndarray) -> np.ndarray:
        """Per env, how many of step ``i``'s quantiles lie below its score: a branchless binary search over the
        sorted rows, padded with ``+inf`` to a power of two (five halvings for 32 quantiles, where comparing with
        all of them costs more)."""
        width = self._width
        start = i * width  # where each env's row starts
        found = start.copy()  # moves to the last entry below its score
        step = width >> 1
        while step:  # the entry step - 1 past each env's place (a view starting there: no index sum), below?
            found += step * (self._shifted[step][found] < self.score)
            step >>= 1
        below: np.ndarray = found - start + (self._flat[found] < self.score)
        return below

    def scalar(self) -> _ScalarRank:
        return _ScalarRank(self.quantiles.tolist(), self._log.tolist(), self._range.tolist())


class _ScalarRank(ScalarDetector):
    def __init__(self, quantiles: list[list[float]], log: list[float], spread: list[float]) -> None:
        self.quantiles, self.log, self.spread, self.last = quantiles, log, spread, len(quantiles) - 1
        self.score, self.t = 0.0, 0

    def reset(self) -> None:
        self.score, self.t = 0.0, 0

    def update(self, u: float) -> float:
        self.score += u
        i = self.t if self.t < self.last else self.last
        self.t += 1
        q = self.quantiles[i]
        below = bisect.bisect_left(q, self.score)
        return self.log[below] + (0.0 if below else (q[0] - self.score) / self.spread[i])
