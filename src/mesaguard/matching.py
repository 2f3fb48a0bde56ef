"""How detectors calibrated together are put on one scale, so that one conformal threshold serves their union.

Two rules (a calibration's ``match``, :meth:`~mesaguard.calibration.Calibration.thresholds_for`), each fixed on
the fitting half from a detector's cross-fitted per-episode maxima, before the held-out half is seen, which keeps
the guarantee P(any fires) <= alpha exact:

* ``"quantiles"`` (the default): :func:`tail_map`, the ``-log`` exceedance level of a value among those maxima,
  with an exponential tail past the largest: members meet at every quantile of their tails;
* ``"linear"``: :func:`tail_scale` at :func:`tail_level`, ``(x - location) / scale``: members meet at one quantile.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mesaguard.conformal import CalibrationError

__all__ = ["MATCHES", "TAIL_KNOTS", "check_match", "map_level", "map_value", "tail_level", "tail_map", "tail_scale"]

MATCHES = ("linear", "quantiles")  # how detectors calibrated together are put on one scale
TAIL_KNOTS = 10  # the largest cross-fitted maxima whose mean excess scales the exponential tail past them


def check_match(match: str) -> str:
    """``match`` if it names a rule of :data:`MATCHES`, else :class:`CalibrationError` naming it and the rules.

    >>> check_match("quantile")
    Traceback (most recent call last):
    ...
    mesaguard.calibration.CalibrationError: match='quantile'; expected one of 'linear', 'quantiles'
    """
    if match not in MATCHES:
        raise CalibrationError(f"match={match!r}; expected one of {', '.join(map(repr, MATCHES))}")
    return match


def tail_level(alpha: float, k: int) -> float:
    """The quantile at which ``k`` detectors calibrated together are matched: ``1 - alpha / k``.

    Their union must fire on at most ``alpha`` of in-distribution episodes, so a joint
    threshold lies beyond each member's own ``1 - alpha`` quantile, between it and the
    ``1 - alpha / k`` at which each would sit with an equal share of alpha (members
    that never fire together); matched there, members meet where their thresholds fall.

    >>> tail_level(0.05, 1), tail_level(0.05, 4)
    (0.95, 0.9875)
    """
    return 1.0 - alpha / max(int(k), 1)


def tail_scale(maxima: np.ndarray, level: float) -> tuple[float, float]:
    """``(location, scale)``: the median of ``maxima`` and the distance from it to their ``level`` quantile.

    Where that distance is zero (a detector that hardly moves in distribution) the
    full range stands in, then 1.

    >>> tail_scale(np.arange(101.0), 0.95)
    (50.0, 45.0)
    """
    location, tail = np.quantile(maxima, [0.5, level])
    spread = tail - location if tail > location else float(np.ptp(maxima)) or 1.0
    return float(location), float(spread)


TailMap = tuple[np.ndarray, np.ndarray, float]  # knots (ascending), their levels, the tail's scale past the last


def tail_map(crossfit: Sequence[float]) -> TailMap:
    """A detector's map onto the common scale of ``match="quantiles"``, fixed by its cross-fitted maxima.

    With ``c_(1) <= ... <= c_(n)`` those maxima, the map sends ``c_(j)`` to ``-log((n + 1 - j) / (n + 1))``, the
    ``-log`` of its exceedance level (tied maxima: the largest), is linear between them and below the smallest, and
    past the largest rises by 1 per ``s``, the mean excess of the :data:`TAIL_KNOTS` largest over the smallest of
    them (an exponential tail). Strictly increasing, so a threshold on the map is one on the statistic.

    >>> knots, levels, s = tail_map([0.0, 1.0, 1.0, 3.0])
    >>> knots.tolist(), [round(v, 3) for v in levels.tolist()], s
    ([0.0, 1.0, 3.0], [0.223, 0.916, 1.609], 1.25)
    """
    c = np.sort(np.asarray(crossfit, dtype=np.float64))
    level = -np.log((c.size - np.arange(c.size)) / (c.size + 1.0))
    knots, where = np.unique(c, return_inverse=True)
    levels = np.zeros(knots.size)
    np.maximum.at(levels, where, level)
    top = c[-TAIL_KNOTS:]
    scale = float(np.mean(top - top[0])) or float(np.ptp(c)) or 1.0
    return knots, levels, scale


def map_level(m: TailMap, x: np.ndarray | Sequence[float]) -> np.ndarray:
    """:func:`tail_map`'s level of each value of ``x``."""
    knots, levels, scale = m
    x = np.asarray(x, dtype=np.float64)
    below = (levels[1] - levels[0]) / (knots[1] - knots[0]) if knots.size > 1 else 1.0 / scale
    out: np.ndarray = np.where(x < knots[0], levels[0] + (x - knots[0]) * below, np.interp(x, knots, levels))
    return np.where(x > knots[-1], levels[-1] + (x - knots[-1]) / scale, out)


def map_value(m: TailMap, level: float) -> float:
    """The value :func:`map_level` sends to ``level`` (its inverse)."""
    knots, levels, scale = m
    if level >= levels[-1]:
        return float(knots[-1] + (level - levels[-1]) * scale)
    if level < levels[0]:
        below = (levels[1] - levels[0]) / (knots[1] - knots[0]) if knots.size > 1 else 1.0 / scale
        return float(knots[0] + (level - levels[0]) / below)
    return float(np.interp(level, levels, knots))
