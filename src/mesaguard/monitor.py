"""The deployment monitor: evidence added up across the episodes of a deployment.

A per-episode detector (:mod:`mesaguard.detectors`) can only use what one episode
shows: a small persistent deterioration passes its threshold a few percent of the
time. :class:`DeploymentMonitor` adds the evidence of many episodes up, with a
guarantee at the level of the deployment: while the agent is as good as in
calibration, the chance that the monitor *ever* raises a false alarm is at most
``alpha``, however long the deployment runs (anytime mode), or over ``horizon``
episodes (fixed-horizon mode, more power for users who know their horizon).

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
   (standard normal under the null) and bet on with ``exp(d z_j - d^2 / 2)``, the
   likelihood ratio of a shift ``d`` in normal-score units; each bet has
   expectation 1 under the null. The wealth ``W_k`` mixes the products over a grid
   of shifts ``d`` (:data:`SHIFTS`, equal weights): a test martingale, so by
   Ville's inequality ``P(sup_k W_k >= 1/alpha) <= alpha``.
3. **Mid-episode evidence.** While episode ``j`` runs, its running maximum is a
   lower bound on ``x_j``, so the p-value computed from it is an upper bound on
   ``p_j`` and the wealth computed from it a lower bound on ``W_j``: an alarm on it
   implies the alarm at the episode's end, and the guarantee is unchanged.
4. **Vector envs.** Episodes are numbered in the order they *start* (ascending env
   index within one reset), an order that does not depend on their outcomes, and
   bet on in that order. Episodes still running when a later one ends enter the
   later one's bag as ``+inf`` (an upper bound on its p-value), so evidence is
   available at every step, never an overstatement.
5. **Censored episodes.** An episode cut short (stopped by the guard, handed to a
   fallback, reset early) has an unknown statistic at least its running maximum: it
   is bet on with that maximum and enters later bags as ``+inf``. Both only lower
   the wealth.

Fixed-horizon mode replaces ``1/alpha`` by the threshold ``c_h`` with
``P(max_{k <= h} W_k >= c_h) = alpha``. Since the p-values are exactly i.i.d.
uniform under the null, ``c_h`` is found by simulating Gaussian walks of normal
scores (:func:`horizon_threshold`; the BFAR idea of resampling calibration
episodes, with ranks making the resampling distribution-free and exact up to
Monte Carlo error); the monitor then watches exactly ``h`` episodes.

The alarm stands until :meth:`DeploymentMonitor.clear`, which starts a new test
(wealth 1, the bag kept): each test between clears has its own ``alpha``.

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
>>> monitor.alarm, monitor.alarm_episode < 100
(True, True)
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
    "SHIFTS",
    "DeploymentMonitor",
    "DeploymentAlarm",
    "MonitorError",
    "first_deployment_alarm",
    "replay",
    "horizon_threshold",
    "log_wealth_path",
    "sequential_pvalues",
]

SHIFTS: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)
"""Shifts in normal-score units the mixture bets on, equal weights: from a twentieth of a
standard deviation per episode (about 1,000 episodes to detect) to two (a handful)."""

SIMULATIONS = 20_000  # Monte Carlo walks behind a fixed-horizon threshold: its rate is alpha +- 0.0015 at 0.05


class MonitorError(ValueError):
    """Bad monitor input: a horizon that is not a positive count, an empty reference, a bad shift grid."""


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


def sequential_pvalues(reference: Sequence[float], stream: Sequence[float], u: Sequence[float]) -> np.ndarray:
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


def _log_mean_exp(x: np.ndarray) -> float:
    """``log(mean(exp(x)))`` without overflow: the log-wealth of an equal-weight mixture."""
    top = float(x.max())
    return top + math.log(float(np.exp(x - top).sum()) / x.size)


def _scores(p: np.ndarray | float) -> np.ndarray:
    """Normal scores ``Phi^-1(1 - p)``: standard normal for uniform ``p``."""
    return -ndtri(p)


def log_wealth_path(pvalues: np.ndarray, shifts: Sequence[float] = SHIFTS) -> np.ndarray:
    """Log-wealth of the mixture after each episode, from p-values in bet order (last axis).

    The offline twin of the monitor's end-of-episode wealth (tests hold them equal).

    >>> log_wealth_path(np.array([0.5, 0.01])).round(3).tolist()
    [-0.271, 0.789]
    """
    d = np.asarray(shifts, dtype=np.float64).reshape((-1,) + (1,) * np.ndim(pvalues))
    k = np.arange(1, np.shape(pvalues)[-1] + 1)
    components = d * np.cumsum(_scores(np.asarray(pvalues, dtype=np.float64)), axis=-1) - d**2 / 2 * k
    top = components.max(axis=0)
    return top + np.log(np.exp(components - top).mean(axis=0))


def first_deployment_alarm(
    reference: Sequence[float],
    statistics: Sequence[np.ndarray],
    log_threshold: float,
    seed: int = 0,
    shifts: Sequence[float] = SHIFTS,
) -> tuple[int, int] | None:
    """Offline: where a one-env monitor fed these episodes in order first raises its alarm.

    ``statistics`` holds each episode's per-step joint standardized statistic (as
    :meth:`DeploymentMonitor.observe` receives it); ``reference`` the calibration's
    :meth:`~mesaguard.calibration.Calibration.joint_maxima`. Returns ``(episode,
    step)``, 0-based episode and 1-based step inside it, or None; the same answer
    as the online monitor with the same ``seed`` (tests hold them equal), at the
    cost of one p-value per episode.
    """
    if len(statistics) == 0:
        return None
    u = np.random.default_rng(seed).random(len(statistics))  # the monitor draws one per episode, in order
    p = sequential_pvalues(reference, [float(np.max(x)) for x in statistics], u)
    path = log_wealth_path(p, shifts)
    hits = np.flatnonzero(path >= log_threshold)
    if hits.size == 0:
        return None
    j = int(hits[0])
    before = float(path[j - 1]) if j else 0.0
    d = np.asarray(shifts, dtype=np.float64)[:, None]
    product = d[:, 0] * _scores(p[:j]).sum() - d[:, 0] ** 2 / 2 * j  # per shift, the bets before episode j
    bag = np.sort(np.concatenate([np.asarray(reference, dtype=np.float64), [np.max(x) for x in statistics[:j]]]))
    running = np.maximum.accumulate(np.asarray(statistics[j], dtype=np.float64))
    right, left = np.searchsorted(bag, running, side="right"), np.searchsorted(bag, running, side="left")
    p_t = np.maximum((bag.size - right + u[j] * (right - left + 1)) / (bag.size + 1), 1e-300)
    components = product[:, None] + d * _scores(p_t) - d**2 / 2
    top = components.max(axis=0)
    interim = np.maximum(top + np.log(np.exp(components - top).mean(axis=0)), before)
    crossed = np.flatnonzero(interim >= log_threshold - 1e-9)  # at the last step interim is path[j]
    return j, int(crossed[0]) + 1 if crossed.size else running.size


@dataclass(frozen=True)
class DeploymentAlarm:
    """Where a deployment alarm fired: the episode (1-based count), its step, and all steps so far."""

    episode: int
    step: int
    steps: int


def episode_statistics(calibration: Calibration, names: Sequence[str], episodes: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per episode of increments, the per-step joint standardized statistic of detectors ``names``.

    What :meth:`DeploymentMonitor.update` computes online and passes to
    :meth:`~DeploymentMonitor.observe`; its maximum is comparable with
    ``calibration.joint_maxima(names)``.
    """
    joint = None
    for n in names:
        d = calibration.detectors[n]
        z = (statistic_traces(d.build(), episodes) - d.location) / d.scale
        joint = z if joint is None else np.fmax(joint, z)
    return [row[: len(e)] for row, e in zip(joint, episodes)]


