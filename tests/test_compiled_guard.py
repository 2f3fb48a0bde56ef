"""The compiled one-env guard (mesaguard.guard.compiled) against the Python ScalarGuard: the same numbers, bit for bit.

The compiled core claims ScalarGuard's rule in Python's floating point: every statistic, score, alarm, error and
warning equal at every step, so these tests compare with ``==``, never with a tolerance.
"""

from __future__ import annotations

import copy
import math
import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesaguard.calibration import Calibration
from mesaguard.detectors.base import DetectorError
from mesaguard.guard import GuardedEnv, GuardError, ScalarGuard
from mesaguard.guard.compiled import OFF, available, scalar_guard
from mesaguard.monitor import DeploymentMonitor
from mesaguard.protocols import Alert, Fallback, Stop

BUILT = available()
compiled_only = pytest.mark.skipif(not BUILT, reason="mesaguard.guard._compiled is not built here (see the test above)")
STATE = ("score", "steps", "alarm", "alarm_step", "detector", "statistics")


def state(guard: object) -> tuple:
    return tuple(getattr(guard, name) for name in STATE)


def test_the_compiled_core_is_built_here() -> None:
    # Built by `pip install -e .` (Cython and a C compiler); where it is not, the guard runs in Python, slower.
    assert BUILT, "mesaguard.guard._compiled is not built: install with a C compiler (make venv)"


def calibrate(seed: int, longest: int) -> Calibration:
    """The default set fitted on episodes of 2..longest steps whose spread changes within the episode."""
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(120):
        n = int(rng.integers(2, longest + 1))
        spread = np.where(np.arange(n) < n // 2, 1.0, 1e-3)
        episodes.append(rng.normal(1.0, spread))
    return Calibration.fit(episodes, alpha=0.1, detectors=["cusum", "meanshift"])


@pytest.fixture(scope="module", params=[(0, 40), (1, 250)], ids=["one step a block", "blocks of 3"])
def calibration(request: pytest.FixtureRequest) -> Calibration:
    return calibrate(*request.param)


@compiled_only
@settings(max_examples=40, deadline=None)
@given(
    episodes=st.lists(
        st.tuples(st.integers(1, 400), st.floats(-2.0, 2.0), st.floats(1e-4, 3.0), st.integers(0, 2**32 - 1)),
        min_size=1, max_size=4,
    )
)
def test_compiled_guard_equals_the_python_guard_step_for_step(calibration: Calibration, episodes: list) -> None:
    compiled, python = scalar_guard(calibration), ScalarGuard(calibration)
    assert type(compiled) is not ScalarGuard
    assert (compiled.names, compiled.thresholds) == (python.names, python.thresholds)
    for length, shift, spread, seed in episodes:
        compiled.reset()
        python.reset()
        assert state(compiled) == state(python)
        for u in np.random.default_rng(seed).normal(1.0 + shift, spread, length).tolist():
            with warnings.catch_warnings(record=True) as a:
                warnings.simplefilter("always")
                fired = compiled.update(u)
            with warnings.catch_warnings(record=True) as b:
                warnings.simplefilter("always")
                assert fired == python.update(u)
            assert [str(w.message) for w in a] == [str(w.message) for w in b]
            assert state(compiled) == state(python)
        assert compiled.alarm_record("x") == python.alarm_record("x")


@compiled_only
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_nonfinite_increment_is_the_same_error(calibration: Calibration, bad: float) -> None:
    for guard in (scalar_guard(calibration), ScalarGuard(calibration)):
        guard.update(1.0)
        with pytest.raises(DetectorError, match=rf"increment {bad} at step 2 is not finite"):
            guard.update(bad)


@compiled_only
def test_a_statistic_that_overflows_is_the_same_error(calibration: Calibration) -> None:
    messages = []
    for guard in (scalar_guard(calibration), ScalarGuard(calibration)):
        with pytest.raises(GuardError) as caught:
            for _ in range(3):
                guard.update(-1e308)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "not finite at step" in messages[0]


@compiled_only
def test_python_guard_where_a_detector_has_no_compiled_form_or_it_is_switched_off(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.0, 0.3, 20) for _ in range(60)], alpha=0.1, detectors=["cusum", "envelope"])
    assert type(scalar_guard(cal)) is ScalarGuard
    assert type(scalar_guard(cal, ["cusum"])) is not ScalarGuard
    monkeypatch.setenv(OFF, "1")
    assert type(scalar_guard(cal, ["cusum"])) is ScalarGuard


