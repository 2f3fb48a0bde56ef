"""The monitor's three modes, the guarantee of each, and the evidence that raises its alarm.

All three guarantees hold while the agent is as good as in calibration (its episodes
exchangeable with the calibration's), for each test between two clears:

``"anytime"`` (the default)
    *Never a false alarm, ever*: ``P(the monitor ever raises a false alarm) <= alpha``,
    however long the deployment runs. Threshold ``1/alpha``: the wealth is a test
    martingale (:mod:`~mesaguard.monitor.evidence`), so this is Ville's inequality.
    The price: the wealth of a test martingale decays while nothing is wrong, so the
    longer the deployment has run in distribution, the longer a late change takes to
    detect.
``"fixed"`` (with ``horizon=h``)
    ``P(a false alarm within the first h episodes) <= alpha``, and the monitor watches
    exactly ``h`` episodes: more power for users who know their horizon. Threshold
    ``c_h`` with ``P(max_{k <= h} W_k >= c_h) = alpha``. Since the p-values are exactly
    i.i.d. uniform under the null, ``c_h`` is found by simulating Gaussian walks of
    normal scores (:func:`horizon_threshold`; the BFAR idea of resampling calibration
    episodes, with ranks making the resampling distribution-free and exact up to
    Monte Carlo error).
``"change"`` (with ``arl=c``), change detection for long deployments
    The average run length to a false alarm is at least ``c`` episodes (Lorden's
    criterion), so at most ``1000 / c`` false alarms per 1,000 episodes on average when
    the user clears each alarm and carries on; and ``P(a false alarm within the first m
    episodes of a test) <= m / c``. Threshold ``c`` on the mixture Shiryaev-Roberts
    statistic (:mod:`~mesaguard.monitor.evidence` proves both). False alarms *will*
    happen in a deployment much longer than ``c``: this mode trades "never" for a
    delay that does not grow with the time already spent in distribution.

>>> round(math.exp(log_threshold(alpha=0.05)), 9), round(math.exp(log_threshold("change", arl=1000)), 9)
(20.0, 1000.0)
>>> log_threshold(horizon=50, alpha=0.05) < log_threshold(alpha=0.05)  # c_h: never above Ville's 1/alpha
True
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from mesaguard.calibration import check_alpha
from mesaguard.monitor.errors import MonitorError
from mesaguard.monitor.evidence import SHIFTS

__all__ = ["MODES", "SIMULATIONS", "check_mode", "horizon_threshold", "log_threshold"]

MODES: tuple[str, ...] = ("anytime", "fixed", "change")
"""The monitor's modes; the module docstring states each one's guarantee."""

SIMULATIONS = 20_000  # Monte Carlo walks behind a fixed-horizon threshold: its rate is alpha +- 0.0015 at 0.05


def check_mode(mode: str | None, horizon: int | None = None, arl: float | None = None) -> str:
    """The mode these arguments select (``None``: fixed if a horizon is given, else anytime), checked.

    >>> check_mode(None), check_mode(None, horizon=100), check_mode("change", arl=1000)
    ('anytime', 'fixed', 'change')
    """
    if mode is None:
        mode = "anytime" if horizon is None else "fixed"
    if mode not in MODES:
        raise MonitorError(f"mode={mode!r}; expected one of {', '.join(MODES)}")
    if mode == "fixed":
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise MonitorError(f"horizon={horizon!r}; fixed mode needs a positive number of episodes")
    elif horizon is not None:
        raise MonitorError(f"horizon={horizon!r} with mode={mode!r}; a horizon is for mode='fixed' only")
    if mode == "change":
        number = isinstance(arl, (int, float, np.integer, np.floating)) and not isinstance(arl, bool)
        if not number or not 1 < float(arl) < math.inf:  # type: ignore[arg-type]
            raise MonitorError(f"arl={arl!r}; change mode needs an average run length to a false alarm, a number > 1")
    elif arl is not None:
        raise MonitorError(f"arl={arl!r} with mode={mode!r}; an ARL is for mode='change' only")
    return mode


def log_threshold(
    mode: str | None = None,
    alpha: float = 0.05,
    horizon: int | None = None,
    arl: float | None = None,
    shifts: Sequence[float] = SHIFTS,
) -> float:
    """Log of the evidence that raises the alarm: ``log(1/alpha)``, ``log c_h`` or ``log(arl)``.

    >>> round(log_threshold(alpha=0.05), 3), round(log_threshold("change", arl=1000), 3)
    (2.996, 6.908)
    """
    mode = check_mode(mode, horizon, arl)
    if mode == "change":
        return math.log(float(arl))  # type: ignore[arg-type]
    alpha = check_alpha(alpha)
    if mode == "fixed":
        return horizon_threshold(int(horizon), alpha, tuple(float(d) for d in shifts))  # type: ignore[arg-type]
    return math.log(1 / alpha)


@functools.lru_cache(maxsize=16)
def horizon_threshold(
    horizon: int, alpha: float, shifts: tuple[float, ...] = SHIFTS, simulations: int = SIMULATIONS, seed: int = 0
) -> float:
    """Log-threshold ``log c_h`` with ``P(max_{k <= horizon} log W_k >= log c_h) <= alpha`` under the null.

    The null's normal scores are i.i.d. standard normal, so the law of the maximum
    of the mixture wealth over ``horizon`` episodes is simulated exactly; the
    threshold is the conformal quantile of ``simulations`` simulated maxima, and
    never above Ville's ``log(1/alpha)``.

    >>> round(horizon_threshold(100, 0.05, simulations=4000), 2) < round(math.log(20), 2)
    True
    """
    alpha = check_alpha(alpha)
    if int(horizon) < 1:
        raise MonitorError(f"horizon={horizon!r}; expected a positive number of episodes")
    d = np.asarray(shifts, dtype=np.float64)
    rng = np.random.default_rng(seed)
    drift = (d**2 / 2)[:, None, None] * np.arange(1, horizon + 1)  # (shifts, 1, horizon)
    maxima = np.empty(simulations)
    chunk = max(1, 1_000_000 // (horizon * d.size))
    for start in range(0, simulations, chunk):
        walks = np.cumsum(rng.standard_normal((min(chunk, simulations - start), horizon)), axis=1)
        # No overflow to guard against: |d * walk| stays far below 700 at these horizons.
        wealth = np.exp(d[:, None, None] * walks - drift).mean(axis=0)
        maxima[start : start + walks.shape[0]] = np.log(wealth.max(axis=1))
    rank = math.ceil((simulations + 1) * (1 - alpha))
    simulated = float(np.sort(maxima)[rank - 1]) if rank <= simulations else math.inf
    return min(simulated, math.log(1 / alpha))
