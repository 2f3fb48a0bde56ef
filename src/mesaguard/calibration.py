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

>>> rng = np.random.default_rng(0)
>>> episodes = [rng.normal(1.0, 0.5, size=20) for _ in range(200)]
>>> cal = Calibration.fit(episodes, alpha=0.05, scenario="demo")
>>> cal.rank, cal.n_cal
(96, 100)
>>> round(cal.false_alarm["mean"], 4)
0.0495
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mesaguard.detectors import DEFAULT, Detector, detector_class
from mesaguard.detectors.base import check_episodes, padded
from mesaguard.files import read_json, write_atomic

__all__ = [
    "SCHEMA_VERSION",
    "Calibration",
    "CalibrationError",
    "check_alpha",
    "check_header",
    "content_hash",
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

SCHEMA_VERSION = 1
FORMAT = "mesaguard.calibration"


class CalibrationError(ValueError):
    """Too few episodes for alpha, a corrupt or foreign file, or a calibration for another env."""


def check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and 0.0 < alpha < 1.0):
        raise CalibrationError(f"alpha={alpha!r}; expected a false-alarm rate strictly between 0 and 1")
    return float(alpha)


def min_episodes(alpha: float) -> int:
    """Fewest calibration episodes for which the conformal rank exists: ``(1 - alpha) / alpha``.

    >>> min_episodes(0.05), min_episodes(0.1), min_episodes(0.01)
    (19, 9, 99)
    """
    alpha = check_alpha(alpha)
    n = max(1, math.floor((1.0 - alpha) / alpha) - 1)
    while math.ceil((n + 1) * (1.0 - alpha) - 1e-12) > n:
        n += 1
    return n


def fit_split(n: int, fit_fraction: float = 0.5) -> int:
    """How many of ``n`` calibration episodes fit the detectors (two folds of at least 2); the rest set thresholds."""
    return max(4, int(n * fit_fraction))


def episodes_needed(alpha: float, fit_fraction: float = 0.5) -> int:
    """Fewest episodes :meth:`Calibration.fit` accepts at ``alpha``: enough held out after the fit split.

    >>> episodes_needed(0.05), episodes_needed(0.1)
    (37, 17)
    """
    held = min_episodes(alpha)
    return next(n for n in range(held, 10**7) if n - fit_split(n, fit_fraction) >= held)


def conformal_rank(n: int, alpha: float) -> int:
    """The rank ``k = ceil((n + 1)(1 - alpha))`` of the threshold among ``n`` sorted maxima.

    >>> conformal_rank(100, 0.05)
    96
    >>> conformal_rank(10, 0.05)
    Traceback (most recent call last):
    ...
    mesaguard.calibration.CalibrationError: 10 calibration episodes are too few for alpha=0.05: the conformal rank would be 11 > 10; use at least 19 episodes or a larger alpha
    """
    alpha = check_alpha(alpha)
    # The small epsilon keeps (n+1)(1-alpha) that is an integer in exact arithmetic from rounding up.
    k = math.ceil((n + 1) * (1.0 - alpha) - 1e-12)
    if k > n:
        raise CalibrationError(
            f"{n} calibration episodes are too few for alpha={alpha}: the conformal rank would be {k} > {n}; "
            f"use at least {min_episodes(alpha)} episodes or a larger alpha"
        )
    return max(k, 1)


def false_alarm_spread(n: int, k: int) -> dict[str, float]:
    """Law of the realized false-alarm rate given the calibration set: ``Beta(n + 1 - k, k)``.

    >>> s = false_alarm_spread(100, 96)
    >>> round(s["mean"], 4), round(s["q05"], 4), round(s["q95"], 4)
    (0.0495, 0.0199, 0.0892)
    """
    law = stats.beta(n + 1 - k, k)
    return {
        "beta_a": float(n + 1 - k),
        "beta_b": float(k),
        "mean": float(law.mean()),
        "q05": float(law.ppf(0.05)),
        "q50": float(law.ppf(0.5)),
        "q95": float(law.ppf(0.95)),
    }


def episodes_for_tolerance(alpha: float, tolerance: float, confidence: float = 0.9) -> int:
    """Fewest calibration episodes so that the realized false-alarm rate lies within
    ``alpha +- tolerance`` with probability ``confidence`` (too low a rate costs power).

    >>> episodes_for_tolerance(0.05, 0.02), episodes_for_tolerance(0.05, 0.01)
    (305, 1270)
    """
    alpha = check_alpha(alpha)
    if not 0 < tolerance < min(alpha, 1 - alpha):
        raise CalibrationError(f"tolerance={tolerance}; expected a number in (0, {min(alpha, 1 - alpha)})")
    for n in range(min_episodes(alpha), 10**6):  # the quantile is not monotone in n (rank rounding): scan
        k = conformal_rank(n, alpha)
        law = stats.beta(n + 1 - k, k)
        if law.cdf(alpha + tolerance) - law.cdf(alpha - tolerance) >= confidence:
            return n
    raise CalibrationError(f"tolerance={tolerance} needs more than a million episodes at alpha={alpha}")


