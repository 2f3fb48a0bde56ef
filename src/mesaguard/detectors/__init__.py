"""Streaming detectors, vectorized over ``(n_envs,)``; each statistic: larger = more alarming.

Every registered detector, and those a calibration fits by default:

>>> sorted(DETECTORS)
['cusum', 'envelope', 'meanshift', 'pdt', 'rank', 'threshold']
>>> DEFAULT
('cusum', 'meanshift')
"""

from __future__ import annotations

from collections.abc import Sequence

from mesaguard.detectors.base import Detector, DetectorError
from mesaguard.detectors.cusum import Cusum
from mesaguard.detectors.envelope import ScoreEnvelope
from mesaguard.detectors.meanshift import MeanShift
from mesaguard.detectors.pdt import PartialDegradation
from mesaguard.detectors.rank import ScoreRank
from mesaguard.detectors.threshold import ScoreThreshold

__all__ = [
    "DEFAULT",
    "DETECTORS",
    "Cusum",
    "Detector",
    "DetectorError",
    "MeanShift",
    "PartialDegradation",
    "ScoreRank",
    "ScoreEnvelope",
    "ScoreThreshold",
    "detector_class",
    "detector_names",
]

DETECTORS: dict[str, type[Detector]] = {
    cls.name: cls for cls in (ScoreThreshold, ScoreEnvelope, Cusum, MeanShift, PartialDegradation, ScoreRank)
}

DEFAULT: tuple[str, ...] = ("cusum", "meanshift")  # what a calibration fits unless told


def detector_class(name: str) -> type[Detector]:
    """The detector class registered as ``name``; an unknown name lists the valid ones."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise DetectorError(f"unknown detector {name!r}; expected one of {sorted(DETECTORS)}") from None


def detector_names(detectors: Sequence[str] | str, error: type[ValueError] = DetectorError) -> list[str]:
    """``detectors`` as a list of registered names, checked: a string (not a list of names) or a name given twice is
    ``error``; an unknown name, a :class:`DetectorError` listing the valid ones.

    >>> detector_names("cusum")  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    mesaguard.detectors.base.DetectorError: detectors='cusum': expected a list of one or more detector names,
    e.g. ['cusum']
    """
    if isinstance(detectors, str):
        raise error(f"detectors={detectors!r}: expected a list of one or more detector names, e.g. [{detectors!r}]")
    names = list(detectors)
    if len(set(names)) < len(names):
        raise error(f"detectors={names!r}: a detector is named twice")
    for name in names:
        detector_class(name)
    return names
