"""A user's own env, policy and base objective, named on the command line, checked, calibrated and deployed.

The command line names them as text; this module turns the text into things that run:

* an env: a Gymnasium id (``CartPole-v1``, made with ``gymnasium.make(id, **kwargs)``)
  or ``module:factory``, a callable returning an env (``factory(**kwargs)``);
* a policy: ``module:callable`` or a policy saved with
  :func:`mesaguard.policies.save_policy` (``STEM`` or ``STEM.json``, with
  ``STEM.safetensors`` beside it). By convention a callable whose first parameter is
  named ``env`` is a *factory* ``env -> policy``; any other callable is the policy
  ``obs -> action``; an object with Stable-Baselines3's ``predict`` (a model) is
  wrapped with :func:`mesaguard.protocols.predict_policy`;
* a base objective: ``"reward"``, ``"info:KEY"`` or ``module:callable``, a function
  of the :class:`~mesaguard.objective.Transition`.

``module`` is imported from the current directory or the Python path. Every value is
checked before any rollout (:func:`check_task` makes the env, asks the policy for
one action and computes one increment); a value that cannot work is a
:class:`SpecError` naming the option, the value and what was expected.

Both the makers are frozen dataclasses holding text, so they pickle for worker
processes (which import the user's module again).

>>> is_spec("mytask:make_env"), is_spec("CartPole-v1"), is_spec("minigrid:MiniGrid-Empty-5x5-v0")
(True, False, False)
>>> load_attr("--policy", "math:nope")
Traceback (most recent call last):
...
mesaguard.userenv.SpecError: --policy 'math:nope': module 'math' has no attribute 'nope'; expected module:callable
"""

from __future__ import annotations

import importlib
import json
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import gymnasium as gym
import numpy as np

from mesaguard import evaluation, metrics
from mesaguard.calibration import Calibration
from mesaguard.experiment import CALIBRATION_SEED, EVALUATION_SEED  # calibration and evaluation seeds are disjoint
from mesaguard.matching import DEFAULT_MATCH
from mesaguard.objective import FromCallable, Objective, ObjectiveError, Transition, make_objective
from mesaguard.protocols import Stop
from mesaguard.rollout import Episode, Policy, policy_for, rollout

__all__ = [
    "EnvMaker",
    "PolicyMaker",
    "SpecError",
    "UserCall",
    "UserCodeError",
    "UserEnv",
    "UserRow",
    "calibrate",
    "check_task",
    "deploy",
    "env_maker",
    "is_spec",
    "json_kwargs",
    "load_attr",
    "objective_of",
    "policy_maker",
]

_SPEC = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


class SpecError(ValueError):
    """A ``--env``, ``--policy``, ``--objective`` or kwargs value that cannot work: names the option, the value and
    what was expected."""


class UserCodeError(ValueError):
    """The user's env, policy or objective failed while it ran (past the first step :func:`check_task` tries):
    names the option, the value, the exception and where in the user's code it was raised."""

    @classmethod
    def of(cls, option: str, spec: str, exc: BaseException) -> UserCodeError:
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ is not None else None
        at = "" if where is None else f" (at {where.filename}:{where.lineno}, in {where.name})"
        return cls(f"{option} {spec!r} raised {type(exc).__name__}: {exc}{at}; expected it to run on every step of "
                   f"every episode")


@dataclass(frozen=True)
class UserCall:
    """The user's callable ``fn``, named on the command line as ``option spec``: what it raises comes out as a
    :class:`UserCodeError` naming them (a frozen dataclass of a module-level callable: it pickles for workers)."""

    option: str
    spec: str
    fn: Callable[..., Any]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except Exception as exc:
            raise UserCodeError.of(self.option, self.spec, exc) from exc


