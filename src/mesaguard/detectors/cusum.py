"""CUSUM on the standardized shortfall of base-objective increments, step by step (Page, 1954)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from mesaguard.detectors.base import Detector, DetectorError, ScalarDetector, check_episodes
from mesaguard.detectors.reference import MAX_BLOCKS, StepReference, blocks, check_block, complete_blocks

__all__ = ["AUTOCORRELATED", "STEP_RANGE", "Cusum", "spread_range"]

STEP_RANGE = 100.0  # per-step references where the spread changes by more than two orders of magnitude
AUTOCORRELATED = 0.8  # innovations where the lag-1 autocorrelation of standardized increments is at least this


def spread_range(ref: StepReference, n: int) -> float:
    """How many times the spread changes within an episode: the 90% over the 10% quantile of the positive
    per-step spreads, over the steps at least a tenth of the ``n`` reference episodes reached (1 if none)."""
    observed = ref.std[(ref.count >= max(2, n // 10)) & (ref.std > ref.std.min())]
    if observed.size < 2:
        return 1.0
    low, high = np.quantile(observed, [0.1, 0.9])
    return float(high / low) if low > 0 else float("inf")


class Cusum(Detector):
    """CUSUM on the shortfall of each step's increment against its reference (Page, 1954).

    With ``z_t = (u_t - mean[t]) / std[t]`` the increment standardized by the
    in-distribution mean and spread of step ``t`` (time-indexed, see
    :mod:`mesaguard.detectors.reference`) and ``rho`` the lag-1 autocorrelation of
    ``z`` in distribution, the innovation ``e_t = (z_t - rho z_{t-1}) / sqrt(1 - rho^2)``
    is what the reference did not predict from the step before, and

        ``C_t = max(0, C_{t-1} - e_t - slack)``, reset each episode.

    For independent Gaussian increments (``rho = 0``) with ``slack = shift / 2`` it is
    the likelihood-ratio CUSUM for a drop of ``shift`` standard deviations, whose
    delay meets Lorden's bound ``log(ARL) / KL``. With autocorrelated increments (a
    smooth control objective) raw increments wander for long stretches in
    distribution and inflate the threshold; innovations do not. Past the last
    reference step, the last step's reference is used.

    **Blocks.** Episodes longer than :attr:`MAX_BLOCKS` steps are cut into at most that
    many blocks of ``block`` steps (Greenberg and Mannor's resolution); the CUSUM then
    runs on the block sums, each against its own block's reference, and holds its
    value within a block. A small drop of every step is lost in one step's spread
    (HalfCheetah's: a gait whose phase differs between episodes, and a slack of a
    quarter of that spread per step) and stands out in a block's sum; a block costs
    at most ``block - 1`` steps of delay, a hundredth of the episode. Up to
    :attr:`MAX_BLOCKS` steps every step is its own block, so a sudden drop is seen at
    the step it comes. ``block=`` forces a size; steps past the last complete block
    of an episode are not tested.

    :meth:`fit` chooses (``reference="auto"``, ``innovations="auto"``): per-step (per-block)
    references in blocks, and where the spread changes by more than :data:`STEP_RANGE` times
    within an episode (a swing-up then a balance); one pooled reference where every step
    is its own block and the spread is even (a sparse reward whose events come at varying
    steps: there the per-step spreads are mostly timing jitter, and a pooled reference is
    the stronger test); innovations where the lag-1 autocorrelation is at least
    :data:`AUTOCORRELATED`. ``reference="step"|"pooled"`` and ``innovations=True|False``
    force either.

    Parameters
    ----------
    mean, std
        Per-step in-distribution mean and (floored) spread of the increment, length
        ``T``; one value each is one pooled reference for every step.
    slack
        Shortfall, in stds, ignored per step (Page's k). The default 0.25 is the
        optimal k for a drop of half a standard deviation per step.
    rho
        Lag-1 autocorrelation of the standardized increments (0: treat them as independent).
    block
        Steps per block (1: every step is its own block); ``mean`` and ``std`` are then those of the block sums.

    >>> det = Cusum(mean=1.0, std=0.1, slack=0.5, n_envs=1)
    >>> stats = [det.update(np.array([x]))[0] for x in [1.0] * 5 + [0.5] * 5]
    >>> round(float(stats[-1]), 1)
    22.5
    >>> int(np.argmax(np.array(stats) > 0))  # first step with evidence of the drop
    5
    >>> quiet = Cusum(mean=[0.0, 0.0], std=[1.0, 1e-6], slack=0.0)  # a deviation of 1e-5 where the spread is 1e-6
    >>> [round(quiet.update_scalar(u), 3) for u in [0.0, -1e-5]]
    [0.0, 10.0]
    """

    name = "cusum"

    MAX_BLOCKS = MAX_BLOCKS  # default resolution (reference.MAX_BLOCKS): every step its own block up to 100 steps

    def __init__(
        self,
        mean: float | Sequence[float] | np.ndarray,
        std: float | Sequence[float] | np.ndarray,
        slack: float = 0.25,
        rho: float = 0.0,
        block: int = 1,
        n_envs: int = 1,
    ) -> None:
        super().__init__(n_envs)
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if self.mean.ndim != 1 or self.mean.shape != self.std.shape or self.mean.size == 0:
            raise DetectorError(f"cusum mean {self.mean.shape} and std {self.std.shape} must be equal 1-D arrays")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.std).all() and (self.std > 0).all()):
            raise DetectorError("cusum needs finite means and a finite positive std at every step")
        if not (np.isfinite(slack) and slack >= 0):
            raise DetectorError(f"cusum slack={slack}; expected a non-negative number of stds")
        if not (np.isfinite(rho) and -1 < rho < 1):
            raise DetectorError(f"cusum rho={rho}; expected an autocorrelation strictly between -1 and 1")
        self.slack, self.rho, self.block = float(slack), float(rho), check_block(self.name, block)
        self._gain = 1.0 / np.sqrt(1.0 - self.rho**2)
        self.sum = np.zeros(self.n_envs)
        self.prev = np.zeros(self.n_envs)  # last standardized increment (0 before the first step)
        self.t = np.zeros(self.n_envs, dtype=np.int64)  # complete blocks so far
        self.acc = np.zeros(self.n_envs)  # the current block's increment sum
        self.k = np.zeros(self.n_envs, dtype=np.int64)  # steps into the current block

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        episodes = check_episodes(episodes)
        T = max(e.size for e in episodes)
        block = check_block(cls.name, options.pop("block", -(-T // cls.MAX_BLOCKS)))
        if block > 1:  # the complete blocks' sums are the increments from here on
            sums = [s for s in (blocks(e, block)[: e.size // block] for e in episodes) if s.size]
            if len(sums) >= 2:
                episodes = sums
            else:  # fewer than two episodes complete one block: every step is a block
                block = 1
        reference = options.pop("reference", "auto")
        if reference not in ("auto", "step", "pooled"):
            raise DetectorError(
                f"cusum reference={reference!r}; expected 'step' (per step), 'pooled' (one for all) or 'auto'"
            )
        ref = StepReference.fit(episodes)
        if reference == "auto":
            reference = "step" if block > 1 or spread_range(ref, len(episodes)) > STEP_RANGE else "pooled"
        if reference == "pooled":  # one mean and spread for every step (the classic CUSUM)
            pooled = np.concatenate(episodes)
            floor = float(ref.std.min())
            ref = StepReference(np.array([pooled.mean()]), np.array([max(pooled.std(ddof=1), floor)]), ref.count[:1])
        z = [(e - ref.mean[: e.size]) / ref.std[: e.size] for e in episodes]
        pairs = [(x[:-1], x[1:]) for x in z if x.size > 1]
        rho = 0.0
        innovations = options.pop("innovations", "auto")
        if pairs and innovations:
            a, b = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
            if a.std() > 0 and b.std() > 0:
                rho = float(np.clip(np.corrcoef(a, b)[0, 1], -0.95, 0.95))
            if innovations == "auto" and abs(rho) < AUTOCORRELATED:
                rho = 0.0  # nearly independent increments: innovations would only add the estimate's noise
        return cls(mean=ref.mean, std=ref.std, rho=rho, block=block, **options)

    def params(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "slack": self.slack, "rho": self.rho,
                "block": self.block}

    def reset(self, mask: np.ndarray | None = None) -> None:
        m = self._mask(mask)
        self.sum[m] = 0.0
        self.prev[m] = 0.0
        self.t[m] = 0
        self.acc[m] = 0.0
        self.k[m] = 0

    def _update(self, u: np.ndarray) -> np.ndarray:
        if self.block == 1:
            self._blocks(slice(None), u)
        else:
            rows = complete_blocks(self.acc, self.k, u, self.block)
            if rows.size:
                every = rows.size == self.n_envs  # blocks completed together (synchronized starts): no gathers
                x = self.acc.copy() if every else self.acc[rows]
                self.acc[rows] = 0.0
                self._blocks(slice(None) if every else rows, x)
        return self.sum.copy()

    def _blocks(self, rows: slice | np.ndarray, x: np.ndarray) -> None:
        """Feed the complete block sums ``x`` of the envs ``rows``."""
        i = np.minimum(self.t[rows], self.mean.size - 1)
        z = (x - self.mean[i]) / self.std[i]
        e = (z - self.rho * self.prev[rows]) * self._gain if self.rho else z
        self.prev[rows] = z
        self.t[rows] += 1
        self.sum[rows] = np.maximum(0.0, self.sum[rows] - e - self.slack)

    def scalar(self) -> _ScalarCusum:
        return _ScalarCusum(self.mean.tolist(), self.std.tolist(), self.slack, self.rho, self.block)


class _ScalarCusum(ScalarDetector):
    def __init__(self, mean: list[float], std: list[float], slack: float, rho: float, block: int) -> None:
        self.mean, self.std, self.last, self.block = mean, std, len(mean) - 1, block
        self.slack, self.rho, self.gain = slack, rho, 1.0 / (1.0 - rho * rho) ** 0.5
        self.sum, self.prev, self.t, self.acc, self.k = 0.0, 0.0, 0, 0.0, 0

    def reset(self) -> None:
        self.sum, self.prev, self.t, self.acc, self.k = 0.0, 0.0, 0, 0.0, 0

    def update(self, u: float) -> float:
        if self.block > 1:
            self.acc += u
            self.k += 1
            if self.k < self.block:
                return self.sum
            u, self.acc, self.k = self.acc, 0.0, 0
        i = self.t if self.t < self.last else self.last
        self.t += 1
        z = (u - self.mean[i]) / self.std[i]
        e = (z - self.rho * self.prev) * self.gain
        self.prev = z
        s = self.sum - e - self.slack
        self.sum = s if s > 0.0 else 0.0
        return self.sum
