# The monitor's compiled twins (_compiled.pyx): declared here so that the compiled guard step can read them.

cdef class Episode:
    cdef public long id, steps
    cdef public double u, value
    cdef public bint done, censored, counts


cdef class _Sorted:
    cdef double* data
    cdef Py_ssize_t n, cap
    cdef Py_ssize_t _right(self, double x) noexcept
    cdef Py_ssize_t _left(self, double x) noexcept
    cdef void insert(self, double x) except *
    cdef void counts(self, double x, Py_ssize_t* greater, Py_ssize_t* equal) noexcept


cdef class Ledger:
    cdef readonly str mode
    cdef readonly object shifts, horizon
    cdef readonly double log_threshold
    cdef public long first, episodes
    cdef public object last_bet
    cdef public double log_evidence
    cdef _Sorted _bag
    cdef double* _d
    cdef double* _h
    cdef double* _w
    cdef double* _b
    cdef double* _tmp
    cdef Py_ssize_t m
    cdef bint _change, _seen_set
    cdef long _horizon, _seen_id
    cdef Py_ssize_t _seen_greater, _seen_equal
    cdef double low, high
    cdef double _last_level
    cdef long _last_crossing
    cdef bint bets(self, Episode episode) noexcept
    cdef long _crossed(self, long next_id) except -2
    cdef void _bet(self, double* base, double p, double* out) noexcept
    cdef void _bases_of(self, double* log_wealth, double* out) noexcept
    cdef double _mixed(self, double* log_wealth) noexcept
    cdef long bet(self, Episode episode) except -2
    cdef bint moved(self, Episode episode) noexcept
    cdef double level_one(self, Episode episode, long next_id, long* crossing) except *
    cdef double one(self, Episode episode, long next_id, long* crossing) except *


cdef class Uniforms:
    cdef object generator, capsule
    cdef void* bitgen
    cdef double next(self) noexcept


cdef class Tally:
    cdef public long steps, finished, crossings
    cdef public bint alarm
    cdef public double log_evidence
