"""Checks where users go wrong: the calibration's objective and lengths, constant increments, long episodes."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import SyncVectorEnv

from mesaguard.calibration import Calibration, CalibrationError
from mesaguard.guard import GuardedEnv, GuardedVectorEnv
from mesaguard.protocols import Alert


def episodes(n: int = 60, length: int = 30, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(1.0, 0.1, size=length) for _ in range(n)]


def margin(t) -> float:
    return float(t.reward)


def test_the_calibration_records_its_objective_and_lengths_and_round_trips(tmp_path):
    cal = Calibration.fit(episodes() + [np.ones(12)], alpha=0.1, objective="info:margin", obs_shape=(3,))
    assert cal.objective == "info:margin" and cal.lengths == (12, 30)
    loaded = Calibration.load(cal.save(tmp_path / "cal.json"))
    assert loaded.objective == "info:margin" and loaded.lengths == (12, 30)
    assert Calibration.fit(episodes(), alpha=0.1, objective=margin).objective == "margin"
    assert "\n" not in repr(cal) and len(repr(cal)) < 300 and "info:margin" in repr(cal)


@pytest.mark.parametrize(
    "field, value",
    [
        ("objective", 3),
        ("objective", ""),
        ("lengths", [0, 5]),
        ("lengths", [9, 3]),
        ("lengths", "30"),
        ("lengths", [1.5, 3]),
    ],
)
def test_a_crafted_objective_or_lengths_field_is_refused_by_name(tmp_path, field, value):
    from mesaguard.calibration import KIND  # the header is re-sealed below, as an attacker would

    cal = Calibration.fit(episodes(), alpha=0.1, objective="reward")
    data = json.loads(cal.save(tmp_path / "cal.json").read_text())
    body = {k: v for k, v in data.items() if k not in ("format", "schema_version", "content_hash", "signature")}
    body[field] = value
    (tmp_path / "cal.json").write_text(json.dumps(KIND.seal(body, None)))
    with pytest.raises(CalibrationError, match=f"field {field} is"):
        Calibration.load(tmp_path / "cal.json")


def test_a_guard_with_another_objective_than_calibrated_is_an_error_unless_allowed():
    cal = Calibration.fit(episodes(), alpha=0.1, objective="info:margin", obs_shape=(3,))
    with pytest.raises(CalibrationError, match="fitted on the objective 'info:margin'; this guard computes 'reward'"):
        GuardedEnv(gym.make("Pendulum-v1"), cal, objective="reward")
    venv = SyncVectorEnv([lambda: gym.make("Pendulum-v1")] * 2)
    with pytest.raises(CalibrationError, match="this guard computes 'reward'"):
        GuardedVectorEnv(venv, cal, objective="reward")
    assert GuardedEnv(gym.make("Pendulum-v1"), cal, objective="reward", allow_other_objective=True)
    assert GuardedEnv(gym.make("Pendulum-v1"), cal).objective.name == "info:margin"  # the default: the recorded one
    by_function = Calibration.fit(episodes(), alpha=0.1, objective=margin, obs_shape=(3,))
    with pytest.raises(CalibrationError, match="'margin', a function of the transition; pass it again"):
        GuardedEnv(gym.make("Pendulum-v1"), by_function)
    assert GuardedEnv(gym.make("Pendulum-v1"), by_function, objective=margin).objective.name == "margin"


def test_constant_increments_warn_that_the_guard_can_fire_only_if_they_change():
    with pytest.warns(UserWarning, match="never varies in distribution"):
        Calibration.fit([np.ones(20) for _ in range(40)], alpha=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Calibration.fit(episodes(), alpha=0.1)  # varying increments: no warning


def test_running_past_the_longest_calibration_episode_warns_once():
    cal = Calibration.fit(episodes(length=30), alpha=0.1, obs_shape=(3,))  # Pendulum runs 200 steps
    env = GuardedEnv(gym.make("Pendulum-v1"), cal, detectors=["cusum"], protocol=Alert(lambda alarm: None))
    env.reset(seed=0)
    with pytest.warns(UserWarning, match=r"past the longest calibration episode \(30 steps\)") as seen:
        for _ in range(60):
            env.step(np.zeros(1, dtype=np.float32))
    assert sum("past the longest" in str(w.message) for w in seen) == 1
    pendulums = SyncVectorEnv([lambda: gym.make("Pendulum-v1")] * 2)
    venv = GuardedVectorEnv(pendulums, cal, detectors=["cusum"], protocol=Alert(lambda alarm: None))
    venv.reset(seed=0)
    with pytest.warns(UserWarning, match="past the longest") as seen:
        for _ in range(60):
            venv.step(np.zeros((2, 1), dtype=np.float32))
    assert sum("past the longest" in str(w.message) for w in seen) == 1