class Margin(gym.Wrapper):
    """CartPole reporting a base objective in ``info["margin"]`` (the pole's angle margin), and a NaN reward, a
    non-dict info or a missing key at given steps of the run (the guard fails closed there)."""

    def __init__(self, env: gym.Env, broken: dict[int, str]) -> None:
        super().__init__(env)
        self.broken, self.t = broken, 0

    def step(self, action: int):  # type: ignore[override]
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.t += 1
        info = {**info, "margin": 1.0 - abs(float(obs[2])) / 0.21}
        fault = self.broken.get(self.t)
        if fault == "nan reward":
            reward = math.nan
        elif fault == "info not a dict":
            info = ["not", "a", "dict"]
        elif fault == "missing key":
            del info["margin"]
        return obs, reward, terminated, truncated, info


def deployment(compiled: bool, monkeypatch: pytest.MonkeyPatch, protocol: str, objective: str, monitor: str,
               broken: dict[int, str]) -> tuple[list, tuple]:
    """Every step's returns of a CartPole deployment (30 episodes), and the guard's and monitor's state after."""
    monkeypatch.setenv(OFF, "0" if compiled else "1")
    rng = np.random.default_rng(0)
    if objective == "reward":  # the reward is 1 every step: calibrated on 1.1 +- 0.2, alarms fire
        cal = Calibration.fit([rng.normal(1.1, 0.2, int(rng.integers(10, 60))) for _ in range(200)], alpha=0.2)
    else:
        cal = Calibration.fit([rng.normal(0.93, 0.05, int(rng.integers(10, 60))) for _ in range(200)], alpha=0.2,
                              objective=objective)
    watch = {"none": None, "anytime": DeploymentMonitor(cal, alpha=0.2),
             "change": DeploymentMonitor(cal, mode="change", arl=20)}[monitor]
    act = {"alert": Alert(lambda alarm: None), "stop": Stop(), "fallback": Fallback(lambda obs: 0)}[protocol]
    env = GuardedEnv(Margin(gym.make("CartPole-v1"), broken), cal, protocol=act, monitor=watch)
    assert (env._plain is None) is not compiled
    out = []
    actions = np.random.default_rng(1)
    for episode in range(30):
        env.reset(seed=episode)
        if watch is not None and watch.alarm and episode % 7 == 0:
            env.clear()
        done = False
        while not done:
            obs, reward, terminated, truncated, info = env.step(int(actions.integers(2)))
            out.append((obs.tolist(), reward, terminated, truncated, info))
            done = terminated or truncated
    g = env.guard
    after = (g.score, g.steps, g.alarm, g.statistics, None if watch is None else (watch.evidence, watch.steps,
                                                                                   watch.finished, watch.alarm))
    return out, after


@compiled_only
@pytest.mark.parametrize("monitor", ["none", "anytime", "change"])
@pytest.mark.parametrize("protocol", ["alert", "stop", "fallback"])
@pytest.mark.parametrize("objective", ["reward", "info:margin"])
def test_guarded_env_steps_the_same_compiled_or_not(monkeypatch: pytest.MonkeyPatch, protocol: str, objective: str,
                                                    monitor: str) -> None:
    broken = {15: "nan reward", 40: "info not a dict", 65: "missing key"}
    compiled = deployment(True, monkeypatch, protocol, objective, monitor, broken)
    python = deployment(False, monkeypatch, protocol, objective, monitor, broken)
    assert compiled == python
    reports = [step[-1]["mesaguard"] for step in compiled[0]]
    assert any(r["alarm"] for r in reports) and not all(r["alarm"] for r in reports)  # alarms, and steps without
    assert sum(r["error"] is not None for r in reports) >= 2  # the faults failed closed, both ways


