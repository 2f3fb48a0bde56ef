"""From p-values to evidence: normal-score bets mixed over shifts, as wealth or as a Shiryaev-Roberts statistic.

**Bets.** A drop of the base objective makes statistics larger and p-values
smaller. Each p-value is turned into its normal score ``z_j = Phi^-1(1 - p_j)``
(standard normal under the null) and bet on with ``e_j(d) = exp(d z_j - d^2 / 2)``,
the likelihood ratio of a shift ``d`` in normal-score units; each bet has
expectation 1 under the null, given the past.

**Wealth** (anytime and fixed modes). The wealth ``W_k`` mixes the products
``prod_{j <= k} e_j(d)`` over a grid of shifts ``d`` (:data:`SHIFTS`, equal
weights): a test martingale, so by Ville's inequality
``P(sup_k W_k >= 1/alpha) <= alpha``.

**A mixture Shiryaev-Roberts e-detector** (change mode; Shin, Ramdas and Rinaldo
2023, "E-detectors: a nonparametric framework for sequential change detection").
Per shift ``d``, ``R_k(d) = (1 + R_{k-1}(d)) e_k(d)`` with ``R_0 = 0``, the sum over
every possible change time ``i <= k`` of the product of the bets since ``i``; the
evidence is their mean over :data:`SHIFTS`, ``R_k``. Under the null ``R_k - k`` is a
martingale (each bet has conditional mean 1), so by optional stopping the first
``k`` with ``R_k >= c`` has mean at least ``c``; and ``R_k + m - k`` (``k <= m``) is a
nonnegative martingale started at ``m``, so by Ville's inequality ``R_k >= c`` within
``m`` episodes has probability at most ``m / c``. The bets on a change at time ``i``
start at ``i``, not at the deployment's start, and ``R`` only grows with where it
starts from (``R_{i-1} >= 0 = R_0``): on the same post-change p-values, a change
after any in-distribution run is detected no later than the same change at the
start (given no false alarm before it).

Both are kept per shift as logs (:func:`_start`, :func:`_advance`) and mixed by
:func:`_log_mean`. In every mode the evidence is increasing in each bet (a smaller
p-value never lowers it): what lets the monitor alarm on lower bounds mid-episode.

>>> log_w, log_r = _start("anytime", (1,)), _start("change", (1,))
>>> for e in (2.0, 0.5, 4.0):  # one shift's bets: wealth multiplies them, SR restarts where that pays
...     log_w, log_r = _advance("anytime", log_w, np.log([e])), _advance("change", log_r, np.log([e]))
...     print(round(float(np.exp(log_w[0])), 3), round(float(np.exp(log_r[0])), 3))
2.0 2.0
1.0 1.5
4.0 10.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.special import ndtri

from mesaguard.monitor.errors import MonitorError

__all__ = ["SHIFTS", "check_shifts"]

SHIFTS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
"""Shifts in normal-score units the mixture bets on, equal weights: from a twentieth of a
standard deviation per episode (about 1,000 episodes to detect) to two (a handful)."""


def check_shifts(shifts: Sequence[float]) -> np.ndarray:
    """The mixture's shifts, checked: one or more positive finite numbers."""
    out = np.asarray(tuple(shifts), dtype=np.float64)
    if out.ndim != 1 or out.size == 0 or not (np.isfinite(out) & (out > 0)).all():
        raise MonitorError(f"shifts={list(shifts)}; expected positive finite numbers")
    return out


def _log_mean(x: np.ndarray) -> np.ndarray:
    """``log(mean(exp(x), axis=0))`` without overflow, ``-inf`` where every entry is: a mixture's log-evidence."""
    top = np.max(x, axis=0)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out: np.ndarray = top + np.log(np.exp(x - top).mean(axis=0))
    return out


def _log_mean_exp(x: np.ndarray) -> float:
    """:func:`_log_mean` of one vector, as a float (the hot path: no array temporaries beyond one)."""
    top = float(x.max())
    if top == -math.inf:
        return top
    return top + math.log(float(np.exp(x - top).sum()) / x.size)


def _scores(p: np.ndarray | float) -> np.ndarray:
    """Normal scores ``Phi^-1(1 - p)``: standard normal for uniform ``p``."""
    scores: np.ndarray = -ndtri(p)
    return scores


def _start(mode: str, shape: tuple[int, ...]) -> np.ndarray:
    """Per shift, the log-evidence of a new test: wealth 1 (log 0), or an SR statistic of 0 (log ``-inf``)."""
    return np.full(shape, -math.inf if mode == "change" else 0.0)


def _advance(mode: str, log_state: np.ndarray, log_bet: np.ndarray) -> np.ndarray:
    """Per shift, the log-evidence after one more bet: ``W e`` or, in change mode, ``(1 + R) e``."""
    out: np.ndarray = np.logaddexp(0.0, log_state) + log_bet if mode == "change" else log_state + log_bet
    return out


def _components(pvalues: np.ndarray, shifts: Sequence[float], mode: str) -> np.ndarray:
    """Per shift (first axis), the log-evidence after each episode (last axis)."""
    p = np.asarray(pvalues, dtype=np.float64)
    d = np.asarray(shifts, dtype=np.float64).reshape((-1,) + (1,) * p.ndim)
    bets: np.ndarray = d * _scores(p) - d**2 / 2
    if mode != "change":
        return np.cumsum(bets, axis=-1)
    out = np.empty_like(bets)
    state = _start(mode, bets.shape[:-1])
    for k in range(bets.shape[-1]):
        state = out[..., k] = _advance(mode, state, bets[..., k])
    return out
