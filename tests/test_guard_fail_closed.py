"""The guard fails closed (issue: a crashed fallback, a broken env or a runaway number must never switch it off),
and the vector guard gives the single-env guard's verdicts in both autoreset modes, for every objective kind."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from mesaguard.calibration import Calibration
from mesaguard.guard import GuardedEnv, GuardedVectorEnv
from mesaguard.protocols import Alert, Fallback, Stop, predict_policy


class Walk(gym.Env):
    """A 1-D walk with a step-only info key: action 1 is the calibrated behaviour, 0 drifts down.

    reward = N(mean, 1) with mean 1 for action 1 and -1 for action 0; ``info["base_objective"]``
    is reported on steps only (never at reset), as most envs do; it ends when |x| > 6 or after 25 steps.
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(1,), dtype=np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, info_none: bool = False) -> None:
        self.info_none = info_none
        self.steps_taken = 0  # every real step, across episodes: nothing may run after a refusal

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0.0, 0
        return np.array([self.x]), {"at_reset": 1.0}

    def step(self, action):
        assert self.action_space.contains(action), action
        self.steps_taken += 1
        self.t += 1
        reward = float(self.np_random.normal(1.0 if action == 1 else -1.0, 1.0))
        self.x += reward / 4
        terminated, truncated = abs(self.x) > 6, self.t >= 25
        info = None if self.info_none else {"base_objective": reward - 0.1 * abs(self.x)}
        return np.array([self.x]), reward, terminated, truncated, info


def _episodes(n: int, seed: int) -> list[np.ndarray]:
    env, rng, out = Walk(), np.random.default_rng(seed), []
    for k in range(n):
        env.reset(seed=seed * 10_000 + k)
        us, done = [], False
        while not done:
            _, r, term, trunc, _ = env.step(int(rng.random() < 0.9))
            us.append(r)
            done = term or trunc
        out.append(np.array(us))
    return out


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return Calibration.fit(_episodes(200, 1), alpha=0.1, obs_shape=(1,))


def _alarmed(env: GuardedEnv, steps: int = 25) -> dict:
    """Step with the drifting action until the alarm stands; the report of that step."""
    env.reset(seed=3)
    for _ in range(steps):
        _, _, _, truncated, info = env.step(0)
        if info["mesaguard"]["alarm"]:
            return info["mesaguard"]
    raise AssertionError("no alarm in a drifting episode")


FAILING_FALLBACKS = {
    "raises": (lambda obs: 1 / 0, "ZeroDivisionError"),
    "returns None": (lambda obs: None, "returned None"),
    "outside the action space": (lambda obs: 7, "not in the action space"),
    "an SB3 (action, state) tuple": (lambda obs: (1, None), "not in the action space"),
}


@pytest.mark.parametrize("case", FAILING_FALLBACKS)
def test_a_fallback_that_cannot_act_executes_nothing_and_ends_the_episode(calibration, case):
    policy, message = FAILING_FALLBACKS[case]
    walk = Walk()
    env = GuardedEnv(walk, calibration, protocol=Fallback(policy))
    first = _alarmed(env)
    before = walk.steps_taken
    obs, reward, terminated, truncated, info = env.step(0)
    report = info["mesaguard"]
    assert walk.steps_taken == before  # nothing executed
    assert truncated and report["refused"] and report["alarm"] and message in report["error"]
    assert report["alarm_step"] == first["alarm_step"]


@pytest.mark.parametrize("case", FAILING_FALLBACKS)
def test_a_fallback_that_cannot_act_in_a_vector_env_executes_nothing(calibration, case):
    policy, message = FAILING_FALLBACKS[case]
    walks = [Walk(), Walk()]
    venv = GuardedVectorEnv(SyncVectorEnv([lambda w=w: w for w in walks]), calibration, protocol=Fallback(policy))
    venv.reset(seed=[3, 4])
    for _ in range(25):
        _, _, _, truncated, info = venv.step(np.array([0, 1]))
        if info["mesaguard"]["alarm"][0]:
            break
    assert info["mesaguard"]["alarm"][0] and not info["mesaguard"]["alarm"][1]
    before = [w.steps_taken for w in walks]
    obs, rewards, terminated, truncated, info = venv.step(np.array([0, 1]))
    report = info["mesaguard"]
    assert [w.steps_taken for w in walks] == before  # no sub-env executed anything
    assert report["refused"].all() and truncated.tolist() == [True, False]
    assert message in report["error"][0] and report["error"][1] is None
    assert venv.guard.steps[0] == 0  # sub-env 0 restarted at once; sub-env 1 goes on
    venv.step(np.array([1, 1]))
    assert [w.steps_taken for w in walks] == [before[0] + 1, before[1] + 1]