def statistic_traces(detector: Detector, episodes: Sequence[np.ndarray]) -> np.ndarray:
    """Run ``detector``'s streaming form over whole episodes at once: ``(n, T_max)``, NaN after each end.

    The same ``update`` code the guard runs in deployment, vectorized over episodes.
    """
    increments, lengths = padded(check_episodes(episodes, minimum=1))
    det = detector.with_envs(len(lengths))
    T = increments.shape[1]
    traces = np.empty((len(lengths), T))
    for t in range(T):
        traces[:, t] = det.update(increments[:, t])
    traces[np.arange(T)[None, :] >= lengths[:, None]] = np.nan
    return traces


def episode_maxima(detector: Detector, episodes: Sequence[np.ndarray]) -> np.ndarray:
    """Each episode's maximum statistic over the steps it really had."""
    return np.nanmax(statistic_traces(detector, episodes), axis=1)


@dataclass(frozen=True)
class DetectorCalibration:
    """One detector's fitted parameters, its per-episode maxima and its threshold alone.

    ``location`` and ``scale`` put detectors on one scale, so that several detectors
    together are calibrated as one (see :meth:`Calibration.thresholds_for`). They are
    the median of the detector's per-episode maxima and the distance from it to
    their ``1 - alpha`` quantile, so that detectors meet at the tail where the
    threshold lies, whatever the shape of their distributions. The maxima are
    cross-fitted on the fitting split (parameters fitted on one half, maxima taken
    on the other), so a detector that fits its own data closely does not look
    calmer than it will be; and they are fixed before the held-out split is seen,
    which keeps the conformal guarantee exact.
    """

    name: str
    params: dict[str, Any]
    threshold: float
    location: float
    scale: float
    maxima: list[float]

    def build(self, n_envs: int = 1) -> Detector:
        return detector_class(self.name)(**self.params, n_envs=n_envs)

    def standardized(self) -> np.ndarray:
        return (np.asarray(self.maxima) - self.location) / self.scale


def _tail_scale(
    cls: type[Detector], fitting: list[np.ndarray], alpha: float, options: Mapping[str, Any]
) -> tuple[float, float]:
    """Median of cross-fitted per-episode maxima, and the distance to their ``1 - alpha`` quantile.

    Where that distance is zero (a detector that hardly moves in distribution) the
    full range stands in, then 1.
    """
    half = len(fitting) // 2
    a, b = fitting[:half], fitting[half:]
    maxima = np.concatenate(
        [episode_maxima(cls.fit(a, **options), b), episode_maxima(cls.fit(b, **options), a)]
    )
    location, tail = np.quantile(maxima, [0.5, 1.0 - alpha])
    spread = tail - location if tail > location else float(np.ptp(maxima)) or 1.0
    return float(location), float(spread)


