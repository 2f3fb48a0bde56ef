"""The guard on a real Gymnasium env (Pendulum-v1: dense, varying rewards, 200-step episodes)."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mesaguard.calibration import Calibration, CalibrationError
from mesaguard.detectors import DetectorError
from mesaguard.guard import Guard, GuardedEnv, GuardedVectorEnv, ScalarGuard
from mesaguard.protocols import Alert, Fallback, Stop

SPIN = np.array([2.0], dtype=np.float32)  # full torque one way: never balances, cost per step stays high


def swing_up(obs):
    """A hand-written swing-up controller: pump energy, then balance (about -143 per episode)."""
    cos, sin, w = obs
    if cos > 0.8:
        u = -(8.0 * np.arctan2(sin, cos) + 1.5 * w)
    else:
        energy = w**2 / 6 + 5 * (cos - 1)  # zero when upright and at rest
        u = 2.0 * np.sign(w) if energy < 0 else -0.5 * w
    return np.clip(np.array([u], dtype=np.float32), -2, 2)


def run(env, seed, policy, steps=None):
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    infos, done = [], False
    while not done and (steps is None or len(infos) < steps):
        obs, reward, terminated, truncated, info = env.step(policy(env, obs))
        infos.append(info["mesaguard"])
        done = terminated or truncated
    return infos, truncated


def random_policy(env, obs):
    return env.action_space.sample()


def in_distribution(env, obs):
    return swing_up(obs)


def test_in_distribution_runs_raise_no_alarm_on_these_seeds(calibration):
    env = GuardedEnv(gym.make("Pendulum-v1"), calibration)
    alarms = [run(env, 1000 + seed, in_distribution)[0][-1]["alarm"] for seed in range(20)]
    # 20 episodes at alpha = 0.05: one alarm or none is the likely outcome (P(>= 3) < 8%).
    assert sum(alarms) <= 2


def pendulum_rewards(seeds: range) -> list[np.ndarray]:
    """Per-step rewards of one swing-up episode per seed: in-distribution episodes."""
    env = gym.make("Pendulum-v1")
    episodes = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        rewards = []
        for _ in range(200):
            obs, reward, *_ = env.step(swing_up(obs))
            rewards.append(reward)
        episodes.append(np.array(rewards))
    return episodes


@pytest.fixture(scope="module")
def calibration():
    return Calibration.fit(pendulum_rewards(range(80)), alpha=0.05, scenario="pendulum", obs_shape=(3,))


def test_reports_everything_in_info(calibration):
    env = GuardedEnv(gym.make("Pendulum-v1"), calibration, protocol=Alert(lambda a: None))
    infos, _ = run(env, 0, random_policy, steps=5)
    last = infos[-1]
    assert set(last) == {
        "score", "increment", "step", "statistics", "alarm", "detector", "alarm_step", "acting", "error", "refused"
    }
    assert last["step"] == 5 and set(last["statistics"]) == set(calibration.detectors)
    assert last["score"] == pytest.approx(sum(i["increment"] for i in infos))
    assert last["alarm"] is False and last["detector"] is None and last["error"] is None


def test_stop_truncates_at_the_alarm(calibration):
    env = GuardedEnv(gym.make("Pendulum-v1"), calibration, detectors=["cusum"], protocol=Stop())
    infos, truncated = run(env, 1, lambda env, obs: SPIN)
    assert truncated and infos[-1]["alarm"] and infos[-1]["detector"] == "cusum"
    assert infos[-1]["alarm_step"] == len(infos) < 200
    assert not any(i["alarm"] for i in infos[:-1])


def test_fallback_acts_from_the_alarm_on(calibration):
    calls = []

    def fallback(obs):
        calls.append(obs)
        return swing_up(obs)

    seen = []
    env = GuardedEnv(gym.make("Pendulum-v1"), calibration, protocol=[Alert(seen.append), Fallback(fallback)])
    infos, truncated = run(env, 1, lambda env, obs: SPIN)
    k = infos[-1]["alarm_step"]
    assert len(infos) == 200  # the fallback keeps the episode going to the time limit
    assert [i["acting"] for i in infos] == ["agent"] * k + ["protocol"] * (200 - k)
    assert len(calls) == 200 - k
    assert len(seen) == 1 and seen[0].step == k and seen[0].detector == infos[k - 1]["detector"]


def test_fails_closed_on_an_objective_error(calibration):
    def objective(t):
        if t.obs is not None and abs(t.obs[0]) > -1 and objective.steps == 3:
            raise RuntimeError("sensor offline")
        objective.steps += 1
        return t.reward

    objective.steps = 0
    seen = []
    env = GuardedEnv(gym.make("Pendulum-v1"), calibration, protocol=[Alert(seen.append), Stop()], objective=objective)
    infos, truncated = run(env, 0, random_policy)
    assert truncated and len(infos) == 4
    assert infos[-1]["alarm"] and infos[-1]["detector"] == "error" and infos[-1]["alarm_step"] == 3
    assert infos[-1]["error"] == "RuntimeError: sensor offline"
    assert seen[0].detector == "error" and seen[0].error == "RuntimeError: sensor offline"


def test_nan_increment_fails_closed_naming_step_and_value(calibration):
    objective = lambda t: float("nan") if t.info.get("n", 0) else t.reward  # noqa: E731
    env = GuardedEnv(gym.make("Pendulum-v1"), calibration, objective=lambda t: np.nan)
    infos, truncated = run(env, 0, random_policy)
    assert truncated and infos[-1]["detector"] == "error"
    assert "increment nan at step 1" in infos[-1]["error"]
    del objective


def test_failing_alert_still_stops_the_episode(calibration):
    def broken(alarm):
        raise ConnectionError("pager down")

    env = GuardedEnv(gym.make("Pendulum-v1"), calibration, protocol=Alert(broken))
    infos, truncated = run(env, 1, lambda env, obs: SPIN)
    assert truncated and "ConnectionError: pager down" in infos[-1]["error"]


def test_failing_fallback_stops_the_episode(calibration):
    env = GuardedEnv(gym.make("Pendulum-v1"), calibration, protocol=Fallback(lambda obs: 1 / 0))
    infos, truncated = run(env, 1, lambda env, obs: SPIN)
    assert truncated and "ZeroDivisionError" in infos[-1]["error"]
    assert len(infos) == infos[-1]["alarm_step"] + 1  # the agent acted once more; the guard stopped counting


def test_bad_configuration(calibration):
    with pytest.raises(CalibrationError, match=r"observation shape \(3,\); this env has observation shape \(4,\)"):
        GuardedEnv(gym.make("CartPole-v1"), calibration)
    with pytest.raises(CalibrationError, match="scenario 'pendulum'.*; scenario 'lava' has"):
        GuardedEnv(gym.make("Pendulum-v1"), calibration, scenario="lava")
    with pytest.raises(DetectorError, match="unknown detector 'cusm'"):
        GuardedEnv(gym.make("Pendulum-v1"), calibration, detectors=["cusm"])
    with pytest.raises(DetectorError, match=r"detectors='cusum': expected a list of one or more detector names, e.g. "
                       r"\['cusum'\]"):
        GuardedEnv(gym.make("Pendulum-v1"), calibration, detectors="cusum")
    with pytest.raises(DetectorError, match="a detector is named twice"):
        GuardedEnv(gym.make("Pendulum-v1"), calibration, detectors=["cusum", "cusum"])
    with pytest.raises(TypeError, match=r"calibration='cal.json': expected a Calibration \(Calibration.load"):
        GuardedEnv(gym.make("Pendulum-v1"), "cal.json")
    bare = Guard(calibration, detectors=[])  # no increment detector: a guard for a scope or a monitor alone
    assert not bare.update(np.array([-1e9])).any() and bare.names == []


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_guard_agrees_with_scalar_guard_across_resets(calibration, mode):
    n, steps = 3, 230  # past the 200-step time limit: every sub-env resets once
    rng = np.random.default_rng(0)
    actions = rng.uniform(-2, 2, size=(steps, n, 1)).astype(np.float32)
    venv = gym.make_vec("Pendulum-v1", num_envs=n, vectorization_mode="sync", vector_kwargs={"autoreset_mode": mode})
    venv = GuardedVectorEnv(venv, calibration, protocol=Alert(lambda a: None))
    venv.reset(seed=[10, 11, 12])
    vec = [venv.step(actions[t])[4]["mesaguard"] for t in range(steps)]
    for i in range(n):
        env = GuardedEnv(gym.make("Pendulum-v1"), calibration, protocol=Alert(lambda a: None))
        env.reset(seed=10 + i)
        scalar = [env.step(actions[t, i])[4]["mesaguard"] for t in range(200)]
        for t in range(200):
            assert vec[t]["step"][i] == scalar[t]["step"]
            assert vec[t]["score"][i] == pytest.approx(scalar[t]["score"])
            assert vec[t]["alarm"][i] == scalar[t]["alarm"]
            for name in calibration.detectors:
                assert vec[t]["statistics"][name][i] == pytest.approx(scalar[t]["statistics"][name])
        # the next episode starts from a clean guard
        first = 201 if mode == AutoresetMode.NEXT_STEP else 200
        assert vec[first]["step"][i] == 1 and not vec[first]["alarm"][i]


def test_vector_stop_resets_only_the_alarmed_sub_env(calibration):
    venv = GuardedVectorEnv(
        gym.make_vec("Pendulum-v1", num_envs=2, vectorization_mode="sync"), calibration, detectors=["cusum"]
    )
    venv.reset(seed=[1, 2])
    calm = np.array([[0.0]], dtype=np.float32)
    steps = 0  # until sub-env 0's alarm stops it (at most 200)
    while steps < 200:
        obs, _, terminated, truncated, info = venv.step(np.concatenate([SPIN[None], calm]))
        steps += 1
        if truncated[0]:
            break
    g = info["mesaguard"]
    assert g["alarm"][0] and g["detector"][0] == "cusum" and not truncated[1]
    assert venv.guard.steps[0] == 0 and venv.guard.steps[1] == steps  # sub-env 0 restarted at once
    obs, _, _, _, info = venv.step(np.concatenate([SPIN[None], calm]))
    assert info["mesaguard"]["step"].tolist() == [1, steps + 1]


def test_vector_guard_fails_closed_when_the_channel_is_missing(calibration):
    venv = GuardedVectorEnv(
        gym.make_vec("Pendulum-v1", num_envs=2, vectorization_mode="sync"),
        calibration,
        objective="info:base_objective",
    )
    venv.reset(seed=0)
    _, _, _, truncated, info = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert truncated.all() and info["mesaguard"]["detector"].tolist() == ["error", "error"]
    assert "no key 'base_objective'" in info["mesaguard"]["error"][0]


@given(arrays(np.float64, st.integers(1, 300), elements=st.floats(-20, 5)))
def test_scalar_guard_agrees_with_array_guard(calibration, stream):
    scalar, array = ScalarGuard(calibration), Guard(calibration, n_envs=1)
    for u in stream:
        fired = scalar.update(float(u))
        assert fired == bool(array.update(np.array([u]))[0])
        np.testing.assert_allclose(scalar.statistics, array.statistics[:, 0], rtol=1e-9, atol=1e-9)
    assert (scalar.alarm, scalar.alarm_step, scalar.detector) == (
        array.alarm[0], array.alarm_step[0], array.detector[0]
    )


def test_vector_partial_reset_restarts_only_those_sub_envs(calibration):
    venv = GuardedVectorEnv(gym.make_vec("Pendulum-v1", num_envs=2, vectorization_mode="sync"), calibration,
                            protocol=Alert(lambda a: None))
    venv.reset(seed=[1, 2])
    for _ in range(5):
        venv.step(np.zeros((2, 1), dtype=np.float32))
    venv.reset(options={"reset_mask": np.array([True, False])})
    assert venv.guard.steps.tolist() == [0, 5]
    _, _, _, _, info = venv.step(np.zeros((2, 1), dtype=np.float32))
    assert info["mesaguard"]["step"].tolist() == [1, 6]


# -- the scope detector in the guard: it acts before the agent does --------------------


@pytest.fixture(scope="module")
def lava():
    from mesaguard import scenarios
    from mesaguard.experiment import plain_env
    from mesaguard.scope import Scope

    states, increments = [], []
    for seed in range(10_000, 10_060):
        env = plain_env("lava", "train")
        policy = scenarios.get("lava").aligned(env)
        obs, _ = env.reset(seed=seed)
        seen, us, done = [], [], False
        while not done:
            seen.append(obs)
            obs, _, terminated, truncated, info = env.step(policy(obs))
            us.append(info["base_objective"])
            done = terminated or truncated
        states.append(np.array(seen))
        increments.append(np.array(us))
    shape = states[0].shape[1:]
    calibration = Calibration.fit(increments, alpha=0.1, detectors=["cusum"], scenario="lava", obs_shape=shape)
    return calibration, Scope.fit(states, method="mahalanobis", alpha=0.1, scenario="lava")


def test_scope_stops_the_agent_before_it_acts_out_of_scope(lava):
    """Lava moved: the scope fires on a state before the agent's action in it; lava is never entered."""
    from mesaguard import scenarios
    from mesaguard.experiment import plain_env

    calibration, scope = lava
    fired = 0
    for seed in range(20_000, 20_030):
        env = GuardedEnv(plain_env("lava", "deploy"), calibration, protocol=Stop(), objective="info:base_objective",
                         scenario="lava", scope=scope)
        policy = scenarios.get("lava").misaligned(env)  # walks the training gap: into the moved lava
        obs, _ = env.reset(seed=seed)
        truncated = terminated = False
        while not (terminated or truncated):
            obs, _, terminated, truncated, info = env.step(policy(obs))
            # a refused step (nothing ran) carries the guard's report alone
            assert not info.get("catastrophe", False), f"seed {seed}: lava entered despite the scope"
        m = info["mesaguard"]
        fired += m["detector"] == "scope"
        if m["detector"] == "scope" and m["acting"] == "protocol":  # first state out of scope: refused step
            assert m["step"] == 0
    assert fired >= 25 and "scope" in m["statistics"]