class UserEnv(gym.Wrapper[Any, Any, Any, Any]):
    """The user's env (``option spec``): an exception in its ``reset`` or ``step``, or a step whose ``info`` is not
    a dict, is a :class:`UserCodeError` naming them."""

    def __init__(self, env: gym.Env[Any, Any], option: str, spec: str) -> None:
        super().__init__(env)
        self._reset, self._step = UserCall(option, f"{spec}: reset", env.reset), UserCall(option, f"{spec}: step",
                                                                                           env.step)
        self._named = (option, spec)

    def reset(self, **kwargs: Any) -> Any:
        return self._reset(**kwargs)

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self._step(action)
        if not isinstance(info, dict):
            option, spec = self._named
            raise UserCodeError(f"{option} {spec!r} returned info={info!r} from step; expected a dict (Gymnasium's "
                                f"API)")
        return obs, reward, terminated, truncated, info


def is_spec(value: str) -> bool:
    """Whether ``value`` reads ``module:attr`` (dotted Python names on both sides), not a Gymnasium id."""
    return bool(_SPEC.match(value))


def load_attr(option: str, spec: str) -> Any:
    """The object ``spec = "module:attr"`` names, importing ``module`` from the current directory or the path."""
    if not is_spec(spec):
        raise SpecError(f"{option} {spec!r}: expected module:attr (Python names, e.g. mytask:make_env)")
    module_name, _, attr = spec.partition(":")
    here = os.getcwd()
    added = here not in sys.path and "" not in sys.path  # the console script's path lacks the current directory
    if added:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(
            f"{option} {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc}); expected a module in "
            f"the current directory or on the Python path"
        ) from exc
    finally:
        if added:
            sys.path.remove(here)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SpecError(f"{option} {spec!r}: module {module_name!r} has no attribute {attr!r}; "
                            f"expected module:callable")
        obj = getattr(obj, part)
    return obj


def _callable(option: str, spec: str) -> Callable[..., Any]:
    obj = load_attr(option, spec)
    if not callable(obj):
        raise SpecError(f"{option} {spec!r} is a {type(obj).__name__}, not callable; expected module:callable")
    return cast(Callable[..., Any], obj)


def json_kwargs(option: str, text: str | None) -> dict[str, Any]:
    """``text`` as keyword arguments: a JSON object (``None``: none).

    >>> json_kwargs("--env-kwargs", '{"length": 1.5}')
    {'length': 1.5}
    >>> json_kwargs("--env-kwargs", "[1]")
    Traceback (most recent call last):
    ...
    mesaguard.userenv.SpecError: --env-kwargs '[1]': a list; expected a JSON object such as '{"length": 1.5}'
    """
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{option} {text!r}: not JSON ({exc}); expected a JSON object such as "
                        f"'{{\"length\": 1.5}}'") from exc
    if not isinstance(value, dict):
        raise SpecError(f"{option} {text!r}: a {type(value).__name__}; expected a JSON object such as "
                        f"'{{\"length\": 1.5}}'")
    return value


@dataclass(frozen=True)
class EnvMaker:
    """``EnvMaker(env, kwargs)()``: a fresh env, by ``gymnasium.make`` or the user's factory."""

    env: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    option: str = "--env"

    def __call__(self) -> gym.Env:
        if is_spec(self.env):
            made = UserCall(self.option, self.env, _callable(self.option, self.env))(**self.kwargs)
            return UserEnv(made, self.option, self.env) if isinstance(made, gym.Env) else cast(gym.Env, made)
        return gym.make(self.env, **self.kwargs)


def env_maker(option: str, env: str, kwargs: dict[str, Any], kwargs_option: str = "--env-kwargs") -> EnvMaker:
    """An :class:`EnvMaker`, checked: the factory or id exists and makes an env with ``kwargs``."""
    maker = EnvMaker(env, kwargs, option)
    if is_spec(env):
        _callable(option, env)
    else:
        try:
            gym.spec(env)
        except gym.error.Error as exc:
            raise SpecError(f"{option} {env!r}: {exc}; expected a registered Gymnasium id (e.g. CartPole-v1) "
                            f"or module:factory") from exc
    try:
        made = maker()
    except (TypeError, UserCodeError) as exc:
        cause = exc.__cause__ if isinstance(exc, UserCodeError) else exc
        if not isinstance(cause, TypeError):  # the factory failed otherwise: the UserCodeError names it
            raise
        raise SpecError(f"{kwargs_option} {json.dumps(kwargs)}: {option} {env!r} cannot be made with them "
                        f"({cause}); expected keyword arguments it takes") from exc
    try:
        if not isinstance(made, gym.Env):
            raise SpecError(f"{option} {env!r} returned a {type(made).__name__}; expected a gymnasium.Env")
    finally:
        if isinstance(made, gym.Env):
            made.close()
    return maker


