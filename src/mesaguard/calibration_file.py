"""Reading a calibration file: every value checked for what it means, named with its file and field.

A received file is hostile until checked (DESIGN.md, fail closed): :func:`read_calibration`
turns a file's JSON object, its header already verified (:mod:`mesaguard.artifacts`), into a
:class:`~mesaguard.calibration.Calibration` or a
:class:`~mesaguard.calibration.CalibrationError` naming the file, the field, the value and
what was expected. :func:`read_conformal` and :func:`read_threshold` serve the scope file too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from mesaguard.artifacts import Fields, unpack_arrays
from mesaguard.calibration import (
    MATCHES,
    Calibration,
    CalibrationError,
    DetectorCalibration,
    conformal_rank,
    false_alarm_spread,
    min_episodes,
)
from mesaguard.detectors import DetectorError

__all__ = ["SPREADS", "read_calibration", "read_conformal", "read_threshold"]


def read_calibration(data: dict[str, Any], source: str, arrays: Mapping[str, np.ndarray]) -> Calibration:
    """The calibration in ``data``, whose header is checked, every value checked (see :meth:`from_dict`);
    ``arrays`` are its sidecar's, each referenced exactly once."""
    f = Fields(data, source, CalibrationError)
    alpha, n_cal, rank = read_conformal(f)
    n_fit = f.integer("n_fit", minimum=1)
    shape = f.shape("obs_shape", optional=True, scalar=True)
    metadata = f.get("metadata") if "metadata" in data else {}
    if not isinstance(metadata, dict):
        f.fail("metadata", metadata, "a JSON object")
    entries = f.object("detectors")
    if not entries.data:
        f.fail("detectors", {}, "one or more calibrated detectors (a calibration without any never raises an alarm)")
    detectors: dict[str, DetectorCalibration] = {}
    used: set[str] = set()
    for name in entries.data:
        d = entries.object(name)
        threshold, maxima = read_threshold(d, alpha, n_cal, rank)
        raw = d.object("params")
        params = {key: unpack_arrays(raw, key, arrays, used) for key in raw.data}
        _check_params(d, "params", params)
        cal = DetectorCalibration(name, params, threshold, d.number("location"), d.number("scale", positive=True),
                                  maxima, _read_crossfit(d))
        try:
            cal.build()  # unknown names and malformed parameters fail here, on load
        except (DetectorError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{source}: field {d.where('params')}: {exc}") from None
        detectors[name] = cal
    if set(arrays) != used:
        raise CalibrationError(
            f"{source}: its arrays file holds {sorted(set(arrays) - used)}, which no field references; "
            f"expected only the arrays of its detectors' parameters"
        )
    objective = f.get("objective") if "objective" in data else None
    if objective is not None and not (isinstance(objective, str) and objective):
        f.fail("objective", objective, "the name of a base objective, or null")
    lengths = f.get("lengths") if "lengths" in data else None
    if lengths is not None:
        ok = isinstance(lengths, list) and len(lengths) == 2 and all(type(n) is int and n >= 1 for n in lengths)
        if not ok or lengths[0] > lengths[1]:
            f.fail("lengths", lengths, "[shortest, longest] episode lengths, positive integers, or null")
        _check_blocks(entries, detectors, lengths[1])
    match = _read_match(f, entries, detectors)
    return Calibration(
        scenario=f.text("scenario"),
        obs_shape=shape,
        alpha=alpha,
        n_fit=n_fit,
        n_cal=n_cal,
        detectors=detectors,
        metadata=metadata,
        objective=objective,
        lengths=None if lengths is None else (lengths[0], lengths[1]),
        match=match,
    )


def _check_blocks(entries: Fields, detectors: Mapping[str, DetectorCalibration], longest: int) -> None:
    """A block test's blocks (CUSUM, mean-shift, PDT) were cut from the fitting episodes, none longer than
    ``longest`` steps: a block fits in them, and the ``B`` blocks of its reference start within them, ``block <=
    longest`` and ``block * (B - 1) < longest`` (a block so long that the test never completes one never fires)."""
    for name, d in detectors.items():
        block, mu = d.params.get("block"), d.params.get("mu", d.params.get("mean"))
        if not isinstance(block, int) or mu is None:  # mu: a list, or an array from the sidecar
            continue
        if block > longest or block * (len(mu) - 1) >= longest:
            entries.object(name).object("params").fail(
                "block", block, f"a block of steps whose {len(mu)} blocks start within the longest calibration "
                f"episode ({longest} steps): block <= {longest} and block * {len(mu) - 1} < {longest}")


def _read_crossfit(d: Fields) -> list[float] | None:
    """A detector's cross-fitted maxima, if the file has them (schema 3): finite numbers, ascending."""
    if "crossfit" not in d.data:
        return None
    crossfit = d.numbers("crossfit")
    if not crossfit or crossfit != sorted(crossfit):
        d.fail("crossfit", crossfit, "the cross-fitted maxima of the fitting split: finite numbers, ascending")
    return crossfit


def _read_match(f: Fields, entries: Fields, detectors: Mapping[str, DetectorCalibration]) -> str:
    """The joint rule: one of :data:`~mesaguard.calibration.MATCHES` (files of schema 1 and 2: ``"linear"``, the
    only rule they had); ``"quantiles"`` needs every detector's cross-fitted maxima."""
    match = f.get("match") if "match" in f.data else "linear"
    if match not in MATCHES:
        f.fail("match", match, f"one of {', '.join(map(repr, MATCHES))}")
    for name, d in detectors.items():
        if match == "quantiles" and d.crossfit is None:
            entries.object(name).fail("crossfit", None, "the cross-fitted maxima, which match='quantiles' needs")
    return str(match)


def read_conformal(f: Fields) -> tuple[float, int, int]:
    """``alpha``, ``n_cal`` and ``rank`` of a calibration or scope file, checked: ``alpha`` in (0, 1), ``n_cal``
    enough for it, and ``rank`` and the ``false_alarm`` spread the ones they give (to 1e-9, across SciPy versions)."""
    alpha = f.number("alpha", lo=0.0, hi=1.0)
    n_cal = f.integer("n_cal", minimum=min_episodes(alpha), because=f" (the fewest for alpha={alpha})")
    rank = conformal_rank(n_cal, alpha)
    if f.get("rank") != rank:
        f.fail("rank", f.get("rank"), f"{rank}, the conformal rank of n_cal={n_cal} at alpha={alpha}")
    spread = f.object("false_alarm")
    for key, value in false_alarm_spread(n_cal, rank).items():
        stored = spread.number(key)
        if not math.isclose(stored, value, rel_tol=1e-9, abs_tol=1e-12):
            spread.fail(key, stored, f"{value!r}, from the Beta law of the false-alarm rate at n_cal and alpha")
    return alpha, n_cal, rank


def read_threshold(f: Fields, alpha: float, n_cal: int, rank: int) -> tuple[float, list[float]]:
    """``threshold`` and ``maxima`` of a file, checked: ``n_cal`` finite maxima, and the threshold their
    conformal quantile (the ``rank``-th smallest), recomputed and compared exactly."""
    maxima = f.numbers("maxima", length=n_cal, because=" (n_cal, the held-out episodes)")
    threshold = f.number("threshold")
    expected = sorted(maxima)[rank - 1]
    if threshold != expected:
        f.fail("threshold", threshold,
               f"{expected!r}, the {rank}-th smallest of the {n_cal} stored maxima (alpha={alpha})")
    return threshold, maxima


SPREADS = frozenset({"std", "sd", "sigma", "scale"})  # parameter names whose every number is a spread: > 0


def _check_params(f: Fields, key: str | int, value: Any, spread: bool = False) -> None:
    """Detector parameters are JSON objects, lists, finite numbers, and strings that are not numbers;
    every number under a name in :data:`SPREADS` is > 0."""
    if isinstance(value, dict):
        inner = Fields(value, f.source, f.error, f.where(key))
        for k, v in value.items():
            _check_params(inner, k, v, k in SPREADS)
    elif isinstance(value, np.ndarray):
        if spread and not (value > 0).all():  # from the sidecar: float64 and finite (unpack_arrays)
            i = int(np.argmin(value > 0))
            Fields({}, f.source, f.error, f.where(key)).fail(i, float(value.flat[i]), "a spread, a number > 0")
    elif isinstance(value, list):
        numbers = all(type(v) is float or type(v) is int for v in value)
        if numbers and not (spread and any(v <= 0 for v in value)):
            return  # finite: the header refuses NaN and infinities anywhere in the file
        inner = Fields({}, f.source, f.error, f.where(key))
        for i, v in enumerate(value):
            _check_params(inner, i, v, spread)
    elif spread and (type(value) is float or type(value) is int) and value <= 0:
        f.fail(key, value, "a spread, a number > 0")
    elif isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return
        f.fail(key, value, "a JSON number, not a number written as a string")
    elif value is not None and not isinstance(value, (bool, int, float)):
        f.fail(key, value, "a JSON value")