class Scripted(gym.Env):
    """Rewards from a script, an episode ending where the script says (terminated or truncated), NaN where it has
    one: any stream a property test draws."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, episodes: list[tuple[list[float], bool]]) -> None:
        self.episodes, self.i, self.t = episodes, -1, 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        self.i, self.t = self.i + 1, 0
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        rewards, terminates = self.episodes[self.i]
        self.t += 1
        end = self.t >= len(rewards)
        return np.full(1, self.t, np.float32), rewards[self.t - 1], end and terminates, end and not terminates, {}


@pytest.fixture(scope="module")
def wide() -> Calibration:
    rng = np.random.default_rng(3)
    return Calibration.fit([rng.normal(1.0, 1.0, int(rng.integers(5, 40))) for _ in range(200)], alpha=0.2)


MONITOR = ("anytime", "fixed horizon of 3", "change")
STATE_OF_MONITOR = ("steps", "finished", "crossings", "alarm", "alarm_episode", "alarm_steps", "log_evidence")


def scripted_run(cal: Calibration, episodes: list, protocol: str, monitor: str, compiled: bool, monkeypatch) -> list:
    """Every step's returns, and the monitor's state after: each episode reset after ``cut`` steps where it has
    one (mid-episode: it ends censored), the deployment alarm cleared at the next reset where ``clear`` says."""
    monkeypatch.setenv(OFF, "0" if compiled else "1")
    act = {"alert": Alert(lambda alarm: None), "stop": Stop()}[protocol]
    watch = {"anytime": DeploymentMonitor(cal, alpha=0.2), "fixed horizon of 3": DeploymentMonitor(cal, horizon=3),
             "change": DeploymentMonitor(cal, mode="change", arl=20)}[monitor]
    env = GuardedEnv(Scripted([(rewards, terminates) for rewards, terminates, _, _ in episodes]), cal, protocol=act,
                     monitor=watch)
    assert (env._plain is None) is not compiled
    out: list = []
    for _, _, cut, clear in episodes:
        env.reset()
        if clear:
            env.clear()
        done, t = False, 0
        while not done and t != cut:
            obs, reward, terminated, truncated, info = env.step(0)
            out.append((obs.tolist(), reward, terminated, truncated, info))
            done, t = terminated or truncated, t + 1
    ledger = watch.ledger
    return out + [tuple(getattr(watch, n) for n in STATE_OF_MONITOR), ledger.bag, ledger.log_wealth]


@compiled_only
@settings(max_examples=40, deadline=None)
@given(
    episodes=st.lists(
        st.tuples(st.lists(st.one_of(st.floats(-3.0, 5.0), st.just(math.nan)), min_size=1, max_size=50),
                  st.booleans(), st.one_of(st.none(), st.integers(0, 10)), st.booleans()),
        min_size=1, max_size=12,
    ),
    protocol=st.sampled_from(["alert", "stop"]),
    monitor=st.sampled_from(MONITOR),
)
def test_any_reward_stream_steps_the_same_compiled_or_not(wide: Calibration, episodes: list, protocol: str,
                                                          monitor: str) -> None:
    # Rewards in and out of distribution: alarms, the running maximum passing bag values mid-episode, deployment
    # alarms, NaN rewards failing closed, episodes ended by either flag or reset mid-way, alarms cleared; the
    # monitor's evidence moves both ways; past a fixed horizon no episode is bet on.
    with pytest.MonkeyPatch.context() as monkeypatch:
        compiled = scripted_run(wide, episodes, protocol, monitor, True, monkeypatch)
        python = scripted_run(wide, episodes, protocol, monitor, False, monkeypatch)
    assert _same(compiled, python)


def _same(a: object, b: object) -> bool:
    """``a == b``, with NaN equal to NaN (a NaN reward is returned as it came, and reported)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def ignore(alarm: object) -> None:
    """An alert that does nothing (a module's function: it pickles)."""


@compiled_only
@pytest.mark.parametrize("copy_of", [lambda env: pickle.loads(pickle.dumps(env)), copy.deepcopy],
                         ids=["pickle", "deepcopy"])
def test_a_compiled_guard_pickles_and_copies_mid_episode(copy_of) -> None:
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.1, 0.2, int(rng.integers(10, 60))) for _ in range(200)], alpha=0.2)
    env = GuardedEnv(gym.make("CartPole-v1"), cal, protocol=Alert(ignore))
    env.reset(seed=0)
    for _ in range(4):
        env.step(0)
    twin = copy_of(env)
    assert type(twin.guard) is type(env.guard) and twin._plain is not None and twin.guard is not env.guard
    steps = [(env.step(a), twin.step(a)) for a in [1, 0, 1, 1, 0, 0]]
    assert all(mine[1:] == theirs[1:] and mine[0].tolist() == theirs[0].tolist() for mine, theirs in steps)
    assert state(env.guard) == state(twin.guard) and env.guard.steps == 10