def replay(
    calibration: Calibration,
    episodes: Sequence[np.ndarray],
    detectors: Sequence[str] | None = None,
    alpha: float = 0.05,
    horizon: int | None = None,
    seed: int = 0,
) -> DeploymentAlarm | None:
    """Run a one-env monitor offline over recorded episodes of increments, in order.

    The deployment-level view of the bench and of ``mesaguard deploy``: the episodes
    run to their end (no per-episode protocol), the monitor watches them all.
    """
    alpha = check_alpha(alpha)
    names = list(calibration.detectors) if detectors is None else list(detectors)
    reference = calibration.joint_maxima(names)
    if len(episodes) == 0:
        return None
    lengths = [len(e) for e in episodes]
    statistics = episode_statistics(calibration, names, episodes)
    log_c = math.log(1 / alpha) if horizon is None else horizon_threshold(horizon, alpha)
    if horizon is not None:
        statistics = statistics[:horizon]
    hit = first_deployment_alarm(reference, statistics, log_c, seed=seed)
    if hit is None:
        return None
    j, t = hit
    return DeploymentAlarm(j + 1, t, int(sum(lengths[:j])) + t)


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
    """One deployment episode, numbered in start order."""

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
        Deployment-level false-alarm probability, strictly between 0 and 1.
    horizon
        ``None``: anytime mode (any number of episodes). A positive count: fixed-horizon
        mode over that many episodes.
    n_envs
        Concurrent episodes (a vector env's sub-envs).
    seed
        Seed of the smoothing uniforms: same seed, same inputs, same evidence.
    scenario
        If given, checked against the calibration's scenario.

    Feed it like a detector: :meth:`start` episodes, :meth:`update` with each step's
    increments (or :meth:`observe` with precomputed joint statistics), :meth:`finish`
    them. ``evidence`` is the e-value now (a lower bound of the wealth), ``alarm``
    whether the deployment alarm stands.
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
    ) -> None:
        self.alpha = check_alpha(alpha)
        calibration.check(scenario=scenario)
        self.names = list(calibration.detectors) if detectors is None else list(detectors)
        for name in self.names:
            detector_class(name)  # unknown names: the error lists every detector
        reference = calibration.joint_maxima(self.names)
        if int(n_envs) < 1:
            raise MonitorError(f"n_envs={n_envs!r}; expected a positive integer")
        self.shifts = np.asarray(tuple(shifts), dtype=np.float64)
        if self.shifts.ndim != 1 or self.shifts.size == 0 or not (np.isfinite(self.shifts) & (self.shifts > 0)).all():
            raise MonitorError(f"shifts={list(shifts)}; expected positive finite numbers")
        if horizon is not None and (not isinstance(horizon, (int, np.integer)) or horizon < 1):
            raise MonitorError(f"horizon={horizon!r}; expected None (anytime) or a positive number of episodes")
        self.horizon = None if horizon is None else int(horizon)
        self.log_threshold = (
            math.log(1 / self.alpha)
            if self.horizon is None
            else horizon_threshold(self.horizon, self.alpha, tuple(float(d) for d in self.shifts))
        )
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
        self._next_id = 0
        self._first = 0  # first episode id of the current test (after the last clear)
        self._log_wealth = np.zeros(self.shifts.size)  # per shift: log of its product of bets in this test
        self.episodes = 0  # episodes bet on in this test
        self.finished = 0  # episodes finished since the monitor was made
        self.steps = 0  # env steps seen since the monitor was made
        self.log_evidence = 0.0
        self.alarm = False
        self.alarm_episode: int | None = None  # episodes finished when the alarm fired
        self.alarm_steps: int | None = None  # steps seen when the alarm fired

    # -- what users read ----------------------------------------------------

    @property
    def evidence(self) -> float:
        """The e-value now: the largest provable wealth of this test (capped at 1e300)."""
        return math.exp(min(self.log_evidence, 690.0))

    @property
    def threshold(self) -> float:
        """The evidence that raises the alarm: ``1/alpha``, or ``c_h`` in fixed-horizon mode."""
        return math.exp(self.log_threshold)

    @property
    def spent(self) -> bool:
        """Fixed-horizon mode: all ``horizon`` episodes of this test have been bet on."""
        return self.horizon is not None and self.episodes >= self.horizon

    def report(self) -> dict[str, object]:
        """What a guard puts in ``info["mesaguard"]["deployment"]``."""
        return {
            "evidence": self.evidence,
            "threshold": self.threshold,
            "alarm": self.alarm,
            "episodes": self.finished,
            "steps": self.steps,
            "mode": "anytime" if self.horizon is None else f"fixed:{self.horizon}",
        }

    # -- feeding it ---------------------------------------------------------

    def start(self, mask: np.ndarray | None = None) -> None:
        """Start new episodes in the envs of ``mask`` (all if None), numbered in env order.

        An episode still running in one of them ends first, censored (it was cut short).
        """
        envs = range(self.n_envs) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
        ended = np.zeros(self.n_envs, dtype=bool)
        for i in envs:
            ended[i] = self._running[i] is not None
        if ended.any():
            self.finish(ended, censored=True)
        for i in envs:
            episode = _Episode(self._next_id)
            self._next_id += 1
            self._running[i] = episode
            self._open.append(episode)
        for det in self.detectors:
            det.reset(None if mask is None else np.asarray(mask, dtype=bool))
        for det in self._scalar:
            det.reset()

    def update_scalar(self, u: float) -> float:
        """One env, one increment: :meth:`update` in plain floats (tests hold them equal)."""
        if self.n_envs != 1:
            raise MonitorError(f"update_scalar is for one env; this monitor watches {self.n_envs}")
        if not math.isfinite(u):
            raise DetectorError(f"increment {u} is not finite")
        x = max((det.update(u) - loc) / scale for det, (loc, scale) in zip(self._scalar, self._standard))
        episode = self._running[0]
        if episode is not None:
            self.steps += 1
            if episode.steps == 0:
                episode.u = float(self._rng.random())
            episode.steps += 1
            if not episode.censored and x > episode.value:
                episode.value = x
                self._refresh()
        return self.evidence

    def update(self, u: np.ndarray, live: np.ndarray | None = None) -> float:
        """Feed one increment per env (envs outside ``live`` had no step); return the evidence."""
        u = as_increments(u, self.n_envs)
        if live is not None:
            u = np.where(live, u, 0.0)
        stats = np.array([det._update(u) for det in self.detectors])
        return self.observe(((stats - self._location) / self._scale).max(axis=0), live)

    def observe(self, statistic: np.ndarray, live: np.ndarray | None = None) -> float:
        """Feed one joint standardized statistic per env directly; return the evidence."""
        statistic = np.asarray(statistic, dtype=np.float64)
        if statistic.shape != (self.n_envs,) or np.isnan(statistic).any():
            raise DetectorError(f"statistics {statistic.tolist()}; expected {self.n_envs} numbers, one per env")
        changed = False
        for i, episode in enumerate(self._running):
            if episode is None or (live is not None and not live[i]):
                continue
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
        """From now on the episodes in ``mask`` are not the agent's (a fallback acts): freeze them."""
        for i in range(self.n_envs) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool)):
            if self._running[i] is not None:
                self._running[i].censored = True

    def finish(self, mask: np.ndarray | None = None, censored: bool | np.ndarray = False) -> None:
        """End the running episodes of ``mask`` (all if None); ``censored`` where they were cut short."""
        m = np.ones(self.n_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        cut = np.broadcast_to(np.asarray(censored, dtype=bool), (self.n_envs,))
        for i in np.flatnonzero(m):
            episode = self._running[i]
            if episode is None:
                continue
            self._running[i] = None
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
        """Raise the deployment alarm now (the monitor itself failed: fail closed)."""
        self._fire()

    def clear(self) -> None:
        """Clear a standing alarm and start a new test: wealth 1, reference bag kept.

        Episodes already running are ranked in later bags but not bet on: the choice
        to clear may depend on what they showed so far.
        """
        self.alarm, self.alarm_episode, self.alarm_steps = False, None, None
        self._first = self._next_id
        for episode in self._open:
            episode.counts = False
        self._log_wealth = np.zeros(self.shifts.size)
        self.episodes = 0
        self.log_evidence = 0.0

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
            self._log_wealth = self._log_wealth + self._bet(_pvalue(greater, equal, len(self._bag), episode.u))
            self.episodes += 1
        bisect.insort(self._bag, episode.in_bag)

    def _refresh(self) -> None:
        """Evidence now: the largest wealth provable from the bets made and lower bounds of pending ones."""
        log_wealth = self._log_wealth
        best = _log_mean_exp(log_wealth)
        pending: list[float] = []  # what each earlier pending episode adds to a later one's bag
        for episode in self._open:
            if self._counts_bet(episode):
                greater, equal = _counts(self._bag, episode.value)
                greater += sum(v > episode.value for v in pending)
                equal += sum(v == episode.value for v in pending)
                p = _pvalue(greater, equal, len(self._bag) + len(pending), episode.u)
                log_wealth = log_wealth + self._bet(p)
                best = max(best, _log_mean_exp(log_wealth))
            pending.append(episode.in_bag)
        self.log_evidence = best
        if best >= self.log_threshold and not self.alarm:
            self._fire()

    def _fire(self) -> None:
        self.alarm = True
        self.alarm_episode, self.alarm_steps = self.finished, self.steps
