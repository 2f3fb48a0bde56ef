"""Decimation of long traces for the report: a bounded number of points, every dip and peak kept.

A plotted episode of ``n`` steps keeps at most ``max_points`` of its points: the first,
the last, and the minimum and the maximum of each of ``(max_points - 2) // 2`` equal
buckets of the steps between them, in step order (the "min/max per bucket" rule of
plotting libraries). Guarantee: the decimated line passes through the lowest and the
highest value of every bucket, so a dip (a deficit's worst point, the step a guard
alarmed at its lowest) is never lost, only the wiggles between extremes inside one
bucket; traces of at most ``max_points`` points are kept whole.

>>> y = np.array([0.0, 1.0, 2.0, -5.0, 2.0, 3.0, 2.0, 1.0, 0.0, 9.0, 1.0])
>>> decimate(y, 6).tolist()  # first, last, and the max and min of steps 1-4 and of 5-9
[0, 2, 3, 8, 9, 10]
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_POINTS", "decimate"]

MAX_POINTS = 300  # points per trace in a report


def decimate(y: np.ndarray, max_points: int = MAX_POINTS) -> np.ndarray:
    """Indices into ``y`` (finite values, 1-D) to plot: at most ``max_points``, increasing, extremes kept."""
    y = np.asarray(y, dtype=np.float64)
    n = y.size
    if max_points < 4:
        raise ValueError(f"max_points={max_points}; expected 4 or more (first, last, and one bucket's min and max)")
    if n <= max_points:
        return np.arange(n)
    buckets = (max_points - 2) // 2
    edges = np.linspace(1, n - 1, buckets + 1).astype(np.int64)  # n - 2 >= 2 * buckets: every bucket non-empty
    keep = [0, n - 1]
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        part = y[lo:hi]
        keep += [lo + int(np.argmin(part)), lo + int(np.argmax(part))]
    return np.unique(np.asarray(keep, dtype=np.int64))
