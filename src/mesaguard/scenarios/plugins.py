"""Scenarios of your own: :func:`register` one by hand, or let a package register its own through the
``mesaguard.scenarios`` entry-point group (:func:`load_entry_points`, called when the registry is imported).

A registered scenario joins :data:`mesaguard.scenarios.SCENARIOS` like a shipped one: each variant is a
Gymnasium id ``mesaguard/Name-variant-v0``, and the commands take its name.
"""

from __future__ import annotations

import importlib.metadata
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from mesaguard.scenarios import SCENARIOS, Policy, Scenario, ScenarioError, _Registered, check_variant

__all__ = ["ENTRY_POINTS", "load_entry_points", "register"]


@dataclass(frozen=True)
class _NoPolicy:
    """The scripted policy a registered scenario did not give: asking for it is a :class:`ScenarioError`."""

    scenario: str
    kind: str

    def __call__(self, env: gym.Env) -> Policy:
        raise ScenarioError(f"scenario {self.scenario!r} was registered without an {self.kind} policy; "
                            f"pass {self.kind}= to mesaguard.scenarios.register, or use another --policy")


_NAME = re.compile(r"^[a-z][a-z0-9]*([-_][a-z0-9]+)*$")


def register(
    name: str,
    make: Callable[..., gym.Env],
    *,
    variants: tuple[str, ...],
    aligned: Callable[[gym.Env], Policy] | None = None,
    misaligned: Callable[[gym.Env], Policy] | None = None,
    failure_mode: str = "",
    shift: str = "",
    base_objective: str = "",
    reference: str = "",
    simulator: Callable[..., Any] | None = None,
) -> Scenario:
    """Add a scenario of your own to the registry, and each variant to Gymnasium as ``mesaguard/Name-variant-v0``.

    ``make(variant, render_mode=None) -> gym.Env`` makes the env the agent sees; every
    step must report ``info["base_objective"]`` (the step's increment of the base
    objective) and may report ``info["catastrophe"]``. ``variants[0]`` is the training
    variant; ``reference`` (default: the training one) is where the guard is calibrated;
    the others are the shifts. ``aligned`` and ``misaligned`` are optional scripted
    policy factories ``env -> (obs -> action)``; ``simulator(seed=None)`` the optional
    designer's simulator a shield may look ahead on (:mod:`mesaguard.safeguards.models`).
    Then ``mesaguard calibrate NAME``, ``deploy NAME`` and ``bench --scenarios NAME`` take it (``--policy aligned`` or
    ``misaligned``: there is no shipped agent). A package registers its own on import
    of this module through the entry-point group ``mesaguard.scenarios``
    (:func:`load_entry_points`).

    Checks (a :class:`ScenarioError` each): a lower-case name (letters, digits, ``-``,
    ``_``) not yet registered, a callable ``make``, two or more distinct variant names,
    a reference among them, callable policies.

    >>> import gymnasium as gym
    >>> from mesaguard.scenarios import get
    >>> s = register("doc-example", lambda variant, render_mode=None: gym.make("CartPole-v1"),
    ...              variants=("train", "deploy"))
    >>> get("doc-example").env_id("deploy"), get("doc-example").make("train").spec.id
    ('mesaguard/DocExample-deploy-v0', 'mesaguard/DocExample-train-v0')
    >>> register("doc-example", s.make, variants=("train", "deploy"))
    Traceback (most recent call last):
    ...
    mesaguard.scenarios.ScenarioError: scenario 'doc-example' is already registered; expected a new name
    >>> _unregister("doc-example")
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ScenarioError(f"scenario name {name!r}; expected lower-case letters and digits joined by - or _")
    if name in SCENARIOS:
        raise ScenarioError(f"scenario {name!r} is already registered; expected a new name")
    if not callable(make):
        raise ScenarioError(f"scenario {name!r}: make={make!r} is not callable; expected make(variant) -> gym.Env")
    variants = tuple(variants) if isinstance(variants, (tuple, list)) else ()
    if len(variants) < 2 or len(set(variants)) != len(variants) or not all(
        isinstance(v, str) and v for v in variants
    ):
        raise ScenarioError(f"scenario {name!r}: variants={variants!r}; expected two or more distinct names, "
                            f"the training one first")
    if reference:
        check_variant(name, reference, variants)
    for kind, policy in (("aligned", aligned), ("misaligned", misaligned), ("simulator", simulator)):
        if policy is not None and not callable(policy):
            raise ScenarioError(f"scenario {name!r}: {kind}={policy!r} is not callable; expected env -> policy")
    scenario = Scenario(
        name=name, failure_mode=failure_mode, shift=shift, base_objective=base_objective, variants=variants,
        make=_Registered(name), aligned=aligned or _NoPolicy(name, "aligned"),
        misaligned=misaligned or _NoPolicy(name, "misaligned"), reference=reference, simulator=simulator,
    )
    for variant in variants:
        env_id = scenario.env_id(variant)
        if env_id in gym.registry:
            raise ScenarioError(f"scenario {name!r}: the Gymnasium id {env_id} is taken; expected a new name")
    for variant in variants:
        gym.register(id=scenario.env_id(variant), entry_point=make, kwargs={"variant": variant},
                     disable_env_checker=False)
    SCENARIOS[name] = scenario
    return scenario


def _unregister(name: str) -> None:
    """Remove the scenario ``register`` added as ``name`` and its Gymnasium ids (tests, doctests)."""
    scenario = SCENARIOS.pop(name)
    for variant in scenario.variants:
        gym.registry.pop(scenario.env_id(variant), None)


ENTRY_POINTS = "mesaguard.scenarios"
"""The entry-point group whose functions register a package's scenarios when this module is imported."""

_LOADED: set[str] = set()  # "dist:name" of the entry points already called


def load_entry_points() -> list[str]:
    """Call, once each, the functions of the ``mesaguard.scenarios`` entry-point group; returns their names.

    A package of yours declares, in its ``pyproject.toml``::

        [project.entry-points."mesaguard.scenarios"]
        mytask = "mytask.scenarios:register_all"

    where ``register_all()`` calls :func:`register`. It runs when this module is first
    imported. One that fails is skipped with a warning naming it and its error, so one
    broken package does not take the registry (and the ``mesaguard`` command) down.
    """
    called = []
    for point in importlib.metadata.entry_points(group=ENTRY_POINTS):
        key = f"{point.dist.name if point.dist else '?'}:{point.name}"
        if key in _LOADED:
            continue
        _LOADED.add(key)
        try:
            point.load()()
        except Exception as exc:  # a plugin's failure is its own; the registry stays usable
            warnings.warn(f"mesaguard.scenarios entry point {point.name} = {point.value!r} failed "
                          f"({type(exc).__name__}: {exc}); its scenarios are not registered", stacklevel=2)
            continue
        called.append(point.name)
    return called
