"""What a shield looks ahead on: a world model that forks a simulation from the current observation.

A lookahead is only as good as the model it runs on. :class:`~mesaguard.safeguards.shield.Shield`
asks its model for a fresh :class:`Simulation` at the current step, ``model.fork(obs, step)``, and
plays a plan on it; the simulation's ``info`` is the model's view of each step (the increment under the
objective's key, and ``info["catastrophe"]``: harm as the model sees it). Three kinds:

* :class:`CopyModel` (``model="copy"``): a copy of the *deployed* env itself, its hidden layout and its
  random state included. No deployed system has that; it is the **oracle**, kept as the labelled upper
  bound (``oracle = True``; tables name it so).
* :class:`DesignerSimulator`: what a team has at design time, an env under the *reference* variant's
  rules set to the observed state, its random state drawn from the model's own Generator (seeded by
  ``reset(seed)``), independent of the real env's. Each scenario provides one:
  ``mesaguard.scenarios.get(name).simulator()``.
* a learned model (:mod:`mesaguard.safeguards.learned`): one-step dynamics, increment and catastrophe
  probability fitted on reference-variant transitions.

A non-oracle model never receives the deployed env: it sees the observations the shield sees, the step
count, and its own seed. ``tests/test_shield_models.py`` holds that with an env whose ``deepcopy`` raises.

The :class:`WorldModel` protocol, for a user's own model::

    class MyModel:
        name = "mine"
        oracle = False
        def reset(self, seed: int | None) -> None: ...          # a new episode; reseed your RNG
        def fork(self, obs, step: int) -> Simulation: ...        # a simulation at the current state

"""

from __future__ import annotations

import copy
import sys
from typing import Any, Protocol, SupportsFloat, runtime_checkable

import gymnasium as gym
import numpy as np

__all__ = ["CopyModel", "DesignerSimulator", "ModelError", "Simulation", "WorldModel", "world_model"]


class ModelError(ValueError):
    """A world model built or used with arguments it cannot use."""


@runtime_checkable
class Simulation(Protocol):
    """One forked simulation: Gymnasium's ``step`` and nothing else."""

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]: ...


@runtime_checkable
class WorldModel(Protocol):
    """What a shield looks ahead on (module docstring)."""

    name: str
    oracle: bool

    def reset(self, seed: int | None) -> None: ...

    def fork(self, obs: Any, step: int) -> Simulation: ...


class CopyModel:
    """The oracle: a copy of the deployed env chain at its current state (hidden state and RNG included).

    ``copy.deepcopy`` of everything inside the shield (observation wrappers included, so a rollout
    policy sees the observations it was trained on). A copy carries the env's RNG state, so on a
    stochastic env it foresees the draw the real env will make: exact, and knowledge no deployed
    system has. ``obs`` and ``step`` are ignored: the copy knows the state itself.

    Simulators that pickle by constructor. ``copy.deepcopy`` of a Gymnasium MuJoCo
    env does not copy the simulation: those envs are ``EzPickle``, whose
    ``__getstate__`` keeps only the constructor arguments and whose ``__setstate__``
    builds a *new* env from them (a fresh ``MjData`` before any reset; for the
    cheetah scenario's subclass, whose constructor differs from HalfCheetah's, a
    ``TypeError``). This model therefore copies such a layer by its ``__dict__``
    (bypassing ``__getstate__``): the ``MjModel`` is shared (stepping does not change
    it; the torso mass of ``deploy-dynamics`` lives there and is kept), the ``MjData``
    is copied with ``mujoco.mj_copyData`` into a new ``MjData`` (every field: state,
    time, warm start, controls), the env's ``np_random`` is deep-copied, and the
    renderer is copied without its viewers (a copy is never drawn). Steps of the copy
    then match the original's bit for bit (``tests/test_shield.py``).
    """

    name = "copy"
    oracle = True

    def __init__(self, env: gym.Env) -> None:
        self.env = env
        self._shared = _descriptions(env)

    def reset(self, seed: int | None) -> None:
        self._shared = _descriptions(self.env)

    def fork(self, obs: Any, step: int) -> Simulation:
        return _simulator_copy(self.env, self._shared)


