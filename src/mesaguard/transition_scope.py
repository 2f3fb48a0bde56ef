"""A fitted transition scope: the transition detector's folds, its conformal threshold and its file.

The state scope (:mod:`mesaguard.scope`) asks whether a state looks like the reference
states; a change of physics can leave every state ordinary and the reward normal. The
transition scope asks whether the world still moves the way a learned model
(:class:`~mesaguard.safeguards.learned.LearnedModel`, fitted on reference-variant
transitions) says: its statistic is :class:`mesaguard.detectors.transition.TransitionDetector`'s
(the state scope's evidence and CUSUM on the model's normalized one-step error). Fitted
and calibrated exactly like the state scope, by the one rule of :mod:`mesaguard.conformal`,
on reference episodes of transitions split by episode:

1. **fit** (first half of ``fit_split(n)``): the per-dimension error spread of the model;
2. **reference** (second half): the transitions' scores make the conformal p-values;
3. **threshold** (the held-out rest): each episode's maximum statistic; the threshold is
   their conformal quantile, so a new reference episode raises a false alarm with
   probability at most ``alpha``, whatever the dependence within episodes.

The episodes must not be the ones the model was fitted on (its error there is smaller
than on new transitions; the threshold would be too low).

In a guard: ``GuardedEnv(env, ..., transition_scope=ts)`` scores each transition
``(previous obs, action, obs)`` after the step; over the threshold the alarm fires with
detector ``"transition"`` and the protocol acts as for the state scope.

Files: ``ts.save("ts.json")`` writes the JSON (the header of :mod:`mesaguard.artifacts`;
slack, threshold, maxima, spaces' sizes, scenario, the model's arrays hash) and
``ts.safetensors`` beside it (the error spread and the reference scores).
``TransitionScope.load(path, model)`` checks every value and that ``model`` is the one
it was fitted with (its arrays' hash): a scope of another model's errors means nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mesaguard.artifacts import Fields, Kind, VerifyKeys, arrays_hash, read_sidecar, write_sidecar
from mesaguard.calibration import (
    CalibrationError,
    check_alpha,
    conformal_rank,
)
from mesaguard.calibration_file import read_conformal, read_threshold
from mesaguard.conformal import ThresholdFit
from mesaguard.detectors.base import DetectorError
from mesaguard.detectors.transition import (
    TransitionDetector,
    TransitionScorer,
    action_size,
    fit_spread,
    transition_evidence,
    transition_rows,
)
from mesaguard.files import read_json, write_atomic

if TYPE_CHECKING:
    from mesaguard.safeguards.learned import LearnedModel

__all__ = ["SCHEMA_VERSION", "TransitionScope", "TransitionScopeError", "model_hash"]

SCHEMA_VERSION = 1
FORMAT = "mesaguard.transition-scope"
DEFAULT_SLACK = 2.0  # nats per transition: the CUSUM's drift allowance, as the state scope's default


class TransitionScopeError(CalibrationError, DetectorError):
    """Bad transition-scope input: misshapen or non-finite transitions, too few episodes, a bad or foreign file."""


KIND = Kind("transition scope", FORMAT, SCHEMA_VERSION, TransitionScopeError,
            "Fit the transition scope again with this version.")


def model_hash(model: Any) -> str:
    """The identity of a learned model: the SHA-256 of its arrays (:func:`mesaguard.artifacts.arrays_hash`)."""
    arrays = getattr(model, "arrays", None)
    if not isinstance(arrays, Mapping):
        raise TransitionScopeError(f"model {model!r} has no arrays; expected a LearnedModel")
    return arrays_hash(arrays)


Episode = tuple[Any, Any, Any]  # (obs (T, *obs_shape), actions (T, ...), next_obs (T, *obs_shape))


def _rows(model: Any, episodes: Sequence[Episode]) -> list[np.ndarray]:
    """Each episode's transition rows, finite, one row a step; errors name the episode."""
    d = int(np.prod(model.observation_space.shape or ()))
    a = action_size(model.action_space)
    out = []
    for i, episode in enumerate(episodes):
        try:
            obs, action, next_obs = episode
            rows = transition_rows(obs, action, next_obs, d, a)
        except (TypeError, ValueError) as exc:
            raise TransitionScopeError(
                f"episode {i}: {exc}; expected (obs, actions, next_obs) with T rows each, obs of size {d} and "
                f"actions of size {a}") from None
        if rows.shape[0] < 1 or not np.isfinite(rows).all():
            raise TransitionScopeError(f"episode {i} has {rows.shape[0]} transitions or a non-finite value; "
                                       f"expected at least one, all finite")
        out.append(rows)
    return out


