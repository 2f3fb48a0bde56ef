"""Sequential conformal p-values: each deployment episode ranked among all before it.

Episode ``j``'s statistic ``x_j`` is ranked among the bag of the ``n`` reference
values (the calibration's held-out maxima) and the ``j - 1`` deployment episodes
before it:
``p_j = (#{bag > x_j} + U_j (#{bag = x_j} + 1)) / (|bag| + 1)``, ``U_j`` uniform.

Guarantee: if the deployment episodes are exchangeable with the calibration ones,
``p_1, p_2, ...`` are independent and exactly uniform, whatever the distribution of
the statistic (Vovk, Nouretdinov and Gammerman 2003, "Testing exchangeability
on-line"). Every mode's guarantee rests on this, unconditionally, because the bag
keeps growing. Ranking against the *fixed* calibration reference instead would make
the p-values independent only given the reference and not uniform given it (each
reference of ``n`` values misplaces every quantile by about ``1/sqrt(n)``), so in
change mode ``R_k - k`` would no longer be a martingale and the ARL bound would hold
only approximately, worse with small references, for about the same delays
(``benchmarks/late_change.py`` measures both). Nor does the growing bag slow a late
change down: at the change it holds only in-distribution values, more of them than
at the start.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

__all__ = ["sequential_pvalues"]


def _pvalue(greater: float, equal: float, size: int, u: float) -> float:
    """Smoothed conformal p-value of a value with ``greater`` bag values above it and ``equal`` tied."""
    return max((greater + u * (equal + 1.0)) / (size + 1.0), 1e-300)


def _counts(bag: list[float], x: float) -> tuple[int, int]:
    """``(#{bag > x}, #{bag == x})`` in a sorted list."""
    right = bisect.bisect_right(bag, x)
    return len(bag) - right, right - bisect.bisect_left(bag, x)


def sequential_pvalues(
    reference: Sequence[float] | np.ndarray, stream: Sequence[float] | np.ndarray, u: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Sequential conformal p-values of ``stream`` against ``reference`` plus the stream's past.

    ``u`` are the smoothing uniforms, one per stream value. Offline twin of what the
    monitor computes online (tests hold them equal).

    >>> sequential_pvalues([1.0, 2.0, 3.0], [2.5, 0.0], [0.5, 0.5]).round(3).tolist()
    [0.375, 0.9]
    """
    bag = sorted(float(r) for r in reference)
    out = np.empty(len(stream))
    for j, (x, uj) in enumerate(zip(stream, u)):
        greater, equal = _counts(bag, float(x))
        out[j] = _pvalue(greater, equal, len(bag), float(uj))
        bisect.insort(bag, float(x))
    return out
