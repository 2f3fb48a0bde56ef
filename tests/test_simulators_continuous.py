"""The designer's simulators of the driving and cheetah scenarios: no oracle leak, fidelity, fail closed.

A simulator is built from the observation alone under the reference variant's rules; these tests hold
that it never reaches the real env (a sealed env raises on a copy, an extra step or a look at its
random state, and the real env's random state ends as an unshielded twin's), that on the reference
variant it predicts the real step (exactly for the cheetah, whose body is the real one there; the
ego's motion for driving), and that a shield on it fails closed when it raises or returns NaN.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from mesaguard.safeguards.models import DesignerSimulator, ModelError
from mesaguard.safeguards.shield import INFO_KEY, Shield
from mesaguard.scenarios import get, make


class Sealed(gym.Wrapper):
    """The deployed env: one ``step`` per real step; a copy, an extra step or its RNG raises (an oracle leak)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.allowed = 0

    def __deepcopy__(self, memo: dict) -> Any:
        raise AssertionError("the real env was copied")

    @property
    def np_random(self) -> Any:
        raise AssertionError("the real env's random state was read")

    def step(self, action: Any) -> Any:
        if self.allowed <= 0:
            raise AssertionError("the real env was stepped by a lookahead")
        self.allowed -= 1
        return self.env.step(action)


def rng_state(env: gym.Env) -> Any:
    return env.unwrapped.np_random.bit_generator.state


def shielded_episode(name: str, variant: str, policy: Any, steps: int, **shield: Any) -> list[dict]:
    """``steps`` steps of ``policy`` under ``Shield(model=simulator)`` on a sealed deployed env.

    The real env's random state must end as that of an unshielded twin given the same seed and the
    executed actions: a simulator that drew from it would leave it elsewhere.
    """
    real = Sealed(make(name, variant))
    env = Shield(real, **shield)
    obs, _ = env.reset(seed=3)
    records, executed = [], []
    for _ in range(steps):
        real.allowed = 1
        obs, _, terminated, truncated, info = env.step(policy(obs))
        records.append(info[INFO_KEY])
        executed.append(info[INFO_KEY]["executed"])
        if terminated or truncated:
            break
    twin = make(name, variant)
    twin.reset(seed=3)
    for a in executed:
        if a is not None:
            twin.step(np.asarray(a, dtype=np.float32) if name == "cheetah" else a)
    assert rng_state(real.env) == rng_state(twin)
    return records


# ---------------------------------------------------------------------------
# cheetah (MuJoCo)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cheetah():
    pytest.importorskip("mujoco")
    from mesaguard.scenarios import cheetah

    return cheetah


def test_cheetah_simulator_never_reaches_the_real_env(cheetah):
    from mesaguard.policies import load_agent

    agent = load_agent("cheetah")
    records = shielded_episode("cheetah", "deploy-dynamics", agent, 5, model=cheetah.simulator(seed=0),
                               bound=0.5, candidates=4, seed=0)
    assert records and all(r["error"] is None for r in records)
    assert sum(r["lookaheads"] for r in records) >= len(records)  # every step judged on the simulator
    assert any(r["harm"] == "bound" for r in records)  # a floor this high binds: candidates were judged too


def test_cheetah_simulator_is_the_real_step_on_the_reference(cheetah):
    model = cheetah.simulator(seed=0)
    model.reset(seed=1)
    real = cheetah.make_env(get("cheetah").reference_variant)
    obs, _ = real.reset(seed=1)
    actions = np.random.default_rng(0).uniform(-1, 1, (5, 6)).astype(np.float32)
    for t, a in enumerate(actions):
        sim_obs, sim_reward, _, _, sim_info = model.fork(obs, t).step(a)
        obs, reward, _, _, info = real.step(a)
        # The same body, the same state but x (nothing depends on it): float rounding only.
        np.testing.assert_allclose(sim_obs, obs, rtol=0, atol=1e-6)
        assert sim_reward == pytest.approx(reward, abs=1e-6)
        assert sim_info["base_objective"] == pytest.approx(info["base_objective"], abs=1e-6)
        assert sim_info["catastrophe"] is info["catastrophe"] is False
    *_, truncated, _ = model.fork(obs, cheetah.MAX_EPISODE_STEPS - 1).step(actions[0])
    assert truncated  # the episode clock is set from the step count


def test_cheetah_simulator_rejects_a_bad_observation(cheetah):
    with pytest.raises(ModelError, match="17 finite numbers"):
        cheetah.simulator().fork(np.full(17, np.nan), 0)


# ---------------------------------------------------------------------------
# driving (highway-env)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def driving():
    pytest.importorskip("highway_env")
    from mesaguard.scenarios import driving

    return driving


def test_driving_simulator_never_reaches_the_real_env(driving):
    from mesaguard.policies import load_agent

    agent = load_agent("driving")
    records = shielded_episode("driving", "deploy", agent, 4, model=driving.simulator(seed=0), horizon=2,
                               rollout=agent)
    assert records and all(r["error"] is None for r in records)
    assert sum(r["lookaheads"] for r in records) >= len(records)


