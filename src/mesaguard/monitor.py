"""The deployment monitor: evidence added up across the episodes of a deployment.

A per-episode detector (:mod:`mesaguard.detectors`) can only use what one episode
shows: a small persistent deterioration passes its threshold a few percent of the
time. :class:`DeploymentMonitor` adds the evidence of many episodes up, with a
guarantee at the level of the deployment. Three modes (``mode=``), one guarantee each,
all holding while the agent is as good as in calibration (its episodes exchangeable
with the calibration's):

``"anytime"`` (the default)
    *Never a false alarm, ever*: ``P(the monitor ever raises a false alarm) <= alpha``,
    however long the deployment runs (Ville's inequality). The price: the wealth of a
    test martingale decays while nothing is wrong, so the longer the deployment has run
    in distribution, the longer a late change takes to detect.
``"fixed"`` (with ``horizon=h``)
    ``P(a false alarm within the first h episodes) <= alpha``, and the monitor watches
    exactly ``h`` episodes: more power for users who know their horizon.
``"change"`` (with ``arl=c``), change detection for long deployments
    The average run length to a false alarm is at least ``c`` episodes (Lorden's
    criterion), so at most ``1000 / c`` false alarms per 1,000 episodes on average when
    the user clears each alarm and carries on; and ``P(a false alarm within the first m
    episodes of a test) <= m / c``. False alarms *will* happen in a deployment much longer than
    ``c``: this mode trades "never" for a delay that does not grow with the time already
    spent in distribution.

Episode numbers: deployment episodes are numbered **1, 2, 3, ...** in the order they
start, from the monitor's creation (a vector env's episodes started by one reset in
ascending env index). :attr:`DeploymentMonitor.alarm_episode`, ``replay(...).episode``
and ``first_deployment_alarm(...)[0]`` all give the number of the episode whose
evidence raised the alarm, the detecting one counted (tests hold the three equal); its
step inside that episode is 1-based as well.

Call order: :meth:`~DeploymentMonitor.start` each episode (at its reset),
:meth:`~DeploymentMonitor.update` (or ``update_scalar`` / ``observe``) at each of its
steps, :meth:`~DeploymentMonitor.finish` it once at its end. An update, a finish or a
censor in an env with no started episode raises :class:`MonitorError` naming the call:
evidence is never dropped in silence. So does a statistic or increment that is not
finite (the episodes concerned are censored first). A guard catches these errors and
fails closed with :meth:`~DeploymentMonitor.fail`, which is always allowed, as is
:meth:`~DeploymentMonitor.clear`.

How. Each episode gets one statistic, the one the per-episode guard already uses:
the largest standardized statistic of the chosen detectors over the episode
(:meth:`Calibration.joint_maxima`). The calibration file holds it for ``n``
held-out in-distribution episodes: the reference bag.

1. **Sequential conformal p-values.** Episode ``j``'s statistic ``x_j`` is ranked
   among the bag of the ``n`` reference values and the ``j - 1`` deployment
   episodes before it: ``p_j = (#{bag > x_j} + U_j (#{bag = x_j} + 1)) / (|bag| + 1)``,
   ``U_j`` uniform. If the deployment episodes are exchangeable with the
   calibration ones, ``p_1, p_2, ...`` are independent and exactly uniform (Vovk,
   Nouretdinov and Gammerman 2003), whatever the distribution of the statistic.
2. **E-values.** A drop of the base objective makes statistics larger and p-values
   smaller. Each p-value is turned into its normal score ``z_j = Phi^-1(1 - p_j)``
   (standard normal under the null) and bet on with ``e_j(d) = exp(d z_j - d^2 / 2)``,
   the likelihood ratio of a shift ``d`` in normal-score units; each bet has
   expectation 1 under the null, given the past.
3. **Anytime and fixed modes.** The wealth ``W_k`` mixes the products
   ``prod_{j <= k} e_j(d)`` over a grid of shifts ``d`` (:data:`SHIFTS`, equal
   weights): a test martingale, so by Ville's inequality
   ``P(sup_k W_k >= 1/alpha) <= alpha``. Fixed-horizon mode replaces ``1/alpha`` by the
   threshold ``c_h`` with ``P(max_{k <= h} W_k >= c_h) = alpha``. Since the p-values
   are exactly i.i.d. uniform under the null, ``c_h`` is found by simulating Gaussian
   walks of normal scores (:func:`horizon_threshold`; the BFAR idea of resampling
   calibration episodes, with ranks making the resampling distribution-free and exact
   up to Monte Carlo error).
4. **Change mode: a mixture Shiryaev-Roberts e-detector** (Shin, Ramdas and Rinaldo
   2023, "E-detectors: a nonparametric framework for sequential change detection").
   Per shift ``d``, ``R_k(d) = (1 + R_{k-1}(d)) e_k(d)`` with ``R_0 = 0``, the sum over
   every possible change time ``i <= k`` of the product of the bets since ``i``; the
   evidence is their mean over :data:`SHIFTS`, ``R_k``, and the alarm is ``R_k >= c``.
   Under the null ``R_k - k`` is a martingale (each bet has conditional mean 1), so by
   optional stopping the first ``k`` with ``R_k >= c`` has mean at least ``c``; and
   ``R_k + m - k`` (``k <= m``) is a nonnegative martingale started at ``m``, so by
   Ville's inequality an alarm within ``m`` episodes has probability at most ``m / c``.
   The bets on a change at time ``i`` start at ``i``, not at the deployment's start,
   and ``R`` only grows with where it starts from (``R_{i-1} >= 0 = R_0``): on the same
   post-change p-values, a change after any in-distribution run is detected no later
   than the same change at the start (given no false alarm before it). The bag keeps
   growing, so the p-values stay exactly i.i.d. uniform and the guarantee is
   unconditional. Ranking against the *fixed* calibration reference instead would make
   the p-values independent only given the reference and not uniform given it (each
   reference of ``n`` values misplaces every quantile by about ``1/sqrt(n)``), so
   ``R_k - k`` would no longer be a martingale and the ARL bound would hold only
   approximately, worse with small references, for about the same delays
   (``benchmarks/late_change.py`` measures both). Nor does the growing bag slow a late
   change down: at the change it holds only in-distribution values, more of them than
   at the start.
5. **Mid-episode evidence.** While episode ``j`` runs, its running maximum is a
   lower bound on ``x_j``, so the p-value computed from it is an upper bound on
   ``p_j``, and since every mode's evidence grows with each bet, the evidence
   computed from it is a lower bound on the evidence at ``j``'s end: an alarm on it
   implies the alarm at the episode's end, and the guarantee is unchanged.
6. **Vector envs.** Episodes are bet on in the order they *start*, an order that does
   not depend on their outcomes. Episodes still running when a later one ends enter
   the later one's bag as ``+inf`` (an upper bound on its p-value), so evidence is
   available at every step, never an overstatement. The chain of lower bounds stops at
   an episode that has not stepped yet: it may be replaced and never bet on.
7. **Censored episodes.** An episode cut short (stopped by the guard, handed to a
   fallback, reset early) has an unknown statistic at least its running maximum: it
   is bet on with that maximum and enters later bags as ``+inf``. Both only lower
   the evidence.

The alarm stands until :meth:`DeploymentMonitor.clear`, which starts a new test
(evidence reset, the bag kept): each test between clears has its own guarantee.

>>> rng = np.random.default_rng(0)
>>> cal = Calibration.fit([rng.normal(1.0, 0.5, 20) for _ in range(400)], alpha=0.05, detectors=["cusum"])
>>> monitor = DeploymentMonitor(cal, alpha=0.05)
>>> for episode in range(200):  # the base objective drops by 0.1 per step: half a step's spread
...     monitor.start()
...     for u in rng.normal(0.9, 0.5, 20):
...         _ = monitor.update(np.array([u]))
...     monitor.finish()
...     if monitor.alarm:
...         break
>>> monitor.alarm, monitor.alarm_episode == episode + 1 < 100
(True, True)
>>> monitor.update(np.array([0.0]))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mesaguard.monitor.MonitorError: update() in env [0] with no started episode: call start() when each episode begins ...
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from mesaguard.calibration import Calibration, check_alpha, statistic_traces
from mesaguard.detectors import detector_class
from mesaguard.detectors.base import DetectorError, as_increments

__all__ = [
    "MODES",
    "SHIFTS",
    "DeploymentAlarm",
    "DeploymentMonitor",
    "MonitorError",
    "check_mode",
    "first_deployment_alarm",
    "horizon_threshold",
    "log_threshold",
    "log_wealth_path",
    "replay",
    "sequential_pvalues",
]

MODES: tuple[str, ...] = ("anytime", "fixed", "change")
"""The monitor's modes; the module docstring states each one's guarantee."""

SHIFTS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
"""Shifts in normal-score units the mixture bets on, equal weights: from a twentieth of a
standard deviation per episode (about 1,000 episodes to detect) to two (a handful)."""

SIMULATIONS = 20_000  # Monte Carlo walks behind a fixed-horizon threshold: its rate is alpha +- 0.0015 at 0.05

_ORDER = (
    "call start() when each episode begins (at its reset), update it at each step, and finish() it once at its end"
)


class MonitorError(ValueError):
    """Bad monitor input or use: a bad mode, horizon or ARL, a call outside an episode, a non-finite statistic."""


# ---------------------------------------------------------------------------
# The modes and their thresholds
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# The statistics: p-values, e-values, thresholds
# ---------------------------------------------------------------------------


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


def log_wealth_path(pvalues: np.ndarray, shifts: Sequence[float] = SHIFTS, mode: str = "anytime") -> np.ndarray:
    """Log-evidence after each episode, from p-values in bet order (last axis; leading axes: independent runs).

    The mixture's log-wealth in anytime and fixed mode, the log of the mixture
    Shiryaev-Roberts statistic in change mode: the offline twin of the monitor's
    end-of-episode evidence (tests hold them equal).

    >>> log_wealth_path(np.array([0.5, 0.01])).round(3).tolist()
    [-0.271, 0.789]
    >>> log_wealth_path(np.array([0.5, 0.01]), mode="change").round(3).tolist()
    [-0.271, 1.909]
    """
    check_mode(mode, 1 if mode == "fixed" else None, 2.0 if mode == "change" else None)
    return _log_mean(_components(pvalues, shifts, mode))


def first_deployment_alarm(
    reference: Sequence[float] | np.ndarray,
    statistics: Sequence[np.ndarray],
    log_threshold: float,
    seed: int = 0,
    shifts: Sequence[float] = SHIFTS,
    mode: str = "anytime",
) -> tuple[int, int] | None:
    """Offline: where a one-env monitor fed these episodes in order first raises its alarm.

    ``statistics`` holds each episode's per-step joint standardized statistic (as
    :meth:`DeploymentMonitor.observe` receives it); ``reference`` the calibration's
    :meth:`~mesaguard.calibration.Calibration.joint_maxima`; ``log_threshold`` and
    ``mode`` those of the monitor (:func:`log_threshold`). Returns ``(episode, step)``,
    both 1-based (the module's convention: the detecting episode counted), or None; the
    same answer as the online monitor with the same ``seed`` (tests hold them equal), at
    the cost of one p-value per episode.

    >>> first_deployment_alarm([0.0] * 99, [np.array([0.5, 3.0])] * 5, math.log(20))
    (2, 1)
    """
    check_mode(mode, 1 if mode == "fixed" else None, 2.0 if mode == "change" else None)
    if len(statistics) == 0:
        return None
    u = np.random.default_rng(seed).random(len(statistics))  # the monitor draws one per episode, in order
    p = sequential_pvalues(reference, [float(np.max(x)) for x in statistics], u)
    components = _components(p, shifts, mode)
    path = _log_mean(components)
    hits = np.flatnonzero(path >= log_threshold)
    if hits.size == 0:
        return None
    j = int(hits[0])
    d = np.asarray(shifts, dtype=np.float64)[:, None]
    before = components[:, j - 1] if j else _start(mode, (d.size,))  # per shift, the evidence before episode j
    bag = np.sort(np.concatenate([np.asarray(reference, dtype=np.float64), [np.max(x) for x in statistics[:j]]]))
    running = np.maximum.accumulate(np.asarray(statistics[j], dtype=np.float64))
    right, left = np.searchsorted(bag, running, side="right"), np.searchsorted(bag, running, side="left")
    p_t = np.maximum((bag.size - right + u[j] * (right - left + 1)) / (bag.size + 1), 1e-300)
    interim = _log_mean(_advance(mode, before[:, None], d * _scores(p_t) - d**2 / 2))
    crossed = np.flatnonzero(interim >= log_threshold - 1e-9)  # at the last step interim is path[j]
    return j + 1, int(crossed[0]) + 1 if crossed.size else running.size


@dataclass(frozen=True)
class DeploymentAlarm:
    """Where a deployment alarm fired: the episode (1-based, start order), its step (1-based), and all steps so far."""

    episode: int
    step: int
    steps: int


def episode_statistics(
    calibration: Calibration, names: Sequence[str], episodes: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Per episode of increments, the per-step joint standardized statistic of detectors ``names``.

    What :meth:`DeploymentMonitor.update` computes online and passes to
    :meth:`~DeploymentMonitor.observe`; its maximum is comparable with
    ``calibration.joint_maxima(names)``.
    """
    joint: np.ndarray | None = None
    for n in names:
        d = calibration.detectors[n]
        z = (statistic_traces(d.build(), episodes) - d.location) / d.scale
        joint = z if joint is None else np.fmax(joint, z)
    if joint is None:
        raise MonitorError("no detectors: the joint statistic needs at least one")
    return [row[: len(e)] for row, e in zip(joint, episodes)]


def replay(
    calibration: Calibration,
    episodes: Sequence[np.ndarray],
    detectors: Sequence[str] | None = None,
    alpha: float = 0.05,
    horizon: int | None = None,
    seed: int = 0,
    mode: str | None = None,
    arl: float | None = None,
) -> DeploymentAlarm | None:
    """Run a one-env monitor offline over recorded episodes of increments, in order.

    The deployment-level view of the bench and of ``mesaguard deploy``: the episodes
    run to their end (no per-episode protocol), the monitor watches them all. Arguments
    as :class:`DeploymentMonitor`'s; the alarm's episode and step are 1-based.
    """
    mode = check_mode(mode, horizon, arl)
    log_c = log_threshold(mode, alpha, horizon, arl)
    names = list(calibration.detectors) if detectors is None else list(detectors)
    reference = calibration.joint_maxima(names)
    if len(episodes) == 0:
        return None
    lengths = [len(e) for e in episodes]
    statistics = episode_statistics(calibration, names, episodes)
    if horizon is not None:
        statistics = statistics[:horizon]
    hit = first_deployment_alarm(reference, statistics, log_c, seed=seed, mode=mode)
    if hit is None:
        return None
    j, t = hit
    return DeploymentAlarm(j, t, int(sum(lengths[: j - 1])) + t)


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


# ---------------------------------------------------------------------------
# The monitor
# ---------------------------------------------------------------------------


@dataclass
class _Episode:
    """One deployment episode, numbered in start order (``id`` 0-based; its number is ``id + 1``)."""

    id: int
    u: float = 0.0  # smoothing uniform, drawn at the episode's first step (episodes replaced before it draw none)
    value: float = -math.inf  # running maximum of the episode statistic
    steps: int = 0
    done: bool = False
    censored: bool = False  # cut short or taken over: its true statistic is only known to be >= value
    counts: bool = True  # False for episodes already running when the alarm was cleared

    @property
    def in_bag(self) -> float:
        """What later episodes are ranked against: the value, or +inf while unknown."""
        return self.value if self.done and not self.censored else math.inf


class DeploymentMonitor:
    """Evidence over a deployment's episodes against the calibration's reference episodes.

    Parameters
    ----------
    calibration
        The per-episode calibration (its held-out maxima are the reference bag).
    detectors
        Detectors whose joint statistic is monitored (default: all in the calibration).
    alpha
        Anytime and fixed modes: the false-alarm probability, strictly between 0 and 1
        (unused in change mode).
    horizon
        Fixed mode: the number of episodes watched (giving one selects fixed mode).
    n_envs
        Concurrent episodes (a vector env's sub-envs).
    seed
        Seed of the smoothing uniforms: same seed, same inputs, same evidence.
    scenario
        If given, checked against the calibration's scenario.
    shifts
        The mixture's shifts in normal-score units.
    mode
        ``"anytime"`` (default without a horizon), ``"fixed"`` (default with one) or
        ``"change"``; the module docstring states each mode's guarantee.
    arl
        Change mode: the average run length to a false alarm, in episodes (``1000 / r``
        for at most ``r`` false alarms per 1,000 episodes on average).

    Feed it like a detector: :meth:`start` episodes, :meth:`update` with each step's
    increments (or :meth:`observe` with precomputed joint statistics), :meth:`finish`
    them; a call out of this order raises :class:`MonitorError`. ``evidence`` is the
    e-value now (in change mode the Shiryaev-Roberts statistic; a lower bound while
    episodes run), ``alarm`` whether the deployment alarm stands, ``alarm_episode`` the
    1-based number of the episode that raised it.
    """

    def __init__(
        self,
        calibration: Calibration,
        detectors: Sequence[str] | None = None,
        alpha: float = 0.05,
        horizon: int | None = None,
        n_envs: int = 1,
        seed: int = 0,
        scenario: str | None = None,
        shifts: Sequence[float] = SHIFTS,
        mode: str | None = None,
        arl: float | None = None,
    ) -> None:
        self.mode = check_mode(mode, horizon, arl)
        self.alpha = check_alpha(alpha)
        calibration.check(scenario=scenario)
        self.names = list(calibration.detectors) if detectors is None else list(detectors)
        for name in self.names:
            detector_class(name)  # unknown names: the error lists every detector
        reference = calibration.joint_maxima(self.names)
        if isinstance(n_envs, bool) or not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
            raise MonitorError(f"n_envs={n_envs!r}; expected a positive integer")
        self.shifts = np.asarray(tuple(shifts), dtype=np.float64)
        if self.shifts.ndim != 1 or self.shifts.size == 0 or not (np.isfinite(self.shifts) & (self.shifts > 0)).all():
            raise MonitorError(f"shifts={list(shifts)}; expected positive finite numbers")
        self.horizon = None if horizon is None else int(horizon)
        self.arl = None if arl is None else float(arl)
        self.log_threshold = log_threshold(self.mode, self.alpha, self.horizon, self.arl, tuple(self.shifts.tolist()))
        self.n_envs = int(n_envs)
        cals = [calibration.detectors[n] for n in self.names]
        self.detectors = [c.build(self.n_envs) for c in cals]
        # One env: the detectors' plain-float forms and (location, scale) pairs, the hot path of GuardedEnv.
        self._scalar = [c.build(1).scalar() for c in cals] if self.n_envs == 1 else []
        self._standard = [(c.location, c.scale) for c in cals]
        self._location = np.array([c.location for c in cals])[:, None]
        self._scale = np.array([c.scale for c in cals])[:, None]
        self.reference = np.asarray(reference, dtype=np.float64)
        self._half_sq = self.shifts**2 / 2
        self._rng = np.random.default_rng(seed)
        self._bag = sorted(self.reference.tolist())
        self._open: list[_Episode] = []  # started, not yet bet on; ascending ids
        self._running: list[_Episode | None] = [None] * self.n_envs
        self._has = np.zeros(self.n_envs, dtype=bool)  # envs with a running episode (checked at every call)
        self._all = np.ones(self.n_envs, dtype=bool)  # the mask of every env (read only)
        self._next_id = 0
        self._first = 0  # first episode id of the current test (after the last clear)
        self._log_wealth = _start(self.mode, (self.shifts.size,))  # per shift: log-evidence of the bets made
        self._last_bet: int | None = None  # id of the last episode bet on in this test
        self.episodes = 0  # episodes bet on in this test
        self.finished = 0  # episodes finished since the monitor was made
        self.steps = 0  # env steps seen since the monitor was made
        self.log_evidence = _log_mean_exp(self._log_wealth)
        self.alarm = False
        self.alarm_episode: int | None = None  # 1-based number (start order) of the episode that raised the alarm
        self.alarm_steps: int | None = None  # steps seen when the alarm fired

    # -- what users read ----------------------------------------------------

    @property
    def evidence(self) -> float:
        """The e-value now: the largest provable wealth (change mode: SR statistic) of this test (capped at 1e300)."""
        return math.exp(min(self.log_evidence, 690.0))

    @property
    def threshold(self) -> float:
        """The evidence that raises the alarm: ``1/alpha``, ``c_h`` in fixed mode, the ARL in change mode."""
        return math.exp(self.log_threshold)

    @property
    def spent(self) -> bool:
        """Fixed-horizon mode: all ``horizon`` episodes of this test have been bet on."""
        return self.horizon is not None and self.episodes >= self.horizon

    @property
    def running(self) -> np.ndarray:
        """Per env, whether an episode is running there (started, not yet finished)."""
        return self._has.copy()

    def report(self) -> dict[str, object]:
        """What a guard puts in ``info["mesaguard"]["deployment"]``."""
        mode = {"fixed": f"fixed:{self.horizon}", "change": f"change:{self.arl or 0:g}"}.get(self.mode, self.mode)
        return {
            "evidence": self.evidence,
            "threshold": self.threshold,
            "alarm": self.alarm,
            "episodes": self.finished,
            "steps": self.steps,
            "mode": mode,
        }

    # -- feeding it ---------------------------------------------------------

    def _mask(self, mask: np.ndarray | None, name: str) -> np.ndarray:
        """A boolean mask over the envs (all if None), checked."""
        if mask is None:
            return self._all
        if isinstance(mask, np.ndarray) and mask.dtype == bool and mask.shape == self._all.shape:
            return mask  # the hot path: read, never written
        m = np.asarray(mask)
        if m.shape != (self.n_envs,) or not (m.dtype == bool or np.isin(m, (0, 1)).all()):
            raise MonitorError(f"{name}={m.tolist()}; expected {self.n_envs} booleans, one per env")
        return m.astype(bool)

    def _require_running(self, call: str, envs: np.ndarray) -> None:
        """Refuse ``call`` in any env of ``envs`` without a started episode: never drop evidence silently."""
        if self._has.all():
            return
        missing = envs & ~self._has
        if missing.any():
            raise MonitorError(f"{call} in env {np.flatnonzero(missing).tolist()} with no started episode: {_ORDER}")

    def start(self, mask: np.ndarray | None = None) -> None:
        """Start new episodes in the envs of ``mask`` (all if None), numbered in env order.

        An episode still running in one of them ends first, censored (it was cut short).
        """
        m = self._mask(mask, "mask")
        ended = m & self._has
        if ended.any():
            self.finish(ended, censored=True)
        for i in np.flatnonzero(m):
            episode = _Episode(self._next_id)
            self._next_id += 1
            self._running[i] = episode
            self._has[i] = True
            self._open.append(episode)
        for det in self.detectors:
            det.reset(None if mask is None else m)
        for scalar in self._scalar:
            scalar.reset()

    def update_scalar(self, u: float) -> float:
        """One env, one increment: :meth:`update` in plain floats (tests hold them equal)."""
        if self.n_envs != 1:
            raise MonitorError(f"update_scalar is for one env; this monitor watches {self.n_envs}")
        episode = self._running[0]
        if episode is None:
            raise MonitorError(f"update_scalar() with no started episode: {_ORDER}")
        if not math.isfinite(u):
            episode.censored = True  # the episode's statistic can no longer be computed
            raise DetectorError(f"increment {u} is not finite")
        x = max((det.update(u) - loc) / scale for det, (loc, scale) in zip(self._scalar, self._standard))
        if not math.isfinite(x):
            episode.censored = True
            raise MonitorError(f"the joint statistic is {x} after increment {u}; expected a finite number")
        self.steps += 1
        if episode.steps == 0:
            episode.u = float(self._rng.random())
        episode.steps += 1
        if not episode.censored and x > episode.value:
            episode.value = x
            self._refresh()
        return self.evidence

    def update(self, u: np.ndarray, live: np.ndarray | None = None) -> float:
        """Feed one increment per env (envs outside ``live`` had no step); return the evidence.

        Every live env needs a started episode; the increments of the other envs are not read.
        """
        m = self._mask(live, "live")
        self._require_running("update()", m)
        u = np.asarray(u, dtype=np.float64)
        if live is not None and u.shape == m.shape:
            u = np.where(m, u, 0.0)
        try:
            u = as_increments(u, self.n_envs)  # names the shape or the non-finite values
        except DetectorError:
            if u.shape == m.shape:
                self._censor(~np.isfinite(u))  # those episodes' statistics can no longer be computed
            raise
        stats = np.array([det._update(u) for det in self.detectors])
        return self._observe(((stats - self._location) / self._scale).max(axis=0), m)

    def observe(self, statistic: np.ndarray, live: np.ndarray | None = None) -> float:
        """Feed one joint standardized statistic per env directly; return the evidence.

        Every live env needs a started episode; the statistics of the other envs are not read.
        """
        m = self._mask(live, "live")
        statistic = np.asarray(statistic, dtype=np.float64)
        if statistic.shape != (self.n_envs,):
            raise MonitorError(f"statistics of shape {statistic.shape}; expected ({self.n_envs},), one per env")
        self._require_running("observe()", m)
        return self._observe(statistic, m)

    def _observe(self, statistic: np.ndarray, m: np.ndarray) -> float:
        """:meth:`observe` once its arguments are checked: ``m`` the live envs, each with a running episode."""
        finite = np.isfinite(statistic)
        bad = None if finite.all() else m & ~finite
        if bad is not None and bad.any():
            self._censor(bad)
            raise MonitorError(
                f"statistics {statistic[bad].tolist()} at env {np.flatnonzero(bad).tolist()} are not finite"
            )
        changed = False
        for i in np.flatnonzero(m).tolist():
            episode = self._running[i]
            assert episode is not None  # checked above
            self.steps += 1
            if episode.steps == 0:
                episode.u = float(self._rng.random())
            episode.steps += 1
            if not episode.censored and statistic[i] > episode.value:
                episode.value = float(statistic[i])
                changed = True
        if changed:
            self._refresh()
        return self.evidence

    def censor(self, mask: np.ndarray | None = None) -> None:
        """From now on the episodes in ``mask`` (all if None) are not the agent's (a fallback acts): freeze them."""
        m = self._mask(mask, "mask")
        self._require_running("censor()", m)
        self._censor(m)

    def _censor(self, m: np.ndarray) -> None:
        for i in np.flatnonzero(m):
            episode = self._running[i]
            if episode is not None:
                episode.censored = True

    def finish(self, mask: np.ndarray | None = None, censored: bool | np.ndarray = False) -> None:
        """End the running episodes of ``mask`` (all if None); ``censored`` where they were cut short.

        Every env of ``mask`` needs a running episode, except while the alarm stands
        (then envs without one are skipped: the test is over, nothing can be lost).
        """
        m = self._mask(mask, "mask")
        try:
            cut = np.broadcast_to(np.asarray(censored, dtype=bool), (self.n_envs,))
        except ValueError:
            raise MonitorError(f"censored={censored!r}; expected a bool or {self.n_envs} booleans") from None
        if not self.alarm:  # under a standing alarm no evidence can be lost: a refusing guard may end envs twice
            self._require_running("finish()", m)
        for i in np.flatnonzero(m):
            episode = self._running[i]
            if episode is None:
                continue
            self._running[i] = None
            self._has[i] = False
            if episode.steps == 0:  # replaced before its first step: no outcome, so neither bet nor bag
                self._open.remove(episode)
                continue
            episode.done = True
            episode.censored |= bool(cut[i])
            self.finished += 1
        while self._open and self._open[0].done:
            self._commit(self._open.pop(0))
        self._refresh()

    def fail(self) -> None:
        """Raise the deployment alarm now (the monitor itself failed: fail closed). Always allowed."""
        if not self.alarm:
            self._fire(self._next_id)  # the latest episode started (0 before the first)

    def clear(self) -> None:
        """Clear a standing alarm and start a new test: evidence reset, reference bag kept. Always allowed.

        Episodes already running are ranked in later bags but not bet on: the choice
        to clear may depend on what they showed so far.
        """
        self.alarm, self.alarm_episode, self.alarm_steps = False, None, None
        self._first = self._next_id
        for episode in self._open:
            episode.counts = False
        self._log_wealth = _start(self.mode, (self.shifts.size,))
        self._last_bet = None
        self.episodes = 0
        self.log_evidence = _log_mean_exp(self._log_wealth)

    # -- the bets -------------------------------------------------------------

    def _counts_bet(self, episode: _Episode) -> bool:
        return episode.counts and (self.horizon is None or episode.id - self._first < self.horizon)

    def _bet(self, p: float) -> np.ndarray:
        """Per shift, the log of this p-value's bet."""
        return self.shifts * float(_scores(p)) - self._half_sq

    def _commit(self, episode: _Episode) -> None:
        """Bet on a finished episode whose predecessors are all finished, then add it to the bag."""
        if self._counts_bet(episode):
            greater, equal = _counts(self._bag, episode.value)
            p = _pvalue(greater, equal, len(self._bag), episode.u)
            self._log_wealth = _advance(self.mode, self._log_wealth, self._bet(p))
            self._last_bet = episode.id
            self.episodes += 1
            if not self.alarm and _log_mean_exp(self._log_wealth) >= self.log_threshold:
                self._fire(episode.id + 1)
        bisect.insort(self._bag, episode.in_bag)

    def _refresh(self) -> None:
        """Evidence now: the largest evidence provable from the bets made and lower bounds of pending ones."""
        log_wealth = self._log_wealth
        best = _log_mean_exp(log_wealth)
        crossing = None
        if best >= self.log_threshold:  # only if the threshold is below a new test's evidence
            crossing = self._next_id if self._last_bet is None else self._last_bet + 1
        pending: list[float] = []  # sorted: what the earlier pending episodes add to a later one's bag
        for episode in self._open:
            if self._counts_bet(episode):
                if episode.steps == 0:  # no step yet: it may be replaced and never bet on, so neither may later ones
                    break
                greater, equal = _counts(self._bag, episode.value)
                more, tied = _counts(pending, episode.value)
                p = _pvalue(greater + more, equal + tied, len(self._bag) + len(pending), episode.u)
                log_wealth = _advance(self.mode, log_wealth, self._bet(p))
                level = _log_mean_exp(log_wealth)
                if crossing is None and level >= self.log_threshold:
                    crossing = episode.id + 1
                best = max(best, level)
            bisect.insort(pending, episode.in_bag)
        self.log_evidence = best
        if crossing is not None and not self.alarm:
            self._fire(crossing)

    def _fire(self, episode: int) -> None:
        self.alarm = True
        self.alarm_episode, self.alarm_steps = episode, self.steps
