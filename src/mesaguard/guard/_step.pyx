# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""GuardedEnv's plain step, compiled: every step in which nothing happens but numbers, a monitored episode whole.

:class:`Plain` runs a :class:`~mesaguard.guard.GuardedEnv`'s step and reset over the compiled guard core
(``_compiled.pyx``) and the monitor's compiled data (:mod:`mesaguard.monitor.compiled`) wherever nothing happens
in it but numbers, and hands every other step to the Python code. :mod:`mesaguard.guard.compiled` chooses it;
tests hold it equal to the Python guard, step for step.
"""

from libc.math cimport exp, isfinite

from mesaguard.guard._compiled cimport Core, _doubles, _indexes
from mesaguard.monitor._compiled cimport Episode, Ledger, Tally, Uniforms

from mesaguard.monitor.stops import CROSSED


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
