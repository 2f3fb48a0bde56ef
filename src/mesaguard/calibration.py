"""Calibration: one conformal rule for every detector, saved as versioned JSON.

Design-time rollouts of the agent on in-distribution episodes held out from
training are split in two. The first part fits each detector's reference
parameters (means, spreads, covariances). On the second part, each detector is run
over every episode and the episode's maximum statistic kept; the threshold is the
conformal quantile, the ``ceil((n + 1)(1 - alpha))``-th smallest of those ``n``
maxima. A new in-distribution episode, exchangeable with the calibration ones,
then raises a false alarm (its maximum exceeds the threshold) with probability at
most ``alpha``, whatever the detector. Conditional on the calibration set, the
realized false-alarm rate is ``Beta(n + 1 - k, k)`` distributed (``k`` the rank):
the file records that spread, so a user picks ``n`` for a tolerance too.

Files: :meth:`Calibration.save` writes JSON with the header every artifact shares
(:mod:`mesaguard.artifacts`: format, schema version, content hash, and an Ed25519
signature with ``signing_key=``); :meth:`Calibration.load` checks the header, the
signature when given ``verify_key=``, and every value for what it means
(:meth:`Calibration.from_dict`), and names the file, the field and the value.

>>> rng = np.random.default_rng(0)
>>> episodes = [rng.normal(1.0, 0.5, size=20) for _ in range(200)]
>>> cal = Calibration.fit(episodes, alpha=0.05, scenario="demo")
>>> cal.rank, cal.n_cal
(96, 100)
>>> round(cal.false_alarm["mean"], 4)
0.0495
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesaguard.artifacts import (
    Fields,
    Kind,
    VerifyKeys,
    pack_arrays,
    read_sidecar,
    write_sidecar,
)
from mesaguard.conformal import (
    CalibrationError,
    ConformalThreshold,
    check_alpha,
    conformal_rank,
    episodes_for_tolerance,
    episodes_needed,
    false_alarm_spread,
    fit_split,
    min_episodes,
)
from mesaguard.detectors import DEFAULT, Detector, detector_class, detector_names
from mesaguard.detectors.base import check_episodes
from mesaguard.files import read_json, write_atomic
from mesaguard.matching import (
    DEFAULT_MATCH,
    MATCHES,
    check_match,
    map_level,
    map_value,
    tail_level,
    tail_map,
    tail_scale,
)
from mesaguard.maxima import crossfit_maxima, episode_maxima, statistic_traces
from mesaguard.objective import Objective, Transition, make_objective

__all__ = [
    "MATCHES",  # re-exported from mesaguard.matching: the file reader and the CLI name the rules from here
    "SCHEMA_VERSION",
    "Calibration",
    "CalibrationError",
    "check_alpha",
    "DetectorCalibration",
    "conformal_rank",
    "episode_maxima",
    "episodes_for_tolerance",
    "episodes_needed",
    "fit_split",
    "false_alarm_spread",
    "min_episodes",
    "statistic_traces",
]

SCHEMA_VERSION = 3  # 3: the joint rule (match) and cross-fitted maxima; 2: arrays in a sidecar; 1 and 2 still read
FORMAT = "mesaguard.calibration"
SIDECAR_MIN = 1024  # numbers in one parameter array from which :meth:`Calibration.save` puts it in the sidecar
MAX_SIDECAR_BYTES = 1 << 31  # a sidecar larger than this is refused before it is read


KIND = Kind("calibration", FORMAT, SCHEMA_VERSION, CalibrationError,
            "Fit it again with this version (mesaguard calibrate).", older=frozenset({1, 2}))


@dataclass(frozen=True)
class DetectorCalibration:
    """One detector's fitted parameters, its per-episode maxima and its threshold alone.

    ``location`` and ``scale`` put detectors on one scale under ``match="linear"``, the
    default, and the deployment monitor's joint statistic whatever the rule (see
    :meth:`Calibration.thresholds_for`): the median of the detector's per-episode maxima
    and the distance from it to their :func:`~mesaguard.matching.tail_level` quantile
    (``1 - alpha``, the detector's own), so that each reads 1 where it alone would be
    thresholded; ``crossfit`` (the cross-fitted maxima themselves, see below) does under
    ``match="quantiles"`` (:func:`tail_map`). ``benchmarks/joint_default.py`` measures both. The maxima are
    cross-fitted on the fitting split (in ten folds, each fold's maxima taken under
    parameters fitted on the other nine: :func:`~mesaguard.maxima.crossfit_maxima`),
    so a detector that fits its own data closely does not look calmer than it will
    be, nor one fitted on fewer episodes wilder; and they are fixed before the
    held-out split is seen, which keeps the conformal guarantee exact.
    """

    name: str
    params: dict[str, Any] = field(repr=False)  # arrays of the reference: long, left out of the repr
    threshold: float
    location: float
    scale: float
    maxima: list[float] = field(repr=False)
    crossfit: list[float] | None = field(default=None, repr=False)  # the fitting split's, ascending (see above)

    def build(self, n_envs: int = 1) -> Detector:
        return detector_class(self.name)(**self.params, n_envs=n_envs)

    def __eq__(self, other: object) -> bool:
        """Same fields; a parameter read from the sidecar (a read-only array) equals the list it was saved from."""
        if not isinstance(other, DetectorCalibration):
            return NotImplemented
        mine, theirs = (self.name, self.threshold, self.location, self.scale, self.maxima, self.crossfit), (
            other.name, other.threshold, other.location, other.scale, other.maxima, other.crossfit)
        return mine == theirs and _same(self.params, other.params)

    def standardized(self) -> np.ndarray:
        return (np.asarray(self.maxima) - self.location) / self.scale


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@dataclass(frozen=True)
class Calibration(ConformalThreshold):
    """Thresholds at ``alpha`` for a set of detectors, fitted on in-distribution episodes."""

    scenario: str
    obs_shape: tuple[int, ...] | None
    alpha: float
    n_fit: int
    n_cal: int
    detectors: dict[str, DetectorCalibration]
    metadata: dict[str, Any] = field(default_factory=dict)
    objective: str | None = None  # the base objective the increments came from (its name), if the fit was told
    lengths: tuple[int, int] | None = None  # the shortest and longest calibration episode, in steps
    match: str = "linear"  # how detectors run together are put on one scale (MATCHES; files before schema 3: linear)

    def __repr__(self) -> str:
        """One line: what it was fitted on and for, never its arrays."""
        return (
            f"Calibration(scenario={self.scenario!r}, objective={self.objective!r}, alpha={self.alpha}, "
            f"n_fit={self.n_fit}, n_cal={self.n_cal}, detectors={list(self.detectors)}, lengths={self.lengths}, "
            f"match={self.match!r})"
        )

    @classmethod
    def fit(
        cls,
        episodes: Sequence[np.ndarray],
        *,
        alpha: float = 0.05,
        detectors: Sequence[str] | None = None,
        scenario: str = "",
        obs_shape: Sequence[int] | None = None,
        fit_fraction: float = 0.5,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        objective: str | Objective | Callable[[Transition], float] | None = None,
        on_detector: Callable[[str], None] | None = None,
        match: str = DEFAULT_MATCH,
    ) -> Calibration:
        """Fit every detector on the first ``fit_fraction`` of ``episodes``, threshold on the rest.

        ``episodes`` are 1-D arrays of per-step increments of in-distribution episodes
        held out from training, any lengths. ``options`` maps a detector name to
        extra parameters (e.g. ``{"cusum": {"slack": 0.5}}``). ``objective`` names the
        base objective the increments came from (``"reward"``, ``"info:KEY"``, or the
        callable): it is recorded, and a guard computing another one is an error
        (see :func:`mesaguard.guard.core.guard_objective`). ``on_detector(name)`` is
        called as each detector is fitted (for progress bars: with long episodes a
        detector's passes over every step are the fit's unit of work). ``match`` is
        how detectors run together are put on one scale (:meth:`thresholds_for`).

        Increments that are the same at every step of every episode (CartPole's
        ``+1``) warn: such a guard fires only if the increment itself ever changes.
        """
        alpha = check_alpha(alpha)
        check_match(match)
        names = list(DEFAULT) if detectors is None else detector_names(detectors, CalibrationError)
        if not names:
            raise CalibrationError(
                f"detectors={detectors!r}: expected a list of one or more detector names (the default: "
                f"{', '.join(DEFAULT)}); a calibration without detectors could never raise an alarm"
            )
        episodes = check_episodes(episodes)
        if not 0 < fit_fraction < 1:
            raise CalibrationError(f"fit_fraction={fit_fraction}; expected a share strictly between 0 and 1")
        n_fit = fit_split(len(episodes), fit_fraction)
        fitting, held = episodes[:n_fit], episodes[n_fit:]
        if len(held) < min_episodes(alpha):
            raise CalibrationError(
                f"{len(episodes)} episodes leave {len(held)} held out for thresholds after fitting on {n_fit}: "
                f"too few for alpha={alpha}, which needs {min_episodes(alpha)} held out; "
                f"pass at least {episodes_needed(alpha, fit_fraction)} episodes or a larger alpha"
            )
        k = conformal_rank(len(held), alpha)
        level = tail_level(alpha)  # where these detectors, calibrated together, are matched
        options = dict(options or {})
        fitted = {}
        for name in names:
            cls_ = detector_class(name)
            det = cls_.fit(fitting, **options.get(name, {}))
            crossfit = crossfit_maxima(cls_, fitting, options.get(name, {}))
            location, scale = tail_scale(crossfit, level, cls_.UNIT)
            maxima = episode_maxima(det, held)
            fitted[name] = DetectorCalibration(
                name=name,
                params=det.params(),
                threshold=float(np.sort(maxima)[k - 1]),
                location=location,
                scale=scale,
                maxima=maxima.tolist(),
                crossfit=np.sort(crossfit).tolist(),
            )
            if on_detector is not None:
                on_detector(name)
        shape = None if obs_shape is None else tuple(int(s) for s in obs_shape)
        pooled = np.concatenate(episodes)
        if np.ptp(pooled) == 0:
            warnings.warn(
                f"every calibration increment is {float(pooled[0])!r}: the base objective never varies in "
                f"distribution, so the guard fires only if the increment itself changes; choose a base objective "
                f"that measures how well the agent does (a margin, a distance, a cost)",
                stacklevel=2,
            )
        lengths = (min(e.size for e in episodes), max(e.size for e in episodes))
        recorded = None if objective is None else make_objective(objective).name
        return cls(scenario, shape, alpha, n_fit, len(held), fitted, dict(metadata or {}), recorded, lengths, match)


    @property
    def thresholds(self) -> dict[str, float]:
        """Each detector's threshold when it runs alone."""
        return {name: d.threshold for name, d in self.detectors.items()}

    def thresholds_for(self, names: Sequence[str], alpha: float | None = None) -> dict[str, float]:
        """Thresholds for running ``names`` together at false-alarm rate ``alpha`` (default: the calibration's).

        The detectors together are one detector whose statistic is the largest of
        their statistics put on one scale; the one conformal rule applies to it, so the
        chance that *any* of them fires on a new in-distribution episode is at most
        ``alpha``. Alone, a detector gets its own conformal threshold. The scale is the
        calibration's ``match``, each member's fixed on the fitting half before the
        held-out half is seen (which keeps the guarantee exact): ``"linear"``,
        ``(x - location) / scale``, members matched at one quantile (see
        :class:`DetectorCalibration`); ``"quantiles"``, :func:`tail_map` of the member's
        cross-fitted maxima, members matched at every quantile, so that a member whose
        tail is heavier than its spread says does not set the others' thresholds far
        into their tails (``benchmarks/joint_default.py`` measures both).

        Back in a detector's own units a threshold is ``location + scale * tau`` (or
        the inverse of its map), in floating point; it is raised, where rounding put it below, to the largest
        held-out maximum of that detector on an episode the joint rule counted as not
        exceeding ``tau``. So rounding never makes a statistic equal to a calibration
        episode's fire (deterministic agents repeat episodes exactly), and a threshold
        is only ever raised, never lowered, which keeps the guarantee.
        """
        alpha = self.alpha if alpha is None else check_alpha(alpha)
        k = conformal_rank(self.n_cal, alpha)
        check_match(self.match)  # a calibration changed in memory: no silent fallback to either rule
        self._require(names)
        quantiles = self.match == "quantiles"
        maps = {n: tail_map(self._crossfit(n), detector_class(n).UNIT) for n in names} if quantiles else {}
        if maps:
            joint = np.max([map_level(maps[n], self.detectors[n].maxima) for n in names], axis=0)
        else:
            joint = self.joint_maxima(names)
        tau = float(np.sort(joint)[k - 1])
        quiet = joint <= tau
        out = {}
        for n in names:
            d = self.detectors[n]
            back = map_value(maps[n], tau) if maps else d.location + d.scale * tau
            out[n] = max(back, float(np.max(np.asarray(d.maxima)[quiet])))
        return out

    def _require(self, names: Sequence[str]) -> None:
        """Refuse no names, or names this calibration has not fitted (whichever rule reads them)."""
        missing = [n for n in names if n not in self.detectors]
        if not names:
            raise CalibrationError(f"no detectors given; this calibration has {sorted(self.detectors)}")
        if missing:
            raise CalibrationError(
                f"detectors {missing} are not in this calibration (it has {sorted(self.detectors)}); calibrate them "
                f"first"
            )

    def _crossfit(self, name: str) -> list[float]:
        crossfit = self.detectors[name].crossfit
        if not crossfit:
            raise CalibrationError(
                f"detector {name!r} has no cross-fitted maxima, which match='quantiles' needs; calibrate again"
            )
        return crossfit

    def joint_maxima(self, names: Sequence[str]) -> np.ndarray:
        """Per held-out episode, the largest standardized maximum of detectors ``names``.

        Running ``names`` together is one detector with this per-episode statistic:
        the deployment monitor's reference values come from it, and so do the joint
        thresholds where ``match="linear"``.
        """
        self._require(names)
        joint: np.ndarray = np.max([self.detectors[n].standardized() for n in names], axis=0)
        return joint

    def check(self, scenario: str | None = None, obs_shape: Sequence[int] | None = None) -> None:
        """Raise :class:`CalibrationError` if this calibration was fitted for another env."""
        shape = None if obs_shape is None else tuple(int(s) for s in obs_shape)
        wrong_scenario = scenario is not None and self.scenario and scenario != self.scenario
        wrong_shape = shape is not None and self.obs_shape is not None and shape != self.obs_shape
        if wrong_scenario or wrong_shape:
            fitted = f"scenario {self.scenario!r}" if self.scenario else "an env"
            this = f"scenario {scenario!r}" if scenario else "this env"
            raise CalibrationError(
                f"calibration was fitted on {fitted} with observation shape {self.obs_shape}; {this} has "
                f"observation shape {shape}. Calibrate on this env's own in-distribution episodes "
                f"(mesaguard calibrate SCENARIO, or --env ENV for an env of your own)"
            )

    def _body(self, arrays: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The file's fields; with ``arrays``, large parameter arrays moved there (referenced by name)."""

        def params(name: str, d: DetectorCalibration) -> dict[str, Any]:
            if arrays is None:
                return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in d.params.items()}
            return pack_arrays(d.params, f"{name}.", SIDECAR_MIN, arrays)

        return {
            "scenario": self.scenario,
            "obs_shape": None if self.obs_shape is None else list(self.obs_shape),
            "alpha": self.alpha,
            "n_fit": self.n_fit,
            "n_cal": self.n_cal,
            "rank": self.rank,
            "false_alarm": self.false_alarm,
            "detectors": {
                name: {
                    "params": params(name, d),
                    "threshold": d.threshold,
                    "location": d.location,
                    "scale": d.scale,
                    "maxima": d.maxima,
                    **({} if d.crossfit is None else {"crossfit": list(d.crossfit)}),
                }
                for name, d in self.detectors.items()
            },
            "metadata": self.metadata,
            "objective": self.objective,
            "lengths": None if self.lengths is None else list(self.lengths),
            "match": self.match,
        }

    def to_dict(self, signing_key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        """The calibration as one self-contained JSON object (every array inline), header and content hash
        included (and, with ``signing_key``, a signature); :meth:`from_dict` reads it back."""
        return KIND.seal(self._body(), signing_key)

    def save(self, path: str | os.PathLike[str], signing_key: Ed25519PrivateKey | None = None) -> Path:
        """Write the calibration as JSON, atomically; signed when ``signing_key`` is given (:mod:`mesaguard.artifacts`).

        Parameter arrays of :data:`SIDECAR_MIN` numbers or more (a long episode's
        per-step references, ``meanshift``'s Cholesky factor) go to ``<stem>.safetensors``
        beside it, written first; the JSON references them by name and records the
        sidecar's SHA-256, so its content hash and signature cover the arrays too.
        """
        path = Path(path)
        arrays: dict[str, np.ndarray] = {}
        body = self._body(arrays)
        if arrays:
            sidecar = path.with_name(path.stem + ".safetensors")
            if sidecar == path:
                raise CalibrationError(f"calibration path {path} would be overwritten by its arrays; name it .json")
            body["arrays"] = write_sidecar(sidecar, arrays)
        return write_atomic(path, json.dumps(KIND.seal(body, signing_key), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str], verify_key: VerifyKeys = None) -> Calibration:
        """Read and verify a calibration file: header (format, schema version, content hash), its sidecar's
        size and SHA-256, every value (:meth:`from_dict`), and, with ``verify_key`` (one Ed25519 public key or
        several), that one of those keys signed it."""
        path = Path(path)
        data = read_json(
            path,
            CalibrationError,
            missing=f"no calibration file at {path}; create one with `mesaguard calibrate`",
            invalid=f"{path} is not a calibration file: not valid JSON",
        )
        KIND.open(data, str(path), verify_key)
        arrays = {}
        if isinstance(data, dict) and "arrays" in data:
            arrays = read_sidecar(path, Fields(data, str(path), CalibrationError).object("arrays"), MAX_SIDECAR_BYTES)
        return cls._checked(data, str(path), arrays)

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration", verify_key: VerifyKeys = None) -> Calibration:
        """The calibration in ``data`` (a file's JSON object), every value checked for what it means.

        Besides the header: ``alpha`` in (0, 1); ``n_fit``, ``n_cal`` positive and
        ``n_cal`` enough for ``alpha``; ``rank`` and ``false_alarm`` those of
        ``n_cal`` and ``alpha``; per detector ``n_cal`` finite maxima, a threshold
        equal to their conformal quantile, a finite location, a scale > 0, and
        parameters that are finite numbers (never numbers written as strings) that
        build the detector.
        """
        KIND.open(data, source, verify_key)
        if "arrays" in data:
            raise CalibrationError(f"{source}: field arrays references a sidecar file; read it with Calibration.load")
        return cls._checked(data, source, {})

    @classmethod
    def _checked(cls, data: dict[str, Any], source: str, arrays: Mapping[str, np.ndarray]) -> Calibration:
        """The calibration in ``data``, its header checked, every value checked (see :meth:`from_dict`)."""
        from mesaguard.calibration_file import read_calibration

        return read_calibration(data, source, arrays)