@dataclass(frozen=True)
class Calibration:
    """Thresholds at ``alpha`` for a set of detectors, fitted on in-distribution episodes."""

    scenario: str
    obs_shape: tuple[int, ...] | None
    alpha: float
    n_fit: int
    n_cal: int
    detectors: dict[str, DetectorCalibration]
    metadata: dict[str, Any] = field(default_factory=dict)

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
    ) -> Calibration:
        """Fit every detector on the first ``fit_fraction`` of ``episodes``, threshold on the rest.

        ``episodes`` are 1-D arrays of per-step increments of in-distribution episodes
        held out from training, any lengths. ``options`` maps a detector name to
        extra parameters (e.g. ``{"cusum": {"slack": 0.5}}``).
        """
        alpha = check_alpha(alpha)
        names = list(DEFAULT) if detectors is None else list(detectors)
        for name in names:
            detector_class(name)
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
        options = dict(options or {})
        fitted = {}
        for name in names:
            cls_ = detector_class(name)
            det = cls_.fit(fitting, **options.get(name, {}))
            location, scale = _tail_scale(cls_, fitting, alpha, options.get(name, {}))
            maxima = episode_maxima(det, held)
            fitted[name] = DetectorCalibration(
                name=name,
                params=det.params(),
                threshold=float(np.sort(maxima)[k - 1]),
                location=location,
                scale=scale,
                maxima=maxima.tolist(),
            )
        shape = None if obs_shape is None else tuple(int(s) for s in obs_shape)
        return cls(scenario, shape, alpha, n_fit, len(held), fitted, dict(metadata or {}))

    @property
    def rank(self) -> int:
        """The conformal rank of every threshold at this calibration's alpha."""
        return conformal_rank(self.n_cal, self.alpha)

    @property
    def false_alarm(self) -> dict[str, float]:
        """Spread of the realized per-episode false-alarm rate: ``Beta(n + 1 - k, k)``."""
        return false_alarm_spread(self.n_cal, self.rank)

    @property
    def thresholds(self) -> dict[str, float]:
        """Each detector's threshold when it runs alone."""
        return {name: d.threshold for name, d in self.detectors.items()}

    def thresholds_for(self, names: Sequence[str], alpha: float | None = None) -> dict[str, float]:
        """Thresholds for running ``names`` together at false-alarm rate ``alpha`` (default: the calibration's).

        The detectors together are one detector whose statistic is the largest of
        their standardized statistics; the one conformal rule applies to it, so the
        chance that *any* of them fires on a new in-distribution episode is at most
        ``alpha``. Alone, a detector gets its own conformal threshold.
        """
        alpha = self.alpha if alpha is None else check_alpha(alpha)
        k = conformal_rank(self.n_cal, alpha)
        tau = float(np.sort(self.joint_maxima(names))[k - 1])
        return {n: self.detectors[n].location + self.detectors[n].scale * tau for n in names}

    def joint_maxima(self, names: Sequence[str]) -> np.ndarray:
        """Per held-out episode, the largest standardized maximum of detectors ``names``.

        Running ``names`` together is one detector with this per-episode statistic:
        the thresholds and the deployment monitor's reference values both come from it.
        """
        missing = [n for n in names if n not in self.detectors]
        if missing or not names:
            raise CalibrationError(
                f"detectors {list(names)}: {missing or 'none given'} not in this calibration "
                f"(it has {sorted(self.detectors)}); calibrate them first"
            )
        return np.max([self.detectors[n].standardized() for n in names], axis=0)

    def check(self, scenario: str | None = None, obs_shape: Sequence[int] | None = None) -> None:
        """Raise :class:`CalibrationError` if this calibration was fitted for another env."""
        shape = None if obs_shape is None else tuple(int(s) for s in obs_shape)
        wrong_scenario = scenario is not None and self.scenario and scenario != self.scenario
        wrong_shape = shape is not None and self.obs_shape is not None and shape != self.obs_shape
        if wrong_scenario or wrong_shape:
            raise CalibrationError(
                f"calibration was fitted on scenario {self.scenario!r} with observation shape {self.obs_shape}; "
                f"this env is {scenario!r} with {shape}. Fit a calibration on this scenario "
                f"(mesaguard calibrate {scenario or 'SCENARIO'})."
            )

    def to_dict(self) -> dict[str, Any]:
        body = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "scenario": self.scenario,
            "obs_shape": None if self.obs_shape is None else list(self.obs_shape),
            "alpha": self.alpha,
            "n_fit": self.n_fit,
            "n_cal": self.n_cal,
            "rank": self.rank,
            "false_alarm": self.false_alarm,
            "detectors": {
                name: {
                    "params": d.params,
                    "threshold": d.threshold,
                    "location": d.location,
                    "scale": d.scale,
                    "maxima": d.maxima,
                }
                for name, d in self.detectors.items()
            },
            "metadata": self.metadata,
        }
        return {**body, "content_hash": content_hash(body)}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the calibration as JSON, atomically."""
        return write_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read and verify a calibration file (format, schema version, content hash)."""
        path = Path(path)
        data = read_json(
            path,
            CalibrationError,
            missing=f"no calibration file at {path}; create one with `mesaguard calibrate`",
            invalid=f"{path} is not a calibration file: not valid JSON",
        )
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "calibration") -> Calibration:
        check_header(data, source, "calibration", FORMAT, SCHEMA_VERSION, CalibrationError,
                     "Fit it again with this version (mesaguard calibrate).")  # fmt: skip
        try:
            detectors = {
                name: DetectorCalibration(
                    name=name,
                    params=d["params"],
                    threshold=float(d["threshold"]),
                    location=float(d["location"]),
                    scale=float(d["scale"]),
                    maxima=[float(m) for m in d["maxima"]],
                )
                for name, d in data["detectors"].items()
            }
            for d in detectors.values():
                d.build()  # unknown names and malformed parameters fail here, on load
            shape = data["obs_shape"]
            return cls(
                scenario=str(data["scenario"]),
                obs_shape=None if shape is None else tuple(int(s) for s in shape),
                alpha=float(data["alpha"]),
                n_fit=int(data["n_fit"]),
                n_cal=int(data["n_cal"]),
                detectors=detectors,
                metadata=dict(data.get("metadata", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{source} is malformed: {exc!r}") from None


def check_header(data: Any, source: str, what: str, fmt: str, version: int, error: type[Exception], again: str) -> None:
    """Raise ``error`` unless ``data`` is a ``fmt`` file of schema ``version`` whose content hash matches.

    The one check every versioned JSON file of mesaguard passes on load; ``what``
    names the kind of file, ``again`` tells the user how to make a good one.
    """
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{source} is not a mesaguard {what} (no 'format': {fmt!r})")
    if data.get("schema_version") != version:
        raise error(
            f"{source} has schema version {data.get('schema_version')!r}; this mesaguard reads version {version}. {again}"
        )
    body = {k: v for k, v in data.items() if k != "content_hash"}
    if data.get("content_hash") != content_hash(body):
        raise error(f"{source} is corrupt: its content hash does not match its content")


def content_hash(body: Mapping[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
