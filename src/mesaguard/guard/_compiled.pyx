# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The one-env guard's update, compiled: :meth:`mesaguard.guard.core.ScalarGuard.update` for the default set.

:class:`Core` holds what a :class:`~mesaguard.guard.core.ScalarGuard` holds (score, step count, alarm, the
detectors' state) and updates it with the same rule in the same floating point (built with ``-ffp-contract=off``:
no fused multiply-add, each operation in Python's order), for detectors whose scalar form has a compiled twin
here: CUSUM (``_Cusum``) and the UDT (``_MeanShift``). :mod:`mesaguard.guard.compiled` builds it from the scalar
forms and chooses it where it is built; tests hold the two equal step for step.
"""

import warnings

from libc.math cimport isfinite

from mesaguard.detectors.base import DetectorError
from mesaguard.guard.core import GuardError, nonfinite
from mesaguard.protocols import Alarm


cdef class _Form:
    """A detector's compiled scalar form: ``update(u)`` each step, ``reset()`` each episode."""

    cdef double update(self, double u):
        return 0.0

    cdef void reset(self):
        pass


cdef class _Cusum(_Form):
    """``mesaguard.detectors.cusum._ScalarCusum``, compiled."""

    cdef double[::1] mean, std
    cdef double slack, rho, gain, sum, prev, acc
    cdef Py_ssize_t last, block, t, k

    def __init__(self, double[::1] mean, double[::1] std, double slack, double rho, double gain, Py_ssize_t block):
        self.mean, self.std, self.last, self.block = mean, std, mean.shape[0] - 1, block
        self.slack, self.rho, self.gain = slack, rho, gain
        self.reset()

    cdef void reset(self):
        self.sum = self.prev = self.acc = 0.0
        self.t = self.k = 0

    cdef double update(self, double u):
        cdef Py_ssize_t i
        cdef double z, e, s
        if self.block > 1:
            self.acc += u
            self.k += 1
            if self.k < self.block:
                return self.sum
            u = self.acc
            self.acc, self.k = 0.0, 0
        i = self.t if self.t < self.last else self.last
        self.t += 1
        z = (u - self.mean[i]) / self.std[i]
        e = (z - self.rho * self.prev) * self.gain
        self.prev = z
        s = self.sum - e - self.slack
        self.sum = s if s > 0.0 else 0.0
        return self.sum


cdef class _MeanShift(_Form):
    """``mesaguard.detectors.meanshift._ScalarMeanShift``, compiled (its listed rows: every row)."""

    cdef double[:, ::1] chol
    cdef double[::1] mu, y, norm, diag, e
    cdef double num, stat, acc
    cdef Py_ssize_t T, block, t, k

    def __init__(self, double[:, ::1] chol, double[::1] mu, double[::1] y, double[::1] norm, double[::1] diag,
                 double[::1] e, Py_ssize_t block):
        self.chol, self.mu, self.y, self.norm, self.diag, self.e = chol, mu, y, norm, diag, e
        self.T, self.block = mu.shape[0], block
        self.reset()

    cdef void reset(self):
        self.num = self.stat = self.acc = 0.0
        self.t = self.k = 0

    cdef double update(self, double u):
        cdef Py_ssize_t t, j
        cdef double past, e
        if self.block > 1:
            self.acc += u
            self.k += 1
            if self.k < self.block:
                return self.stat
            u = self.acc
            self.acc, self.k = 0.0, 0
        t = self.t
        if t >= self.T:
            return self.stat
        past = 0.0  # Python's sum() of floats: left to right, from zero
        for j in range(t):
            past += self.chol[t, j] * self.e[j]
        e = (self.mu[t] - u - past) / self.diag[t]
        self.e[t] = e
        self.num += self.y[t] * e
        self.stat = self.num / self.norm[t]
        self.t = t + 1
        return self.stat


cdef class Core:
    """ScalarGuard's state and update rule over compiled detector forms (see the module docstring).

    ``forms``: the compiled forms in the guard's detector order; ``names`` and ``thresholds`` the guard's;
    ``longest``: the longest calibration episode (a warning, once, past it); ``warning`` its text.
    """

    cdef list _forms
    cdef double[::1] _thresholds, _values
    cdef Py_ssize_t _n
    cdef double _longest
    cdef str _warning
    cdef public list names, thresholds, statistics
    cdef public double score
    cdef public long steps, alarm_step
    cdef public bint alarm
    cdef public str detector

    def __init__(self, list forms, list names, list thresholds, double longest, str warning):
        self._forms, self.names, self.thresholds = forms, names, thresholds
        self._n = len(forms)
        self._thresholds = memoryview(bytearray(8 * max(self._n, 1))).cast("d")
        self._values = memoryview(bytearray(8 * max(self._n, 1))).cast("d")
        for i in range(self._n):
            self._thresholds[i] = thresholds[i]
        self._longest, self._warning = longest, warning
        self.reset()

    def reset(self):
        cdef Py_ssize_t i
        for i in range(self._n):
            (<_Form>self._forms[i]).reset()
        self.score, self.steps = 0.0, 0
        self.alarm, self.alarm_step, self.detector = False, -1, ""
        self.statistics = [0.0] * self._n

    def update(self, double u):
        """Feed one finite increment; True if the alarm fires at this step."""
        cdef Py_ssize_t i
        cdef double v, total
        cdef list stats
        if not isfinite(u):
            raise DetectorError(f"increment {u} at step {self.steps + 1} is not finite")
        self.score += u
        self.steps += 1
        if self.steps > self._longest:  # once per guard: warn, then stop checking
            warnings.warn(self._warning, stacklevel=3)
            self._longest = float("inf")
        stats = []
        total = 0.0
        for i in range(self._n):
            v = (<_Form>self._forms[i]).update(u)
            self._values[i] = v
            total += v
            stats.append(v)
        self.statistics = stats  # a new list: reports keep theirs
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

    def fail(self, str detector="error"):
        """Raise the alarm now (``"error"``: the guard itself failed)."""
        self.alarm, self.alarm_step, self.detector = True, self.steps, detector

    def alarm_record(self, error=None):
        return Alarm(0, self.alarm_step, self.detector, self.score, dict(zip(self.names, self.statistics)), error)
