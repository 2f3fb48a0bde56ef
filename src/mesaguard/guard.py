"""The guard: base objective + calibrated detectors + protocol around an env.

:class:`Guard` is the array core (no Gymnasium): it adds up increments into the
score so far, runs the detectors and raises the alarm when a statistic passes its
calibrated threshold. :class:`GuardedEnv` wraps one Gymnasium env with it and
:class:`GuardedVectorEnv` a vector env; both report in ``info["mesaguard"]``:

``score``, ``increment``, ``step``
    the score so far ``S_t``, this step's increment ``u_t``, the step in the episode;
``statistics``
    each detector's statistic (thresholds are in the calibration);
``alarm``, ``detector``, ``alarm_step``
    whether the alarm stands, which detector fired first (``"error"`` when the
    guard itself failed) and at which step;
``acting``, ``error``, ``refused``
    who chose this step's action (``"agent"`` or ``"protocol"``), the guard's
    internal error, if any, and whether the step was refused: a standing alarm under
    ``Stop`` executes no action (nothing happened in the env; the step ends the episode);
``deployment``
    with a :class:`~mesaguard.monitor.DeploymentMonitor` (``monitor=``): its
    ``evidence``, ``threshold``, ``alarm``, ``episodes`` and ``steps`` seen, and ``mode``.

With a :class:`~mesaguard.detectors.scope.Scope` (``scope=``), every observation the
agent is about to act on (after reset and after each step) is checked *before* it
acts; out of scope, the alarm fires with detector ``"scope"``, and the protocol
takes that action (``Fallback``) or the episode ends before it (``Stop``: the step
that returned the observation reports ``truncated``; a first observation out of
scope makes the next step a refused one). ``statistics["scope"]`` is its statistic.

A deployment alarm goes to the same protocol (detector ``"deployment"``) and
stands across episodes until :meth:`GuardedEnv.clear`: under ``Stop`` every later
step is refused (the agent's action is not executed; the step reports
``truncated``), under ``Fallback`` the fallback acts in every later episode. An
episode the protocol took over or cut short is censored for the monitor.

A guard that hits an internal error (a NaN increment, a missing objective channel,
a failing alert callback) fails closed: the alarm fires with detector
``"error"``, the error is recorded, and if the protocol cannot run the episode
is stopped.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from mesaguard.calibration import Calibration
from mesaguard.detectors import detector_class
from mesaguard.detectors.base import DetectorError, as_increments
from mesaguard.monitor import DeploymentMonitor
from mesaguard.objective import Objective, ObjectiveError, Transition, make_objective
from mesaguard.protocols import Alarm, Protocol, Stop, compose

if TYPE_CHECKING:  # scikit-learn loads with the scope, not with every guard
    from mesaguard.detectors.scope import Scope

__all__ = ["Guard", "GuardedEnv", "GuardedVectorEnv", "ScalarGuard"]

ERROR = "error"
DEPLOYMENT = "deployment"  # the detector name of a deployment monitor's alarm
SCOPE = "scope"  # the detector name of a scope alarm: the state the agent is about to act in is out of scope


def _with_error(previous: str | None, exc: BaseException) -> str:
    """The errors recorded so far in an episode, with ``exc`` added."""
    message = f"{type(exc).__name__}: {exc}"
    return message if previous is None else f"{previous}; {message}"


def _calibrated(
    calibration: Calibration, detectors: Sequence[str] | None, alpha: float | None
) -> tuple[list[str], list[float]]:
    """Detector names (default: all calibrated) and their thresholds, jointly calibrated at alpha."""
    names = list(calibration.detectors) if detectors is None else list(detectors)
    if not names:  # no increment detector: a guard for its scope or deployment monitor alone
        return [], []
    for name in names:
        detector_class(name)  # unknown names: the error lists every detector
    thresholds = calibration.thresholds_for(names, alpha)  # P(any fires) <= alpha
    return names, [thresholds[n] for n in names]


class ScalarGuard:
    """The one-env guard in plain Python floats: the hot path of :class:`GuardedEnv`.

    Same verdicts as :class:`Guard` with ``n_envs=1`` (tests hold them equal), at a
    fraction of the cost: one NumPy call costs about a microsecond, a float op a
    few tens of nanoseconds.
    """

    def __init__(self, calibration: Calibration, detectors: Sequence[str] | None = None, alpha: float | None = None):
        self.names, self.thresholds = _calibrated(calibration, detectors, alpha)
        self.detectors = [calibration.detectors[n].build(1).scalar() for n in self.names]
        self.reset()

    def reset(self) -> None:
        for det in self.detectors:
            det.reset()
        self.score, self.steps = 0.0, 0
        self.alarm, self.alarm_step, self.detector = False, -1, ""
        self.statistics = [0.0] * len(self.names)

    def update(self, u: float) -> bool:
        """Feed one finite increment; True if the alarm fires at this step."""
        if not math.isfinite(u):
            raise DetectorError(f"increment {u} at step {self.steps + 1} is not finite")
        self.score += u
        self.steps += 1
        stats = self.statistics
        for i, det in enumerate(self.detectors):
            stats[i] = det.update(u)
        if not self.alarm:
            for i, threshold in enumerate(self.thresholds):
                if stats[i] > threshold:
                    self.fail(self.names[i])
                    return True
        return False

    def fail(self, detector: str = "error") -> None:
        """Raise the alarm now (``"error"``: the guard itself failed)."""
        self.alarm, self.alarm_step, self.detector = True, self.steps, detector

    def alarm_record(self, error: str | None = None) -> Alarm:
        return Alarm(0, self.alarm_step, self.detector, self.score, dict(zip(self.names, self.statistics)), error)


class Guard:
    """Calibrated detectors over ``n_envs`` running episodes, with per-env alarm state.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> cal = Calibration.fit([rng.normal(1.0, 0.1, 30) for _ in range(100)], alpha=0.05)
    >>> guard = Guard(cal, detectors=["cusum"])
    >>> fired = [bool(guard.update(np.array([u]))[0]) for u in [1.0] * 10 + [0.5] * 10]
    >>> fired.index(True), guard.detector[0], int(guard.alarm_step[0])
    (11, 'cusum', 12)
    """

    def __init__(
        self,
        calibration: Calibration,
        detectors: Sequence[str] | None = None,
        n_envs: int = 1,
        alpha: float | None = None,
    ) -> None:
        names, thresholds = _calibrated(calibration, detectors, alpha)
        self.calibration = calibration
        self.names = names
        self.n_envs = int(n_envs)
        self.detectors = [calibration.detectors[n].build(self.n_envs) for n in names]
        self.thresholds = np.array(thresholds)
        self._column_thresholds = self.thresholds[:, None]
        self.score = np.zeros(self.n_envs)
        self.steps = np.zeros(self.n_envs, dtype=np.int64)
        self.alarm = np.zeros(self.n_envs, dtype=bool)
        self.alarm_step = np.full(self.n_envs, -1, dtype=np.int64)
        self.detector = np.full(self.n_envs, "", dtype=object)
        self.statistics = np.zeros((len(names), self.n_envs))

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Start new episodes in the envs of ``mask`` (all if None)."""
        m = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        for det in self.detectors:
            det.reset(None if mask is None else m)
        self.score[m] = 0.0
        self.steps[m] = 0
        self.alarm[m] = False
        self.alarm_step[m] = -1
        self.detector[m] = ""
        self.statistics[:, m] = 0.0

    def update(self, u: np.ndarray, live: np.ndarray | None = None) -> np.ndarray:
        """Feed one increment per env; return the envs whose alarm fires now.

        Envs outside ``live`` had no step (a sub-env being reset, a failed
        objective): their score, step count and alarm do not move; callers reset
        or have already failed them.
        """
        u = as_increments(u, self.n_envs)  # checked once here, so each detector's raw update can run
        if live is not None:
            u = np.where(live, u, 0.0)
        for i, det in enumerate(self.detectors):
            self.statistics[i] = det._update(u)
        self.score += u
        self.steps += 1 if live is None else live
        over = self.statistics > self._column_thresholds
        new = over.any(axis=0) & ~self.alarm
        if live is not None:
            new &= live
        if new.any():
            self.fail(new, first=np.argmax(over, axis=0))
        return new

    def fail(self, mask: np.ndarray, first: np.ndarray | None = None, name: str = ERROR) -> None:
        """Raise the alarm in the envs of ``mask``: by detector ``first`` (indices), else as ``name``."""
        self.alarm[mask] = True
        self.alarm_step[mask] = self.steps[mask]
        if first is None:
            self.detector[mask] = name
        else:
            self.detector[mask] = np.array(self.names, dtype=object)[first[mask]]

    def alarm_record(self, env: int, error: str | None = None) -> Alarm:
        return Alarm(
            env=env,
            step=int(self.alarm_step[env]),
            detector=str(self.detector[env]),
            score=float(self.score[env]),
            statistics={n: float(self.statistics[i, env]) for i, n in enumerate(self.names)},
            error=error,
        )


