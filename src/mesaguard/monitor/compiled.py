"""The monitor's data compiled, where it is built: the classes a new :class:`~mesaguard.monitor.DeploymentMonitor`
holds its episodes and ledger in, and its base class, which holds its counters.

:mod:`mesaguard.monitor._compiled` (Cython, built with the package where a C compiler is found, as the guard's
core: :mod:`mesaguard.guard.compiled`) has twins of :class:`~mesaguard.monitor.episodes.Episode` and
:class:`~mesaguard.monitor.ledger.Ledger`: the same constructors, methods and numbers, bit for bit
(``tests/test_compiled_monitor.py``), their state in C, which lets the compiled guard step run a monitored
episode, its bets included, without Python in between. A monitor made where they are built holds them; else, or
with ``MESAGUARD_PYTHON_GUARD=1`` in the environment (which switches the guard's core off too), the Python
classes.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mesaguard.monitor.episodes import Episode
from mesaguard.monitor.ledger import Ledger

try:
    from mesaguard.monitor import _compiled
except ImportError:  # installed without a C compiler: the Python classes serve
    _compiled = None  # type: ignore[assignment]

__all__ = ["OFF", "Tally", "built", "compiled_ledger", "twins"]

OFF = "MESAGUARD_PYTHON_GUARD"  # set to 1: the Python guard and monitor, whatever is built


class Tally:
    """The base of :class:`~mesaguard.monitor.DeploymentMonitor`: its counters, alarm and evidence (set in its
    ``__init__``). Where the extension is built, its twin with C fields (whatever ``MESAGUARD_PYTHON_GUARD`` says:
    they store the same values), which the compiled guard step reads and writes without Python."""

    steps: int  # env steps seen since the monitor was made
    finished: int  # episodes finished since the monitor was made
    crossings: int  # episodes in which the per-episode alarm (``stops``) fired: ranked as evidence
    alarm: bool
    log_evidence: float  # of this test, mid-episode lower bounds included


if _compiled is not None and not TYPE_CHECKING:
    Tally = _compiled.Tally  # noqa: F811


def built() -> bool:
    """Whether the compiled twins are built here (and not switched off by ``MESAGUARD_PYTHON_GUARD=1``)."""
    return _compiled is not None and os.environ.get(OFF, "") != "1"


def twins() -> tuple[type[Episode], type[Ledger]]:
    """The episode and ledger classes of a new monitor: the compiled twins where :func:`built`, else Python's."""
    if built():
        return _compiled.Episode, _compiled.Ledger  # type: ignore[return-value]
    return Episode, Ledger


def compiled_ledger(ledger: object) -> bool:
    """Whether ``ledger`` (a monitor's) is the compiled twin: what the compiled guard step needs."""
    return _compiled is not None and isinstance(ledger, _compiled.Ledger)
