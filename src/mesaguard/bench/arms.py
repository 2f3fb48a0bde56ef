"""The bench's safeguard arms: what each preventive safeguard fits on a job's calibration runs, and how it runs.

A safeguard changes what happens in a run, so its runs are real rollouts (not a
replay), on the same evaluation seeds as the unguarded runs they are paired with.
Each job first fits, on its calibration runs (:func:`calibrate`), what its
safeguards need (:func:`fit_safeguards`, a :class:`FittedSafeguards`):

* ``scope`` and ``combined``: a Mahalanobis :class:`~mesaguard.scope.Scope`
  of the calibration runs' states, at the job's alpha;
* ``shield[KIND]`` and ``combined[KIND]``: the calibrated floor on one step's increment as the shield's
  model of kind ``KIND`` predicts it (:mod:`mesaguard.safeguards.model_kinds`: ``simulator``, ``learned``,
  or ``copy``, the oracle), from the calibration runs' states;
* ``continual``: the calibration of the shipped agent as it acts while it learns
  (sampling its actions).

Then :data:`SAFEGUARDS` builds, per variant, the env and policy of a safeguarded
run, and :data:`LEARNING` plays the runs of an agent that changes as it runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import gymnasium as gym
import numpy as np

from mesaguard.bench.config import BenchError, JobSpec, model_kind, modelled
from mesaguard.calibration import Calibration
from mesaguard.experiment import OBJECTIVE, plain_env, policy_factory
from mesaguard.rollout import Episode, Policy, rollout
from mesaguard.safeguards.model_kinds import MODEL_KINDS
from mesaguard.scenarios import get

if TYPE_CHECKING:
    from mesaguard.scope import Scope

__all__ = [
    "LEARNING",
    "SAFEGUARDS",
    "SCOPED",
    "FittedSafeguards",
    "LearningRun",
    "SafeguardRun",
    "calibrate",
    "fit_safeguards",
    "needs_states",
]

SCOPED = frozenset({"scope", *(modelled("combined", k) for k in MODEL_KINDS)})  # fit a scope on the runs' states

T = TypeVar("T")


@dataclass(frozen=True)
class FittedSafeguards:
    """What a job's safeguards learned from its calibration runs; None where none of them needs it."""

    scope: Scope | None = None  # the calibration runs' states (scope, combined)
    bounds: dict[str, float] | None = None  # per model kind, the floor on one step's predicted increment
    sampling: Calibration | None = None  # the shipped agent's calibration while it samples its actions (continual)


def _needed(value: T | None, what: str, safeguard: str) -> T:
    """``value``, or an error: a safeguard run without what it must be fitted with would measure nothing."""
    if value is None:
        raise BenchError(f"safeguard {safeguard!r} needs the fitted {what}; fit_safeguards was given no {safeguard!r}")
    return value


def calibrate(
    spec: JobSpec,
    make_policy: Callable[[gym.Env], Policy],
    label: str,
    on_episode: Callable[[Episode], None] | None = None,
    record_states: bool = False,
) -> tuple[list[Episode], Calibration]:
    """The job's calibration runs of ``make_policy`` on the reference variant, and the calibration fitted on them."""
    variant = get(spec.scenario).reference_variant
    runs = rollout(functools.partial(plain_env, spec.scenario, variant), make_policy, spec.seeds("calibration"),
                   objective=OBJECTIVE, on_episode=on_episode, record_states=record_states)
    calibration = Calibration.fit(
        [e.increments for e in runs],
        alpha=spec.alpha,
        detectors=list(spec.detectors),
        scenario=spec.scenario,
        obs_shape=get(spec.scenario).make(variant).observation_space.shape,
        metadata={"policy": label, "variant": variant, "job_seed": spec.seed},
        objective=OBJECTIVE,
    )
    return runs, calibration


def needs_states(safeguards: tuple[str, ...]) -> bool:
    """Whether the calibration runs must record their states: for a scope, or a model's bound."""
    return bool(SCOPED & set(safeguards)) or any(model_kind(g) is not None for g in safeguards)


def fit_safeguards(spec: JobSpec, cal_runs: list[Episode]) -> FittedSafeguards:
    """What the job's safeguards learn from its calibration runs: the scope their states, each shield a bound.

    The scope and the models' bounds need the runs' states: roll them out with ``record_states=True`` when
    :func:`needs_states`.
    """
    scope, sampling = None, None
    if SCOPED & set(spec.safeguards):
        from mesaguard.scope import Scope

        scope = Scope.fit([e.states for e in cal_runs], method="mahalanobis", alpha=spec.alpha, scenario=spec.scenario)
    kinds = sorted({k for k in map(model_kind, spec.safeguards) if k is not None}, key=MODEL_KINDS.index)
    bounds = {kind: _model_bound(spec, kind, cal_runs) for kind in kinds} or None
    if "continual" in spec.safeguards:
        sampling = _sampling_calibration(spec)
    return FittedSafeguards(scope=scope, bounds=bounds, sampling=sampling)


