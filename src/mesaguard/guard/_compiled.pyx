# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The one-env guard's core, compiled: ScalarGuard's update.

:class:`Core` holds what a :class:`~mesaguard.guard.core.ScalarGuard` holds (score, step count, alarm, the
detectors' state) and updates it with the same rule in the same floating point (built with ``-ffp-contract=off``:
no fused multiply-add, each operation in Python's order), for detectors whose scalar form has a compiled twin
here: CUSUM (``_Cusum``) and the UDT (``_MeanShift``). GuardedEnv's compiled step (``_step.pyx``) runs on it.
:mod:`mesaguard.guard.compiled` chooses them; tests hold both equal to the Python guard, step for step.
"""

import warnings

import numpy as np

from libc.math cimport isfinite

from mesaguard.detectors.base import DetectorError
from mesaguard.guard.core import GuardError, nonfinite
from mesaguard.protocols import Alarm


cdef class _Form:
    """A detector's compiled scalar form: ``peek(u)`` the statistic after ``u`` (its new state held aside),
    ``commit()`` that state; ``reset()`` each episode. Increments enter in blocks of ``block`` steps, as the
    Python forms take them (:meth:`_completes`)."""

    cdef double acc, n_acc, n_u
    cdef Py_ssize_t block, k, n_k

    cdef double peek(self, double u):
        return 0.0

    cdef void commit(self):
        pass

    cdef void reset(self):
        pass

    cdef bint _completes(self, double u):
        """Add ``u`` to the block (held aside with the rest of the new state); True if it completes the block,
        whose sum (``u`` itself for blocks of one step) is then ``n_u``."""
        self.n_acc, self.n_k = self.acc, self.k
        if self.block <= 1:
            self.n_u = u
            return True
        self.n_acc += u
        self.n_k += 1
        if self.n_k < self.block:
            return False
        self.n_u = self.n_acc
        self.n_acc, self.n_k = 0.0, 0
        return True


cdef class _Cusum(_Form):
    """``mesaguard.detectors.cusum._ScalarCusum``, compiled."""

    cdef double[::1] mean, std
    cdef double slack, rho, gain, sum, prev, n_sum, n_prev
    cdef Py_ssize_t last, t, n_t

    def __init__(self, double[::1] mean, double[::1] std, double slack, double rho, double gain, Py_ssize_t block):
        self.mean, self.std, self.last, self.block = mean, std, mean.shape[0] - 1, block
        self.slack, self.rho, self.gain = slack, rho, gain
        self.reset()

    cdef void reset(self):
        self.sum = self.prev = self.acc = 0.0
        self.t = self.k = 0

    def __reduce__(self):  # pickled and copied as the Python form is: parameters, then the episode's state
        return _Cusum, (_array(self.mean), _array(self.std), self.slack, self.rho, self.gain, self.block), (
            self.sum, self.prev, self.acc, self.t, self.k)

    def __setstate__(self, state):
        self.sum, self.prev, self.acc, self.t, self.k = state

    cdef double peek(self, double u):
        cdef Py_ssize_t i
        cdef double z, e, s
        self.n_sum, self.n_prev, self.n_t = self.sum, self.prev, self.t
        if not self._completes(u):
            return self.n_sum
        u = self.n_u
        i = self.t if self.t < self.last else self.last
        self.n_t = self.t + 1
        z = (u - self.mean[i]) / self.std[i]
        e = (z - self.rho * self.prev) * self.gain
        self.n_prev = z
        s = self.sum - e - self.slack
        self.n_sum = s if s > 0.0 else 0.0
        return self.n_sum

    cdef void commit(self):
        self.sum, self.prev, self.t, self.acc, self.k = self.n_sum, self.n_prev, self.n_t, self.n_acc, self.n_k


cdef class _MeanShift(_Form):
    """``mesaguard.detectors.meanshift._ScalarMeanShift``, compiled (its listed rows: every row)."""

    cdef double[:, ::1] chol
    cdef double[::1] mu, y, norm, diag, e
    cdef double num, stat, n_num, n_stat, n_e
    cdef Py_ssize_t T, t, n_t

    def __init__(self, double[:, ::1] chol, double[::1] mu, double[::1] y, double[::1] norm, double[::1] diag,
                 double[::1] e, Py_ssize_t block):
        self.chol, self.mu, self.y, self.norm, self.diag, self.e = chol, mu, y, norm, diag, e
        self.T, self.block = mu.shape[0], block
        self.reset()

    cdef void reset(self):
        self.num = self.stat = self.acc = 0.0
        self.t = self.k = 0

    def __reduce__(self):
        return _MeanShift, (_array(self.chol), _array(self.mu), _array(self.y), _array(self.norm), _array(self.diag),
                            _array(self.e), self.block), (self.num, self.stat, self.acc, self.t, self.k)

    def __setstate__(self, state):
        self.num, self.stat, self.acc, self.t, self.k = state

    cdef double peek(self, double u):
        cdef Py_ssize_t t, j
        cdef double past
        self.n_num, self.n_stat, self.n_t = self.num, self.stat, self.t
        if not self._completes(u):
            return self.n_stat
        u = self.n_u
        t = self.t
        if t >= self.T:
            return self.n_stat
        past = 0.0  # Python's sum() of floats: left to right, from zero
        for j in range(t):
            past += self.chol[t, j] * self.e[j]
        self.n_e = (self.mu[t] - u - past) / self.diag[t]
        self.n_num = self.num + self.y[t] * self.n_e
        self.n_stat = self.n_num / self.norm[t]
        self.n_t = t + 1
        return self.n_stat

    cdef void commit(self):
        if self.n_t > self.t:  # a row was written
            self.e[self.t] = self.n_e
        self.num, self.stat, self.t, self.acc, self.k = self.n_num, self.n_stat, self.n_t, self.n_acc, self.n_k


cdef class Core:
    """ScalarGuard's state and update rule over compiled detector forms (see the module docstring).

    ``forms``: the compiled forms in the guard's detector order; ``names`` and ``thresholds`` the guard's;
    ``longest``: the longest calibration episode (a warning, once, past it); ``warning`` its text.
    """

    def __init__(self, list forms, list names, list thresholds, double longest, str warning):
        self._forms, self.names, self.thresholds = forms, names, thresholds
        self._n = len(forms)
        self._thresholds, self._values = _doubles(thresholds), _doubles([0.0] * self._n)
        self._longest, self._warning = longest, warning
        self._restart()  # the forms come as they are: fresh, or restored with their episode's state (__reduce__)

    def reset(self):
        cdef Py_ssize_t i
        for i in range(self._n):
            (<_Form>self._forms[i]).reset()
        self._restart()

    cdef void _restart(self):
        self.score, self.steps = 0.0, 0
        self.alarm, self.alarm_step, self.detector = False, -1, ""
        self.statistics = [0.0] * self._n

    def update(self, double u):
        """Feed one finite increment; True if the alarm fires at this step."""
        cdef Py_ssize_t i
        cdef double total
        if not isfinite(u):
            raise DetectorError(f"increment {u} at step {self.steps + 1} is not finite")
        self.score += u
        self.steps += 1
        if self.steps > self._longest:  # once per guard: warn, then stop checking
            warnings.warn(self._warning, stacklevel=3)
            self._longest = float("inf")
        total = self._peek(u)
        self._commit()
        if not isfinite(self.score + total):
            message = nonfinite(self.steps, self.score, self.names, self.statistics)
            if message:  # finite values whose sum overflowed: fine
                raise GuardError(message)
        if not self.alarm:
            for i in range(self._n):
                if self._values[i] > self._thresholds[i]:
                    self.fail(self.names[i])
                    return True
        return False

    cdef bint _peek_quiet(self, double u):
        """Whether :meth:`update` would change nothing but the numbers (a finite increment, no warning, finite
        statistics, no alarm standing or firing), the statistics in ``_values``; nothing committed."""
        cdef Py_ssize_t i
        if self.alarm or not isfinite(u) or self.steps + 1 > self._longest:
            return False
        if not isfinite(self.score + u + self._peek(u)):
            return False
        for i in range(self._n):
            if self._values[i] > self._thresholds[i]:
                return False
        return True

    cdef void _commit_quiet(self, double u):
        """:meth:`update` after :meth:`_peek_quiet` said it is quiet."""
        self.score += u
        self.steps += 1
        self._commit()

    cdef double _peek(self, double u):
        """Each detector's statistic after ``u`` into ``_values`` (nothing committed); their sum."""
        cdef Py_ssize_t i
        cdef double v, total = 0.0
        for i in range(self._n):
            v = (<_Form>self._forms[i]).peek(u)
            self._values[i] = v
            total += v
        return total

    cdef void _commit(self):
        cdef Py_ssize_t i
        cdef list stats = []
        for i in range(self._n):
            (<_Form>self._forms[i]).commit()
            stats.append(self._values[i])
        self.statistics = stats  # a new list: reports keep theirs

    def __reduce__(self):
        return Core, (self._forms, self.names, self.thresholds, self._longest, self._warning), (
            self.score, self.steps, self.alarm, self.alarm_step, self.detector, self.statistics)

    def __setstate__(self, state):
        self.score, self.steps, self.alarm, self.alarm_step, self.detector, self.statistics = state

    def fail(self, str detector="error"):
        """Raise the alarm now (``"error"``: the guard itself failed)."""
        self.alarm, self.alarm_step, self.detector = True, self.steps, detector

    def alarm_record(self, error=None):
        return Alarm(0, self.alarm_step, self.detector, self.score, dict(zip(self.names, self.statistics)), error)


def _array(values):
    """A copy of a memoryview's numbers as a NumPy array (what pickling and copying a compiled form carry)."""
    return np.array(values, dtype=np.float64)


cdef double[::1] _doubles(values):
    cdef double[::1] out = memoryview(bytearray(8 * max(len(values), 1))).cast("d")
    for i, v in enumerate(values):
        out[i] = v
    return out


cdef long[::1] _indexes(values):
    cdef long[::1] out = memoryview(bytearray(8 * max(len(values), 1))).cast("l")
    for i, v in enumerate(values):
        out[i] = v
    return out
