"""The conformal rule every mesaguard threshold follows, and what it needs.

``n`` exchangeable in-distribution values (episode maxima); the threshold is the
``k = ceil((n + 1)(1 - alpha))``-th smallest, so a new exchangeable value exceeds it
with probability at most ``alpha``; given the calibration set the realized rate is
``Beta(n + 1 - k, k)``. Vovk, Gammerman and Shafer, *Algorithmic Learning in a
Random World* (2005); Angelopoulos and Bates, *A Gentle Introduction to Conformal
Prediction* (2021), section 3.
"""

from __future__ import annotations

import math
from typing import Any

from scipy import stats

from mesaguard.artifacts import ArtifactError

__all__ = [
    "CalibrationError",
    "ConformalThreshold",
    "ThresholdFit",
    "check_alpha",
    "conformal_rank",
    "episodes_for_tolerance",
    "episodes_needed",
    "false_alarm_spread",
    "fit_split",
    "min_episodes",
]


class CalibrationError(ArtifactError):
    """Too few episodes for alpha, a corrupt, foreign or unsigned file, or a calibration for another env."""


CalibrationError.__module__ = "mesaguard.calibration"  # where users import it from, and how tracebacks name it


class ConformalThreshold:
    """What a per-episode threshold set by the conformal rule on ``n_cal`` held-out episodes at ``alpha`` gives:
    its rank and the spread of its realized false-alarm rate (a calibration, a scope, a transition scope)."""

    n_cal: int
    alpha: float

    @property
    def rank(self) -> int:
        """The conformal rank of the threshold among the ``n_cal`` held-out episode maxima."""
        return conformal_rank(self.n_cal, self.alpha)

    @property
    def false_alarm(self) -> dict[str, float]:
        """Spread of the realized per-episode false-alarm rate: ``Beta(n + 1 - k, k)``."""
        return false_alarm_spread(self.n_cal, self.rank)


class ThresholdFit(ConformalThreshold):
    """A fit with one conformal threshold on per-episode maxima (a scope, a transition scope) and its file's fields."""

    threshold: float
    n_fit: int
    n_reference: int
    maxima: list[float]

    def threshold_fields(self) -> dict[str, Any]:
        """The threshold's fields of the fit's file, in the order it writes them (read back by
        :func:`mesaguard.calibration_file.read_conformal` and :func:`~mesaguard.calibration_file.read_threshold`)."""
        return {"alpha": self.alpha, "threshold": self.threshold, "n_fit": self.n_fit, "n_reference": self.n_reference,
                "n_cal": self.n_cal, "rank": self.rank, "false_alarm": self.false_alarm, "maxima": self.maxima}

    @staticmethod
    def split(n: int, alpha: float, fit_fraction: float, error: type[Exception]) -> tuple[int, int]:
        """``(n_fit, n_fitting)`` of ``n`` episodes: the first ``n_fit`` fit, the next up to ``n_fitting`` give the
        reference, the rest set the threshold; ``error`` where ``fit_fraction`` or the held-out count cannot serve."""
        if not 0 < fit_fraction < 1:
            raise error(f"fit_fraction={fit_fraction}; expected a share strictly between 0 and 1")
        n_fitting = fit_split(n, fit_fraction)
        held = n - n_fitting
        if held < min_episodes(alpha):
            raise error(
                f"{n} episodes leave {max(held, 0)} held out for the threshold after fitting on {n_fitting}: too few "
                f"for alpha={alpha}, which needs {min_episodes(alpha)} held out; pass at least "
                f"{episodes_needed(alpha, fit_fraction)} episodes or a larger alpha"
            )
        return n_fitting // 2, n_fitting


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise CalibrationError(f"alpha={alpha!r}; expected a false-alarm rate strictly between 0 and 1")
    return float(alpha)


def min_episodes(alpha: float) -> int:
    """Fewest calibration episodes for which the conformal rank exists: ``(1 - alpha) / alpha``.

    >>> min_episodes(0.05), min_episodes(0.1), min_episodes(0.01)
    (19, 9, 99)
    """
    alpha = check_alpha(alpha)
    n = max(1, math.floor((1.0 - alpha) / alpha) - 1)
    while math.ceil((n + 1) * (1.0 - alpha) - 1e-12) > n:
        n += 1
    return n


def fit_split(n: int, fit_fraction: float = 0.5) -> int:
    """How many of ``n`` calibration episodes fit the detectors (two folds of at least 2); the rest set thresholds."""
    return max(4, int(n * fit_fraction))


def episodes_needed(alpha: float, fit_fraction: float = 0.5) -> int:
    """Fewest episodes ``Calibration.fit`` accepts at ``alpha``: enough held out after the fit split.

    >>> episodes_needed(0.05), episodes_needed(0.1)
    (37, 17)
    """
    held = min_episodes(alpha)
    return next(n for n in range(held, 10**7) if n - fit_split(n, fit_fraction) >= held)


def conformal_rank(n: int, alpha: float) -> int:
    """The rank ``k = ceil((n + 1)(1 - alpha))`` of the threshold among ``n`` sorted maxima.

    >>> conformal_rank(100, 0.05)
    96
    >>> conformal_rank(10, 0.05)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    mesaguard.calibration.CalibrationError: 10 calibration episodes are too few for alpha=0.05: the conformal rank would
    be 11 > 10; use at least 19 episodes or a larger alpha
    """
    alpha = check_alpha(alpha)
    # The small epsilon keeps (n+1)(1-alpha) that is an integer in exact arithmetic from rounding up.
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    if k > n:
        raise CalibrationError(
            f"{n} calibration episodes are too few for alpha={alpha}: the conformal rank would be {k} > {n}; "
            f"use at least {min_episodes(alpha)} episodes or a larger alpha"
        )
    return max(k, 1)


def false_alarm_spread(n: int, k: int) -> dict[str, float]:
    """Law of the realized false-alarm rate given the calibration set: ``Beta(n + 1 - k, k)``.

    >>> s = false_alarm_spread(100, 96)
    >>> round(s["mean"], 4), round(s["q05"], 4), round(s["q95"], 4)
    (0.0495, 0.0199, 0.0892)
    """
    law = stats.beta(n + 1 - k, k)
    return {
        "beta_a": float(n + 1 - k),
        "beta_b": float(k),
        "mean": float(law.mean()),
        "q05": float(law.ppf(0.05)),
        "q50": float(law.ppf(0.5)),
        "q95": float(law.ppf(0.95)),
    }


def episodes_for_tolerance(alpha: float, tolerance: float, confidence: float = 0.9) -> int:
    """Fewest calibration episodes so that the realized false-alarm rate lies within
    ``alpha +- tolerance`` with probability ``confidence`` (too low a rate costs power).

    >>> episodes_for_tolerance(0.05, 0.02), episodes_for_tolerance(0.05, 0.01)
    (305, 1270)
    """
    alpha = check_alpha(alpha)
    if not 0 < tolerance < min(alpha, 1 - alpha):
        raise CalibrationError(f"tolerance={tolerance}; expected a number in (0, {min(alpha, 1 - alpha)})")
    for n in range(min_episodes(alpha), 10**6):  # the quantile is not monotone in n (rank rounding): scan
        k = conformal_rank(n, alpha)
        law = stats.beta(n + 1 - k, k)
        if law.cdf(alpha + tolerance) - law.cdf(alpha - tolerance) >= confidence:
            return n
    raise CalibrationError(f"tolerance={tolerance} needs more than a million episodes at alpha={alpha}")
