"""The kinds of world model a shield can look ahead on for a scenario, by name, and each one's own bound.

What the bench and the command line name (``mesaguard bench --shield-model simulator,learned,copy``):

``simulator``
    the scenario's designer's simulator (``get(name).simulator(seed)``): the observed state under the
    reference variant's rules, its own random state;
``learned``
    the scenario's shipped learned model (:func:`~mesaguard.safeguards.learned.load_learned`), fitted on
    reference-variant transitions only;
``copy``
    a copy of the deployed env itself: the **oracle**, an upper bound no deployed system reaches.

:data:`MODEL_KINDS` lists them in the tables' order: what a deployment can have first, the oracle last.

A shield's increment bound is a floor on one step's increment *as its model predicts it*
(:func:`model_increments`): on each step of in-distribution reference episodes the model is forked at the
observation the agent acted on and stepped with the agent's action, and
:func:`~mesaguard.safeguards.bound.increment_bound` is taken over those predicted increments. A model
that predicts the increments with an error then does not fire the bound on in-distribution episodes more
often than ``alpha`` (exchangeable episodes; the calibration guarantee is about the model's own view, which is
what the shield compares). For the copy, the predicted increments are the real ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mesaguard.objective import Objective, Transition, make_objective
from mesaguard.safeguards.models import ModelError, WorldModel

__all__ = ["MODEL_KINDS", "ORACLE_KINDS", "check_kind", "model_increments", "scenario_model"]

MODEL_KINDS: tuple[str, ...] = ("simulator", "learned", "copy")
ORACLE_KINDS = frozenset({"copy"})


def check_kind(kind: Any) -> str:
    """``kind`` if it names a model kind, else a :class:`ModelError` listing them.

    >>> check_kind("learned")
    'learned'
    >>> check_kind("world")
    Traceback (most recent call last):
    ...
    mesaguard.safeguards.models.ModelError: shield model 'world'; expected one of simulator, learned, copy (the oracle)
    """
    if kind not in MODEL_KINDS:
        raise ModelError(f"shield model {kind!r}; expected one of {', '.join(MODEL_KINDS)} (the oracle)")
    return str(kind)


def scenario_model(scenario: str, kind: str, seed: int | None = None) -> str | WorldModel:
    """The model of ``kind`` for ``scenario``: ``"copy"`` as a string (the shield copies its own env), else a
    :class:`~mesaguard.safeguards.models.WorldModel` (a scenario without one is a :class:`ModelError`)."""
    check_kind(kind)
    if kind == "copy":
        return "copy"
    if kind == "learned":
        from mesaguard.safeguards.learned import load_learned, shipped_models

        if scenario not in shipped_models():
            raise ModelError(
                f"scenario {scenario!r} has no shipped learned model (shipped for: {', '.join(shipped_models())}); "
                f"fit one with: python -m mesaguard.safeguards.learned train {scenario}"
            )
        return load_learned(scenario)
    from mesaguard.scenarios import get

    build = get(scenario).simulator
    if build is None:
        raise ModelError(f"scenario {scenario!r} has no designer's simulator")
    model = build(seed=seed)
    if not isinstance(model, WorldModel):
        raise ModelError(f"scenario {scenario!r}: simulator() returned {model!r}; expected a world model")
    return model


def model_increments(
    model: WorldModel,
    episodes: Sequence[tuple[Sequence[Any], Sequence[Any]]],
    objective: str | Objective = "info:base_objective",
    seeds: Sequence[int | None] | None = None,
) -> list[np.ndarray]:
    """Per episode, the increment the model predicts on each step for the action taken there.

    ``episodes`` holds each episode's ``(observations, actions)``: the states the agent acted on, in order,
    and its actions (``rollout(..., record_states=True)`` keeps both). The model is reset with the
    episode's seed (``seeds``) before its forks, as a shield resets it. A prediction that is not finite
    raises the objective's error: a bound cannot be calibrated on it.
    """
    judge = make_objective(objective)
    out = []
    for i, (states, actions) in enumerate(episodes):
        model.reset(None if seeds is None else seeds[i])
        increments = np.empty(len(states))
        for t, (obs, action) in enumerate(zip(states, actions, strict=True)):
            next_obs, reward, terminated, truncated, info = model.fork(obs, t).step(action)
            u = judge.increment(Transition(float(reward), info, obs, action, next_obs, terminated, truncated), t + 1)
            increments[t] = u
        out.append(increments)
    return out