def _model_bound(spec: JobSpec, kind: str, cal_runs: list[Episode]) -> float:
    """The floor on one step's increment as the model of ``kind`` predicts it on the calibration runs' steps
    (:mod:`mesaguard.safeguards.model_kinds`); for the oracle copy, the real increments."""
    from mesaguard.safeguards.bound import increment_bound
    from mesaguard.safeguards.model_kinds import model_increments, scenario_model

    model = scenario_model(spec.scenario, kind, seed=spec.seed)
    if isinstance(model, str):  # the copy: its predictions are the real increments
        return increment_bound([e.increments for e in cal_runs], spec.alpha)
    steps = [(_needed(e.states, "calibration runs' states", modelled("shield", kind)),
              _needed(e.actions, "calibration runs' actions", modelled("shield", kind))) for e in cal_runs]
    predicted = model_increments(model, steps, OBJECTIVE, seeds=[e.seed for e in cal_runs])
    return increment_bound(predicted, spec.alpha)


def _sampling_calibration(spec: JobSpec) -> Calibration:
    """The calibration of the shipped agent as it acts while it learns: sampling its actions, as PPO does.

    A learner explores; calibrated on its argmax runs instead, a guard sees every detour as harm (on
    supervisor's reference variant the argmax runs score the same every time, a sampled one less now and then).
    """
    import torch

    from mesaguard.policies import LoadedPolicy, load_agent

    torch.manual_seed(spec.seed)
    agent = load_agent(spec.scenario)
    sampling = LoadedPolicy(agent.policy, agent.metadata, deterministic=False)
    return calibrate(spec, lambda env: sampling, "agent, sampling")[1]


def _safeguarded_env(
    scenario: str,
    variant: str,
    calibration: Calibration,
    detectors: tuple[str, ...],
    scope: Scope | None,
    shield: tuple[str, float, int] | None,
) -> gym.Env:
    """The deploy env under a ``Stop`` guard (``detectors``, ``scope``), with a one-step shield inside if
    ``shield`` (its model kind, bound and seed)."""
    from mesaguard.guard import GuardedEnv
    from mesaguard.protocols import Stop
    from mesaguard.safeguards.model_kinds import scenario_model
    from mesaguard.safeguards.shield import Shield

    env = plain_env(scenario, variant)
    if shield is not None:
        kind, bound, seed = shield
        env = Shield(env, model=scenario_model(scenario, kind, seed=seed), horizon=1, bound=bound, seed=seed)
    if not detectors and scope is None:
        return env
    return GuardedEnv(env, calibration, detectors=list(detectors), protocol=Stop(), objective=OBJECTIVE,
                      scenario=scenario, scope=scope)


MakeEnv = Callable[[], gym.Env]
MakePolicy = Callable[[gym.Env], Policy]


def _scope_run(
    spec: JobSpec, variant: str, calibration: Calibration, fitted: FittedSafeguards
) -> tuple[MakeEnv, MakePolicy]:
    """The agent under a guard with the scope alone and ``Stop``: it is stopped before acting out of scope."""
    scope = _needed(fitted.scope, "scope", "scope")
    env = functools.partial(_safeguarded_env, spec.scenario, variant, calibration, (), scope, None)
    return env, policy_factory(spec.scenario, spec.policy)


def _shield(fitted: FittedSafeguards, kind: str, spec: JobSpec, safeguard: str) -> tuple[str, float, int]:
    bounds = _needed(fitted.bounds, "increment bounds", safeguard)
    return kind, _needed(bounds.get(kind), f"{kind} model's increment bound", safeguard), spec.seed


def _shield_run(
    spec: JobSpec, variant: str, calibration: Calibration, fitted: FittedSafeguards, kind: str = "copy"
) -> tuple[MakeEnv, MakePolicy]:
    """The agent behind a one-step lookahead shield on a model of ``kind`` (catastrophes and increments below
    the bound, as the model sees them)."""
    shield = _shield(fitted, kind, spec, modelled("shield", kind))
    env = functools.partial(_safeguarded_env, spec.scenario, variant, calibration, (), None, shield)
    return env, policy_factory(spec.scenario, spec.policy)


def _quantilizer_run(
    spec: JobSpec, variant: str, calibration: Calibration, fitted: FittedSafeguards, cloned: bool = False
) -> tuple[MakeEnv, MakePolicy]:
    """The agent's ranking quantilized over a trusted base, adaptive q: the scripted aligned policy smoothed (an
    oracle: it reads the deployed env), or with ``cloned`` a clone of its demonstrations on the reference variant."""
    env = functools.partial(plain_env, spec.scenario, variant)
    return env, functools.partial(_quantilizer, spec, cloned=cloned)


DEMONSTRATIONS = 100  # reference-variant episodes the cloned base learns from (the job's calibration seeds)


def _cloned_base(spec: JobSpec, n: int) -> Callable[[Any], np.ndarray]:
    """The scripted aligned policy demonstrating on the reference variant (10% random actions), cloned."""
    from mesaguard.safeguards.cloning import behaviour_clone, demonstrations

    scenario = get(spec.scenario)
    seeds = list(spec.seeds("calibration"))[:DEMONSTRATIONS]
    xs, ys = demonstrations(functools.partial(plain_env, spec.scenario, scenario.reference_variant), scenario.aligned,
                            seeds, noise=0.1, seed=spec.seed)
    return behaviour_clone(xs, ys, n)