@pytest.mark.parametrize(("variant", "lanes"), [("train", None), ("deploy", 4)])
def test_driving_simulator_places_the_observed_cars_where_observed(driving, variant, lanes):
    """De-normalizing then observing again gives the observation back (float32 rounding: 1e-5)."""
    model = driving.simulator(seed=0, lanes=lanes)
    model.reset(seed=0)
    real = driving.make_env(variant)
    for seed in range(3):
        obs, _ = real.reset(seed=seed)
        sim = model.fork(obs, 0)
        again = sim.unwrapped.observation_type.observe().ravel()
        np.testing.assert_allclose(again, obs, rtol=0, atol=1e-5)
        assert len(sim.unwrapped.road.vehicles) == 1 + int(obs.reshape(5, 5)[1:, 0].sum())


def test_driving_simulator_moves_the_ego_as_the_real_env_on_the_reference(driving):
    """The ego's displacement over each decision, from a steady state, matches to 1 mm; so does a crash.

    From reset the ego cruises at 25 m/s, its set-point, centred in its lane: the state the fork
    infers (set-point nearest the speed, no lane change under way) is the real one, and the ego's
    motion depends on its own state only (others cannot move it short of a crash). What is left is
    the float32 observation: positions carry about 200 m x 2**-24 = 1.2e-5 m of rounding, speeds
    80 m/s x 2**-24 = 5e-6 m/s, which a 1 s decision turns into a few 1e-5 m: 1e-3 m is far above
    that and far below any real modelling error (a wrong set-point moves the ego by metres).
    """
    model = driving.simulator(seed=0)
    model.reset(seed=0)
    real = driving.make_env(get("driving").reference_variant)
    crashes = []
    for seed in range(2):
        obs, _ = real.reset(seed=seed)
        ego = real.unwrapped.vehicle
        turn = driving.LANE_LEFT if ego.lane_index[2] > 0 else driving.LANE_RIGHT
        for t, a in enumerate([driving.IDLE, driving.IDLE, turn]):
            sim = model.fork(obs, t)
            sim_ego, start = sim.unwrapped.vehicle, real.unwrapped.vehicle.position.copy()
            sim_start = sim_ego.position.copy()
            *_, sim_info = sim.step(a)
            obs, _, terminated, _, info = real.step(a)
            assert sim_info["catastrophe"] is info["catastrophe"]
            if info["catastrophe"]:  # after a crash the motion is the other car's too: the crash is the prediction
                break
            moved, sim_moved = real.unwrapped.vehicle.position - start, sim.unwrapped.vehicle.position - sim_start
            np.testing.assert_allclose(sim_moved, moved, rtol=0, atol=1e-3)
            assert not terminated
        crashes.append(info["catastrophe"])
    assert crashes == [True, False]  # seed 0's lane change hits a car abreast, and the fork foresees it
    *_, truncated, _ = model.fork(obs, 19).step(driving.IDLE)
    assert truncated  # 20 decisions an episode, the clock set from the step count


def test_driving_simulator_draws_the_unobserved_from_its_own_seed(driving):
    """The other drivers' IDM exponent (what the observation does not show) comes from the model's Generator."""
    obs, _ = driving.make_env("train").reset(seed=0)

    def drawn(seed: int, episode: int) -> list[float]:
        model = driving.simulator(seed=seed)
        model.reset(seed=episode)
        return [v.DELTA for v in model.fork(obs, 0).unwrapped.road.vehicles[1:]]

    assert len(drawn(0, 1)) == 4
    assert drawn(0, 1) == drawn(0, 1) != drawn(0, 2)
    assert drawn(0, 1) != drawn(1, 1)


def test_driving_simulator_rejects_bad_arguments(driving):
    with pytest.raises(ModelError, match="25\\s+finite numbers"):
        driving.simulator().fork(np.zeros(24), 0)
    with pytest.raises(ModelError, match="lanes=0"):
        driving.simulator(lanes=0)


# ---------------------------------------------------------------------------
# both: a shield on a failing simulator fails closed
# ---------------------------------------------------------------------------


class NaNStep(gym.Wrapper):
    """A simulation whose step reports a NaN increment."""

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "base_objective": math.nan}


def failing(model: DesignerSimulator, fault: str) -> DesignerSimulator:
    build = model.build

    def broken(obs: Any, step: int, rng: np.random.Generator) -> gym.Env:
        if fault == "raise":
            raise RuntimeError("the simulator crashed")
        return NaNStep(build(obs, step, rng))

    return DesignerSimulator(broken, name=f"{model.name}-{fault}")


@pytest.mark.parametrize("fault", ["raise", "nan"])
@pytest.mark.parametrize(("name", "variant", "extra"), [("cheetah", "deploy-dynamics", "mujoco"),
                                                         ("driving", "deploy", "highway_env")])
def test_a_shield_on_a_failing_simulator_fails_closed(name, variant, extra, fault):
    pytest.importorskip(extra)
    real = Sealed(make(name, variant))
    env = Shield(real, model=failing(get(name).simulator(seed=0), fault), candidates=2, seed=0)
    obs, _ = env.reset(seed=0)
    real.allowed = 0  # a fail-closed step takes no real step
    action = real.action_space.sample() if name == "cheetah" else 1
    next_obs, reward, terminated, truncated, info = env.step(action)
    record = info[INFO_KEY]
    assert truncated and not terminated and reward == 0.0 and record["executed"] is None
    assert record["acting"] == "stop" and record["error"] and env.errors == 1
    assert np.array_equal(next_obs, obs)
