# The compiled guard core (_compiled.pyx): declared here so that the compiled step (_step.pyx) can use it.

cdef class Core:
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
    cdef void _restart(self)
    cdef bint _peek_quiet(self, double u)
    cdef void _commit_quiet(self, double u)
    cdef double _peek(self, double u)
    cdef void _commit(self)


cdef double[::1] _doubles(values)
cdef long[::1] _indexes(values)
