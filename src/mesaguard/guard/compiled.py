"""The one-env guard, compiled where it can be: the choice between the compiled hot path and the Python guard.

:func:`scalar_guard` is the guard :class:`~mesaguard.guard.GuardedEnv` runs: the compiled
:class:`~mesaguard.guard._compiled.Core` (Cython, built when the package is installed on a machine with a C
compiler) where that extension is built and every detector has a compiled form (``cusum``, ``meanshift``: the
default set), else the plain-Python :class:`~mesaguard.guard.core.ScalarGuard`. :func:`plain_step` is its step:
the compiled :class:`~mesaguard.guard._step.Plain` runs the steps in which no alarm stands or fires and no error
occurs, a deployment monitor's part included (the episode's start, its evidence, its end and bet, over the
monitor's compiled data: :mod:`mesaguard.monitor.compiled`), and hands every other step to GuardedEnv's Python
code, the only code that acts (protocols, errors, alarms).
Compiled or not, every step returns the same (``tests/test_compiled_guard.py`` holds them equal, bit for bit);
what the compiled path saves is measured in ``benchmarks/guard_overhead.py``. ``MESAGUARD_PYTHON_GUARD=1`` in the
environment chooses the Python guard whatever is built.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mesaguard.calibration import Calibration
from mesaguard.detectors.cusum import _ScalarCusum
from mesaguard.detectors.meanshift import _ScalarMeanShift
from mesaguard.guard.core import ScalarGuard, past_longest
from mesaguard.monitor.compiled import OFF, compiled_ledger  # OFF=1: the Python guard and monitor, whatever is built
from mesaguard.objective import FromInfo, FromReward

try:
    from mesaguard.guard import _compiled, _step
except ImportError:  # installed without a C compiler: the Python guard serves
    _compiled = _step = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from mesaguard.guard._compiled import Core
    from mesaguard.guard._step import Plain
    from mesaguard.guard.env import GuardedEnv

__all__ = ["available", "compiled_forms", "plain_step", "scalar_guard"]


def available() -> bool:
    """Whether the compiled core is built here (and not switched off by ``MESAGUARD_PYTHON_GUARD=1``)."""
    return _compiled is not None and os.environ.get(OFF, "") != "1"


def compiled_forms(forms: Sequence[Any]) -> list[Any] | None:
    """The compiled twins of a ScalarGuard's detector forms, in order; None if one has none (or none is built)."""
    if not available():
        return None
    out: list[Any] = []
    for form in forms:
        if type(form) is _ScalarCusum:
            out.append(_compiled._Cusum(_array(form.mean), _array(form.std), form.slack, form.rho, form.gain,
                                        form.block))
        elif type(form) is _ScalarMeanShift and form.T <= form.LISTED:  # every row a listed row, as in Python
            out.append(_compiled._MeanShift(np.ascontiguousarray(form.chol, dtype=np.float64), _array(form.mu),
                                            _array(form.y), _array(form.norm), _array(form.diag), np.zeros(form.T),
                                            form.block))
        else:
            return None
    return out


def scalar_guard(
    calibration: Calibration, detectors: Sequence[str] | None = None, alpha: float | None = None
) -> ScalarGuard | Core:
    """The one-env guard for these detectors: compiled where :func:`compiled_forms` has them, else Python."""
    guard = ScalarGuard(calibration, detectors, alpha)
    forms = compiled_forms(guard.detectors)
    if forms is None:
        return guard
    longest = math.inf if calibration.lengths is None else float(calibration.lengths[1])
    return _compiled.Core(forms, list(guard.names), list(guard.thresholds), longest, past_longest(calibration))


def plain_step(env: GuardedEnv) -> Plain | None:
    """The compiled plain step of ``env`` (:class:`~mesaguard.guard._step.Plain`), or None where its steps
    must all run in Python: a Python guard, a scope or a transition scope, an objective other than the reward or
    an ``info`` key, a monitor that does not read the guard's statistics or holds the Python ledger
    (:mod:`mesaguard.monitor.compiled`)."""
    objective, monitor = env.objective, env.monitor
    if _compiled is None or not isinstance(env.guard, _compiled.Core):
        return None
    if env.scope is not None or env.transition is not None or type(objective) not in (FromReward, FromInfo):
        return None
    if monitor is not None and (monitor.statistic.shared is None or not compiled_ledger(monitor.ledger)):
        return None
    key = objective.key if isinstance(objective, FromInfo) else None
    return _step.Plain(env, env.guard, key)


def _array(values: Sequence[float]) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float64)
