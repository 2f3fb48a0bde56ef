"""Time-indexed references: what in-distribution episodes did at each step, and the spread floor.

Rewards whose spread changes by orders of magnitude within an episode are the
common case (a swing-up then a balance, a car on a straight then in a junction).
A detector that standardizes every step by one pooled spread throws away exactly
the quiet steps, where a deviation is most surprising. These helpers give each
step ``t`` its own in-distribution mean and spread, estimated over the reference
episodes still running at ``t``:

* an episode that ended before ``t`` does not count for the increments at ``t``;
  for the score it counts with its final score (a finished run stays where it ended);
* a step that fewer than two reference episodes reached takes the reference of the
  last step that two reached (so steps past the longest reference episode reuse
  the last reliable step).

**The floor** (:func:`resolution`). A spread may be zero or tiny in truth (a
constant ``+1`` per step; a balanced pendulum's cost of about ``1e-8``). It is
floored only at the resolution of the numbers themselves: ``RESOLUTION_ULPS``
units in the last place of the largest reference increment (``np.spacing``),
times ``sqrt(t)`` for a score after ``t`` steps (rounding adds up like noise).
That floor is about ``1e-13`` of the largest increment, so it never swamps a real
spread, however small. A relative floor (say, one pooled spread) would instead
erase the quiet phases: that is what made pooled detectors blind on Pendulum-v1
(Greenberg and Mannor's scenarios).

**Steps where every reference episode agreed exactly** (a sparse reward: no
episode happened to collect or lose anything at step 12) are another matter: an
event none of the ``n`` episodes showed there may still come with a chance of
about ``1 / (n + 1)``. Such a step's spread is the spread one such event would
give, the pooled spread of the increments over ``sqrt(n + 1)``
(:func:`unseen_event`), not the resolution, or a held-out episode whose event
falls one step later than all the fitted ones would look astronomically unusual
and inflate every threshold. Spreads that are positive, however small, are kept.

The conformal threshold is fitted on held-out episodes with the detector fixed,
so the false-alarm guarantee holds whatever the floor and for episodes of any
length (the rule for steps past the reference is part of the fixed detector).

>>> ref = StepReference.fit([np.array([1.0, 0.0, 5.0]), np.array([3.0, 0.0]), np.array([2.0, 0.0, 7.0])])
>>> ref.mean.tolist(), ref.count.tolist()
([2.0, 0.0, 6.0], [3, 3, 2])
>>> round(float(ref.std[1]), 3), round(float(ref.std[2]), 3)  # step 2: all agreed (0.0), an unseen event
(1.302, 1.414)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mesaguard.detectors.base import DetectorError

__all__ = [
    "MAX_BLOCKS",
    "RESOLUTION_ULPS",
    "StepReference",
    "blocks",
    "check_block",
    "complete_blocks",
    "resolution",
    "unseen_event",
]

RESOLUTION_ULPS = 64.0  # rounding units of the largest increment below which spreads are not resolved
# The default resolution of the detectors in blocks (CUSUM, the UDT and the PDT): every step its own block up to
# this many steps, at most this many blocks an episode beyond (a block of ceil(T / MAX_BLOCKS) steps, T the longest
# reference episode, so one long episode sets it for all). A finer one costs the UDT and the PDT a larger covariance
# (B x B) and longer forward-substitution rows; measured in docs/results.md.
MAX_BLOCKS = 100


def resolution(episodes: Sequence[np.ndarray]) -> float:
    """The smallest spread one increment can be told apart at: ``RESOLUTION_ULPS`` ulps of the largest one.

    >>> bool(resolution([np.array([1.0, -2.0])]) == 64 * np.spacing(2.0))
    True
    """
    top = max(float(np.abs(e).max()) for e in episodes)
    return float(RESOLUTION_ULPS * np.spacing(max(top, 1.0)))


def unseen_event(episodes: Sequence[np.ndarray]) -> float:
    """The pooled spread of the increments: the size of an event a step may hold though no reference showed it.

    >>> round(unseen_event([np.array([0.0, 1.0]), np.array([0.0, 0.0])]), 3)
    0.5
    """
    pooled = np.concatenate([np.asarray(e, dtype=np.float64) for e in episodes])
    return float(pooled.std(ddof=1)) if pooled.size > 1 else 0.0


def blocks(episode: np.ndarray, size: int) -> np.ndarray:
    """Sums of consecutive ``size``-step blocks of one episode (the last block may be partial).

    >>> blocks(np.arange(7.0), 3).tolist()
    [3.0, 12.0, 6.0]
    """
    n = -(-episode.size // size)
    out = np.zeros(n)
    np.add.at(out, np.arange(episode.size) // size, episode)
    return out


def check_block(detector: str, block: object) -> int:
    """``block`` as a number of steps per block, or a :class:`DetectorError` naming ``detector`` and the value.

    >>> check_block("cusum", 0)
    Traceback (most recent call last):
    ...
    mesaguard.detectors.base.DetectorError: cusum block=0; expected a positive number of steps
    """
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise DetectorError(f"{detector} block={block!r}; expected a positive number of steps")
    return int(block)


def complete_blocks(acc: np.ndarray, k: np.ndarray, u: np.ndarray, size: int) -> np.ndarray:
    """Add one step's increments ``u`` to each env's running block sum ``acc`` (``k`` steps in, both updated in
    place); return the envs whose ``size``-step block this step completed (their ``k`` back to 0; the caller reads
    and clears their ``acc``).

    >>> acc, k = np.zeros(2), np.array([0, 1])
    >>> complete_blocks(acc, k, np.array([1.0, 2.0]), 2).tolist(), acc.tolist(), k.tolist()
    ([1], [1.0, 2.0], [1, 0])
    """
    acc += u
    k += 1
    rows = np.flatnonzero(k >= size)
    k[rows] = 0
    return rows


@dataclass(frozen=True)
class StepReference:
    """Per-step mean, floored spread and count of running reference episodes (length ``T``, the longest)."""

    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], cumulative: bool = False, floor: float | None = None) -> StepReference:
        """Per-step moments of increments (``cumulative=False``) or of the score so far (``True``)."""
        episodes = [np.asarray(e, dtype=np.float64) for e in episodes]
        lengths = np.array([e.size for e in episodes])
        T = int(lengths.max())
        values = np.full((len(episodes), T), np.nan)
        for i, e in enumerate(episodes):
            values[i, : e.size] = np.cumsum(e) if cumulative else e
            if cumulative:
                values[i, e.size :] = values[i, e.size - 1]  # a finished run's score stays where it ended
        running = np.isfinite(values)
        count = running.sum(axis=0)
        mean = np.zeros(T)
        std = np.zeros(T)
        ok = count >= 2
        with np.errstate(invalid="ignore", divide="ignore"):
            mean[ok] = np.nanmean(values[:, ok], axis=0)
            std[ok] = np.nanstd(values[:, ok], axis=0, ddof=1)
        last = np.maximum.accumulate(np.where(ok, np.arange(T), -1))
        if last[0] < 0:  # not even the first step has two episodes: impossible with two non-empty episodes
            raise ValueError("a step reference needs at least two episodes")
        mean, std, n = mean[last], std[last], count[last]
        base = resolution(episodes) if floor is None else float(floor)
        scale = np.sqrt(np.arange(1, T + 1)) if cumulative else 1.0
        unseen = unseen_event(episodes) / np.sqrt(n + 1.0)  # where every episode agreed exactly: see the docstring
        std = np.where(std > 0, std, np.maximum(unseen, 0.0))
        return cls(mean=mean, std=np.maximum(std, base * scale), count=count)
