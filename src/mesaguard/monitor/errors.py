"""The monitor's one error: bad input or use, named with the value and what was expected.

>>> raise MonitorError("mode='nope'; expected one of anytime, fixed, change")
Traceback (most recent call last):
...
mesaguard.monitor.MonitorError: mode='nope'; expected one of anytime, fixed, change
"""

from __future__ import annotations

__all__ = ["MonitorError"]


class MonitorError(ValueError):
    """Bad monitor input or use: a bad mode, horizon or ARL, a call outside an episode, a non-finite statistic."""


MonitorError.__module__ = "mesaguard.monitor"  # tracebacks name it where users import it from
