"""How detectors calibrated together are put on one scale, so that one conformal threshold serves their union.

Two rules (a calibration's ``match``, :meth:`~mesaguard.calibration.Calibration.thresholds_for`), each fixed on
the fitting half from a detector's cross-fitted per-episode maxima, before the held-out half is seen, which keeps
the guarantee P(any fires) <= alpha exact:

* ``"linear"`` (the default, :data:`DEFAULT_MATCH`): :func:`tail_scale` at :func:`tail_level`,
  ``(x - location) / scale``: members meet at one quantile, each its own ``1 - alpha``;
* ``"quantiles"``: :func:`tail_map`, the ``-log`` exceedance level of a value among those maxima, with an
  exponential tail past the largest: members meet at every quantile of their tails.

Both estimate how fast a member's tail falls from its cross-fitted maxima, and a member whose maxima barely vary (a
near-deterministic task: a statistic that is the same constant in every episode, up to rounding) would give a scale
of rounding noise: the next episode, a hair past the largest, would look astronomically unlikely, set the joint
threshold, and put every other member's threshold out of reach (a union that can never fire). So a standardized
member's map is floored (:func:`tail_floor`): it rises by at most one level per thousandth of the statistic's unit,
between its maxima and past them, so differences that small are never rare.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mesaguard.conformal import CalibrationError

__all__ = [
    "DEFAULT_MATCH", "MATCHES", "RESOLUTION", "TAIL_KNOTS", "check_match", "map_level", "map_value", "tail_floor",
    "tail_level", "tail_map", "tail_scale",
]

MATCHES = ("linear", "quantiles")  # how detectors calibrated together are put on one scale
DEFAULT_MATCH = "linear"  # what a calibration uses unless told (docs/results.md, the joint default, says why)
TAIL_KNOTS = 10  # the largest cross-fitted maxima whose mean excess scales the exponential tail past them
RESOLUTION = 1e-3  # in a standardized statistic's unit: the least difference its map resolves (tail_floor)


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


def tail_level(alpha: float) -> float:
    """The quantile at which detectors calibrated together are matched linearly: ``1 - alpha``, each member's own.

    A member standardized there reads 1 where it alone would be thresholded (in distribution), whatever the
    other members, so a set is matched the same calibrated alone or with others. Matching further out, at the
    ``1 - alpha / k`` where each of ``k`` members would sit with an equal share of alpha (the rule before), reads
    each scale off the one or two largest of the cross-fitted maxima: on the joint-default benchmark's draws that
    lost more (docs/results.md).

    >>> tail_level(0.05)
    0.95
    """
    return 1.0 - alpha


def tail_floor(unit: float | None) -> float:
    """The least scale a member's tail is fitted with, for a statistic in ``unit``: :data:`RESOLUTION` of the unit,
    below which a standardized statistic's differences are no evidence of anything (and far above rounding); 0 for
    a statistic in the objective's own units (``unit`` None), whose size nothing fixes in advance.

    >>> tail_floor(1.0), tail_floor(None)
    (0.001, 0.0)
    """
    return 0.0 if unit is None else RESOLUTION * float(unit)


def tail_scale(maxima: np.ndarray, level: float, unit: float | None = None) -> tuple[float, float]:
    """``(location, scale)``: the median of ``maxima`` and the distance from it to their ``level`` quantile.

    Where that distance is zero (a detector that hardly moves in distribution) the
    full range stands in, then 1; it is never below :func:`tail_floor` for a statistic in ``unit``.

    >>> tail_scale(np.arange(101.0), 0.95)
    (50.0, 45.0)
    >>> tail_scale(np.full(100, 0.0017) + 1e-16 * np.arange(100), 0.95, unit=1.0)[1]  # rounding is no spread
    0.001
    """
    location, tail = np.quantile(maxima, [0.5, level])
    spread = tail - location if tail > location else float(np.ptp(maxima)) or 1.0
    return float(location), max(float(spread), tail_floor(unit))


TailMap = tuple[np.ndarray, np.ndarray, float]  # knots (ascending), their levels, the tail's scale past the last


def tail_map(crossfit: Sequence[float], unit: float | None = None) -> TailMap:
    """A detector's map onto the common scale of ``match="quantiles"``, fixed by its cross-fitted maxima.

    With ``c_(1) <= ... <= c_(n)`` those maxima, the map sends each value ``c`` among them to
    ``-log(#{j: c_(j) >= c} / (n + 1))``, the ``-log`` of its exceedance level (``-log((n + 1 - j) / (n + 1))`` where
    no maxima tie: a value many in-distribution episodes share is not called rare, and where every one of them is
    the same, say a CUSUM that never left zero, it is called common), is linear between them and below the smallest,
    and
    past the largest rises by 1 per ``s``, the mean excess of the :data:`TAIL_KNOTS` largest over the smallest of
    them (an exponential tail). For a statistic in ``unit``, ``s`` is at least :func:`tail_floor` ``f``, and
    between the maxima too the map rises by at most 1 per ``f`` (each level is lowered where needed): maxima packed
    closer than that (one constant up to rounding) are not spread over every level. Strictly increasing, so a
    threshold on the map is one on the statistic.

    >>> knots, levels, s = tail_map([0.0, 1.0, 1.0, 3.0])
    >>> knots.tolist(), [round(v, 3) for v in levels.tolist()], s
    ([0.0, 1.0, 3.0], [0.223, 0.511, 1.609], 1.25)
    """
    c = np.sort(np.asarray(crossfit, dtype=np.float64))
    level = -np.log((c.size - np.arange(c.size)) / (c.size + 1.0))
    knots, first = np.unique(c, return_index=True)  # sorted: a tied value's first place counts all that tie
    levels = level[first]
    floor = tail_floor(unit)
    if floor > 0:  # level_k = min(level_k, level_(k-1) + (knot_k - knot_(k-1)) / floor): a running minimum
        levels = np.minimum.accumulate(levels - knots / floor) + knots / floor
    top = c[-TAIL_KNOTS:]
    scale = max(float(np.mean(top - top[0])), floor) or float(np.ptp(c)) or 1.0
    return knots, levels, scale


def map_level(m: TailMap, x: np.ndarray | Sequence[float]) -> np.ndarray:
    """:func:`tail_map`'s level of each value of ``x`` (between two knots, never outside their levels: interpolation
    between knots far apart can round past one, as hypothesis found: 0.0 between -5.8e5 and 2e-299)."""
    knots, levels, scale = m
    x = np.asarray(x, dtype=np.float64)
    below = (levels[1] - levels[0]) / (knots[1] - knots[0]) if knots.size > 1 else 1.0 / scale
    last = knots.size - 1
    low, high = np.searchsorted(knots, x, "right") - 1, np.searchsorted(knots, x, "left")  # the knots around x
    inner = np.clip(np.interp(x, knots, levels), levels[low.clip(0, last)], levels[high.clip(0, last)])
    out: np.ndarray = np.where(x < knots[0], levels[0] + (x - knots[0]) * below, inner)
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
