"""The transition scope: false alarms within the conformal bound, detection of a change of physics, fail closed,
its file, and the vector guard's verdicts equal to the single guard's.

A cheap env of a user's own: CartPole-v1 (200 steps) under a fixed heuristic policy, a tiny learned model
fitted on it with :func:`mesaguard.safeguards.learned_fit.fit_env`, and a pole twice as long as the change of
physics (states and reward still look ordinary: +1 a step).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from scipy import stats

from mesaguard.calibration import Calibration
from mesaguard.detectors.base import DetectorError
from mesaguard.guard import ERROR, TRANSITION, GuardedEnv, GuardedVectorEnv
from mesaguard.protocols import Alert, Fallback, Stop
from mesaguard.safeguards.learned import LearnedModel
from mesaguard.safeguards.learned_fit import FitConfig, collect_env, fit_env
from mesaguard.transition_scope import TransitionScope, TransitionScopeError

ALPHA = 0.1
STEPS = 200
CONFIG = FitConfig(episodes=20, held_out=20, members=2, hidden=(32,), steps=400, alpha=0.2)


def policy(obs: Any) -> int:
    """A fixed balancing rule (push towards where the pole falls)."""
    return int(obs[2] + 0.5 * obs[3] > 0)


def cartpole(length: float = 0.5) -> gym.Env:
    """CartPole-v1 with pole half-length ``length`` (0.5 is Gymnasium's), as a user would write it."""
    env = gym.make("CartPole-v1", max_episode_steps=STEPS)
    physics: Any = env.unwrapped
    physics.length = length
    physics.polemass_length = physics.masspole * length
    return env


def episodes(length: float, seeds: range) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    data = collect_env(cartpole(length), seeds, policy, increment="reward")
    return [(data.obs[data.episode == i], data.action[data.episode == i], data.next_obs[data.episode == i])
            for i in np.unique(data.episode)]


@pytest.fixture(scope="module")
def model() -> LearnedModel:
    return fit_env(cartpole, policy, seed=0, config=CONFIG)


@pytest.fixture(scope="module")
def tscope(model: LearnedModel) -> TransitionScope:
    return TransitionScope.fit(episodes(0.5, range(100, 200)), model, alpha=ALPHA, scenario="")


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    """A calibration for the guard's increment detectors, none of which run here (``detectors=[]``)."""
    rng = np.random.default_rng(0)
    return Calibration.fit([rng.normal(1.0, 0.1, STEPS) for _ in range(40)], alpha=0.1)


def test_false_alarms_within_the_conformal_bound(tscope: TransitionScope) -> None:
    """Given the calibration set, the realized false-alarm rate is Beta(n + 1 - k, k); the count of alarms on
    fresh reference episodes is binomial in it. Bound: its 0.999 quantile at the Beta law's 0.999 quantile."""
    n, k = tscope.n_cal, tscope.rank
    fresh = 200
    alarms = sum(a is not None for a in tscope.first_alarms(episodes(0.5, range(1000, 1000 + fresh))))
    worst_rate = stats.beta(n + 1 - k, k).ppf(0.999)
    assert alarms <= stats.binom(fresh, worst_rate).ppf(0.999)
    assert tscope.n_cal == 50 and tscope.rank == 46


def test_detects_a_longer_pole(tscope: TransitionScope) -> None:
    """Twice the pole: the dynamics change, the reward does not; detected in nearly every episode, early."""
    alarms = tscope.first_alarms(episodes(1.0, range(1000, 1100)))
    caught = [a for a in alarms if a is not None]
    assert len(caught) >= 90
    assert np.mean(caught) < 50


class Broken:
    """A model with the learned model's spaces whose prediction raises or is NaN."""

    def __init__(self, model: LearnedModel, mode: str) -> None:
        self.observation_space, self.action_space, self.arrays = model.observation_space, model.action_space, {}
        self.mode = mode

    def predict(self, obs: Any, action: Any) -> np.ndarray:
        if self.mode == "raise":
            raise RuntimeError("the model broke")
        return np.full((len(obs), 4), np.nan)


@pytest.mark.parametrize("mode", ["raise", "nan"])
def test_fails_closed_on_a_broken_model(mode: str, tscope: TransitionScope, calibration: Calibration) -> None:
    broken = dataclasses.replace(tscope, model=Broken(tscope.model, mode))  # type: ignore[arg-type]
    seen: list[Any] = []
    env = GuardedEnv(cartpole(), calibration, detectors=[], protocol=[Alert(seen.append), Stop()],
                     transition_scope=broken)
    obs, _ = env.reset(seed=0)
    _, _, _, truncated, info = env.step(policy(obs))
    report = info["mesaguard"]
    assert report["alarm"] and report["detector"] == ERROR and truncated
    assert ("the model broke" if mode == "raise" else "NaN") in report["error"]
    assert [a.detector for a in seen] == [ERROR] and seen[0].error == report["error"]
    venv = GuardedVectorEnv(gym.vector.SyncVectorEnv([cartpole, cartpole]), calibration, detectors=[],
                            transition_scope=broken)
    obs, _ = venv.reset(seed=0)
    _, _, _, truncated, info = venv.step(np.array([policy(o) for o in obs]))
    assert truncated.all() and list(info["mesaguard"]["detector"]) == [ERROR, ERROR]
    assert all(("broke" if mode == "raise" else "NaN") in e for e in info["mesaguard"]["error"])


def test_detector_rejects_a_nan_transition(tscope: TransitionScope) -> None:
    det = tscope.detector(1)
    with pytest.raises(DetectorError, match="not finite|expected finite"):
        det.update(det.rows(np.zeros(4), 0, np.full(4, np.nan)))


def test_file_round_trip_and_foreign_or_crafted_files(tmp_path, tscope: TransitionScope, model: LearnedModel) -> None:
    path = tscope.save(tmp_path / "ts.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ts.json", "ts.safetensors"]  # no pickle anywhere
    loaded = TransitionScope.load(path, model)
    assert loaded.threshold == tscope.threshold and loaded.maxima == tscope.maxima
    ep = episodes(1.0, range(5000, 5003))
    assert loaded.first_alarms(ep) == tscope.first_alarms(ep)
    other = fit_env(cartpole, policy, seed=1, config=CONFIG)
    with pytest.raises(TransitionScopeError, match=rf"{tmp_path / 'ts.json'}.*model_hash"):
        TransitionScope.load(path, other)
    data = json.loads(path.read_text())
    data["threshold"] = data["threshold"] * 0.5  # a crafted value: the content hash no longer matches
    (tmp_path / "crafted.json").write_text(json.dumps(data))
    (tmp_path / "crafted.safetensors").write_bytes((tmp_path / "ts.safetensors").read_bytes())
    with pytest.raises(TransitionScopeError, match="crafted.json"):
        TransitionScope.load(tmp_path / "crafted.json", model)
    sidecar = bytearray((tmp_path / "ts.safetensors").read_bytes())
    sidecar[-1] ^= 1
    (tmp_path / "ts.safetensors").write_bytes(bytes(sidecar))
    with pytest.raises(TransitionScopeError, match="ts.safetensors"):
        TransitionScope.load(path, model)


def test_guard_fires_on_the_transition_and_the_fallback_takes_over(tscope: TransitionScope,
                                                                   calibration: Calibration) -> None:
    seen: list[Any] = []
    env = GuardedEnv(cartpole(1.0), calibration, detectors=[], protocol=[Alert(seen.append), Fallback(policy)],
                     transition_scope=tscope)
    obs, info = env.reset(seed=3)
    reports = []
    for _ in range(STEPS):
        obs, _, terminated, truncated, info = env.step(policy(obs))
        reports.append(info["mesaguard"])
        if terminated or truncated:
            break
    fired = next(r for r in reports if r["alarm"])
    assert fired["detector"] == TRANSITION and fired["statistics"][TRANSITION] > tscope.threshold
    assert all(r["statistics"][TRANSITION] <= tscope.threshold for r in reports[: fired["step"] - 1])
    assert [a.detector for a in seen] == [TRANSITION] and seen[0].step == fired["alarm_step"] == fired["step"]
    assert reports[fired["step"]]["acting"] == "protocol"


def test_env_of_another_shape_is_refused(tscope: TransitionScope, calibration: Calibration) -> None:
    with pytest.raises(TransitionScopeError, match="observation shape"):
        GuardedEnv(gym.make("Pendulum-v1"), calibration, detectors=[], transition_scope=tscope)


def single_verdicts(length: float, seed: int, count: int, tscope: TransitionScope,
                    calibration: Calibration) -> list[tuple[int | None, str | None]]:
    env = GuardedEnv(cartpole(length), calibration, detectors=[], transition_scope=tscope)
    verdicts: list[tuple[int | None, str | None]] = []
    obs, _ = env.reset(seed=seed)
    while len(verdicts) < count:
        obs, _, terminated, truncated, info = env.step(policy(obs))
        if terminated or truncated:
            report = info["mesaguard"]
            verdicts.append((report["alarm_step"], report["detector"]))
            obs, _ = env.reset()
    return verdicts


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_vector_verdicts_equal_single_verdicts(mode: AutoresetMode, tscope: TransitionScope,
                                               calibration: Calibration) -> None:
    lengths, seeds, count = [0.5, 1.0, 0.5, 0.75], [7, 8, 9, 10], 3
    venv = GuardedVectorEnv(gym.vector.SyncVectorEnv([lambda x=x: cartpole(x) for x in lengths],
                                                     autoreset_mode=mode),
                            calibration, detectors=[], transition_scope=tscope)
    verdicts: list[list[tuple[int | None, str | None]]] = [[] for _ in lengths]
    obs, _ = venv.reset(seed=seeds)
    while min(map(len, verdicts)) < count:
        obs, _, terminated, truncated, info = venv.step(np.array([policy(o) for o in obs]))
        report = info["mesaguard"]
        for i in np.flatnonzero(terminated | truncated):
            alarm = bool(report["alarm"][i])
            verdicts[i].append((int(report["alarm_step"][i]) if alarm else None, report["detector"][i] or None))
    expected = [single_verdicts(x, s, count, tscope, calibration) for x, s in zip(lengths, seeds)]
    assert [v[:count] for v in verdicts] == expected
    flat = [d for v in expected for _, d in v]
    assert TRANSITION in flat and None in flat  # both verdicts occur: the comparison means something