@dataclass(frozen=True, eq=False)
class TransitionScope(ThresholdFit):
    """A fitted transition scope: the model, its error spread, the reference scores and the episode threshold.

    Build one with :meth:`fit` or :meth:`load`; stream it with :meth:`detector`.
    """

    model: LearnedModel
    slack: float | None
    alpha: float
    threshold: float
    n_fit: int
    n_reference: int
    n_cal: int
    maxima: list[float]
    arrays: dict[str, np.ndarray]  # spread (obs_size,), reference_scores (n,) sorted
    scenario: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            evidence = transition_evidence(self.model, self.arrays["spread"], self.arrays["reference_scores"])
        except DetectorError as exc:
            raise TransitionScopeError(str(exc)) from None
        object.__setattr__(self, "_evidence", evidence)

    @classmethod
    def fit(
        cls,
        episodes: Sequence[Episode],
        model: LearnedModel,
        alpha: float = 0.05,
        slack: float | None = DEFAULT_SLACK,
        fit_fraction: float = 0.5,
        scenario: str = "",
        metadata: Mapping[str, Any] | None = None,
    ) -> TransitionScope:
        """Fit on reference episodes of transitions ``(obs, actions, next_obs)`` (module docstring's folds)."""
        alpha = check_alpha(alpha)
        if slack is not None and not (isinstance(slack, (int, float)) and math.isfinite(slack) and slack >= 0):
            raise TransitionScopeError(f"slack={slack!r}; expected a non-negative number of nats, or None")
        rows = _rows(model, episodes)
        n = len(rows)
        n_fit, n_fitting = cls.split(n, alpha, fit_fraction, TransitionScopeError)
        held = n - n_fitting
        try:
            spread = fit_spread(model, np.concatenate(rows[:n_fit]))
            scorer = TransitionScorer(model, spread)
            reference = np.sort(scorer(np.concatenate(rows[n_fit:n_fitting])))
        except DetectorError as exc:
            raise TransitionScopeError(str(exc)) from None
        arrays = {"spread": spread, "reference_scores": reference}
        meta = dict(metadata or {})
        provisional = cls(model, None if slack is None else float(slack), alpha, math.inf, n_fit,
                          n_fitting - n_fit, held, [], arrays, scenario, meta)
        maxima = np.nanmax(provisional._traces(rows[n_fitting:]), axis=1)
        rank = conformal_rank(held, alpha)
        return cls(model, provisional.slack, alpha, float(np.sort(maxima)[rank - 1]), n_fit, n_fitting - n_fit,
                   held, maxima.tolist(), arrays, scenario, meta)

    # -- streaming ---------------------------------------------------------------------------


    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.model.observation_space.shape or ())

    def detector(self, n_envs: int = 1) -> TransitionDetector:
        """A streaming detector over ``n_envs`` envs (the alarm: its statistic above :attr:`threshold`)."""
        if isinstance(n_envs, bool) or int(n_envs) < 1:
            raise TransitionScopeError(f"n_envs={n_envs!r}; expected a positive integer")
        return TransitionDetector(self._evidence, self.slack, int(n_envs))  # type: ignore[attr-defined]

    def scores(self, obs: Any, action: Any, next_obs: Any) -> np.ndarray:
        """Nonconformity of each transition (the RMS normalized one-step error)."""
        det = self.detector()
        return self._evidence.lookup(det.rows(obs, action, next_obs))[:, 0]  # type: ignore[attr-defined, no-any-return]

    def _traces(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        return self.detector(max(len(rows), 1)).traces(list(rows))

    def traces(self, episodes: Sequence[Episode]) -> np.ndarray:
        """The statistic after every transition of whole episodes: ``(n, T_max)``, NaN after each end."""
        return self._traces(_rows(self.model, episodes))

    def first_alarms(self, episodes: Sequence[Episode]) -> list[int | None]:
        """Offline: per episode, the step (1-based, the transition it fires after) of the first alarm, or None."""
        over = self.traces(episodes) > self.threshold
        return [int(np.argmax(row)) + 1 if row.any() else None for row in over]

    def check(self, scenario: str | None = None, obs_shape: Sequence[int] | None = None,
              action_space: Any = None) -> None:
        """Raise :class:`TransitionScopeError` if this scope (its model) was fitted for another env."""
        shape = None if obs_shape is None else tuple(int(s) for s in obs_shape)
        if (scenario is not None and self.scenario and scenario != self.scenario) or (
            shape is not None and shape != self.obs_shape
        ):
            raise TransitionScopeError(
                f"transition scope was fitted on scenario {self.scenario!r} with observation shape {self.obs_shape}; "
                f"this env is {scenario!r} with {shape}. Fit a transition scope on this env's reference variant.")
        if action_space is not None and action_space != self.model.action_space:
            raise TransitionScopeError(
                f"transition scope's model acts in {self.model.action_space}; this env's action space is "
                f"{action_space}. Fit a learned model and a transition scope on this env.")

    # -- files ------------------------------------------------------------------------------

    def to_dict(self, arrays: dict[str, str], signing_key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
        body = {
            "scenario": self.scenario,
            "obs_size": int(self.arrays["spread"].size),
            "model_hash": model_hash(self.model),
            "slack": self.slack,
            **self.threshold_fields(),
            "arrays": arrays,
            "metadata": self.metadata,
        }
        return KIND.seal(body, signing_key)

    def save(self, path: str | os.PathLike[str], signing_key: Ed25519PrivateKey | None = None) -> Path:
        """Write ``path`` (JSON) and its arrays beside it (``<stem>.safetensors``), each atomically."""
        path = Path(path)
        sidecar = path.with_name(path.stem + ".safetensors")
        if sidecar == path:
            raise TransitionScopeError(f"path {path} would be overwritten by its own arrays; give it a .json name")
        entry = write_sidecar(sidecar, self.arrays)
        return write_atomic(path, json.dumps(self.to_dict(entry, signing_key), indent=1, allow_nan=False))

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: LearnedModel,
             verify_key: VerifyKeys = None) -> TransitionScope:
        """Read and verify a transition-scope file for ``model``: header, arrays' hash, every value, the model."""
        path = Path(path)
        source = str(path)
        data = read_json(path, TransitionScopeError,
                         missing=f"no transition scope file at {path}; fit one: TransitionScope.fit(...).save(path)",
                         invalid=f"{path} is not a transition scope file: not valid JSON")
        KIND.open(data, source, verify_key)
        f = Fields(data, source, TransitionScopeError)
        expected_hash = model_hash(model)
        if f.text("model_hash") != expected_hash:
            f.fail("model_hash", f.get("model_hash"),
                   f"{expected_hash!r}, the arrays hash of the model given; this scope was fitted with another model")
        d = int(np.prod(model.observation_space.shape or ()))
        obs_size = f.integer("obs_size", minimum=1)
        if obs_size != d:
            f.fail("obs_size", obs_size, f"{d}, the model's observation size")
        slack = None if f.get("slack") is None else f.number("slack", nonnegative=True)
        alpha, n_cal, rank = read_conformal(f)
        threshold, maxima = read_threshold(f, alpha, n_cal, rank)
        metadata = f.get("metadata") if "metadata" in data else {}
        if not isinstance(metadata, dict):
            f.fail("metadata", metadata, "a JSON object")
        arrays = read_sidecar(path, f.object("arrays"), max_bytes=1 << 28)
        af = Fields(data["arrays"], source, TransitionScopeError, "arrays")
        if sorted(arrays) != ["reference_scores", "spread"]:
            af.fail("file", af.get("file"), "a safetensors file holding exactly reference_scores and spread")
        spread, ref = arrays["spread"], arrays["reference_scores"]
        if spread.shape != (d,) or spread.dtype.kind != "f" or not (np.isfinite(spread).all() and (spread > 0).all()):
            af.fail("file", af.get("file"), f"array spread of shape ({d},), positive finite floats")
        if (ref.ndim != 1 or ref.size < 1 or ref.dtype.kind != "f" or not np.isfinite(ref).all()
                or not (np.diff(ref) >= 0).all() or ref[0] < 0):
            af.fail("file", af.get("file"), "array reference_scores: (n,), n >= 1, finite, sorted, >= 0")
        return cls(model, slack, alpha, threshold, f.integer("n_fit", minimum=1), f.integer("n_reference", minimum=1),
                   n_cal, maxima, {"spread": spread.astype(np.float64), "reference_scores": ref.astype(np.float64)},
                   f.text("scenario"), metadata)
