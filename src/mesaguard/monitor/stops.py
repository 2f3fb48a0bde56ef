"""Episodes stopped by the per-episode alarm are evidence: the key each episode is ranked by.

A guard whose protocol cuts an episode short at its per-episode alarm (``Stop``, or a
``Fallback`` that takes over) hides the rest of that episode, and so its statistic.
Ranked as censored, such episodes only lower the evidence, and a shift that makes
many episodes alarm is the one the monitor would then miss. The monitor ranks each
episode by its **key** instead:

``key(E) = CROSSED`` if the per-episode alarm fires at some step of ``E``, else the
episode's statistic ``x(E)``,

with ``CROSSED`` above every finite statistic. The alarm rule (``stops``: detector
names and their thresholds, the guard's, fixed before the test) fires when a
detector's statistic passes its threshold at some step, which depends on the steps
up to that one only; so:

1. ``key`` is a function of the whole episode, the one it would have been had it run
   to its end, and it is *known exactly* from any prefix that reaches the alarm, in
   particular from an episode stopped or taken over there;
2. the reference episodes' keys are the same function of what the calibration
   stores: the alarm fires in an episode iff some detector's per-episode maximum
   passes its threshold (:func:`reference_keys`).

**Guarantee.** Applied to exchangeable episodes, one fixed function gives
exchangeable keys, so their sequential conformal p-values
(:mod:`~mesaguard.monitor.pvalues`, ties among the ``CROSSED`` keys broken by the
smoothing uniforms) are exactly i.i.d. uniform under the null, and every mode's
guarantee stands unchanged, Ville's inequality in anytime mode included. Nothing is
censored any more for the stopped episodes: they enter later bags at ``CROSSED``,
not at ``+inf``. Before its alarm an episode's key is at least its running maximum
(either ``x(E)`` or ``CROSSED``), so mid-episode bets remain lower bounds.

**Power.** A stopped episode ties with the reference episodes that passed the
thresholds (about ``alpha n`` of ``n``) and the earlier stopped ones: its p-value is
uniform over that top share of the bag, where ranked as censored it was at its top.
Episodes whose key stays a statistic lose nothing: the stopped episodes above them
count above them either way. Episodes cut short for another reason (the env's own
truncation ends an episode, which is then complete; a reset mid-episode, an error,
a fallback after a deployment alarm) stay censored as before.

>>> cal = Calibration.fit([np.full(3, v) for v in np.linspace(0, 1, 80)], alpha=0.1, detectors=["threshold"])
>>> keys = reference_keys(cal, ["threshold"], cal.thresholds_for(["threshold"]))
>>> int((keys == CROSSED).sum()), bool(keys[keys < CROSSED].max() <= cal.joint_maxima(["threshold"]).max())
(3, True)
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from mesaguard.calibration import Calibration, statistic_traces
from mesaguard.monitor.errors import MonitorError

__all__ = ["CROSSED", "check_stops", "cuts_short", "key_traces", "reference_keys"]

CROSSED: float = sys.float_info.max
"""The key of an episode in which the per-episode alarm fired: above every finite statistic, below ``+inf``
(the bound the monitor ranks an episode still running or censored before its alarm at)."""


def check_stops(calibration: Calibration, stops: Mapping[str, float] | None) -> dict[str, float]:
    """The per-episode alarm rule as ``{detector: threshold}`` (empty: none), checked against the calibration."""
    if stops is None:
        return {}
    if not isinstance(stops, Mapping):
        raise MonitorError(f"stops={stops!r}; expected a mapping from detector name to threshold (a guard's)")
    out = {}
    for name, threshold in stops.items():
        if name not in calibration.detectors:
            raise MonitorError(
                f"stops names detector {name!r}, not in this calibration (it has {sorted(calibration.detectors)})"
            )
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) or not (
            math.isfinite(float(threshold))
        ):
            raise MonitorError(f"stops[{name!r}]={threshold!r}; expected a finite threshold")
        out[str(name)] = float(threshold)
    return out


def reference_keys(calibration: Calibration, names: Sequence[str], stops: Mapping[str, float] | None) -> np.ndarray:
    """The reference episodes' keys: :data:`CROSSED` where the alarm rule fired, else the joint maximum of ``names``."""
    joint = np.asarray(calibration.joint_maxima(names), dtype=np.float64)
    rule = check_stops(calibration, stops)
    if not rule:
        return joint
    crossed = np.zeros(joint.shape, dtype=bool)
    for name, threshold in rule.items():
        crossed |= np.asarray(calibration.detectors[name].maxima, dtype=np.float64) > threshold
    return np.where(crossed, CROSSED, joint)


def key_traces(
    calibration: Calibration,
    stops: Mapping[str, float] | None,
    episodes: Sequence[np.ndarray],
    statistics: Sequence[np.ndarray],
) -> list[np.ndarray]:
    """Per episode, the per-step statistic with :data:`CROSSED` from the step the alarm rule fires on.

    Its running maximum is what the online monitor ranks the episode by at each step,
    and its maximum the episode's key: what the offline twins
    (:func:`~mesaguard.monitor.first_deployment_alarm`) take for ``statistics``.
    """
    rule = check_stops(calibration, stops)
    out = [np.asarray(x, dtype=np.float64) for x in statistics]
    if not rule or not episodes:
        return out
    crossed: np.ndarray | None = None
    for name, threshold in rule.items():
        fired = statistic_traces(calibration.detectors[name].build(), episodes) > threshold  # NaN after the end: False
        crossed = fired if crossed is None else crossed | fired
    assert crossed is not None
    crossed = np.logical_or.accumulate(crossed, axis=1)
    return [np.where(c[: x.size], CROSSED, x) for c, x in zip(crossed, out)]


def cuts_short(protocol: object) -> bool:
    """Whether a (composed) protocol ends or takes over an episode at its alarm: it stops, or a part acts.

    >>> from mesaguard.protocols import Alert, Fallback, Stop
    >>> cuts_short(Alert(print)), cuts_short(Alert(print) + Stop()), cuts_short(Fallback(lambda obs: 0))
    (False, True, True)
    """
    from mesaguard.protocols import Protocol

    parts = getattr(protocol, "parts", [protocol])
    return any(getattr(p, "stops", False) or type(p).act is not Protocol.act for p in parts)
