# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The one-env guard's hot path, compiled: ScalarGuard's update, and GuardedEnv's plain step.

:class:`Core` holds what a :class:`~mesaguard.guard.core.ScalarGuard` holds (score, step count, alarm, the
detectors' state) and updates it with the same rule in the same floating point (built with ``-ffp-contract=off``:
no fused multiply-add, each operation in Python's order), for detectors whose scalar form has a compiled twin
here: CUSUM (``_Cusum``) and the UDT (``_MeanShift``). :class:`Plain` runs a
:class:`~mesaguard.guard.GuardedEnv`'s step wherever nothing happens in it but numbers, and hands every other
step to the Python code. :mod:`mesaguard.guard.compiled` chooses them; tests hold both equal to the Python guard,
step for step.
"""

import warnings

import numpy as np

from libc.math cimport exp, isfinite

from mesaguard.monitor._compiled cimport Episode, Ledger, Tally, Uniforms

from mesaguard.detectors.base import DetectorError
from mesaguard.guard.core import GuardError, nonfinite
from mesaguard.monitor.stops import CROSSED
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


cdef class Plain:
    """A :class:`~mesaguard.guard.GuardedEnv`'s step and reset where nothing happens but numbers, compiled.

    ``Plain(owner, core, key)``: ``owner`` the GuardedEnv, ``core`` its guard (a :class:`Core`), ``key`` the
    ``info`` key its objective reads (None: the reward). Called with an action, it returns what ``owner.step``
    returns. Where the step is plain (no alarm stands or fires, no error, no warning) it steps the env, updates the
    core and the monitor's episode, ends that episode where the env ends it (its bet, the bag, the evidence) and
    writes the report here, and hands the rest to ``owner._concluded`` where more than numbers follows (the
    evidence moves into an alarm); every other step runs ``owner``'s Python code, ``owner._step(action)`` where
    that is known before the env steps, else ``owner._judged(action, "agent", out)`` with nothing changed here.
    :meth:`reset` is ``owner.reset`` (the monitor's next episode started here where none runs).

    The owner's monitor must read the guard's statistics (``reads_from``) and hold the compiled episodes and ledger
    (:mod:`mesaguard.monitor.compiled`). It takes the monitor's step as ``DeploymentMonitor.feed_scalar`` does, its
    episode's end as ``finish`` and its start as ``start`` do, reading and writing the monitor's internals (its
    episodes, generator, ledger): a change there is a change here, and the tests, which hold its steps equal to the
    Python guard's, say where. Where it hands a step over after checking it, the reward, the flags and the ``info``
    key are read a second time by the Python step.
    """

    cdef Core core
    cdef object owner, env_step, env_reset, key, monitor, statistic, episodes
    cdef list running, open
    cdef Ledger ledger
    cdef Tally tally
    cdef Uniforms uniforms
    cdef dict _report, _deployment
    cdef tuple names
    cdef Py_ssize_t k, n_stops
    cdef bint bound
    cdef double _level
    cdef long _ended
    cdef double[::1] locations, scales, stop_values
    cdef long[::1] rows, stop_rows

    def __init__(self, owner, Core core, key):
        self.owner, self.core, self.key, self.monitor = owner, core, key, owner.monitor
        self.env_step, self.env_reset = owner.env.step, owner.env.reset
        self.names = tuple(core.names)
        self._report = {  # a plain step's report: these entries, and the numbers of the step
            "score": None, "increment": None, "step": None, "statistics": None, "alarm": False, "detector": None,
            "alarm_step": None, "acting": "agent", "error": None, "refused": False,
        }
        if self.monitor is None:
            return
        self.tally, self.bound, self._ended = self.monitor, True, -1
        statistic = self.statistic = self.monitor.statistic
        shared = statistic.shared  # per detector of the monitor, its index among the guard's
        self.episodes = self.monitor._episodes
        self.running, self.open = self.episodes.running, self.episodes.open
        self.ledger, self.uniforms = self.monitor.ledger, Uniforms(self.monitor._rng)
        self.k, self.n_stops = statistic._k, len(statistic._stop_rows)
        self.locations = _doubles(statistic._locations)
        self.scales = _doubles(statistic._scales)
        self.stop_values = _doubles(statistic._stop_values)
        self.rows = _indexes(shared[: self.k])
        self.stop_rows = _indexes([shared[r] for r in statistic._stop_rows])

    def reset(self, seed, options):
        """``owner.reset``: a Python monitor start where an episode still runs (it ends censored there) or the
        monitor's rule changed; else its next episode started here, as ``Episodes.start`` does."""
        cdef Episode episode
        owner, monitor = self.owner, self.monitor
        obs, info = self.env_reset(seed=seed, options=options)
        self.core.reset()
        if monitor is not None:
            self.bound = self.bound and monitor.statistic is self.statistic  # the rule was set before this start
            if self.running[0] is not None or not self.bound:
                monitor.start()
            else:
                episodes = self.episodes
                episode = Episode(episodes.next_id)
                episodes.next_id = episode.id + 1
                self.running[0] = episode
                self.open.append(episode)
                episodes.live += 1
            owner._open = True
        owner._obs, owner._error = obs, None
        return obs, info

    def __call__(self, action):
        owner, monitor = self.owner, self.monitor
        episode = None
        if self.core.alarm or owner._error is not None:
            return owner._step(action)
        if monitor is not None:
            if self.tally.alarm or not self.bound or not owner._open:
                return owner._step(action)
            episode = self.running[0]
            if episode is None or (<Episode?>episode).censored or (<Episode>episode).value == CROSSED:
                return owner._step(action)
        out = self.env_step(action)
        done = self._plain(out, episode)
        return owner._judged(action, "agent", out) if done is None else done

    cdef object _plain(self, object out, object running):
        """The guarded step of the env's step ``out``, or None (nothing changed) where it is not plain."""
        cdef double u, x = 0.0, y
        cdef Py_ssize_t i
        cdef long crossing
        cdef bint end
        cdef Core core = self.core
        cdef Episode episode
        if type(out) is not tuple or len(out) != 5:
            return None
        obs, reward, terminated, truncated, info = out
        if not isinstance(info, dict):
            return None
        try:
            end = bool(terminated or truncated)
            u = float(reward)
            if self.key is not None:
                u = float(info[self.key])
        except Exception:  # the Python step meets it again and fails closed there
            return None
        if not core._peek_quiet(u):
            return None
        if running is not None:
            x = (core._values[self.rows[0]] - self.locations[0]) / self.scales[0]
            for i in range(1, self.k):  # the largest standardized statistic, as Python's max() takes it
                y = (core._values[self.rows[i]] - self.locations[i]) / self.scales[i]
                if y > x:
                    x = y
            if not isfinite(x):
                return None
            for i in range(self.n_stops):
                if core._values[self.stop_rows[i]] > self.stop_values[i]:
                    return None
        # From here the step is taken: the monitor's part as its _stepped takes it, its episode's end as finish
        # takes it, and the Python tail wherever more happens than numbers (the evidence moves into an alarm).
        core._commit_quiet(u)
        owner = self.owner
        owner._obs = obs
        if running is not None:
            tally, ledger, episode = self.tally, self.ledger, <Episode>running
            tally.steps += 1
            if episode.steps == 0:  # its smoothing uniform, drawn at its first step
                episode.u = self.uniforms.next()
            episode.steps += 1
            if x > episode.value:
                episode.value = x
                if len(self.open) == 1 and ledger.bets(episode):  # the level of one pending episode, as refresh()
                    x = ledger.level_one(episode, self.episodes.next_id, &crossing)
                    if crossing >= 0:  # the evidence moves into an alarm: Python's refresh, from the ledger's cache
                        return owner._concluded(out, u, owner._refreshed(), "agent")
                    tally.log_evidence = x
                else:
                    stop = owner._refreshed()
                    if stop or tally.alarm or owner._error is not None:
                        return owner._concluded(out, u, stop, "agent")
            if end:
                if len(self.open) != 1:  # (one env: never)
                    return owner._concluded(out, u, False, "agent")
                self._finish(episode)
                if tally.alarm or owner._error is not None:
                    return owner._concluded(out, u, False, "agent")
        return obs, reward, terminated, truncated if end and truncated else False, self._info(info, u)

    cdef void _finish(self, Episode episode) except *:
        """``owner._finish(censored=False)`` at the end of the only open episode, ``episode``, as the monitor's
        ``finish`` takes it: its end, its bet, the bag, the evidence (a monitor that cannot: an error, the alarm)."""
        cdef long crossing
        cdef Tally tally = self.tally
        owner, monitor, ledger = self.owner, self.monitor, self.ledger
        owner._open = False
        try:
            self.running[0] = None
            self.episodes.live -= 1
            episode.done = True
            tally.finished += 1
            self.open.pop(0)
            crossing = ledger.bet(episode)
            if crossing >= 0 and not tally.alarm:
                monitor._fire(crossing)
            tally.log_evidence = ledger.log_evidence  # refresh(): the level of no pending episode
            if ledger.log_evidence >= ledger.log_threshold and not tally.alarm:
                monitor._fire(ledger._crossed(self.episodes.next_id))
        except Exception as exc:  # fail closed: a monitor that cannot judge raises its alarm
            owner._record(exc)
            monitor.fail()

    cdef dict _info(self, object info, double u):
        """``info`` with the report of a plain step (GuardedEnv._report's), from templates of what does not change."""
        cdef Core core = self.core
        cdef double x
        cdef dict report = self._report.copy()
        stats = core.statistics
        report["score"] = core.score
        report["increment"] = u
        report["step"] = core.steps
        report["statistics"] = {self.names[i]: stats[i] for i in range(len(self.names))}
        cdef Tally tally = self.tally
        monitor = self.monitor
        if monitor is not None:
            x = tally.log_evidence
            if x != self._level or tally.finished != self._ended:  # the template's numbers moved
                self._level, self._ended = x, tally.finished
                self._deployment = {
                    "evidence": exp(690.0 if 690.0 < x else x),
                    "threshold": monitor._threshold,
                    "alarm": False,
                    "episodes": tally.finished,
                    "steps": None,
                    "mode": monitor._mode_label,
                }
            deployment = self._deployment.copy()
            deployment["steps"] = tally.steps
            report["deployment"] = deployment
        info = dict(info)
        info["mesaguard"] = report
        return info


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
