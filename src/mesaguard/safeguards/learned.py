"""A learned world model: an ensemble of small MLPs fitted on reference-variant transitions.

What a deployment can have instead of a copy of the world: data from the variant its agent was checked
on. :class:`LearnedModel` is a :class:`~mesaguard.safeguards.models.WorldModel` (``oracle = False``)
made of ``M`` MLPs; member ``m`` maps an observation and an action (one-hot for a ``Discrete`` space,
the clipped vector for a ``Box``), standardized, to the standardized change of the observation, the
base-objective increment, a catastrophe logit and a termination logit. The members differ in their
initialization and in the bootstrap sample of the transitions they were fitted on
(:mod:`mesaguard.safeguards.learned_fit`; Lakshminarayanan et al. 2017, "Simple and scalable predictive
uncertainty estimation using deep ensembles"; Chua et al. 2018, PETS).

One step of a :meth:`LearnedModel.fork` simulation returns the members' mean next observation and mean
increment; its ``info`` says **harm as the model sees it**: ``info["catastrophe"]`` is true when

* ``"catastrophe"``: the members' mean catastrophe probability exceeds ``catastrophe_probability``;
* ``"disagreement"``: the members disagree more than on held-out reference data: the disagreement
  ``sqrt(sum_j var_m(y_mj))`` over the standardized outputs ``y`` (change, increment, catastrophe
  probability) exceeds ``disagreement_threshold``;
* ``"out_of_scope"``: the input lies farther from the fitted data than the held-out reference inputs:
  its Mahalanobis distance in the top principal components of the standardized fitted inputs plus its
  squared residual off them over the mean residual variance (probabilistic PCA; Tipping and Bishop
  1999) exceeds ``scope_threshold``.

The first reason that holds, in that order, is ``info["model_harm"]`` (``None`` when none does). The two
thresholds are conformal: on ``n`` held-out reference episodes of the agent alone, each episode's largest
score over its (observation, agent action) pairs, at rank ``ceil((n + 1)(1 - alpha / 2))``. An unshielded
reference episode then has a step judged disagreeing, or out of scope, with probability at most
``alpha / 2`` each (exchangeable episodes): with a one-step shield whose proposed actions are the agent's,
a reference-variant episode is intervened on through them with probability at most ``alpha``; the
catastrophe head's own false positives come on top. Both checks are conservative by design: on a variant
whose inputs the data never held, every action is harmful and a shield without a fallback stops.
:meth:`LearnedModel.restricted` turns either check off (to measure what the model's own predictions do).

A NaN or infinity in an input or a prediction raises :class:`LearnedModelError`: a shield fails closed on
it. The model never sees the deployed env, only the observations the shield passes and its own weights.

:meth:`LearnedModel.predict` and :meth:`LearnedModel.predict_members` are the batched one-step
predictors (``obs[N, d]``, ``action[N, ...]``); :meth:`LearnedModel.assess` returns every output.

The file format (``<stem>.json`` and a safetensors sidecar, loaded without pickle, every field checked) is
:mod:`mesaguard.safeguards.learned_file`. The shipped models (``mesaguard/agents/learned/<scenario>``)
load with :func:`load_learned`.

>>> model = load_learned("lava")
>>> from mesaguard.scenarios import make
>>> obs, _ = make("lava", "train").reset(seed=0)
>>> model.reset(seed=0)
>>> next_obs, increment, terminated, truncated, info = model.fork(obs, step=0).step(0)
>>> next_obs.shape, sorted(info)
((1138,), ['base_objective', 'catastrophe', 'catastrophe_probability', 'disagreement', 'model_harm', 'scope'])
>>> model.predict_members(obs[None], np.array([0])).shape == (model.members, 1, 1138)
True
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any, SupportsFloat

import numpy as np
from gymnasium import spaces

from mesaguard.artifacts import ArtifactError, Kind

__all__ = [
    "FORMAT",
    "HARMS",
    "KIND",
    "LearnedModel",
    "LearnedModelError",
    "LearnedSimulation",
    "Prediction",
    "encode",
    "load_learned",
    "shipped_models",
]

FORMAT = "mesaguard.learned-model"
SCHEMA_VERSION = 1
HARMS = ("catastrophe", "disagreement", "out_of_scope")  # the reasons, in the order they are checked
HEADS = 3  # outputs past the change of the observation: increment, catastrophe logit, termination logit


class LearnedModelError(ArtifactError):
    """A learned model file that is missing, corrupt or not what loading expects; or a NaN in a prediction."""


KIND = Kind("learned model", FORMAT, SCHEMA_VERSION, LearnedModelError,
            "Train it again with the command in its metadata (python -m mesaguard.safeguards.learned train ...).")


@dataclass(frozen=True)
class Prediction:
    """The ensemble's view of ``N`` one-step inputs (``M`` members)."""

    next_obs: np.ndarray  # [N, d]: the members' mean
    members: np.ndarray  # [M, N, d]: each member's next observation
    increment: np.ndarray  # [N]: the members' mean base-objective increment
    catastrophe: np.ndarray  # [N]: the members' mean catastrophe probability
    terminated: np.ndarray  # [N]: the members' mean termination probability
    disagreement: np.ndarray  # [N]: sqrt of the summed member variance of the standardized outputs
    scope: np.ndarray  # [N]: the input's distance from the fitted inputs (module docstring)