def test_sb3_models_fall_back_through_the_adapter(calibration):
    class Model:  # SB3's predict signature: (action, state)
        def predict(self, obs, deterministic=True):
            return np.int64(1), None

    env = GuardedEnv(Walk(), calibration, protocol=Fallback(predict_policy(Model())))
    _alarmed(env)
    _, _, _, _, info = env.step(0)
    assert info["mesaguard"]["acting"] == "protocol" and not info["mesaguard"]["refused"]


def test_an_env_returning_info_none_latches_the_alarm_and_stops(calibration):
    walk = Walk(info_none=True)
    env = GuardedEnv(walk, calibration, protocol=Stop(), objective="reward")
    env.reset(seed=0)
    _, _, _, truncated, info = env.step(1)
    report = info["mesaguard"]
    assert truncated and report["alarm"] and report["detector"] == "error" and "info=None" in report["error"]
    _, _, _, truncated, info = env.step(1)  # the alarm stands: the next action never runs
    assert info["mesaguard"]["refused"] and walk.steps_taken == 1


def test_an_env_returning_info_none_in_a_vector_env(calibration):
    class Bare(SyncVectorEnv):
        def step(self, actions):
            obs, r, term, trunc, _ = super().step(actions)
            return obs, r, term, trunc, None

    venv = GuardedVectorEnv(Bare([Walk, Walk]), calibration, protocol=Stop())
    venv.reset(seed=[0, 1])
    _, _, _, truncated, info = venv.step(np.array([1, 1]))
    assert truncated.all() and info["mesaguard"]["detector"].tolist() == ["error", "error"]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_an_overflowing_score_is_an_error_not_silence(calibration):
    class Huge(Walk):
        def step(self, action):
            obs, reward, terminated, truncated, info = super().step(action)
            return obs, (1e308 if self.t <= 2 else -5.0), terminated, truncated, info

    env = GuardedEnv(Huge(), calibration, protocol=Stop())
    env.reset(seed=0)
    for _ in range(3):
        _, _, _, truncated, info = env.step(1)
        if truncated:
            break
    report = info["mesaguard"]
    assert truncated and report["detector"] == "error" and "not finite" in report["error"]
    venv = GuardedVectorEnv(SyncVectorEnv([Huge, Walk]), calibration, protocol=Stop())
    venv.reset(seed=[0, 1])
    for _ in range(2):
        _, _, _, truncated, info = venv.step(np.array([1, 1]))
    assert truncated.tolist() == [True, False] and info["mesaguard"]["detector"][0] == "error"
    assert "not finite" in info["mesaguard"]["error"][0]


