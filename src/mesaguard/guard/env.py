"""GuardedEnv: the guard around one Gymnasium env (a wrapper, as Gymnasium's own wrappers are).

It recomputes the base objective each step, feeds the calibrated detectors of a
:class:`~mesaguard.guard.core.ScalarGuard` (compiled where it can be: :mod:`~mesaguard.guard.compiled`), and
lets the protocol take over on alarm. It reports in ``info["mesaguard"]`` (see :mod:`mesaguard.guard`).

Fail closed: whatever breaks between the inner env's step and the guard's verdict
(an objective that raises or is not finite, a statistic that is not a number, an
env returning an ``info`` that is not a dict, a failing alert, a monitor that
cannot judge) latches the alarm (detector ``"error"`` where no alarm stood) and
records the error, and the episode ends at that step whatever the protocol (past
an error it would run unwatched); a protocol that has to act and cannot (a
fallback that raises, returns ``None`` or an action outside the action space)
executes nothing: the step is refused and the episode ends.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium as gym

from mesaguard.calibration import Calibration
from mesaguard.guard.compiled import plain_step, scalar_guard
from mesaguard.guard.core import (
    DEPLOYMENT,
    ERROR,
    SCOPE,
    TRANSITION,
    GuardError,
    check_setup,
    guard_objective,
    protocol_action,
    with_error,
)
from mesaguard.monitor import DeploymentMonitor
from mesaguard.objective import Objective, Transition
from mesaguard.protocols import Protocol, Stop, compose

if TYPE_CHECKING:  # scikit-learn loads with the scope, not with every guard
    from mesaguard.scope import Scope
    from mesaguard.transition_scope import TransitionScope

__all__ = ["GuardedEnv"]


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
        Where increments come from: ``"reward"``, ``"info:KEY"``, an
        :class:`~mesaguard.objective.Objective` or a callable of the transition. Default:
        the one the calibration recorded (``"reward"`` where it recorded none); another
        than the recorded one is an error unless ``allow_other_objective=True``.
    scenario
        If given, checked against the calibration's scenario.
    monitor
        A :class:`~mesaguard.monitor.DeploymentMonitor` (``n_envs=1``): evidence over
        the deployment's episodes; its alarm stands until :meth:`clear`.
    scope
        A fitted :class:`~mesaguard.scope.Scope`: every state is checked
        before the agent acts in it.
    transition_scope
        A fitted :class:`~mesaguard.transition_scope.TransitionScope`: every transition
        is checked against the learned model after the step (detector ``"transition"``).

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
        allow_other_objective: bool = False,
        transition_scope: TransitionScope | None = None,
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
            allow_other_objective=allow_other_objective,
            transition_scope=transition_scope,
        )
        gym.Wrapper.__init__(self, env)
        check_setup(calibration, env.observation_space.shape, 1, scenario=scenario, monitor=monitor, scope=scope,
                    transition_scope=transition_scope, action_space=env.action_space)
        self.guard = scalar_guard(calibration, detectors)  # compiled where it is built (mesaguard.guard.compiled)
        self.protocol = compose(Stop() if protocol is None else protocol)
        self.objective = guard_objective(calibration, objective, allow_other_objective)
        self.monitor = monitor
        if monitor is not None:  # episodes its protocol stops at their alarm are evidence for the monitor
            monitor.guarded_by(self, self.guard.names, self.guard.thresholds, self.protocol)
            monitor.reads_from(self.guard.names, calibration)  # the guard's statistics, not computed twice
        self.scope = None if scope is None else scope.detector(1).scalar()
        self.scope_threshold = math.inf if scope is None else scope.threshold  # the detector knows no threshold
        self.transition = None if transition_scope is None else transition_scope.detector(1)
        self._transition = None if self.transition is None else self.transition.scalar()
        self.transition_threshold = math.inf if transition_scope is None else transition_scope.threshold
        self._obs: Any = None
        self._error: str | None = None
        self._open = False  # a monitor episode is running (started at reset, finished at its end)
        self._plain = plain_step(self)  # None where a step cannot be compiled: every step runs here

    def __getstate__(self) -> dict[str, Any]:  # pickled and copied without its compiled step, made anew after
        return {k: v for k, v in vars(self).items() if k != "_plain"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        vars(self).update(state)
        self._plain = plain_step(self)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if self._plain is not None:  # compiled: the same reset (mesaguard.guard.compiled)
            return self._plain.reset(seed, options)
        obs, info = self.env.reset(seed=seed, options=options)
        self.guard.reset()
        if self.monitor is not None:
            self.monitor.start()  # an episode left before its end (a reset mid-episode) ends censored there
            self._open = True
        self._obs, self._error = obs, None
        if self._transition is not None:
            self._transition.reset()
        if self.scope is not None:
            self.scope.reset()
            self._check_scope(obs)
        return obs, info

    def close(self) -> None:
        """Close the env and release the deployment monitor (another guard may then take it over)."""
        if self.monitor is not None:
            self.monitor.released_by(self)
        super().close()

    def clear(self) -> None:
        """Clear a standing deployment alarm: the monitor starts a new test."""
        if self.monitor is not None:
            self.monitor.clear()

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        plain = self._plain  # compiled: the plain steps run there, every other one here (mesaguard.guard.compiled)
        return self._step(action) if plain is None else plain(action)

    def _step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        g, monitor = self.guard, self.monitor
        standing = g.alarm or (monitor is not None and monitor.alarm)
        if standing and self.protocol.stops:  # stopped before this action: it never runs
            return self._refuse()
        acting = "agent"
        if standing:
            try:
                override = protocol_action(self.protocol, self._obs, self.action_space)
            except Exception as exc:  # fail closed: the protocol had to act and could not, so nothing executes
                self._record(exc)
                return self._refuse()
            if override is not None:
                action, acting = override, "protocol"
                if monitor is not None and self._open:
                    monitor.censor()  # from here the episode is the fallback's, not the agent's
        return self._judged(action, acting, self.env.step(action))

    def _judged(
        self, action: Any, acting: str, out: tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]
    ) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """The guarded step, given the env's step ``out`` of ``action`` (chosen by ``acting``)."""
        g = self.guard
        obs, reward, terminated, truncated, info = out
        try:
            u, stop = self._judge(action, obs, reward, terminated, truncated, info)
        except Exception as exc:  # fail closed: anything between the env's step and the verdict latches the alarm
            u, stop = 0.0, True
            self._record(exc)
            if not g.alarm:
                g.fail()
                self._fire()
        return self._concluded(out, u, stop, acting)

    def _concluded(
        self, out: tuple[Any, SupportsFloat, bool, bool, dict[str, Any]], u: float, stop: bool, acting: str
    ) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """The guarded step once judged: the monitor's episode ended where it ends, the report written."""
        obs, reward, terminated, truncated, info = out
        stop = stop or self._error is not None  # past an error the episode stands unwatched: it ends, any protocol
        if self._open and (terminated or truncated or stop):
            self._finish(censored=stop)
        info = dict(info) if isinstance(info, dict) else {}
        info["mesaguard"] = self._report(u, acting)
        return obs, reward, terminated, truncated or stop, info

    def _judge(
        self, action: Any, obs: Any, reward: Any, terminated: bool, truncated: bool, info: Any
    ) -> tuple[float, bool]:
        """The increment of this step and whether the episode must stop: objective, detectors, monitor, scope."""
        g = self.guard
        if not isinstance(info, dict):
            raise GuardError(f"the env's step returned info={info!r}; a Gymnasium env returns a dict")
        u, stop = 0.0, False
        if self._error is None:
            try:
                u = self.objective.step_increment(reward, info, self._obs, action, obs, terminated, truncated,
                                                  g.steps + 1)
                new = g.update(u)
            except Exception as exc:  # fail closed: no verdict is an alarm
                self._record(exc)
                new = not g.alarm
                if new:
                    g.fail()
            if new:
                stop |= self._fire()
        if self.monitor is not None:
            stop |= self._watch(u)
        if self._transition is not None:
            stop |= self._check_transition(self._obs, action, obs)
        self._obs = obs
        if self.scope is not None and not (terminated or truncated):
            stop |= self._check_scope(obs)
        return u, stop or (g.alarm and self.protocol.stops)

    def _finish(self, censored: bool) -> None:
        """End the monitor's episode (censored: cut short or taken over); a monitor that cannot is an error."""
        self._open = False
        monitor = self.monitor
        if monitor is None:
            return
        try:
            monitor.finish(censored=censored)
        except Exception as exc:  # fail closed: a monitor that cannot judge raises its alarm
            self._record(exc)
            monitor.fail()

    def _watch(self, u: float) -> bool:
        """Feed the deployment monitor; True if the episode must stop (its alarm, under a stopping protocol)."""
        monitor = self.monitor
        if monitor is None:
            return False
        if not self._open:  # a step after the episode ended (a refused step, a step without reset): an error
            raise GuardError("step outside a started episode; call reset() first")
        if self._error is not None:  # the increment is unknown: the monitor cannot see this episode any more
            monitor.censor()
            return False
        before = monitor.alarm
        try:
            monitor.feed_scalar(u, self.guard.statistics)
        except Exception as exc:  # fail closed: a monitor that cannot judge raises its alarm
            self._monitor_failed(exc)
        return self._deployment(before)

    def _refreshed(self) -> bool:
        """:meth:`_watch`'s verdict after a compiled step (:mod:`~mesaguard.guard.compiled`) fed the monitor and
        raised an episode's running maximum past what its evidence was computed for: the evidence refreshed."""
        monitor = self.monitor
        assert monitor is not None
        before = monitor.alarm
        try:
            monitor.refresh()
        except Exception as exc:  # fail closed: a monitor that cannot judge raises its alarm
            self._monitor_failed(exc)
        return self._deployment(before)

    def _monitor_failed(self, exc: Exception) -> None:
        monitor = self.monitor
        assert monitor is not None
        self._record(exc)
        monitor.fail()  # first: the alarm stands whatever else fails
        if monitor.running.any():
            monitor.censor(monitor.running)

    def _deployment(self, before: bool) -> bool:
        """True if the episode must stop: the deployment alarm fired (it did not stand ``before``) and the protocol
        stops, or its alert failed."""
        monitor = self.monitor
        if monitor is not None and monitor.alarm and not before:
            return self._fire(deployment=True) or self.protocol.stops
        return False

    def _check_scope(self, obs: Any) -> bool:
        """Check the state the agent is about to act in; True if the episode must stop now."""
        g, scope = self.guard, self.scope
        if scope is None:
            return False
        try:
            out = scope.update(obs) > self.scope_threshold
        except Exception as exc:  # fail closed: a state the scope cannot judge is out of scope
            self._record(exc)
            out = True
        if out and not g.alarm:
            g.fail(SCOPE)
            return self._fire() or self.protocol.stops
        return False

    def _check_transition(self, previous: Any, action: Any, obs: Any) -> bool:
        """Check the transition this step made against the learned model; True if the episode must stop now."""
        g, det = self.guard, self._transition
        if det is None or self.transition is None:
            return False
        try:
            out = det.update(self.transition.rows(previous, action, obs)[0]) > self.transition_threshold
            name = TRANSITION
        except Exception as exc:  # fail closed: a transition the model cannot judge is an internal error
            self._record(exc)
            out, name = True, ERROR
        if out and not g.alarm:
            g.fail(name)
            return self._fire() or self.protocol.stops
        return False

    def _refuse(self) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """No action: a standing alarm under ``Stop``, or a protocol that could not act. The episode ends."""
        if self._open:
            self._finish(censored=True)
        return self._obs, 0.0, False, True, {"mesaguard": self._report(0.0, "protocol", refused=True)}

    def _report(self, u: float, acting: str, refused: bool = False) -> dict[str, Any]:
        g = self.guard
        statistics = dict(zip(g.names, g.statistics))
        if self.scope is not None:
            statistics[SCOPE] = self.scope.statistic
        if self._transition is not None:
            statistics[TRANSITION] = self._transition.statistic
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
        self._error = with_error(self._error, exc)


