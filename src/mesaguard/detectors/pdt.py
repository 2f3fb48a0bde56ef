"""Greenberg and Mannor's partial degradation test (PDT): a drop in some blocks, not all."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from mesaguard.detectors.base import DetectorError, ScalarDetector
from mesaguard.detectors.meanshift import MeanShift

__all__ = ["PartialDegradation"]


class PartialDegradation(MeanShift):
    """The sum of the largest ``share`` of the whitened block deficits so far, over the square root of their count.

    Greenberg and Mannor (ICML 2021) pair the uniform test (:class:`MeanShift`,
    their UDT) with a test of a drop confined to part of the episode: with ``e``
    the whitened deficits of the ``j`` complete blocks (``e = L^{-1} d`` as in the
    UDT, independent standard normals in distribution) and ``m = ceil(share * j)``,
    the statistic is ``sum(top m of e) / sqrt(m)``. A drop in a few blocks moves a
    few ``e`` by a lot, which the uniform test dilutes over every block. Its
    in-distribution law is not normal (it is a sum of order statistics); the
    conformal threshold does not need it to be.

    Parameters
    ----------
    mu, chol, block
        As :class:`MeanShift` (fitted the same way).
    share
        The share of blocks that may carry the drop, in (0, 1].

    >>> det = PartialDegradation(mu=[0.0] * 4, chol=np.eye(4), share=0.5)
    >>> [round(det.update_scalar(u), 3) for u in [0.0, -3.0, 0.0, 0.0]]
    [0.0, 3.0, 2.121, 2.121]
    """

    name = "pdt"

    def __init__(
        self,
        mu: Sequence[float] | np.ndarray,
        chol: Sequence[Sequence[float]] | np.ndarray,
        block: int = 1,
        share: float = 0.25,
        n_envs: int = 1,
    ) -> None:
        super().__init__(mu, chol, block=block, n_envs=n_envs)
        if isinstance(share, bool) or not (isinstance(share, (int, float)) and 0 < share <= 1):
            raise DetectorError(f"pdt share={share!r}; expected a share of blocks in (0, 1]")
        self.share = float(share)

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        share = options.pop("share", 0.25)
        fitted = MeanShift.fit(episodes, **{k: v for k, v in options.items() if k == "block"})
        rest = {k: v for k, v in options.items() if k != "block"}
        return cls(mu=fitted.mu, chol=fitted.chol, block=fitted.block, share=share, **rest)

    def params(self) -> dict[str, Any]:
        return {**super().params(), "share": self.share}

    def _blocks(self, rows: np.ndarray, x: np.ndarray) -> np.ndarray:
        moved = super()._blocks(rows, x)
        if moved.size:
            j = self.t[moved]  # blocks so far, per env that completed one
            e = np.where(np.arange(self.mu.size) < j[:, None], self.e[moved], -np.inf)
            top = -np.sort(-e, axis=1)  # descending; -inf past j
            m = np.ceil(self.share * j).astype(np.int64)
            sums = np.cumsum(np.where(np.isfinite(top), top, 0.0), axis=1)[np.arange(moved.size), m - 1]
            self.stat[moved] = sums / np.sqrt(m)
        return moved

    def scalar(self) -> _ScalarPartialDegradation:  # type: ignore[override]
        return _ScalarPartialDegradation(self)


class _ScalarPartialDegradation(ScalarDetector):
    """The vector form over one env (the top-m sum is a sort of at most ``MeanShift.MAX_BLOCKS`` values)."""

    def __init__(self, det: PartialDegradation) -> None:
        self.det = type(det)(det.mu, det.chol, block=det.block, share=det.share, n_envs=1)
        self._u = np.zeros(1)

    def reset(self) -> None:
        self.det.reset()

    def update(self, u: float) -> float:
        self._u[0] = u
        return float(self.det._update(self._u)[0])


def _top_share(e: Sequence[float], share: float) -> float:  # the statistic by hand, for tests
    m = math.ceil(share * len(e))
    return float(sum(sorted(e, reverse=True)[:m]) / math.sqrt(m))
