"""The guard's array core: increments in, per-detector statistics and alarms out (no Gymnasium).

:class:`Guard` adds up increments into the score so far ``S_t`` over ``n_envs``
running episodes, runs the calibrated detectors and raises the alarm in an env when
a statistic passes its threshold (the calibration's joint thresholds: P(any fires
on an in-distribution episode) <= alpha). :class:`ScalarGuard` is the same rule
in plain floats for one env, the hot path of :class:`~mesaguard.guard.GuardedEnv`.

Fail closed: a statistic, threshold or score that is not a finite number is an
internal error (:class:`GuardError`), never a silent "no alarm"; the wrappers turn
it into the alarm with detector ``"error"``.

This module also holds what both wrappers share: the constructor checks
(:func:`check_setup`) and the checked action of a protocol that takes over
(:func:`protocol_action`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mesaguard.calibration import Calibration, CalibrationError
from mesaguard.detectors import detector_names
from mesaguard.detectors.base import DetectorError, as_increments
from mesaguard.objective import Objective, Transition, make_objective
from mesaguard.protocols import Alarm, Protocol, ProtocolError

if TYPE_CHECKING:  # scikit-learn loads with the scope, not with every guard
    from mesaguard.monitor import DeploymentMonitor
    from mesaguard.scope import Scope
    from mesaguard.transition_scope import TransitionScope

__all__ = [
    "DEPLOYMENT",
    "ERROR",
    "SCOPE",
    "TRANSITION",
    "Guard",
    "GuardError",
    "ScalarGuard",
    "check_setup",
    "guard_objective",
    "nonfinite",
    "protocol_action",
    "with_error",
]

ERROR = "error"  # the detector name of an alarm raised because the guard itself failed
DEPLOYMENT = "deployment"  # the detector name of a deployment monitor's alarm
SCOPE = "scope"  # the detector name of a scope alarm: the state the agent is about to act in is out of scope
TRANSITION = "transition"  # the detector name of a transition scope alarm: the world moved unlike the learned model


class GuardError(DetectorError):
    """A number inside a running guard that is not finite (statistic, score), or an env that broke the API."""


def with_error(previous: str | None, exc: BaseException) -> str:
    """The errors recorded so far in an episode, with ``exc`` added."""
    message = f"{type(exc).__name__}: {exc}"
    return message if previous is None else f"{previous}; {message}"


def check_setup(
    calibration: Calibration,
    obs_shape: tuple[int, ...] | None,
    n_envs: int,
    scenario: str | None = None,
    monitor: DeploymentMonitor | None = None,
    scope: Scope | None = None,
    transition_scope: TransitionScope | None = None,
    action_space: Any = None,
) -> None:
    """The checks both wrappers make before guarding: calibration, scopes and monitor fit this env."""
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration={calibration!r}: expected a Calibration (Calibration.load(path) reads a file)")
    calibration.check(scenario=scenario, obs_shape=obs_shape)
    if scope is not None:
        scope.check(scenario=scenario, obs_shape=obs_shape)
    if transition_scope is not None:
        transition_scope.check(scenario=scenario, obs_shape=obs_shape, action_space=action_space)
    if monitor is not None and monitor.n_envs != n_envs:
        raise ValueError(f"monitor watches {monitor.n_envs} envs; this env needs a monitor with n_envs={n_envs}")


def guard_objective(
    calibration: Calibration,
    objective: str | Objective | Callable[[Transition], float] | None,
    allow_other_objective: bool = False,
) -> Objective:
    """The objective a guard computes: the one its calibration was fitted on, checked.

    With ``objective=None`` the guard computes the calibration's recorded objective
    (``"reward"`` where none is recorded); a recorded callable must be passed again.
    Another objective than the recorded one is an error (increments of one objective
    against thresholds of another never mean what they say) unless
    ``allow_other_objective=True``.

    >>> import numpy as np
    >>> cal = Calibration.fit([np.full(5, 1.0) + 0.1 * i for i in range(40)], alpha=0.1, objective="info:margin")
    >>> guard_objective(cal, None).name
    'info:margin'
    >>> guard_objective(cal, "reward")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    mesaguard.calibration.CalibrationError: calibration was fitted on the objective 'info:margin'; this guard
    computes 'reward'. Pass objective='info:margin', or allow_other_objective=True to use 'reward' anyway
    """
    recorded = calibration.objective
    if objective is None:
        if recorded is None or recorded == "reward" or recorded.startswith("info:"):
            return make_objective(recorded)
        raise CalibrationError(
            f"calibration was fitted on the objective {recorded!r}, a function of the transition; pass it again "
            f"as objective=..."
        )
    chosen = make_objective(objective)
    if recorded is not None and chosen.name != recorded and not allow_other_objective:
        raise CalibrationError(
            f"calibration was fitted on the objective {recorded!r}; this guard computes {chosen.name!r}. "
            f"Pass objective={recorded!r}, or allow_other_objective=True to use {chosen.name!r} anyway"
        )
    return chosen


def nonfinite(steps: int, score: float, names: Sequence[str], statistics: Sequence[float]) -> str:
    """The message naming the values of a one-env guard that are not finite at ``steps``; empty if all are."""
    values = {"score": score, **dict(zip(names, statistics))}
    bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
    return f"not finite at step {steps}: {bad}" if bad else ""


def past_longest(calibration: Calibration) -> str:
    """The warning given once when an episode runs past the longest calibration episode."""
    longest = "an unrecorded length" if calibration.lengths is None else f"{calibration.lengths[1]} steps"
    return (
        f"an episode ran past the longest calibration episode ({longest}): past it every detector reuses its last "
        f"step's reference, and the false-alarm guarantee covers episodes like the calibration's; calibrate on "
        f"episodes as long as the deployment's"
    )


def protocol_action(protocol: Protocol, obs: Any, space: Any) -> Any | None:
    """The protocol's action for ``obs`` after an alarm, checked against the action ``space``; None: it leaves it.

    A protocol that is meant to act and cannot (it raises, returns ``None`` from a
    fallback, or an action outside the space) raises: the guard then fails closed
    and executes nothing.

    >>> import gymnasium as gym
    >>> from mesaguard.protocols import Fallback
    >>> protocol_action(Fallback(lambda obs: 1), None, gym.spaces.Discrete(2))
    1
    >>> protocol_action(Fallback(lambda obs: (1, None)), None, gym.spaces.Discrete(2))
    Traceback (most recent call last):
    ...
    mesaguard.protocols.ProtocolError: the protocol's action (1, None) is not in the action space Discrete(2)
    """
    action = protocol.act(obs)
    if action is None:
        return None
    try:
        candidate = np.asarray(action, dtype=space.dtype) if _is_box(space) else action
        inside = bool(space.contains(candidate))
    except Exception:  # an action of the wrong kind altogether (a tuple for an array, a string)
        inside = False
    if not inside:
        raise ProtocolError(f"the protocol's action {action!r} is not in the action space {space}")
    return candidate


def _is_box(space: Any) -> bool:
    return type(space).__name__ == "Box" and getattr(space, "dtype", None) is not None


def _calibrated(
    calibration: Calibration, detectors: Sequence[str] | None, alpha: float | None
) -> tuple[list[str], list[float]]:
    """Detector names (default: all calibrated) and their thresholds, jointly calibrated at alpha."""
    names = list(calibration.detectors) if detectors is None else detector_names(detectors, GuardError)
    if not names:  # no increment detector: a guard for its scope or deployment monitor alone
        return [], []
    thresholds = calibration.thresholds_for(names, alpha)  # P(any fires) <= alpha
    values = [thresholds[n] for n in names]
    for name, value in zip(names, values):
        if not math.isfinite(value):
            raise GuardError(f"threshold of detector {name!r} is {value}; a guard needs finite thresholds")
    return names, values


class ScalarGuard:
    """The one-env guard in plain Python floats: the hot path of :class:`GuardedEnv`.

    Same verdicts as :class:`Guard` with ``n_envs=1`` (tests hold them equal), at a
    fraction of the cost: one NumPy call costs about a microsecond, a float op a
    few tens of nanoseconds.
    """

    def __init__(self, calibration: Calibration, detectors: Sequence[str] | None = None, alpha: float | None = None):
        self.names, self.thresholds = _calibrated(calibration, detectors, alpha)
        self.detectors = [calibration.detectors[n].build(1).scalar() for n in self.names]
        self._updates = [det.update for det in self.detectors]
        self._checks = list(zip(self.thresholds, self.names))
        self._calibration = calibration
        self._longest = math.inf if calibration.lengths is None else calibration.lengths[1]
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
        if self.steps > self._longest:  # once per guard: warn, then stop checking
            warnings.warn(past_longest(self._calibration), stacklevel=4)
            self._longest = math.inf
        self.statistics = stats = [update(u) for update in self._updates]  # a new list: reports keep theirs
        if not math.isfinite(self.score + sum(stats)):  # one cheap check on the hot path
            message = nonfinite(self.steps, self.score, self.names, stats)
            if message:  # finite values whose sum overflowed: fine
                raise GuardError(message)
        if not self.alarm:
            for value, (threshold, name) in zip(stats, self._checks):
                if value > threshold:
                    self.fail(name)
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
        self._longest = math.inf if calibration.lengths is None else calibration.lengths[1]
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
        self.broken: np.ndarray | None = None  # envs whose last update gave a statistic or score that is not finite

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Start new episodes in the envs of ``mask`` (all if None)."""
        m: slice | np.ndarray = slice(None) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
        for det in self.detectors:
            det.reset(mask)
        self.score[m] = 0.0
        self.steps[m] = 0
        self.alarm[m] = False
        self.alarm_step[m] = -1
        self.detector[m] = ""
        self.statistics[:, m] = 0.0

    def update(self, u: np.ndarray, live: np.ndarray | None = None) -> np.ndarray:
        """Feed one increment per env; return the envs whose alarm fires now.

        An env whose score or statistic stops being finite is failed with detector
        ``"error"`` (listed in :attr:`broken` for this step) and returned with the rest.

        Envs outside ``live`` had no step (a sub-env being reset, a failed
        objective): their score, step count and alarm do not move; callers reset
        or have already failed them.
        """
        if live is not None:  # the envs that did not step may hold anything (NaN): they never reach a detector
            u = np.where(live, u, 0.0)
        u = as_increments(u, self.n_envs)  # checked once here, so each detector's raw update can run
        for i, det in enumerate(self.detectors):
            self.statistics[i] = det._update(u)
        self.score += u
        self.steps += 1 if live is None else live
        if self.steps.max() > self._longest:  # once per guard: warn, then stop checking
            warnings.warn(past_longest(self.calibration), stacklevel=4)
            self._longest = math.inf
        over = self.statistics > self._column_thresholds
        new = over.any(axis=0) & ~self.alarm
        if live is not None:
            new &= live
        self.broken = None
        fresh = None
        # One cheap check on the hot path: every value finite leaves both sums finite (a sum that overflows
        # from finite values only costs the per-env check below).
        if math.isfinite(float(self.statistics.sum()) + float(self.score.sum())):
            broken = None
        else:
            broken = ~np.isfinite(self.score) | ~np.isfinite(self.statistics).all(axis=0)
            if live is not None:
                broken &= live
        if broken is not None and broken.any():  # fail closed: a statistic or score not a number is an error
            self.broken, fresh = broken, broken & ~self.alarm
            self.fail(fresh)
            new &= ~broken
        if new.any():
            self.fail(new, first=np.argmax(over, axis=0))
        return new if fresh is None else new | fresh

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