class LearnedModel:
    """An ensemble world model fitted on reference-variant transitions (module docstring).

    ``arrays`` holds ``w{i}`` ``[M, fan_in, fan_out]`` and ``b{i}`` ``[M, fan_out]`` per layer,
    ``in_mean``, ``in_scale`` ``[D]``, ``out_mean``, ``out_scale`` ``[d + 1]`` (the change and the
    increment), ``scope_mean`` ``[D]``, ``scope_basis`` ``[k, D]`` (orthonormal rows),
    ``scope_variance`` ``[k]``; ``D`` is the observation's size plus the action's encoding.
    """

    oracle = False

    def __init__(
        self,
        observation_space: spaces.Box,
        action_space: spaces.Space[Any],
        arrays: dict[str, np.ndarray],
        *,
        scope_residual: float,
        catastrophe_probability: float,
        disagreement_threshold: float,
        scope_threshold: float,
        alpha: float,
        name: str = "learned",
        checks: tuple[str, ...] = HARMS,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        if not isinstance(observation_space, spaces.Box):
            raise LearnedModelError(f"observation space {observation_space}; expected a Box (flat observations)")
        if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
            raise LearnedModelError(f"action space {action_space}; expected a Box or a Discrete")
        self.observation_space, self.action_space = observation_space, action_space
        self.arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
        self._params = {k: v.astype(np.float64) for k, v in self.arrays.items()}
        self.layers = sum(1 for k in self.arrays if k.startswith("w"))
        self.members = int(self.arrays["w0"].shape[0])
        self.obs_size = int(np.prod(observation_space.shape))
        self.scope_residual = float(scope_residual)
        self.catastrophe_probability = float(catastrophe_probability)
        self.disagreement_threshold = float(disagreement_threshold)
        self.scope_threshold = float(scope_threshold)
        self.alpha = float(alpha)
        unknown = [c for c in checks if c not in HARMS]
        if unknown:
            raise LearnedModelError(f"checks={checks!r}; expected a subset of {HARMS}")
        self.checks = tuple(c for c in HARMS if c in checks)
        self.name = name
        self.metadata = dict(metadata or {})

    # -- the WorldModel protocol -----------------------------------------------------------

    def reset(self, seed: int | None) -> None:
        """Nothing to reset: the model is deterministic (the mean of its members)."""

    def fork(self, obs: Any, step: int) -> LearnedSimulation:
        return LearnedSimulation(self, obs)

    def restricted(self, *, disagreement: bool = True, scope: bool = True) -> LearnedModel:
        """The same model with the disagreement and/or the scope check off (named after what is left)."""
        checks = ("catastrophe",) + (("disagreement",) if disagreement else ()) + (("out_of_scope",) if scope else ())
        other = object.__new__(LearnedModel)
        other.__dict__.update(self.__dict__)
        off = [c for c in HARMS if c not in checks]
        other.checks = checks
        other.name = self.name if not off else f"{self.name} (no {', no '.join(off)})"
        return other

    # -- batched predictions -----------------------------------------------------------------

    def encode(self, obs: Any, action: Any) -> np.ndarray:
        """The network's input ``[N, D]``: the flat observations and the actions' encoding."""
        return encode(obs, action, self.obs_size, self.action_space)

    def _forward(self, z: np.ndarray) -> np.ndarray:
        """Every member's raw output ``[M, N, d + HEADS]`` for standardized inputs ``z`` ``[N, D]``."""
        h = z[None]
        for i in range(self.layers):
            h = h @ self._params[f"w{i}"] + self._params[f"b{i}"][:, None, :]
            if i < self.layers - 1:
                h = h / (1.0 + np.exp(-h))  # SiLU
        return h

    def assess(self, obs: Any, action: Any) -> Prediction:
        """Every output for ``N`` inputs; :class:`LearnedModelError` if any is NaN or infinite."""
        x = self.encode(obs, action)
        p = self._params
        z = (x - p["in_mean"]) / p["in_scale"]
        out = self._forward(z)
        d = self.obs_size
        change = out[..., :d] * p["out_scale"][:d] + p["out_mean"][:d]
        increment = out[..., d] * p["out_scale"][d] + p["out_mean"][d]
        catastrophe = 1.0 / (1.0 + np.exp(-out[..., d + 1]))
        terminated = 1.0 / (1.0 + np.exp(-out[..., d + 2]))
        outputs = np.concatenate([out[..., : d + 1], catastrophe[..., None]], axis=-1)
        disagreement = np.sqrt(outputs.var(axis=0).sum(axis=-1))
        centred = z - p["scope_mean"]
        projected = centred @ p["scope_basis"].T
        residual = np.maximum((centred**2).sum(axis=1) - (projected**2).sum(axis=1), 0.0)
        scope = (projected**2 / p["scope_variance"]).sum(axis=1) + residual / self.scope_residual
        members = x[None, :, :d] + change
        result = Prediction(
            next_obs=members.mean(axis=0), members=members, increment=increment.mean(axis=0),
            catastrophe=catastrophe.mean(axis=0), terminated=terminated.mean(axis=0),
            disagreement=disagreement, scope=scope,
        )
        for field in ("members", "increment", "catastrophe", "terminated", "disagreement", "scope"):
            if not np.all(np.isfinite(getattr(result, field))):
                raise LearnedModelError(f"model {self.name!r}: its prediction {field} holds NaN or infinity")
        return result

    def predict(self, obs: Any, action: Any) -> np.ndarray:
        """The members' mean next observation ``[N, d]`` for ``N`` observations and actions."""
        return self.assess(obs, action).next_obs

    def predict_members(self, obs: Any, action: Any) -> np.ndarray:
        """Each member's next observation ``[M, N, d]``."""
        return self.assess(obs, action).members

    def harm(self, prediction: Prediction) -> list[str | None]:
        """Per input, the first reason in :data:`HARMS` (among ``checks``) that holds, else ``None``."""
        tests = {
            "catastrophe": prediction.catastrophe > self.catastrophe_probability,
            "disagreement": prediction.disagreement > self.disagreement_threshold,
            "out_of_scope": prediction.scope > self.scope_threshold,
        }
        return [next((c for c in self.checks if tests[c][i]), None) for i in range(len(prediction.increment))]

    def __repr__(self) -> str:
        return f"LearnedModel({self.name!r}, members={self.members}, command={self.metadata.get('command')!r})"


def encode(obs: Any, action: Any, obs_size: int, action_space: spaces.Space[Any]) -> np.ndarray:
    """``N`` observations (flattened) joined with their actions: one-hot on a ``Discrete`` space, clipped on a ``Box``.

    >>> encode(np.zeros((2, 3)), [1, 0], 3, spaces.Discrete(2)).tolist()
    [[0.0, 0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0, 0.0]]
    """
    x = np.asarray(obs, dtype=np.float64).reshape(-1, obs_size)
    if isinstance(action_space, spaces.Discrete):
        a = np.asarray(action).reshape(-1)
        if not np.issubdtype(a.dtype, np.integer) and not np.all(a == np.round(a)):
            raise LearnedModelError(f"actions {a!r}; expected integers of {action_space}")
        index = a.astype(np.int64) - int(action_space.start)
        if np.any((index < 0) | (index >= int(action_space.n))):
            raise LearnedModelError(f"actions {a!r}; expected actions of {action_space}")
        code = np.eye(int(action_space.n))[index]
    elif isinstance(action_space, spaces.Box):
        code = np.clip(np.asarray(action, dtype=np.float64).reshape(len(x), -1),
                       action_space.low.reshape(-1), action_space.high.reshape(-1))
    else:
        raise LearnedModelError(f"action space {action_space}; expected a Box or a Discrete")
    if len(code) != len(x):
        raise LearnedModelError(f"{len(x)} observations and {len(code)} actions; expected as many of each")
    joined = np.concatenate([x, code], axis=1)
    if not np.all(np.isfinite(joined)):
        raise LearnedModelError("an observation or action holds NaN or infinity; expected finite numbers")
    return joined


class LearnedSimulation:
    """One forked simulation of a :class:`LearnedModel`: Gymnasium's ``step`` from the observation it was forked at.

    Never truncates (a lookahead's horizon bounds it); terminates where the members' mean termination
    probability exceeds 1/2.
    """

    def __init__(self, model: LearnedModel, obs: Any) -> None:
        self.model = model
        self.obs = np.asarray(obs)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        model = self.model
        p = model.assess(self.obs[None], np.asarray(action)[None])
        (reason,) = model.harm(p)
        next_obs = p.next_obs[0].reshape(model.observation_space.shape).astype(model.observation_space.dtype)
        self.obs = next_obs
        increment = float(p.increment[0])
        info = {
            "base_objective": increment,
            "catastrophe": reason is not None,
            "model_harm": reason,
            "catastrophe_probability": float(p.catastrophe[0]),
            "disagreement": float(p.disagreement[0]),
            "scope": float(p.scope[0]),
        }
        return next_obs, increment, bool(p.terminated[0] > 0.5), False, info


def shipped_models() -> list[str]:
    """The scenarios with a shipped learned model (``mesaguard/agents/learned``)."""
    folder = resources.files("mesaguard") / "agents" / "learned"
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_learned(scenario: str) -> LearnedModel:
    """The learned model shipped for ``scenario`` (its JSON's metadata holds the command that made it)."""
    shipped = shipped_models()
    if scenario not in shipped:
        raise LearnedModelError(f"no shipped learned model for scenario {scenario!r}; shipped: {', '.join(shipped)}. "
                                f"Train one: python -m mesaguard.safeguards.learned train {scenario} --out DIR")
    folder = resources.files("mesaguard") / "agents" / "learned"
    from mesaguard.safeguards.learned_file import load_learned_file

    with resources.as_file(folder / f"{scenario}.json") as json_path, resources.as_file(
        folder / f"{scenario}.safetensors"
    ):
        return load_learned_file(json_path)


def main(argv: list[str] | None = None) -> int:
    """``python -m mesaguard.safeguards.learned train SCENARIO ...`` (:mod:`mesaguard.safeguards.learned_fit`)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] != "train":
        print("usage: python -m mesaguard.safeguards.learned train SCENARIO [options]; see train --help",
              file=sys.stderr)
        return 2
    from mesaguard.safeguards.learned_fit import main as fit_main

    return fit_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