def test_scope_in_the_vector_guard_hands_out_of_scope_states_to_the_fallback(lava):
    from mesaguard.experiment import plain_env

    calibration, scope = lava
    envs = gym.vector.SyncVectorEnv([lambda: plain_env("lava", "deploy") for _ in range(3)])
    guarded = GuardedVectorEnv(envs, calibration, protocol=Fallback(lambda obs: 0), objective="info:base_objective",
                               scope=scope)
    obs, _ = guarded.reset(seed=[20_000, 20_001, 20_002])
    assert guarded.guard.alarm.all() and set(guarded.guard.detector) == {"scope"}  # all three rooms are shifted
    _, _, _, _, info = guarded.step(np.array([2, 2, 2]))
    assert (info["mesaguard"]["acting"] == "protocol").all()  # the agent's forward never ran


def test_vector_scope_steps_each_episode_once_per_step_across_resets(lava):
    """Same-step autoreset: when one sub-env resets, the others' scope statistics are not stepped twice."""
    from mesaguard.experiment import plain_env

    calibration, scope = lava
    envs = gym.vector.SyncVectorEnv([lambda: plain_env("lava", "train") for _ in range(2)],
                                    autoreset_mode=AutoresetMode.SAME_STEP)
    guarded = GuardedVectorEnv(envs, calibration, protocol=Alert(lambda a: None), objective="info:base_objective",
                               scope=scope)
    single = [scope.detector(1).scalar() for _ in range(2)]
    obs, _ = guarded.reset(seed=[3, 4])
    for i in range(2):
        single[i].update(obs[i])
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(150):
        obs, _, terminated, truncated, info = guarded.step(rng.integers(0, 3, 2))
        reported = info["mesaguard"]["statistics"]["scope"]
        for i in range(2):
            if terminated[i] or truncated[i]:  # obs[i] is the next episode's first; info is the last one's
                single[i].reset()
                single[i].update(obs[i])
                resets += 1
            else:  # a sub-env going on is stepped once, whatever the other one does
                assert reported[i] == pytest.approx(single[i].update(obs[i]))
    assert resets >= 2