def _quantilizer(spec: JobSpec, env: gym.Env, cloned: bool = False) -> Policy:
    from mesaguard.safeguards.quantilizer import Quantilizer, disagreement, policy_logits, smoothed

    n = int(env.action_space.n)  # type: ignore[attr-defined]  # BenchConfig admits discrete action spaces only
    # The scripted aligned policy reads the deployed env (its hidden layout): an oracle base, the upper bound.
    base = _cloned_base(spec, n) if cloned else smoothed(get(spec.scenario).aligned(env), n)
    agent_policy = policy_factory(spec.scenario, spec.policy)(env)
    values: Any
    if hasattr(agent_policy, "policy"):  # a shipped agent: its own logits rank the actions
        values = policy_logits(agent_policy)
    else:  # a scripted policy: it prefers its action
        values = lambda obs: np.eye(n)[int(agent_policy(obs))]  # noqa: E731
    return Quantilizer(base, values, q=0.05, uncertainty=disagreement(base, values), seed=spec.seed)


def _impact_run(
    spec: JobSpec, variant: str, calibration: Calibration, fitted: FittedSafeguards
) -> tuple[MakeEnv, MakePolicy]:
    """The agent trained with an impact penalty (shipped, ``load_agent(scenario, impact=True)``), unguarded."""
    env = functools.partial(plain_env, spec.scenario, variant)
    return env, functools.partial(_impact_agent, spec.scenario)


def _impact_agent(scenario: str, env: gym.Env) -> Policy:
    from mesaguard.policies import load_agent

    return load_agent(scenario, impact=True)


def _combined_run(
    spec: JobSpec, variant: str, calibration: Calibration, fitted: FittedSafeguards, kind: str = "copy"
) -> tuple[MakeEnv, MakePolicy]:
    """Shield on a model of ``kind`` inside, then scope and every detector jointly under ``Stop``: all the
    run-time safeguards at once."""
    name = modelled("combined", kind)
    scope = _needed(fitted.scope, "scope", name)
    shield = _shield(fitted, kind, spec, name)
    env = functools.partial(_safeguarded_env, spec.scenario, variant, calibration, spec.detectors, scope, shield)
    return env, policy_factory(spec.scenario, spec.policy)


def _continual_run(
    spec: JobSpec, variant: str, fitted: FittedSafeguards, tick: Callable[[Episode], None] | None
) -> list[Episode]:
    """The shipped agent keeps learning (PPO) on the deploy episodes, under every detector jointly and ``Stop``
    with the design-time calibration of its sampling runs; an alarm rolls it back to its last checkpoint that
    passed."""
    from mesaguard.continual import ContinualDeployment, EpisodeSeeds, ppo_from_policy
    from mesaguard.policies import load_agent

    seeds = spec.seeds("evaluation")
    sampling = _needed(fitted.sampling, "sampling calibration", "continual")
    guarded = _safeguarded_env(spec.scenario, variant, sampling, spec.detectors, None, None)

    def counted(episode: Episode) -> None:  # the last round may play past the seeds: those are not counted
        if tick is not None and len(env.episodes) <= len(seeds):
            tick(episode)

    env = EpisodeSeeds(guarded, seeds, objective=OBJECTIVE, on_episode=counted)
    model = ppo_from_policy(load_agent(spec.scenario), env, seed=spec.seed)
    ContinualDeployment(model, env, rounds=1, steps_per_round=model.n_steps).run(episodes=len(seeds))
    env.close()
    return env.episodes[: len(seeds)]


SafeguardRun = Callable[[JobSpec, str, Calibration, FittedSafeguards], tuple[MakeEnv, MakePolicy]]
SAFEGUARDS: dict[str, SafeguardRun] = {
    "scope": _scope_run,
    **{modelled("shield", k): functools.partial(_shield_run, kind=k) for k in MODEL_KINDS},
    "quantilizer": _quantilizer_run,
    "quantilizer-bc": functools.partial(_quantilizer_run, cloned=True),
    **{modelled("combined", k): functools.partial(_combined_run, kind=k) for k in MODEL_KINDS},
    "impact": _impact_run,
}
"""Preventive safeguards the bench can run, by name: ``(spec, variant, calibration, fitted) ->
(make_env, make_policy)`` for the safeguarded runs of one variant. The shield and the combination are named
with their model's kind (:func:`modelled`): ``shield[simulator]``, ``shield[learned]``, ``shield[copy]`` (the
oracle, :func:`is_oracle`)."""

LearningRun = Callable[[JobSpec, str, FittedSafeguards, Callable[[Episode], None] | None], list[Episode]]
LEARNING: dict[str, LearningRun] = {"continual": _continual_run}
"""Safeguards under which the agent changes as it runs, by name: ``(spec, variant, fitted, on_episode) ->
episodes``, one per evaluation seed."""