class NaNAt(Walk):
    """Its reward is NaN at step 5 (an objective the guard cannot compute from there on)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, (float("nan") if self.t == 5 else reward), terminated, truncated, info


@pytest.mark.parametrize("protocol", ["alert", "stop"])
def test_an_error_ends_the_episode_whatever_the_protocol(calibration, protocol):
    """Past an error the guard cannot watch the episode: under Alert too it ends there, not unwatched at step 25."""
    alerts = []
    make = {"alert": lambda: Alert(alerts.append), "stop": Stop}[protocol]
    env = GuardedEnv(NaNAt(), calibration, protocol=make(), objective="reward")
    env.reset(seed=0)
    steps, done = 0, False
    while not done:
        _, _, terminated, truncated, info = env.step(1)
        steps, done = steps + 1, terminated or truncated
    report = info["mesaguard"]
    assert steps == 5 and truncated and report["alarm"] and report["detector"] == "error"
    assert "gave increment nan at step 5" in report["error"] and len(alerts) == (protocol == "alert")
    venv = GuardedVectorEnv(SyncVectorEnv([NaNAt, Walk]), calibration, protocol=make(), objective="reward")
    venv.reset(seed=[0, 1])
    for _ in range(5):
        _, _, _, truncated, info = venv.step(np.array([1, 1]))
    assert truncated.tolist() == [True, False] and info["mesaguard"]["detector"].tolist() == ["error", ""]


# --- parity: one vector guard, both autoreset modes, against one GuardedEnv per sub-env ------------------------


def _margin(t) -> float:  # a user's callable objective that reads the whole transition
    return float((t.next_obs[0] - t.obs[0]) * (1 if t.action == 1 else 0.5))


OBJECTIVES = {"reward": "reward", "info": "info:base_objective", "callable": _margin}
PROTOCOLS = {"stop": Stop, "alert": lambda: Alert(lambda alarm: None)}


def _actions(n_envs: int, count: int) -> np.ndarray:
    """Each sub-env's k-th real step plays column k: calibrated mostly, with drifting stretches."""
    rng = np.random.default_rng(7)
    drift = (np.arange(count) // 40) % 3 == 2
    return np.where(drift, rng.random((n_envs, count)) < 0.3, rng.random((n_envs, count)) < 0.9).astype(np.int64)


def _single_episodes(calibration, objective, protocol, seed: int, actions: np.ndarray) -> list[tuple]:
    env = GuardedEnv(Walk(), calibration, protocol=protocol(), objective=objective)
    env.reset(seed=seed)
    out, k = [], 0
    while k < len(actions):
        _, _, terminated, truncated, info = env.step(int(actions[k]))
        k += 1
        if terminated or truncated:
            m = info["mesaguard"]
            out.append((m["step"], round(m["score"], 9), m["alarm"], m["detector"], m["alarm_step"]))
            env.reset()
    return out


def _vector_episodes(calibration, objective, protocol, mode, seeds, actions: np.ndarray) -> list[list]:
    n = len(seeds)
    inner = SyncVectorEnv([Walk] * n, autoreset_mode=mode)
    venv = GuardedVectorEnv(inner, calibration, protocol=protocol(), objective=objective)
    venv.reset(seed=list(seeds))
    out: list[list] = [[] for _ in range(n)]
    while True:
        k = [walk.steps_taken for walk in inner.envs]  # each sub-env's real steps so far: its next action's index
        if max(k) >= actions.shape[1]:
            return out
        _, _, terminated, truncated, info = venv.step(np.array([actions[i, k[i]] for i in range(n)]))
        m = info["mesaguard"]
        for i in np.flatnonzero(np.asarray(terminated) | np.asarray(truncated)):
            detector = m["detector"][i] or None
            alarm_step = int(m["alarm_step"][i]) if m["alarm"][i] else None
            score = round(float(m["score"][i]), 9)
            out[i].append((int(m["step"][i]), score, bool(m["alarm"][i]), detector, alarm_step))


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=["next-step", "same-step"])
@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_vector_guard_gives_the_single_guards_verdicts(calibration, mode, objective, protocol):
    seeds, count = [11, 12, 13], 400
    actions = _actions(len(seeds), count)
    vector = _vector_episodes(calibration, OBJECTIVES[objective], PROTOCOLS[protocol], mode, seeds, actions)
    for i, seed in enumerate(seeds):
        single = _single_episodes(calibration, OBJECTIVES[objective], PROTOCOLS[protocol], seed, actions[i])
        assert len(vector[i]) >= 10
        assert vector[i] == single[: len(vector[i])], f"sub-env {i}"
    alarms = sum(ep[2] for eps in vector for ep in eps)
    assert 0 < alarms < sum(map(len, vector))  # the comparison covers both verdicts


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP], ids=["next-step", "same-step"])
def test_the_monitor_counts_every_finished_episode_in_both_autoreset_modes(calibration, mode):
    from mesaguard.monitor import DeploymentMonitor

    monitor = DeploymentMonitor(calibration, n_envs=3)
    venv = GuardedVectorEnv(
        SyncVectorEnv([Walk] * 3, autoreset_mode=mode), calibration, detectors=[], protocol=Alert(lambda a: None),
        objective="info:base_objective", monitor=monitor,
    )
    venv.reset(seed=[1, 2, 3])
    done = 0
    for _ in range(300):
        _, _, terminated, truncated, info = venv.step(np.ones(3, dtype=np.int64))
        done += int((np.asarray(terminated) | np.asarray(truncated)).sum())
        assert not any(info["mesaguard"]["error"]), info["mesaguard"]["error"]
    assert done >= 30 and info["mesaguard"]["deployment"]["episodes"] == done
    assert monitor.evidence > 1e-3  # in distribution and uncensored: no collapse to ~0 (it was 1e-32)
