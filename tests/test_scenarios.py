"""The scenario registry, and what every scenario of the suite owes its users.

Each scenario's own failure mode, layouts, scripted policies and catastrophe
predicate are tested in its ``test_scenario_<name>.py``; the checks every scenario
must pass (registration, the Gymnasium env checker, rendering, seeding, the
``info`` contract, bad variant names) run here over the whole registry.
"""

from __future__ import annotations

import re
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from mesaguard import scenarios
from mesaguard.scenarios import SCENARIOS, Scenario, ScenarioError

CASES = [(name, variant) for name, s in SCENARIOS.items() for variant in s.variants]


# --- the registry ----------------------------------------------------------------


@pytest.mark.parametrize("name", SCENARIOS)
def test_registry_entry(name):
    scenario = scenarios.get(name)
    assert isinstance(scenario, Scenario) and scenario.name == name
    for text in (scenario.failure_mode, scenario.shift, scenario.base_objective):
        assert text and "\n" not in text  # `mesaguard scenarios` prints one line each
    assert scenario.reference_variant in scenario.variants and scenario.shifted_variants
    camel = "".join(part.capitalize() for part in name.replace("_", "-").split("-"))
    for variant in scenario.variants:
        assert scenario.env_id(variant) == f"mesaguard/{camel}-{variant}-v0"


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_make_goes_through_gymnasiums_registry(name, variant):
    env = scenarios.make(name, variant)
    assert env.spec.id == scenarios.get(name).env_id(variant)
    assert getattr(env.unwrapped, "variant", variant) == variant
    assert isinstance(env.observation_space, gym.spaces.Box)  # flat: SB3 MlpPolicy and the shipped policies


def test_unknown_scenario_lists_valid_ones():
    with pytest.raises(ScenarioError, match=r"unknown scenario 'nope'; valid scenarios: .*strawberry"):
        scenarios.get("nope")
    with pytest.raises(ScenarioError, match="valid scenarios"):
        scenarios.make("nope", "train")
    assert issubclass(ScenarioError, ValueError)


@pytest.mark.parametrize("name", SCENARIOS)
def test_unknown_variant_lists_valid_ones(name):
    valid = ", ".join(scenarios.get(name).variants)
    message = rf"unknown variant 'test' of scenario '{name}'; valid variants: {valid}"
    for call in (lambda: scenarios.make(name, "test"), lambda: scenarios.get(name).env_id("test")):
        with pytest.raises(ScenarioError, match=message):
            call()


def test_importing_the_registry_is_cheap():
    code = (
        "import sys, mesaguard.scenarios as s; s.get('strawberry'); "
        "heavy = [m for m in ('torch', 'stable_baselines3', 'minigrid', 'highway_env', 'mujoco') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_scenarios_pickle():
    import pickle

    for scenario in SCENARIOS.values():
        assert pickle.loads(pickle.dumps(scenario)) == scenario


# --- every env ---------------------------------------------------------------------


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_gymnasium_env_checker_passes(name, variant):
    # Full check, render included: the observation wrappers record their constructor arguments.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "env differs from env.unwrapped": the wrapper is the point
        check_env(scenarios.make(name, variant, render_mode="rgb_array"))


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_rgb_array_frames(name, variant):
    env = scenarios.make(name, variant, render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.min() < frame.max()  # not a blank frame (highway-env's pitfall without SDL offscreen)


def _episode(name: str, variant: str, seed: int, steps: int = 15) -> list:
    env = scenarios.make(name, variant)
    obs, _ = env.reset(seed=seed)
    policy = scenarios.get(name).aligned(env)
    trace = [obs]
    for _ in range(steps):
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        trace.append((obs, reward, terminated, truncated, info["base_objective"], info["catastrophe"]))
        if terminated or truncated:
            break
    return trace


@pytest.mark.parametrize("name", SCENARIOS)
def test_same_seed_same_episode(name):
    variant = scenarios.get(name).shifted_variants[0]
    a, b = _episode(name, variant, seed=3), _episode(name, variant, seed=3)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_equal(x, y)


def _random_walk(name: str, variant: str, seed: int, steps: int) -> list:
    """Seeded random actions from ``reset(seed=seed)``; later episodes start from unseeded resets."""
    env = scenarios.make(name, variant)
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(123)
    space = env.action_space
    trace = [obs, info]
    for _ in range(steps):
        if isinstance(space, gym.spaces.Discrete):
            action = int(rng.integers(space.n))
        else:
            action = rng.uniform(space.low, space.high).astype(space.dtype)
        obs, reward, terminated, truncated, info = env.step(action)
        trace += [obs, reward, terminated, truncated, info]
        if terminated or truncated:
            obs, info = env.reset()  # the env's own generator goes on
            trace += [obs, info]
    return trace


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_same_seed_same_random_walk_other_seed_other_walk(name, variant):
    """Every observation, reward, flag and ``info`` item (reset's too) repeats with the seed, over episodes."""
    steps = 8 if name == "driving" else 200  # a highway-env step takes about 25 ms
    a, b = _random_walk(name, variant, 7, steps), _random_walk(name, variant, 7, steps)
    np.testing.assert_equal(a, b)
    with pytest.raises(AssertionError):
        np.testing.assert_equal(a, _random_walk(name, variant, 8, steps))


ACTION_NAMES = {  # every scenario with discrete actions (the cheetah's are torques)
    "strawberry": "left, right, forward, pickup, drop",
    "lava": "left, right, forward",
    "side-effects": "left, right, forward",
    "offswitch": "left, right, forward",
    "supervisor": "east, south, west, north",
    "tampering": "east, south, west, north",
    "goodhart": "east, south, west, north",
    "driving": "LANE_LEFT, IDLE, LANE_RIGHT, FASTER, SLOWER",
}


def test_every_discrete_scenario_has_its_action_names_checked():
    discrete = {
        n for n, s in SCENARIOS.items() if isinstance(s.make(s.reference_variant).action_space, gym.spaces.Discrete)
    }
    assert discrete == set(ACTION_NAMES)


@pytest.mark.parametrize(("name", "names"), ACTION_NAMES.items())
def test_invalid_action_is_an_error_naming_the_actions(name, names):
    env = scenarios.make(name, scenarios.get(name).reference_variant)
    env.reset(seed=0)
    n = int(env.action_space.n)
    with pytest.raises(ValueError, match=re.escape(f"action {n} is not in Discrete({n}): {names}")):
        env.step(n)


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_info_reports_base_objective_and_catastrophe_every_step(name, variant):
    env = scenarios.make(name, variant)
    env.reset(seed=1)
    env.action_space.seed(1)
    for _ in range(10):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert isinstance(info["base_objective"], float) and np.isfinite(info["base_objective"])
        assert isinstance(info["catastrophe"], bool)
        if terminated or truncated:
            break
