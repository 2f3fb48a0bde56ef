# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The monitor's data, compiled: its episodes, its ledger, and the smoothing uniforms, bit for bit the Python ones.

:class:`Episode` is :class:`mesaguard.monitor.episodes.Episode` with C fields; :class:`Ledger` is
:class:`mesaguard.monitor.ledger.Ledger` with its bag and per-shift wealth in C arrays and its arithmetic in
Python's floating point (built with ``-ffp-contract=off``, each operation in Python's order, sums left to right
from zero as ``sum()`` takes them on 3.11, the normal scores from SciPy's own ``ndtri``); :class:`Uniforms` draws
from a NumPy ``Generator`` what its ``random()`` draws, from its bit generator's C interface. A
:class:`~mesaguard.monitor.DeploymentMonitor` made where this module is built holds the compiled twins
(:mod:`mesaguard.monitor.compiled` chooses) and keeps its counters in a :class:`Tally`, so the compiled guard step
(:mod:`mesaguard.guard.compiled`) reads and writes them without Python in between; ``tests/test_compiled_monitor.py``
holds them equal to the Python ones.
"""

from cpython.pycapsule cimport PyCapsule_GetName, PyCapsule_GetPointer
from libc.float cimport DBL_MAX
from libc.math cimport INFINITY, exp, log, log1p
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

from mesaguard.monitor.ledger import losing_pvalues

cdef double CROSSED = DBL_MAX  # mesaguard.monitor.stops.CROSSED (sys.float_info.max)

ctypedef double (*_unary)(double, int) noexcept nogil
cdef _unary _ndtri = NULL
_NDTRI = b"double (double, int __pyx_skip_dispatch)"  # the C signature SciPy exports ndtri under


def _load_ndtri():
    """SciPy's own ``ndtri`` (what ``scipy.special.ndtri`` computes), from ``cython_special``'s C interface."""
    global _ndtri
    from scipy.special import cython_special

    capsule = cython_special.__pyx_capi__["ndtri"]
    if PyCapsule_GetName(capsule) != _NDTRI:
        raise ImportError(f"scipy.special.cython_special exports ndtri as {PyCapsule_GetName(capsule)!r}")
    _ndtri = <_unary>PyCapsule_GetPointer(capsule, PyCapsule_GetName(capsule))


_load_ndtri()


cdef class Episode:
    """:class:`mesaguard.monitor.episodes.Episode`, compiled: the same fields, defaults and ``in_bag``."""

    def __init__(self, long id, double u=0.0, double value=-INFINITY, long steps=0, bint done=False,
                 bint censored=False, bint counts=True):
        self.id, self.u, self.value, self.steps = id, u, value, steps
        self.done, self.censored, self.counts = done, censored, counts

    @property
    def in_bag(self):
        """What later episodes are ranked against: the key, or +inf while unknown."""
        return _in_bag(self)

    def _fields(self):
        return self.id, self.u, self.value, self.steps, self.done, self.censored, self.counts

    def __reduce__(self):
        return Episode, self._fields()

    def __eq__(self, other):
        return type(other) is Episode and self._fields() == other._fields()

    __hash__ = None  # as a dataclass's: equal by value, so not hashable

    def __repr__(self):
        return ("Episode(id={}, u={!r}, value={!r}, steps={}, done={}, censored={}, counts={})"
                .format(*self._fields()))


cdef inline double _in_bag(Episode e) noexcept:
    if e.done and (not e.censored or e.value == CROSSED):  # a crossed key is exact, stopped or not
        return e.value
    return INFINITY


cdef inline double _pvalue(Py_ssize_t greater, Py_ssize_t equal, Py_ssize_t size, double u) noexcept:
    """mesaguard.monitor.pvalues._pvalue."""
    cdef double p = (<double>greater + u * (<double>equal + 1.0)) / (<double>size + 1.0)
    return 1e-300 if 1e-300 > p else p


cdef class _Sorted:
    """A sorted array of doubles: ``insert`` as ``bisect.insort``, ``counts`` as ``pvalues._counts``."""

    def __cinit__(self):
        self.n, self.cap = 0, 16
        self.data = <double*>malloc(self.cap * sizeof(double))
        if self.data == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.data)

    cdef Py_ssize_t _right(self, double x) noexcept:  # bisect.bisect_right
        cdef Py_ssize_t lo = 0, hi = self.n, mid
        while lo < hi:
            mid = (lo + hi) // 2
            if x < self.data[mid]:
                hi = mid
            else:
                lo = mid + 1
        return lo

    cdef Py_ssize_t _left(self, double x) noexcept:  # bisect.bisect_left
        cdef Py_ssize_t lo = 0, hi = self.n, mid
        while lo < hi:
            mid = (lo + hi) // 2
            if self.data[mid] < x:
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef void insert(self, double x) except *:
        cdef Py_ssize_t i = self._right(x)
        cdef double* grown
        if self.n == self.cap:
            grown = <double*>realloc(self.data, 2 * self.cap * sizeof(double))
            if grown == NULL:
                raise MemoryError()
            self.data, self.cap = grown, 2 * self.cap
        memmove(self.data + i + 1, self.data + i, (self.n - i) * sizeof(double))
        self.data[i] = x
        self.n += 1

    cdef void counts(self, double x, Py_ssize_t* greater, Py_ssize_t* equal) noexcept:
        cdef Py_ssize_t right = self._right(x)
        greater[0] = self.n - right
        equal[0] = right - self._left(x)

    def tolist(self):
        return [self.data[i] for i in range(self.n)]


cdef double* _alloc(Py_ssize_t m) except NULL:
    cdef double* out = <double*>malloc(max(m, 1) * sizeof(double))
    if out == NULL:
        raise MemoryError()
    return out


cdef class Ledger:
    """:class:`mesaguard.monitor.ledger.Ledger`, compiled: the same constructor, methods and numbers."""

    def __cinit__(self, str mode, shifts, double log_threshold, horizon, reference):
        self.m = len(shifts)
        self._d, self._h, self._w = _alloc(self.m), _alloc(self.m), _alloc(self.m)
        self._b, self._tmp = _alloc(self.m), _alloc(self.m)

    def __init__(self, str mode, shifts, double log_threshold, horizon, reference):
        cdef Py_ssize_t i
        self.mode, self.shifts, self.log_threshold, self.horizon = mode, shifts, log_threshold, horizon
        self._horizon = -1 if horizon is None else horizon
        self._change = mode == "change"
        for i, d in enumerate(shifts.tolist()):
            self._d[i] = d
            self._h[i] = self._d[i] * self._d[i] / 2
        self.low, self.high = losing_pvalues(shifts.tolist(), self._change)
        self._bag = _Sorted()
        for r in sorted(float(r) for r in reference):
            self._bag.insert(r)
        self.new_test(0)

    def __dealloc__(self):
        free(self._d)
        free(self._h)
        free(self._w)
        free(self._b)
        free(self._tmp)

    def __reduce__(self):  # its parameters and bag, then the test's state
        return Ledger, (self.mode, self.shifts, self.log_threshold, self.horizon, self.bag), (
            self.first, self.log_wealth, self.last_bet, self.episodes, self.log_evidence)

    def __setstate__(self, state):
        cdef Py_ssize_t i
        self.first, log_wealth, self.last_bet, self.episodes, self.log_evidence = state
        for i in range(self.m):
            self._w[i] = log_wealth[i]
        self._bases_of(self._w, self._b)

    # -- what the Python ledger shows ------------------------------------------

    @property
    def bag(self):
        return self._bag.tolist()

    @property
    def log_wealth(self):
        return [self._w[i] for i in range(self.m)]

    @property
    def _base(self):
        return [self._b[i] for i in range(self.m)]

    @property
    def _losing(self):
        return self.low, self.high

    @property
    def _seen(self):
        return (self._seen_id, self._seen_greater, self._seen_equal) if self._seen_set else None

    def new_test(self, long first):
        """Start a test whose first episode has id ``first``: wealth reset, the bag kept."""
        cdef Py_ssize_t i
        self.first = first
        for i in range(self.m):
            self._w[i] = -INFINITY if self._change else 0.0
        self.last_bet = None
        self.episodes = 0
        self.log_evidence = self._mixed(self._w)
        self._seen_set = False
        self._bases_of(self._w, self._b)

    def bets_on(self, Episode episode):
        return self.bets(episode)

    def _after(self, base, double p):
        cdef Py_ssize_t i
        for i in range(self.m):
            self._tmp[i] = base[i]
        self._bet(self._tmp, p, self._tmp)
        return [self._tmp[i] for i in range(self.m)]

    def commit(self, Episode episode):
        """Bet on a finished episode whose predecessors are all committed, then bag its key; the episode's number
        if this bet takes the evidence to the threshold, else None."""
        cdef long crossing = self.bet(episode)
        return None if crossing < 0 else crossing

    def level(self, list pending, long next_id):
        """The largest evidence provable now, and the number of the first episode at which it reaches the
        threshold (None if it does not); one pending episode whose p-value has not moved: the last answer."""
        cdef long crossing
        cdef double level
        cdef Episode episode
        if len(pending) == 1:
            episode = pending[0]
            if episode.steps and self.bets(episode):
                level = self.level_one(episode, next_id, &crossing)
                return level, None if crossing < 0 else crossing
        return self._level(pending, next_id)

    def _level(self, list pending, long next_id):
        cdef double best = self.log_evidence, level, p
        cdef long crossing = -1
        cdef Py_ssize_t greater, equal, more, tied
        cdef Episode episode
        cdef _Sorted bagged = _Sorted()  # what the earlier pending episodes add to a later one's bag
        cdef double* base = _alloc(self.m)
        cdef double* log_wealth = _alloc(self.m)
        try:
            memcpy(base, self._b, self.m * sizeof(double))
            if best >= self.log_threshold:
                crossing = self._crossed(next_id)
            for episode in pending:
                if self.bets(episode):
                    if episode.steps == 0:  # it may be replaced and never bet on, so neither may later ones
                        break
                    self._bag.counts(episode.value, &greater, &equal)
                    bagged.counts(episode.value, &more, &tied)
                    p = _pvalue(greater + more, equal + tied, self._bag.n + bagged.n, episode.u)
                    self._bet(base, p, log_wealth)
                    self._bases_of(log_wealth, base)
                    level = self._mixed(log_wealth)
                    if crossing < 0 and level >= self.log_threshold:
                        crossing = episode.id + 1
                    best = level if level > best else best
                bagged.insert(_in_bag(episode))
        finally:
            free(base)
            free(log_wealth)
        return best, None if crossing < 0 else crossing

    # -- the arithmetic, in C ----------------------------------------------------

    cdef bint bets(self, Episode episode) noexcept:
        return episode.counts and (self._horizon < 0 or episode.id - self.first < self._horizon)

    cdef long _crossed(self, long next_id) except -2:
        return next_id if self.last_bet is None else <long>self.last_bet + 1

    cdef void _bet(self, double* base, double p, double* out) noexcept:
        """Per shift, the log-evidence after betting on ``p`` from ``base`` (``Ledger._after``)."""
        cdef Py_ssize_t i
        cdef double z = -_ndtri(p, 0)
        for i in range(self.m):
            out[i] = base[i] + self._d[i] * z

    cdef void _bases_of(self, double* log_wealth, double* out) noexcept:
        """``Ledger._bases``."""
        cdef Py_ssize_t i
        cdef double w
        for i in range(self.m):
            w = log_wealth[i]
            if self._change:
                w = (w + log1p(exp(-w))) if w > 0 else log1p(exp(w))
            out[i] = w - self._h[i]

    cdef double _mixed(self, double* log_wealth) noexcept:
        """``ledger._log_mean``: the mixture's log-evidence."""
        cdef Py_ssize_t i
        cdef double top = log_wealth[0], total = 0.0
        for i in range(1, self.m):
            if log_wealth[i] > top:
                top = log_wealth[i]
        if top == -INFINITY:
            return top
        for i in range(self.m):
            total += exp(log_wealth[i] - top)
        return top + log(total / self.m)

    cdef long bet(self, Episode episode) except -2:
        """``Ledger.commit``: the crossing episode's number, or -1."""
        cdef long crossing = -1
        cdef Py_ssize_t greater, equal
        if self.bets(episode):
            self._bag.counts(episode.value, &greater, &equal)
            self._bet(self._b, _pvalue(greater, equal, self._bag.n, episode.u), self._w)
            self._bases_of(self._w, self._b)
            self.last_bet = episode.id
            self.episodes += 1
            self.log_evidence = self._mixed(self._w)
            if self.log_evidence >= self.log_threshold:
                crossing = episode.id + 1
        self._bag.insert(_in_bag(episode))
        self._seen_set = False
        return crossing

    cdef bint moved(self, Episode episode) noexcept:
        """Whether the one pending ``episode``'s counts in the bag differ from those of the last level: its p-value
        moved (``Ledger.level``'s cache)."""
        cdef Py_ssize_t greater, equal
        self._bag.counts(episode.value, &greater, &equal)
        return not (self._seen_set and self._seen_id == episode.id and self._seen_greater == greater
                    and self._seen_equal == equal)

    cdef double level_one(self, Episode episode, long next_id, long* crossing) except *:
        """:meth:`level` of one pending ``episode`` that has stepped and is bet on (the caller checks): the level,
        its crossing in ``crossing`` (-1: none); the last answer where its p-value has not moved."""
        if self.moved(episode):
            self._last_level = self.one(episode, next_id, &self._last_crossing)
        crossing[0] = self._last_crossing
        return self._last_level

    cdef double one(self, Episode episode, long next_id, long* crossing) except *:
        """``Ledger._one`` for the one pending ``episode`` (its counts remembered as the cache's); the level, its
        crossing in ``crossing`` (-1: none)."""
        cdef Py_ssize_t greater, equal
        cdef double best = self.log_evidence, p, level
        self._bag.counts(episode.value, &greater, &equal)
        self._seen_set, self._seen_id, self._seen_greater, self._seen_equal = True, episode.id, greater, equal
        crossing[0] = self._crossed(next_id) if best >= self.log_threshold else -1
        p = _pvalue(greater, equal, self._bag.n, episode.u)
        if self.low <= p <= self.high:  # a bet on it now loses on every shift: the evidence already proven
            return best
        self._bet(self._b, p, self._tmp)
        level = self._mixed(self._tmp)
        if crossing[0] < 0 and level >= self.log_threshold:
            crossing[0] = episode.id + 1
        return level if level > best else best


cdef class Tally:
    """:class:`mesaguard.monitor.compiled.Tally` (a :class:`~mesaguard.monitor.DeploymentMonitor`'s steps, finished
    episodes, crossings, alarm and evidence) in C fields: the monitor's base class where this module is built."""


ctypedef struct bitgen_t:  # numpy/random/bitgen.h: NumPy's public C interface to a bit generator
    void *state
    uint64_t (*next_uint64)(void *st) noexcept nogil
    uint32_t (*next_uint32)(void *st) noexcept nogil
    double (*next_double)(void *st) noexcept nogil
    uint64_t (*next_raw)(void *st) noexcept nogil


cdef class Uniforms:
    """The doubles ``generator.random()`` draws, drawn from ``generator``'s bit generator in C (the same state
    advanced the same way: ``Generator.random`` is ``next_double``). Without its lock: the monitor's generator is
    its own."""

    def __init__(self, generator):
        self.generator = generator
        self.capsule = generator.bit_generator.capsule
        self.bitgen = PyCapsule_GetPointer(self.capsule, "BitGenerator")

    cdef double next(self) noexcept:
        cdef bitgen_t* bitgen = <bitgen_t*>self.bitgen
        return bitgen.next_double(bitgen.state)

    def random(self):
        return self.next()