@dataclass(frozen=True)
class PolicyMaker:
    """``PolicyMaker(policy)(env)``: the policy ``obs -> action`` for ``env``."""

    policy: str

    def __call__(self, env: gym.Env) -> Policy:
        if is_spec(self.policy):
            made = UserCall("--policy", self.policy, policy_for)(load_attr("--policy", self.policy), env)
            return UserCall("--policy", self.policy, made) if callable(made) else made
        from mesaguard.policies import load_policy  # torch loads only for a saved policy

        return load_policy(self.policy)


def _saved(path: str) -> bool:
    stem = Path(path)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem
    return stem.with_name(stem.name + ".json").is_file()


def policy_maker(option: str, policy: str) -> PolicyMaker:
    """A :class:`PolicyMaker`, checked: the callable exists, or the saved policy loads."""
    if is_spec(policy):
        obj = load_attr(option, policy)
        if not callable(obj) and not callable(getattr(obj, "predict", None)):
            raise SpecError(f"{option} {policy!r} is a {type(obj).__name__}; expected module:callable "
                            f"(obs -> action, or a factory whose first parameter is env) or a model with predict")
    elif _saved(policy):
        from mesaguard.policies import load_policy

        load_policy(policy)  # a damaged file: a PolicyFileError naming it, before any rollout
    else:
        raise SpecError(f"{option} {policy!r}: neither module:callable nor a saved policy ({policy}.json not found); "
                        f"expected module:callable or the stem of a policy saved with mesaguard.policies.save_policy")
    return PolicyMaker(policy)


def objective_of(option: str, spec: str) -> Objective:
    """``"reward"``, ``"info:KEY"`` or ``module:callable`` (a function of the Transition) as an Objective."""
    if is_spec(spec) and not spec.startswith("info:"):
        fn = _callable(option, spec)
        return FromCallable(UserCall(option, spec, fn), name=str(getattr(fn, "__name__", "callable")))
    try:
        return make_objective(spec)
    except ObjectiveError as exc:
        raise SpecError(f"{option} {spec!r}: expected reward, info:KEY or module:callable (a function of the "
                        f"Transition)") from exc


def _fits(space: gym.Space[Any], action: Any) -> bool:
    if isinstance(space, gym.spaces.Box):  # a float64 action in a float32 box is fine: the env casts it
        arr = np.asarray(action)
        return arr.shape == space.shape and bool(np.all(np.isfinite(arr)))
    return bool(space.contains(action))


def check_task(env: EnvMaker, policy: PolicyMaker, objective: Objective) -> bool:
    """One step, before any rollout: the policy's action is in the action space and the objective gives a finite
    increment. Returns whether the env reports ``info["catastrophe"]``."""
    made = env()
    try:
        obs, _ = made.reset(seed=CALIBRATION_SEED)
        act = policy(made)
        if not callable(act):
            raise SpecError(f"--policy {policy.policy!r} gave a {type(act).__name__} for the env; expected a "
                            f"callable obs -> action")
        try:
            action = act(obs)
        except Exception as exc:  # the user's policy cannot act on this env's observations
            raise SpecError(f"--policy {policy.policy!r} failed on the first observation of {env.option} "
                            f"{env.env!r} ({type(exc).__name__}: {exc}); expected a policy for this env") from exc
        if not _fits(made.action_space, action):
            raise SpecError(f"--policy {policy.policy!r} returned the action {action!r}, not in the action space "
                            f"{made.action_space} of {env.option} {env.env!r}; expected a policy for this env")
        next_obs, reward, _, _, info = made.step(action)
        objective.increment(Transition(float(reward), info, obs, action, next_obs), 1)
        return "catastrophe" in info
    finally:
        made.close()


