"""Offline replay: where a guard would have raised its first alarm on recorded increments.

Under the ``Stop`` protocol a seeded run of a deterministic policy is exactly the
unguarded run up to and including the alarm step (:func:`mesaguard.metrics.under_stop`;
``tests/test_bench.py`` holds the replay equal to real :class:`~mesaguard.guard.GuardedEnv`
runs), so the bench rolls each episode out once, unguarded, and finds every
detector configuration's alarm here, at any alpha the calibration allows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mesaguard.calibration import Calibration, statistic_traces

__all__ = ["first_alarms"]


def first_alarms(
    calibration: Calibration,
    names: Sequence[str],
    episodes: Sequence[np.ndarray],
    alpha: float | None = None,
    traces: dict[str, np.ndarray] | None = None,
) -> list[tuple[int, str] | None]:
    """Where a guard running ``names`` (jointly calibrated at ``alpha``) would raise its alarm.

    For each episode of increments: ``(step, detector)``, the first 1-based step at
    which a statistic passes its threshold and the first detector (in ``names``
    order) over it there, as :class:`~mesaguard.guard.Guard` decides; None if no
    alarm. ``traces`` caches :func:`statistic_traces` per detector name.
    """
    thresholds = calibration.thresholds_for(list(names), alpha)
    traces = {} if traces is None else traces
    for n in names:
        if n not in traces:
            traces[n] = statistic_traces(calibration.detectors[n].build(), episodes)
    with np.errstate(invalid="ignore"):
        over = np.stack([traces[n] > thresholds[n] for n in names])  # (detectors, episodes, T); NaN is False
    fired = over.any(axis=0)
    out: list[tuple[int, str] | None] = []
    for i in range(fired.shape[0]):
        if not fired[i].any():
            out.append(None)
            continue
        t = int(np.argmax(fired[i]))
        out.append((t + 1, names[int(np.argmax(over[:, i, t]))]))
    return out