class GuardedEnv(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Recompute the base objective each step, watch it, and let ``protocol`` take over on alarm.

    Parameters
    ----------
    env
        The deployed env.
    calibration
        Thresholds fitted on the agent's in-distribution episodes (:class:`Calibration`).
    detectors
        Detector names to run (default: all in the calibration; ``[]`` for none, a
        guard for its ``scope`` or ``monitor`` alone).
    protocol
        What happens on alarm: :class:`~mesaguard.protocols.Stop` (default),
        ``Fallback(policy)``, ``Alert(callback)`` or a list of them.
    objective
        Where increments come from: ``"reward"`` (default), ``"info:KEY"``, an
        :class:`~mesaguard.objective.Objective` or a callable of the transition.
    scenario
        If given, checked against the calibration's scenario.
    monitor
        A :class:`~mesaguard.monitor.DeploymentMonitor` (``n_envs=1``): evidence over
        the deployment's episodes; its alarm stands until :meth:`clear`.
    scope
        A fitted :class:`~mesaguard.detectors.scope.Scope`: every state is checked
        before the agent acts in it.

    Adds ``info["mesaguard"]`` on every step (see the module docstring). Example::

        env = GuardedEnv(scenario.make("deploy"), calibration=Calibration.load(path),
                         detectors=["envelope", "cusum"], protocol=Fallback(safe_policy),
                         objective="info:base_objective")
        obs, info = env.reset(seed=0)
        obs, reward, terminated, truncated, info = env.step(action)
        info["mesaguard"]["alarm"]
    """

    def __init__(
        self,
        env: gym.Env,
        calibration: Calibration,
        detectors: Sequence[str] | None = None,
        protocol: Protocol | Sequence[Protocol] | None = None,
        objective: str | Objective | Callable[[Transition], float] | None = None,
        scenario: str | None = None,
        monitor: DeploymentMonitor | None = None,
        scope: Scope | None = None,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            calibration=calibration,
            detectors=detectors,
            protocol=protocol,
            objective=objective,
            scenario=scenario,
            monitor=monitor,
            scope=scope,
        )
        gym.Wrapper.__init__(self, env)
        calibration.check(scenario=scenario, obs_shape=env.observation_space.shape)
        if monitor is not None and monitor.n_envs != 1:
            raise ValueError(f"monitor watches {monitor.n_envs} envs; GuardedEnv needs a monitor with n_envs=1")
        if scope is not None:
            scope.check(scenario=scenario, obs_shape=env.observation_space.shape)
        self.guard = ScalarGuard(calibration, detectors)
        self.protocol = compose(Stop() if protocol is None else protocol)
        self.objective = make_objective(objective)
        self.monitor = monitor
        self.scope = None if scope is None else scope.detector(1).scalar()
        self._obs: Any = None
        self._error: str | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.guard.reset()
        if self.monitor is not None:
            self.monitor.start()
        self._obs, self._error = obs, None
        if self.scope is not None:
            self.scope.reset()
            self._check_scope(obs)
        return obs, info

    def clear(self) -> None:
        """Clear a standing deployment alarm: the monitor starts a new test."""
        if self.monitor is not None:
            self.monitor.clear()

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        g, monitor = self.guard, self.monitor
        deployment_alarm = monitor is not None and monitor.alarm
        if (deployment_alarm or g.alarm) and self.protocol.stops:  # stopped before this action: it never runs
            return self._refuse()
        acting = "agent"
        stop = False
        if g.alarm or deployment_alarm:
            try:
                override = self.protocol.act(self._obs)
            except Exception as exc:  # fail closed: the protocol could not act, so the episode stops
                self._record(exc)
                override, stop = None, True
            if override is not None:
                action, acting = override, "protocol"
                if monitor is not None:
                    monitor.censor()  # from here the episode is the fallback's, not the agent's
        obs, reward, terminated, truncated, info = self.env.step(action)
        u = 0.0
        if self._error is None:
            try:
                u = self.objective.increment(
                    Transition(float(reward), info, self._obs, action, obs, terminated, truncated), g.steps + 1
                )
                new = g.update(u)
            except Exception as exc:  # fail closed: no verdict is an alarm
                self._record(exc)
                new = not g.alarm
                if new:
                    g.fail()
            if new:
                stop |= self._fire()
        if monitor is not None:
            stop |= self._watch(u)
        self._obs = obs
        if self.scope is not None and not (terminated or truncated):
            stop |= self._check_scope(obs)
        if g.alarm and self.protocol.stops:
            stop = True
        if monitor is not None and (terminated or truncated or stop):
            monitor.finish(censored=stop)
        info = dict(info)
        info["mesaguard"] = self._report(u, acting)
        return obs, reward, terminated, truncated or stop, info

    def _watch(self, u: float) -> bool:
        """Feed the deployment monitor; True if the episode must stop (its alarm, under a stopping protocol)."""
        monitor = self.monitor
        if self._error is not None:  # the increment is unknown: the monitor cannot see this episode any more
            monitor.censor()
            return False
        before = monitor.alarm
        try:
            monitor.update_scalar(u)
        except Exception as exc:  # fail closed: a monitor that cannot judge raises its alarm
            self._record(exc)
            monitor.censor()
            monitor.fail()
        if monitor.alarm and not before:
            return self._fire(deployment=True) or self.protocol.stops
        return False

    def _check_scope(self, obs: Any) -> bool:
        """Check the state the agent is about to act in; True if the episode must stop now."""
        g = self.guard
        try:
            out = self.scope.update(obs) > self.scope.threshold
        except Exception as exc:  # fail closed: a state the scope cannot judge is out of scope
            self._record(exc)
            out = True
        if out and not g.alarm:
            g.fail(SCOPE)
            return self._fire() or self.protocol.stops
        return False

    def _refuse(self) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """A standing alarm under ``Stop`` (deployment, or scope on the first state): no action, the episode ends."""
        if self.monitor is not None:
            self.monitor.finish(censored=True)
        return self._obs, 0.0, False, True, {"mesaguard": self._report(0.0, "protocol", refused=True)}

    def _report(self, u: float, acting: str, refused: bool = False) -> dict[str, Any]:
        g = self.guard
        statistics = dict(zip(g.names, g.statistics))
        if self.scope is not None:
            statistics[SCOPE] = self.scope.statistic
        report = {
            "score": g.score,
            "increment": u,
            "step": g.steps,
            "statistics": statistics,
            "alarm": g.alarm,
            "detector": g.detector or None,
            "alarm_step": g.alarm_step if g.alarm else None,
            "acting": acting,
            "error": self._error,
            "refused": refused,
        }
        if self.monitor is not None:
            report["deployment"] = self.monitor.report()
        return report

    def _fire(self, deployment: bool = False) -> bool:
        """Tell the protocol about a new alarm; True if the episode must stop because it failed."""
        alarm = self.guard.alarm_record(self._error)
        if deployment:
            alarm = dataclasses.replace(alarm, step=self.guard.steps, detector=DEPLOYMENT)
        try:
            self.protocol.on_alarm(alarm)
        except Exception as exc:  # fail closed: an alert that failed still stops the run
            self._record(exc)
            return True
        return False

    def _record(self, exc: BaseException) -> None:
        self._error = _with_error(self._error, exc)


class GuardedVectorEnv(VectorWrapper):
    """The guard over a Gymnasium vector env, on whole arrays.

    Same parameters and ``info["mesaguard"]`` keys as :class:`GuardedEnv`, each an
    array of shape ``(num_envs,)`` (``detector`` holds ``""`` where no alarm stands,
    ``alarm_step`` -1; ``deployment`` is one dict for the whole vector env). Sub-env
    episodes are tracked through the vector env's autoreset mode (next-step and
    same-step are supported). ``Stop`` ends a sub-env's episode at the alarm: that
    step reports ``truncated`` and the sub-env is reset at once through
    ``reset(options={"reset_mask": ...})``, so the returned observation of that
    sub-env is already the first of its next episode. A deployment alarm under
    ``Stop`` ends every sub-env's episode and refuses every later step (no action is
    executed) until :meth:`clear`, which also resets the vector env.
    """

    def __init__(
        self,
        env: VectorEnv,
        calibration: Calibration,
        detectors: Sequence[str] | None = None,
        protocol: Protocol | Sequence[Protocol] | None = None,
        objective: str | Objective | Callable[[Transition], float] | None = None,
        scenario: str | None = None,
        monitor: DeploymentMonitor | None = None,
        scope: Scope | None = None,
    ) -> None:
        super().__init__(env)
        calibration.check(scenario=scenario, obs_shape=env.single_observation_space.shape)
        if scope is not None:
            scope.check(scenario=scenario, obs_shape=env.single_observation_space.shape)
        self.scope = None if scope is None else scope.detector(env.num_envs)
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset mode {mode}; GuardedVectorEnv supports NEXT_STEP and SAME_STEP")
        if monitor is not None and monitor.n_envs != env.num_envs:
            raise ValueError(f"monitor watches {monitor.n_envs} envs; this vector env has {env.num_envs}")
        self.same_step = mode == AutoresetMode.SAME_STEP
        self.guard = Guard(calibration, detectors, n_envs=env.num_envs)
        self.protocol = compose(Stop() if protocol is None else protocol)
        self.objective = make_objective(objective)
        self.monitor = monitor
        self._obs: Any = None
        self._restarting = np.zeros(env.num_envs, dtype=bool)
        self._errors: list[str | None] = [None] * env.num_envs

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        # Read the partial-reset mask first: Gymnasium's vector envs pop it out of ``options``.
        mask = None if not options or "reset_mask" not in options else np.asarray(options["reset_mask"], dtype=bool)
        obs, info = self.env.reset(seed=seed, options=options)
        self._start(mask)
        self._restarting[:] = False if mask is None else self._restarting & ~mask
        self._obs = obs
        if self.scope is not None:
            self._check_scope(obs, np.ones(self.num_envs, dtype=bool) if mask is None else mask)
        return obs, info

    def clear(self, *, seed: int | list[int | None] | None = None):
        """Clear a standing deployment alarm (the monitor starts a new test) and reset every sub-env."""
        if self.monitor is not None:
            self.monitor.clear()
        return self.reset(seed=seed)

    def step(self, actions: Any):
        g, n, monitor = self.guard, self.num_envs, self.monitor
        if monitor is not None and monitor.alarm and self.protocol.stops:
            return self._refuse()
        acting = np.full(n, "agent", dtype=object)
        stop = np.zeros(n, dtype=bool)
        takeover = g.alarm | (monitor is not None and monitor.alarm)
        if takeover.any():
            actions = np.array(actions, copy=True)
            for i in np.flatnonzero(takeover & ~self._restarting):
                try:
                    override = self.protocol.act(self._obs[i])
                except Exception as exc:  # fail closed: the protocol could not act, so the episode stops
                    self._record(i, exc)
                    stop[i] = True
                    continue
                if override is not None:
                    actions[i], acting[i] = override, "protocol"
            if monitor is not None:
                monitor.censor(acting == "protocol")  # those episodes are the fallback's from here
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        # In next-step autoreset, a sub-env that ended last step was reset by this step: no increment.
        stepped = np.ones(n, dtype=bool) if self.same_step else ~self._restarting
        live = stepped.copy()  # envs whose increment counts: stepped, and the objective gave a number
        try:
            u = np.asarray(self.objective.batch_values(np.asarray(rewards, dtype=np.float64), info), dtype=np.float64)
            bad = live & ~np.isfinite(u)
            for i in np.flatnonzero(bad):
                self._record(i, ObjectiveError.nonfinite(self.objective.name, u[i], int(g.steps[i]) + 1))
        except Exception as exc:  # fail closed: no verdict is an alarm, in every live env
            u, bad = np.zeros(n), live.copy()
            for i in np.flatnonzero(bad):
                self._record(i, exc)
        if bad.any():
            newly = bad & ~g.alarm
            g.fail(bad)
            for i in np.flatnonzero(newly):
                stop[i] |= self._fire(i)
            live = live & ~bad
            u = np.where(live, u, 0.0)
        new = g.update(u, None if live.all() else live)
        for i in np.flatnonzero(new):
            stop[i] |= self._fire(i)
        if monitor is not None:
            stop |= self._watch(u, live, bad, stepped)
        if not self.same_step and self._restarting.any():
            self._start(self._restarting)
        if self.protocol.stops:
            stop |= g.alarm & stepped
        done = np.asarray(terminated) | np.asarray(truncated)
        if self.scope is not None:  # the next states of the episodes going on, before the agents act in them
            stop |= self._check_scope(obs, ~done & ~stop)
        truncated = np.asarray(truncated) | stop
        stopped = stop & ~done
        if monitor is not None:
            monitor.finish(done & ~stop & stepped)
            monitor.finish(stop & stepped, censored=True)
        info = dict(info)
        info["mesaguard"] = self._report(u, acting)
        if stopped.any():
            obs_reset, _ = self.env.reset(options={"reset_mask": stopped})
            obs = obs_reset
            self._start(stopped)
        if self.same_step:
            if done.any():
                self._start(done)
            self._restarting[:] = False
        else:
            self._restarting = done
        if self.scope is not None:  # first states of the episodes started in this step
            self._check_scope(obs, stopped | (done if self.same_step else np.zeros(self.num_envs, dtype=bool)))
        self._obs = obs
        return obs, rewards, terminated, truncated, info

    def _start(self, mask: np.ndarray | None) -> None:
        """New episodes in the sub-envs of ``mask`` (all if None): guard, errors, monitor and scope."""
        self.guard.reset(mask)
        for i in range(self.num_envs) if mask is None else np.flatnonzero(mask):
            self._errors[i] = None
        if self.monitor is not None:
            self.monitor.start(mask)
        if self.scope is not None:
            self.scope.reset(mask)

    def _check_scope(self, obs: Any, mask: np.ndarray) -> np.ndarray:
        """Check the states the agents of ``mask`` are about to act in; the sub-envs to stop now.

        A first state out of scope (after a reset) cannot stop an action in a vector
        env, which steps every sub-env together: there ``Fallback`` takes the action.
        """
        g, none = self.guard, np.zeros(self.num_envs, dtype=bool)
        if not mask.any():
            return none
        try:
            out = (self.scope.update(obs, mask) > self.scope.threshold) & mask  # the other envs' states stay
        except Exception as exc:  # fail closed: states the scope cannot judge are out of scope
            for i in np.flatnonzero(mask):
                self._record(i, exc)
            out = mask.copy()
        new = out & ~g.alarm
        if not new.any():
            return none
        g.fail(new, name=SCOPE)
        stop = none.copy()
        for i in np.flatnonzero(new):
            stop[i] = self._fire(i) or self.protocol.stops
        return stop

    def _watch(self, u: np.ndarray, live: np.ndarray, bad: np.ndarray, stepped: np.ndarray) -> np.ndarray:
        """Feed the deployment monitor; the sub-envs to stop (all that stepped, on its alarm under Stop)."""
        monitor = self.monitor
        if bad.any():
            monitor.censor(bad)  # increments unknown: the monitor cannot see those episodes any more
        before = monitor.alarm
        try:
            monitor.update(u, live)
        except Exception as exc:  # fail closed: a monitor that cannot judge raises its alarm
            for i in np.flatnonzero(stepped):
                self._record(i, exc)
            monitor.censor(stepped)
            monitor.fail()
        if monitor.alarm and not before:
            alarm = Alarm(-1, int(monitor.steps), DEPLOYMENT, float(self.guard.score.sum()), {}, None)
            try:
                self.protocol.on_alarm(alarm)
            except Exception as exc:  # fail closed: an alert that failed still stops the run
                for i in np.flatnonzero(stepped):
                    self._record(i, exc)
                return stepped.copy()
            if self.protocol.stops:
                return stepped.copy()
        return np.zeros(self.num_envs, dtype=bool)

    def _refuse(self):
        """A standing deployment alarm under ``Stop``: no action is executed; every episode ends."""
        n = self.num_envs
        self.monitor.finish(censored=True)
        info = {"mesaguard": self._report(np.zeros(n), np.full(n, "protocol", dtype=object), refused=True)}
        return self._obs, np.zeros(n), np.zeros(n, dtype=bool), np.ones(n, dtype=bool), info

    def _report(self, u: np.ndarray, acting: np.ndarray, refused: bool = False) -> dict[str, Any]:
        g = self.guard
        statistics = {name: g.statistics[i].copy() for i, name in enumerate(g.names)}
        if self.scope is not None:
            statistics[SCOPE] = self.scope.statistic.copy()
        report = {
            "score": g.score.copy(),
            "increment": u,
            "step": g.steps.copy(),
            "statistics": statistics,
            "alarm": g.alarm.copy(),
            "detector": g.detector.copy(),
            "alarm_step": g.alarm_step.copy(),
            "acting": acting,
            "error": np.array(self._errors, dtype=object),
            "refused": np.full(self.num_envs, refused),
        }
        if self.monitor is not None:
            report["deployment"] = self.monitor.report()
        return report

    def _fire(self, i: int) -> bool:
        try:
            self.protocol.on_alarm(self.guard.alarm_record(int(i), self._errors[i]))
        except Exception as exc:  # fail closed: an alert that failed still stops the run
            self._record(i, exc)
            return True
        return False

    def _record(self, i: int, exc: BaseException) -> None:
        self._errors[i] = _with_error(self._errors[i], exc)