def calibrate(
    env: EnvMaker,
    policy: PolicyMaker,
    objective: Objective,
    *,
    episodes: int,
    alpha: float,
    detectors: Sequence[str],
    workers: int = 1,
    on_episode: Callable[[Episode], None] | None = None,
    metadata: dict[str, Any] | None = None,
    match: str = DEFAULT_MATCH,
) -> Calibration:
    """Roll ``policy`` out on ``env`` (seeds ``CALIBRATION_SEED + i``) and fit a calibration recording
    ``objective`` and, as its scenario, the env's name: :func:`mesaguard.evaluation.calibrate`."""
    return evaluation.calibrate(
        env, policy, episodes=episodes, alpha=alpha, objective=objective, detectors=list(detectors),
        seed=CALIBRATION_SEED, scenario=env.env, workers=workers, progress=False, on_episode=on_episode,
        metadata=metadata, match=match,
    )


@dataclass(frozen=True)
class UserRow:
    """One guard configuration on a user's env: in-distribution false alarms, shifted alarms and detection."""

    detectors: str
    episodes: int
    false_alarms: metrics.Rate  # in-distribution guarded runs with an alarm
    shifted_alarms: metrics.Rate  # shifted guarded runs with an alarm
    detection: metrics.Detection  # alarms on the shifted runs that misbehaved (metrics.misbehaved)
    score_reference_free: float
    score_shifted_guarded: float
    score_shifted_free: float
    catastrophes_guarded: int | None  # None: the env does not report info["catastrophe"]
    catastrophes_free: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy(
    env: EnvMaker,
    shifted: EnvMaker,
    policy: PolicyMaker,
    objective: Objective,
    calibration: Calibration,
    configs: Sequence[Sequence[str]],
    *,
    episodes: int,
    catastrophes: bool,
    workers: int = 1,
    on_episode: Callable[[Episode], None] | None = None,
) -> list[UserRow]:
    """Deploy ``policy`` under a Stop guard with each detector configuration on ``env`` and ``shifted``.

    A shifted run misbehaved (:func:`mesaguard.metrics.misbehaved`) if it had a negative increment or a
    catastrophe, or scored below all but an alpha share of the unguarded in-distribution runs.
    """
    seeds = range(EVALUATION_SEED, EVALUATION_SEED + episodes)

    def run(make: Callable[[], gym.Env]) -> list[Episode]:
        return rollout(make, policy, seeds, objective=objective, workers=workers, on_episode=on_episode)

    free_ref, free_shift = run(env), run(shifted)
    floor = metrics.score_floor([e.score for e in free_ref], calibration.alpha)

    def guarded(make: EnvMaker, names: Sequence[str]) -> evaluation.Evaluation:
        return evaluation.evaluate(
            make, policy, calibration, detectors=list(names), protocol=Stop(), objective=objective,
            episodes=episodes, seed=EVALUATION_SEED, workers=workers, progress=False, on_episode=on_episode,
        )

    rows = []
    for names in configs:
        ref, shift = guarded(env, names), guarded(shifted, names)
        rows.append(UserRow(
            detectors="+".join(names),
            episodes=episodes,
            false_alarms=ref.false_alarm_rate,
            shifted_alarms=shift.alarms,
            detection=shift.detection(free_shift, floor),
            score_reference_free=metrics.mean_score(free_ref),
            score_shifted_guarded=shift.score,
            score_shifted_free=metrics.mean_score(free_shift),
            catastrophes_guarded=sum(e.catastrophes.size for e in shift.episodes) if catastrophes else None,
            catastrophes_free=sum(e.catastrophes.size for e in free_shift) if catastrophes else None,
        ))
    return rows
