"""The guard: base objective + calibrated detectors + protocol around an env.

Split the way Gymnasium splits its wrappers: :mod:`~mesaguard.guard.core` is the
array core (:class:`Guard`, and :class:`ScalarGuard` its one-env hot path, compiled
where it can be by :mod:`~mesaguard.guard.compiled`; no
Gymnasium), :mod:`~mesaguard.guard.env` wraps one env (:class:`GuardedEnv`) and
:mod:`~mesaguard.guard.vector` a vector env (:class:`GuardedVectorEnv`, with
:mod:`~mesaguard.guard.autoreset` for its sub-envs' own step around autoreset). Both
wrappers report in ``info["mesaguard"]``:

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
    ``Stop``, or a protocol that had to act and could not, executes no action
    (nothing happened in the env; the step ends the episode);
``deployment``
    with a :class:`~mesaguard.monitor.DeploymentMonitor` (``monitor=``): its
    ``evidence``, ``threshold``, ``alarm``, ``episodes`` and ``steps`` seen, and ``mode``.

With a :class:`~mesaguard.scope.Scope` (``scope=``), every observation the
agent is about to act on (after reset and after each step) is checked *before* it
acts; out of scope, the alarm fires with detector ``"scope"``, and the protocol
takes that action (``Fallback``) or the episode ends before it (``Stop``: the step
that returned the observation reports ``truncated``; a first observation out of
scope makes the next step a refused one). ``statistics["scope"]`` is its statistic.

With a :class:`~mesaguard.transition_scope.TransitionScope` (``transition_scope=``),
every transition (previous observation, executed action, new observation) is scored
after the step by the learned model's one-step error; over its threshold the alarm
fires with detector ``"transition"`` and the protocol acts as for the scope. A model
that raises or predicts NaN fails closed (detector ``"error"``). The step that starts
a new episode has no transition. ``statistics["transition"]`` is its statistic.

A deployment alarm goes to the same protocol (detector ``"deployment"``) and
stands across episodes until ``clear()``: under ``Stop`` every later step is
refused, under ``Fallback`` the fallback acts in every later episode. An episode
the protocol took over or cut short is censored for the monitor.

The guard fails closed. Any internal error (a NaN increment, a statistic or score
that is not finite, a missing objective channel, an env whose ``info`` is not a
dict, a failing alert callback, a monitor used out of order) latches the alarm with
detector ``"error"`` and records the error; a protocol that has to act and cannot
(a fallback that raises, returns ``None`` or an action outside the action space)
executes nothing and ends the episode.
"""

from mesaguard.guard.core import DEPLOYMENT, ERROR, SCOPE, TRANSITION, Guard, GuardError, ScalarGuard
from mesaguard.guard.env import GuardedEnv
from mesaguard.guard.vector import GuardedVectorEnv

__all__ = [
    "DEPLOYMENT",
    "ERROR",
    "SCOPE",
    "TRANSITION",
    "Guard",
    "GuardError",
    "GuardedEnv",
    "GuardedVectorEnv",
    "ScalarGuard",
]
