"""GuardedVectorEnv: the guard over a Gymnasium vector env, on whole arrays.

Its step is a sequence of named steps: the protocol takes over where an alarm
stands (:meth:`GuardedVectorEnv._take_over`), the vector env steps, the objective
gives each live sub-env's increment (:meth:`GuardedVectorEnv._increments`), the
detectors, the deployment monitor and the scope judge (:meth:`GuardedVectorEnv._judge`),
the episodes that ended or were stopped are closed (:meth:`GuardedVectorEnv._close`)
and the stopped ones restarted (:meth:`GuardedVectorEnv._restart`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from mesaguard.calibration import Calibration
from mesaguard.guard.autoreset import Items, Swapped, own_step_infos
from mesaguard.guard.core import (
    DEPLOYMENT,
    ERROR,
    SCOPE,
    TRANSITION,
    Guard,
    GuardError,
    check_setup,
    guard_objective,
    protocol_action,
    with_error,
)
from mesaguard.monitor import DeploymentMonitor
from mesaguard.objective import Batch, Objective, Transition
from mesaguard.protocols import Alarm, Protocol, Stop, compose

if TYPE_CHECKING:  # scikit-learn loads with the scope, not with every guard
    from mesaguard.scope import Scope
    from mesaguard.transition_scope import TransitionScope

__all__ = ["GuardedVectorEnv"]

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

    Both autoreset modes give the verdicts of one :class:`GuardedEnv` per sub-env:
    in same-step mode the ended sub-envs' own step (``final_obs``, ``final_info``)
    is what the objective reads. A protocol that has to act in a sub-env and cannot
    refuses the whole step (no sub-env executes an action: they step together);
    that sub-env's episode ends at once (``truncated``, reset), the others' steps
    are simply not taken (``refused``, to be stepped again).
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
        allow_other_objective: bool = False,
        transition_scope: TransitionScope | None = None,
    ) -> None:
        super().__init__(env)
        n = env.num_envs
        check_setup(calibration, env.single_observation_space.shape, n, scenario=scenario, monitor=monitor, scope=scope,
                    transition_scope=transition_scope, action_space=env.single_action_space)
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP):
            raise ValueError(f"autoreset mode {mode}; GuardedVectorEnv supports NEXT_STEP and SAME_STEP")
        self.same_step = mode == AutoresetMode.SAME_STEP
        self.scope = None if scope is None else scope.detector(n)
        self.scope_threshold = math.inf if scope is None else scope.threshold  # the detector knows no threshold
        self.transition = None if transition_scope is None else transition_scope.detector(n)
        self.transition_threshold = math.inf if transition_scope is None else transition_scope.threshold
        self.guard = Guard(calibration, detectors, n_envs=n)
        self.protocol = compose(Stop() if protocol is None else protocol)
        self.objective = guard_objective(calibration, objective, allow_other_objective)
        self.monitor = monitor
        if monitor is not None:  # episodes its protocol stops at their alarm are evidence for the monitor
            monitor.guarded_by(self, self.guard.names, self.guard.thresholds, self.protocol)
        self._obs: Any = None
        self._restarting = np.zeros(n, dtype=bool)  # next-step autoreset: these sub-envs reset at the next step
        self._errors: list[str | None] = [None] * n
        self._errored = np.zeros(n, dtype=bool)  # an error stands in this episode: the guard stops counting
        self._open = np.zeros(n, dtype=bool)  # a monitor episode is running in this sub-env

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        # Read the partial-reset mask first: Gymnasium's vector envs pop it out of ``options``.
        mask = None if not options or "reset_mask" not in options else np.asarray(options["reset_mask"], dtype=bool)
        obs, info = self.env.reset(seed=seed, options=options)  # type: ignore[arg-type]  # a list of seeds works
        self._start(mask)
        self._restarting[:] = False if mask is None else self._restarting & ~mask
        self._obs = obs
        if self.scope is not None:
            self._check_scope(obs, np.ones(self.num_envs, dtype=bool) if mask is None else mask)
        return obs, info

    def close(self, **kwargs: Any) -> None:
        """Close the envs and release the deployment monitor (another guard may then take it over)."""
        if self.monitor is not None:
            self.monitor.released_by(self)
        super().close(**kwargs)

    def clear(self, *, seed: int | list[int | None] | None = None) -> tuple[Any, dict[str, Any]]:
        """Clear a standing deployment alarm (the monitor starts a new test) and reset every sub-env."""
        if self.monitor is not None:
            self.monitor.clear()
        return self.reset(seed=seed)

    def step(self, actions: Any) -> tuple[Any, Any, Any, np.ndarray, dict[str, Any]]:
        n, monitor = self.num_envs, self.monitor
        if monitor is not None and monitor.alarm and self.protocol.stops:
            return self._refuse(np.ones(n, dtype=bool))
        actions, acting, failed = self._take_over(actions)
        if failed.any():  # a protocol had to act and could not: nothing executes, those episodes end
            return self._refuse(failed)
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        done = np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)
        # In next-step autoreset, a sub-env that ended last step was reset by this step: no increment.
        stepped = np.ones(n, dtype=bool) if self.same_step else ~self._restarting
        try:
            u, stop = self._judge(actions, obs, rewards, terminated, truncated, info, stepped, done)
        except Exception as exc:  # fail closed: anything between the env's step and the verdict latches the alarm
            u, stop = np.zeros(n), stepped.copy()
            self._fail(stepped & ~self.guard.alarm, exc)
        stop |= self._errored & stepped  # an episode with an error stands unwatched: it ends, whatever the protocol
        self._close(done, stop, stepped)
        info = dict(info) if isinstance(info, dict) else {}
        info["mesaguard"] = self._report(u, acting)
        obs = self._restart(obs, stop & ~done, done)
        return obs, rewards, terminated, np.asarray(truncated, dtype=bool) | stop, info

    def _take_over(self, actions: Any) -> tuple[Any, np.ndarray, np.ndarray]:
        """The actions after the protocol took over where an alarm stands; who acts; where it could not act."""
        n, monitor = self.num_envs, self.monitor
        acting = np.full(n, "agent", dtype=object)
        failed = np.zeros(n, dtype=bool)
        takeover = self.guard.alarm | (monitor is not None and monitor.alarm)
        if not takeover.any():
            return actions, acting, failed
        actions = np.array(actions, copy=True)
        for i in np.flatnonzero(takeover & ~self._restarting):
            try:
                override = protocol_action(self.protocol, self._obs[i], self.single_action_space)
            except Exception as exc:  # fail closed: the protocol had to act and could not
                self._record(i, exc)
                failed[i] = True
                continue
            if override is not None:
                actions[i], acting[i] = override, "protocol"
        if monitor is not None and not failed.any():
            monitor.censor((acting == "protocol") & self._open)  # those episodes are the fallback's from here
        return actions, acting, failed

    def _judge(
        self, actions: Any, obs: Any, rewards: Any, terminated: Any, truncated: Any, info: Any,
        stepped: np.ndarray, done: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """This step's increments and the sub-envs to stop: objective, detectors, monitor, scope."""
        g = self.guard
        if not isinstance(info, dict):
            raise GuardError(f"the vector env's step returned info={info!r}; Gymnasium vector envs return a dict")
        ended = done & stepped if self.same_step else np.zeros(self.num_envs, dtype=bool)
        next_obs: Any = Items(self.single_observation_space, obs)
        if ended.any() and "final_obs" in info:
            next_obs = Swapped(next_obs, info["final_obs"], ended)
        batch = Batch(
            np.asarray(rewards, dtype=np.float64),
            own_step_infos(info, ended) if self.same_step else info,
            Items(self.single_observation_space, self._obs),
            Items(self.single_action_space, actions),
            next_obs,
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
            stepped & ~self._errored,
        )
        u, bad = self._increments(batch)
        live = batch.live & ~bad
        stop = np.zeros(self.num_envs, dtype=bool)
        if bad.any():
            newly = bad & ~g.alarm
            g.fail(bad)
            for i in np.flatnonzero(newly):
                stop[i] |= self._fire(i)
        new = g.update(u, None if live.all() else live)
        if g.broken is not None:
            for i in np.flatnonzero(g.broken):
                self._record(i, GuardError(f"score or statistic not finite at step {int(g.steps[i])}"))
        for i in np.flatnonzero(new):
            stop[i] |= self._fire(i)
        if self.monitor is not None:
            stop |= self._watch(u, live, bad, stepped)
        stop |= self._check_transition(actions, obs, info, stepped, ended)  # the transitions made in episodes
        if not self.same_step and self._restarting.any():
            self._start(self._restarting)
        if self.protocol.stops:
            stop |= g.alarm & stepped
        if self.scope is not None:  # the next states of the episodes going on, before the agents act in them
            stop |= self._check_scope(obs, ~done & ~stop)
        return u, stop

    def _increments(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """The live sub-envs' increments (0 elsewhere) and the live ones whose objective failed (recorded).

        The objective's batch path runs first; a sub-env it cannot give a finite
        number for is asked again on its own :class:`Transition`, which either gives
        the number or raises the error that names what went wrong.
        """
        n = self.num_envs
        live = np.ones(n, dtype=bool) if batch.live is None else batch.live
        try:
            u = np.array(self.objective.batch_values(batch), dtype=np.float64).reshape(n)
        except Exception:  # the batch path failed: each live sub-env below gives its own number or error
            u = np.full(n, np.nan)
        bad = live & ~np.isfinite(u)
        for i in np.flatnonzero(bad):
            try:
                u[i] = self.objective.increment(batch.transition(int(i)), int(self.guard.steps[i]) + 1)
                bad[i] = False
            except Exception as exc:
                self._record(i, exc)
        return np.where(live & ~bad, u, 0.0), bad

    def _close(self, done: np.ndarray, stop: np.ndarray, stepped: np.ndarray) -> None:
        """Finish the monitor's episodes that ended (censored where the guard stopped them)."""
        monitor = self.monitor
        ended = (done | stop) & stepped & self._open
        if monitor is None or not ended.any():
            return
        self._open &= ~ended
        try:
            monitor.finish(ended & ~stop)
            monitor.finish(ended & stop, censored=True)
        except Exception as exc:  # fail closed: a monitor that cannot judge raises its alarm
            self._fail(ended, exc)
            monitor.fail()

    def _restart(self, obs: Any, stopped: np.ndarray, ended: np.ndarray | None = None) -> Any:
        """Start the next episodes: the ``stopped`` sub-envs now (a partial reset) and, after a step, the
        ``ended`` ones as the autoreset mode does (``None``: no step was taken)."""
        started = stopped.copy()
        if stopped.any():
            obs, _ = self.env.reset(options={"reset_mask": stopped})
            self._start(stopped)
            self._restarting &= ~stopped
        if ended is not None and self.same_step:
            if ended.any():
                self._start(ended)
            started |= ended
            self._restarting[:] = False
        elif ended is not None:
            self._restarting = ended.copy()
        if self.scope is not None and started.any():  # first states of the episodes started here
            self._check_scope(obs, started)
        self._obs = obs
        return obs

    def _start(self, mask: np.ndarray | None) -> None:
        """New episodes in the sub-envs of ``mask`` (all if None): guard, errors, monitor and scope."""
        self.guard.reset(mask)
        every = np.ones(self.num_envs, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
        for i in np.flatnonzero(every):
            self._errors[i] = None
        self._errored &= ~every
        if self.monitor is not None:
            self.monitor.start(mask)  # an episode left before its end (a reset mid-episode) ends censored there
            self._open |= every
        if self.scope is not None:
            self.scope.reset(mask)
        if self.transition is not None:
            self.transition.reset(mask)

    def _check_scope(self, obs: Any, mask: np.ndarray) -> np.ndarray:
        """Check the states the agents of ``mask`` are about to act in; the sub-envs to stop now.

        A first state out of scope (after a reset) cannot stop an action in a vector
        env, which steps every sub-env together: there ``Fallback`` takes the action.
        """
        g, scope, none = self.guard, self.scope, np.zeros(self.num_envs, dtype=bool)
        if scope is None or not mask.any():
            return none
        try:
            out = (scope.update(obs, mask) > self.scope_threshold) & mask  # the other envs' states stay
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

    def _check_transition(
        self, actions: Any, obs: Any, info: dict[str, Any], stepped: np.ndarray, ended: np.ndarray
    ) -> np.ndarray:
        """Check the transitions of the sub-envs that ``stepped`` against the learned model; the sub-envs to stop.

        A sub-env reset by this step (next-step autoreset) made no transition; one that
        ended in it (same-step autoreset) made its last, to ``final_obs``. A model that
        fails on the batch is asked again per sub-env, so an error is the sub-env's own
        (as in :class:`~mesaguard.guard.GuardedEnv`); one that fails there fails closed (``"error"``).
        """
        g, det, n = self.guard, self.transition, self.num_envs
        none = np.zeros(n, dtype=bool)
        if det is None or not stepped.any():
            return none
        try:
            next_obs = np.array(obs, dtype=np.float64, copy=True)
            for i in np.flatnonzero(ended):
                next_obs[i] = info["final_obs"][i]
            rows = np.where(stepped[:, None], det.rows(self._obs, actions, next_obs), 0.0)
        except Exception as exc:  # fail closed: transitions that cannot be formed cannot be judged
            for i in np.flatnonzero(stepped):
                self._record(i, exc)
            out, failed = none, stepped.copy()
        else:
            out, failed = self._transition_verdicts(rows, stepped)
        stop = none.copy()
        for mask, name in ((failed & ~g.alarm, ERROR), (out & ~failed & ~g.alarm, TRANSITION)):
            if mask.any():
                g.fail(mask, name=name)
                for i in np.flatnonzero(mask):
                    stop[i] = self._fire(i) or self.protocol.stops
        return stop

    def _transition_verdicts(self, rows: np.ndarray, stepped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The sub-envs of ``stepped`` whose transition is over the threshold, and those the model failed on."""
        det = self.transition
        assert det is not None
        failed = np.zeros(self.num_envs, dtype=bool)
        try:
            return (det.update(rows, stepped) > self.transition_threshold) & stepped, failed
        except Exception:  # find the sub-envs whose transition the model cannot judge, each on its own
            out = failed.copy()
        for i in np.flatnonzero(stepped):
            one = np.zeros(self.num_envs, dtype=bool)
            one[i] = True
            try:
                out[i] = det.update(rows, one)[i] > self.transition_threshold
            except Exception as exc:
                self._record(i, exc)
                failed[i] = True
        return out, failed

    def _watch(self, u: np.ndarray, live: np.ndarray, bad: np.ndarray, stepped: np.ndarray) -> np.ndarray:
        """Feed the deployment monitor; the sub-envs to stop (all that stepped, on its alarm under Stop)."""
        monitor = self.monitor
        if monitor is None:
            return np.zeros(self.num_envs, dtype=bool)
        if bad.any():
            monitor.censor(bad)  # increments unknown: the monitor cannot see those episodes any more
        before = monitor.alarm
        try:
            monitor.update(u, live)
        except Exception as exc:  # fail closed: a monitor that cannot judge raises its alarm
            for i in np.flatnonzero(stepped):
                self._record(i, exc)
            monitor.fail()  # first: the alarm stands whatever else fails
            if (stepped & monitor.running).any():
                monitor.censor(stepped & monitor.running)
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

    def _refuse(self, ended: np.ndarray) -> tuple[Any, Any, Any, np.ndarray, dict[str, Any]]:
        """No action is executed in any sub-env; the episodes of ``ended`` end now: restarted at once where a
        protocol could not act, left ended under a standing deployment alarm with ``Stop`` (until :meth:`clear`)."""
        n = self.num_envs
        closing = self._open & ended
        if self.monitor is not None and closing.any():
            self._open &= ~ended
            self.monitor.finish(closing, censored=True)
        info = {"mesaguard": self._report(np.zeros(n), np.full(n, "protocol", dtype=object), refused=True)}
        if not (self.monitor is not None and self.monitor.alarm and self.protocol.stops):
            self._restart(self._obs, ended)
        return self._obs, np.zeros(n), np.zeros(n, dtype=bool), ended.copy(), info

    def _report(self, u: np.ndarray, acting: np.ndarray, refused: bool = False) -> dict[str, Any]:
        g = self.guard
        statistics = {name: g.statistics[i].copy() for i, name in enumerate(g.names)}
        if self.scope is not None:
            statistics[SCOPE] = self.scope.statistic.copy()
        if self.transition is not None:
            statistics[TRANSITION] = self.transition.statistic.copy()
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

    def _fire(self, i: int | np.integer[Any]) -> bool:
        try:
            self.protocol.on_alarm(self.guard.alarm_record(int(i), self._errors[i]))
        except Exception as exc:  # fail closed: an alert that failed still stops the run
            self._record(i, exc)
            return True
        return False

    def _record(self, i: int | np.integer[Any], exc: BaseException) -> None:
        self._errors[i] = with_error(self._errors[i], exc)
        self._errored[i] = True

    def _fail(self, mask: np.ndarray, exc: BaseException) -> None:
        """Latch the alarm (``"error"``) in the sub-envs of ``mask`` for ``exc``, and tell the protocol."""
        self.guard.fail(mask)
        for i in np.flatnonzero(mask):
            self._record(i, exc)
            self._fire(i)

