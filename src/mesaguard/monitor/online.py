"""The online monitor: evidence over a deployment's episodes as they run, one env or a vector env's.

:class:`DeploymentMonitor` ranks each episode's statistic (the largest standardized
statistic of the chosen detectors over the episode, as the per-episode guard uses)
by sequential conformal p-values (:mod:`~mesaguard.monitor.pvalues`), bets on them
(:mod:`~mesaguard.monitor.evidence`) and raises the alarm at its mode's threshold
(:mod:`~mesaguard.monitor.modes`, which states each mode's guarantee). Online, the
monitor keeps that guarantee while episodes overlap, run, and end early:

1. **Mid-episode evidence, vector envs.** Episodes are bet on in the order they start,
   and the evidence while they run is a lower bound of the evidence at their end
   (:mod:`~mesaguard.monitor.ledger` says why), so an alarm on it is an alarm.
2. **Stopped episodes.** With ``stops`` (the per-episode alarm of the guard it sits
   in: a guard whose protocol stops or takes over tells the monitor, see
   :meth:`~DeploymentMonitor.stop_at`), each episode is ranked by its key
   (:mod:`~mesaguard.monitor.stops`): an episode in which that alarm fired has the
   exact key ``CROSSED``, known at the alarm's step, so an episode stopped there is
   evidence, bet on and ranked in later bags with the guarantee unchanged.
3. **Censored episodes.** An episode cut short before any such alarm (handed to a
   fallback after a deployment alarm, reset early, an error) has an unknown key at
   least its running maximum: it is bet on with that maximum and enters later bags
   as ``+inf``. Both only lower the evidence.

The alarm stands until :meth:`DeploymentMonitor.clear`, which starts a new test
(evidence reset, the bag kept): each test between clears has its own guarantee.
Episodes are numbered as the package says (1-based, in start order).

Call order: :meth:`~DeploymentMonitor.start` each episode (at its reset),
:meth:`~DeploymentMonitor.update` (or ``update_scalar`` / ``observe``) at each of its
steps, :meth:`~DeploymentMonitor.finish` it once at its end. An update, a finish or a
censor in an env with no started episode raises :class:`MonitorError` naming the call:
evidence is never dropped in silence. So does a statistic or increment that is not
finite (the episodes concerned are censored first). A guard catches these errors and
fails closed with :meth:`~DeploymentMonitor.fail`, which is always allowed, as is
:meth:`~DeploymentMonitor.clear`.

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

import math
import weakref
from collections.abc import Sequence

import numpy as np

from mesaguard.calibration import Calibration, check_alpha
from mesaguard.detectors import detector_names
from mesaguard.detectors.base import DetectorError, as_increments
from mesaguard.monitor.compiled import Tally, twins
from mesaguard.monitor.episodes import Episode, Episodes
from mesaguard.monitor.errors import MonitorError
from mesaguard.monitor.evidence import SHIFTS, check_shifts
from mesaguard.monitor.modes import check_mode, log_threshold
from mesaguard.monitor.statistic import StepStatistic
from mesaguard.monitor.stops import CROSSED, check_stops, cuts_short, reference_keys

__all__ = ["DeploymentMonitor"]

_ORDER = (
    "call start() when each episode begins (at its reset), update it at each step, and finish() it once at its end"
)


class DeploymentMonitor(Tally):
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
    stops
        The per-episode alarm that cuts episodes short, ``{detector: threshold}`` (a
        guard's ``dict(zip(guard.names, guard.thresholds))``); episodes in which it
        fires are ranked as evidence (:mod:`~mesaguard.monitor.stops`). None: no such
        alarm, every episode's statistic is ranked in full. A guard sets it
        (:meth:`stop_at`) when its protocol stops or takes over.

    Feed it like a detector (the call order is the module docstring's). ``evidence`` is the
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
        stops: dict[str, float] | None = None,
    ) -> None:
        self.mode = check_mode(mode, horizon, arl)
        self.alpha = check_alpha(alpha)
        calibration.check(scenario=scenario)
        self.calibration = calibration
        self.names = detector_names(list(calibration.detectors) if detectors is None else detectors, MonitorError)
        calibration.joint_maxima(self.names)  # names the detectors missing from the calibration
        if isinstance(n_envs, bool) or not isinstance(n_envs, (int, np.integer)) or n_envs < 1:
            raise MonitorError(f"n_envs={n_envs!r}; expected a positive integer")
        self.shifts = check_shifts(shifts)
        self.horizon = None if horizon is None else int(horizon)
        self.arl = None if arl is None else float(arl)
        self.log_threshold = log_threshold(self.mode, self.alpha, self.horizon, self.arl, tuple(self.shifts.tolist()))
        self._threshold = math.exp(self.log_threshold)  # what report() shows, every step
        self._mode_label = {"fixed": f"fixed:{self.horizon}", "change": f"change:{self.arl or 0:g}"}.get(
            self.mode, self.mode)
        self.n_envs = int(n_envs)
        self._rng = np.random.default_rng(seed)
        episode, self._ledger_type = twins()  # compiled where built (mesaguard.monitor.compiled)
        self._rule(check_stops(calibration, stops))
        self._episodes = Episodes(self.n_envs, episode)
        self._all = np.ones(self.n_envs, dtype=bool)  # the mask of every env (read only)
        self._every = list(range(self.n_envs))  # the indices of every env (read only)
        self.finished, self.steps, self.crossings = 0, 0, 0  # (counted as mesaguard.monitor.compiled.Tally says)
        self.log_evidence, self.alarm = self.ledger.log_evidence, False
        self.alarm_episode: int | None = None  # 1-based number (start order) of the episode that raised the alarm
        self.alarm_steps: int | None = None  # steps seen when the alarm fired
        self._owner: weakref.ref[object] | None = None  # the guard this monitor serves (guarded_by)

    def _rule(self, stops: dict[str, float]) -> None:
        """Detectors, reference keys and bag for the per-episode alarm rule ``stops`` (empty: none)."""
        self.stops = dict(stops)
        self.statistic = StepStatistic(self.calibration, self.names, self.stops, self.n_envs)
        self.reference = reference_keys(self.calibration, self.names, stops)
        self.ledger = self._ledger_type(self.mode, self.shifts, self.log_threshold, self.horizon,
                                        self.reference.tolist())

    def stop_at(self, stops: dict[str, float] | None) -> None:
        """Set the per-episode alarm rule (``stops``, as the constructor's) before the first episode starts.

        A guard calls it with its own detectors and thresholds when its protocol cuts
        episodes short at their alarm; after an episode has started the rule can no
        longer change (the reference keys must not depend on what the deployment showed).
        """
        rule = check_stops(self.calibration, stops)
        if rule == self.stops:
            return
        if self._episodes.next_id:
            raise MonitorError(
                f"stop_at({rule}) after {self._episodes.next_id} episodes started; set the per-episode alarm rule "
                "before the first episode (the guard does so when it is made)"
            )
        self._rule(rule)

    def guarded_by(self, owner: object, names: Sequence[str], thresholds: Sequence[float] | np.ndarray,
                   protocol: object) -> None:
        """Called by the guard ``owner`` this monitor sits in: its per-episode alarm becomes the rule if ``protocol``
        cuts episodes short at it (stops, or takes over); under an alert only, episodes run on and are ranked in
        full. One guard at a time (two would mix their episodes): its ``close()`` releases the monitor."""
        serving = self._owner() if self._owner else None
        if serving is not None and serving is not owner:
            raise MonitorError(f"this DeploymentMonitor serves another guard ({type(serving).__name__}); give each "
                               "guard its own monitor, or close() that guard first")
        self._owner = weakref.ref(owner)
        if cuts_short(protocol):
            self.stop_at({str(n): float(t) for n, t in zip(names, thresholds)})

    def released_by(self, owner: object) -> None:  # a guard's close(): another guard may take the monitor over
        self._owner = None if self._owner and self._owner() is owner else self._owner

    def reads_from(self, names: Sequence[str], calibration: Calibration) -> bool:
        """Called by a one-env guard after :meth:`guarded_by`: where the guard runs every detector this monitor
        needs, fitted the same (equal in ``calibration``), :meth:`update_scalar` takes the guard's statistics of
        the step instead of computing them a second time. Returns whether it does."""
        return self.statistic.reads_from(names, calibration)

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
    def episodes(self) -> int:
        """Episodes bet on in this test."""
        return self.ledger.episodes

    @property
    def running(self) -> np.ndarray:
        """Per env, whether an episode is running there (started, not yet finished)."""
        return np.array([episode is not None for episode in self._episodes.running], dtype=bool)

    def report(self) -> dict[str, object]:
        """What a guard puts in ``info["mesaguard"]["deployment"]``."""
        return {
            "evidence": self.evidence,
            "threshold": self._threshold,
            "alarm": self.alarm,
            "episodes": self.finished,
            "steps": self.steps,
            "mode": self._mode_label,
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
        if self._episodes.live == self.n_envs:
            return
        missing = envs & ~self.running
        if missing.any():
            raise MonitorError(f"{call} in env {np.flatnonzero(missing).tolist()} with no started episode: {_ORDER}")

    def start(self, mask: np.ndarray | None = None) -> None:
        """Start new episodes in the envs of ``mask`` (all if None), numbered in env order.

        An episode still running in one of them ends first, censored (it was cut short).
        """
        m = self._mask(mask, "mask")
        envs = self._every if mask is None else np.flatnonzero(m).tolist()
        if self._episodes.live and any(self._episodes.running[i] is not None for i in envs):
            self.finish(m & self.running, censored=True)
        self._episodes.start(envs)
        self.statistic.reset(None if mask is None else m)

    def update_scalar(self, u: float, statistics: Sequence[float] | None = None) -> float:
        """One env, one increment: :meth:`update` in plain floats (tests hold them equal).

        ``statistics``: the guard's detector statistics after this same increment, in the order of the names it
        gave :meth:`reads_from` (read only when it accepted them; the monitor's own detectors then stay idle).
        """
        self.feed_scalar(u, statistics)
        return self.evidence

    def feed_scalar(self, u: float, statistics: Sequence[float] | None = None) -> None:
        """:meth:`update_scalar` without the evidence it returns (what a guard calls at every step, then reads
        :meth:`report` once)."""
        if self.n_envs != 1:
            raise MonitorError(f"update_scalar is for one env; this monitor watches {self.n_envs}")
        episode = self._episodes.running[0]
        if episode is None:
            raise MonitorError(f"update_scalar() with no started episode: {_ORDER}")
        if not math.isfinite(u):
            episode.censored = True  # the episode's statistic can no longer be computed
            raise DetectorError(f"increment {u} is not finite")
        x, cross = self.statistic.step_scalar(u, statistics)
        if not math.isfinite(x):
            episode.censored = True
            raise MonitorError(f"the joint statistic is {x} after increment {u}; expected a finite number")
        if self._stepped(episode, x, cross):
            self.refresh()

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
        x, crossed = self.statistic.step(u)
        return self._observe(x, m, crossed)

    def observe(
        self, statistic: np.ndarray, live: np.ndarray | None = None, crossed: np.ndarray | None = None
    ) -> float:
        """Feed one joint standardized statistic per env directly; return the evidence.

        Every live env needs a started episode; the statistics of the other envs are not
        read. With a per-episode alarm rule (``stops``), ``crossed`` says per env whether
        that alarm fires at this step (required then: without it the key is unknown).
        """
        m = self._mask(live, "live")
        statistic = np.asarray(statistic, dtype=np.float64)
        if statistic.shape != (self.n_envs,):
            raise MonitorError(f"statistics of shape {statistic.shape}; expected ({self.n_envs},), one per env")
        if self.stops and crossed is None:
            raise MonitorError(
                f"observe() without crossed= on a monitor with stops={self.stops}: pass, per env, whether "
                "the per-episode alarm fires at this step"
            )
        if crossed is not None:
            crossed = self._mask(crossed, "crossed")
        self._require_running("observe()", m)
        return self._observe(statistic, m, crossed)

    def _observe(self, statistic: np.ndarray, m: np.ndarray, crossed: np.ndarray | None = None) -> float:
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
            episode = self._episodes.running[i]
            assert episode is not None  # checked above
            changed |= self._stepped(episode, float(statistic[i]), crossed is not None and bool(crossed[i]))
        if changed:
            self.refresh()
        return self.evidence

    def _stepped(self, episode: Episode, x: float, crossed: bool) -> bool:
        """One step of ``episode`` with joint statistic ``x`` (``crossed``: its per-episode alarm fired at this
        step); True if the episode's key rose."""
        self.steps += 1
        if episode.steps == 0:
            episode.u = float(self._rng.random())  # its smoothing uniform, drawn at its first step
        episode.steps += 1
        if episode.censored or episode.value == CROSSED:
            return False
        if crossed:
            x = CROSSED
            self.crossings += 1
        if x > episode.value:
            episode.value = x
            return True
        return False

    def censor(self, mask: np.ndarray | None = None) -> None:
        """From now on the episodes in ``mask`` (all if None) are not the agent's (a fallback acts): freeze them."""
        m = self._mask(mask, "mask")
        self._require_running("censor()", m)
        self._censor(m)

    def _censor(self, m: np.ndarray) -> None:
        for i in np.flatnonzero(m):
            episode = self._episodes.running[i]
            if episode is not None:
                episode.censored = True

    def finish(self, mask: np.ndarray | None = None, censored: bool | np.ndarray = False) -> None:
        """End the running episodes of ``mask`` (all if None); ``censored`` where they were cut short.

        Every env of ``mask`` needs a running episode, except while the alarm stands
        (then envs without one are skipped: the test is over, nothing can be lost).
        """
        m = self._mask(mask, "mask")
        if isinstance(censored, bool):
            cut: np.ndarray | list[bool] = [censored] * self.n_envs
        else:
            try:
                cut = np.broadcast_to(np.asarray(censored, dtype=bool), (self.n_envs,))
            except ValueError:
                raise MonitorError(f"censored={censored!r}; expected a bool or {self.n_envs} booleans") from None
        if not self.alarm:  # under a standing alarm no evidence can be lost: a refusing guard may end envs twice
            self._require_running("finish()", m)
        for i in self._every if mask is None else np.flatnonzero(m).tolist():
            if self._episodes.end(i, bool(cut[i])):
                self.finished += 1
        for episode in self._episodes.ready():
            crossing = self.ledger.commit(episode)
            if crossing is not None and not self.alarm:
                self._fire(crossing)
        self.refresh()

    def fail(self) -> None:
        """Raise the deployment alarm now (the monitor itself failed: fail closed). Always allowed."""
        if not self.alarm:
            self._fire(self._episodes.next_id)  # the latest episode started (0 before the first)

    def clear(self) -> None:
        """Clear a standing alarm and start a new test: evidence reset, reference bag kept. Always allowed.

        Episodes already running are ranked in later bags but not bet on: the choice
        to clear may depend on what they showed so far.
        """
        self.alarm, self.alarm_episode, self.alarm_steps = False, None, None
        for episode in self._episodes.open:
            episode.counts = False
        self.ledger.new_test(self._episodes.next_id)
        self.log_evidence = self.ledger.log_evidence

    def refresh(self) -> None:
        """Evidence now: the largest evidence provable from the bets made and lower bounds of pending ones (the
        updates call it when a running maximum rises; so does a compiled guard step, which raises it itself)."""
        self.log_evidence, crossing = self.ledger.level(self._episodes.open, self._episodes.next_id)
        if crossing is not None and not self.alarm:
            self._fire(crossing)

    def _fire(self, episode: int) -> None:
        self.alarm = True
        self.alarm_episode, self.alarm_steps = episode, self.steps