class DesignerSimulator:
    """A design-time simulator: ``build(obs, step, rng) -> env`` under the reference variant's rules.

    ``build`` returns an env (the agent's observation wrappers included) whose state is set from the
    observation ``obs`` at episode step ``step``; ``rng`` is this model's own Generator, seeded by
    ``reset(seed)`` from ``(seed, episode seed)``, to draw whatever the observation does not show
    (another's random state, never the real env's). What the observation does not hold, the simulator
    fills in as the reference variant has it: its errors are the design-time model's errors.

    >>> import gymnasium as gym
    >>> def build(obs, step, rng):
    ...     env = gym.make("CartPole-v1")
    ...     env.reset(seed=int(rng.integers(2**31)))
    ...     env.unwrapped.state = np.array(obs, dtype=np.float64)
    ...     return env
    >>> model = DesignerSimulator(build, name="cartpole")
    >>> model.reset(seed=0)
    >>> sim = model.fork(np.zeros(4), step=0)
    >>> sim.step(1)[0].shape
    (4,)
    """

    oracle = False

    def __init__(self, build: Any, name: str = "simulator", seed: int | None = None) -> None:
        if not callable(build):
            raise ModelError(f"build={build!r}; expected a callable build(obs, step, rng) -> env")
        self.build = build
        self.name = name
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None) -> None:
        if seed is not None:
            self.rng = np.random.default_rng(seed if self.seed is None else [self.seed, seed])

    def fork(self, obs: Any, step: int) -> Simulation:
        sim = self.build(obs, step, self.rng)
        if not isinstance(sim, Simulation):
            raise ModelError(f"{self.name}: build returned {sim!r}; expected an env with step()")
        return sim


def world_model(model: Any, env: gym.Env) -> WorldModel:
    """``"copy"`` -> :class:`CopyModel` of ``env`` (the oracle); a :class:`WorldModel` as it is."""
    if isinstance(model, str):
        if model == "copy":
            return CopyModel(env)
        raise ModelError(
            f"model={model!r}; expected 'copy' (the oracle: a copy of the deployed env) or a world model "
            "(a scenario's simulator(), a learned model, or an object with name, oracle, reset(seed), fork(obs, step))"
        )
    if not isinstance(model, WorldModel):
        raise ModelError(f"model={model!r}; expected 'copy' or a world model with name, oracle, reset(seed), "
                         "fork(obs, step)")
    return model


def _simulator_copy(env: gym.Env, shared: dict[int, Any]) -> gym.Env:
    """``copy.deepcopy`` of the env chain, with its ``EzPickle`` layers copied by state (module docstring)."""
    memo = dict(shared)
    layer: Any = env
    while True:
        if isinstance(layer, gym.utils.EzPickle) and id(layer) not in memo:
            _copy_by_state(layer, memo)
        if not isinstance(layer, gym.Wrapper):
            return copy.deepcopy(env, memo)
        layer = layer.env


def _copy_by_state(obj: Any, memo: dict[int, Any]) -> Any:
    """A copy of ``obj`` made from its ``__dict__``, not from its constructor (``EzPickle``); MuJoCo data copied."""
    new = object.__new__(type(obj))
    memo[id(obj)] = new
    mujoco = sys.modules.get("mujoco")
    state = obj.__dict__
    if mujoco is not None:
        for value in state.values():
            if isinstance(value, mujoco.MjData) and id(value) not in memo:
                data = mujoco.MjData(value.model)
                mujoco.mj_copyData(data, value.model, value)
                memo[id(value)] = data
        renderer = state.get("mujoco_renderer")
        if renderer is not None and id(renderer) not in memo and hasattr(renderer, "_viewers"):
            plain = object.__new__(type(renderer))
            memo[id(renderer)] = plain
            viewerless = {k: v for k, v in renderer.__dict__.items() if k not in ("_viewers", "viewer")}
            plain.__dict__.update(copy.deepcopy(viewerless, memo), _viewers={}, viewer=None)
    new.__dict__.update(copy.deepcopy(state, memo))
    return new


def _descriptions(env: gym.Env) -> dict[int, Any]:
    """A ``deepcopy`` memo that shares what describes the env chain rather than its state.

    The spaces, ``spec`` and ``metadata`` of every layer (and MiniGrid's ``mission_space``)
    are not changed by stepping, nor is a MuJoCo ``MjModel``; sharing them makes a copy
    cheaper (``benchmarks/results/recorded.json``). A rollout policy that samples a copy's
    action space draws from the original's space RNG.
    """
    memo: dict[int, Any] = {}
    layer: Any = env
    while True:
        attrs = getattr(layer, "__dict__", {})
        for name in ("observation_space", "action_space", "_observation_space", "_action_space", "spec", "metadata",
                     "_metadata", "mission_space"):
            if attrs.get(name) is not None:
                memo[id(attrs[name])] = attrs[name]
        mujoco = sys.modules.get("mujoco")
        if mujoco is not None:  # a MuJoCo model: constants of the simulation, unchanged by stepping
            for value in attrs.values():
                if isinstance(value, mujoco.MjModel):
                    memo[id(value)] = value
        if not isinstance(layer, gym.Wrapper):
            return memo
        layer = layer.env
