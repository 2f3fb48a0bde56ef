"""The compiled one-env guard (mesaguard.guard.compiled) against the Python ScalarGuard: the same numbers, bit for bit.

The compiled core claims ScalarGuard's rule in Python's floating point: every statistic, score, alarm, error and
warning equal at every step, so these tests compare with ``==``, never with a tolerance.
"""

from __future__ import annotations

import math
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
from mesaguard.protocols import Alert

STATE = ("score", "steps", "alarm", "alarm_step", "detector", "statistics")


def state(guard: object) -> tuple:
    return tuple(getattr(guard, name) for name in STATE)


def test_the_compiled_core_is_built_here() -> None:
    # Built by `pip install -e .` (Cython and a C compiler); where it is not, the guard runs in Python, slower.
    assert available(), "mesaguard.guard._compiled is not built: install with a C compiler (make venv)"


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


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_nonfinite_increment_is_the_same_error(calibration: Calibration, bad: float) -> None:
    for guard in (scalar_guard(calibration), ScalarGuard(calibration)):
        guard.update(1.0)
        with pytest.raises(DetectorError, match=rf"increment {bad} at step 2 is not finite"):
            guard.update(bad)


def test_a_statistic_that_overflows_is_the_same_error(calibration: Calibration) -> None:
    messages = []
    for guard in (scalar_guard(calibration), ScalarGuard(calibration)):
        with pytest.raises(GuardError) as caught:
            for _ in range(3):
                guard.update(-1e308)
        messages.append(str(caught.value))
    assert messages[0] == messages[1] and "not finite at step" in messages[0]


def test_python_guard_where_a_detector_has_no_compiled_form_or_it_is_switched_off(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.0, 0.3, 20) for _ in range(60)], alpha=0.1, detectors=["cusum", "envelope"])
    assert type(scalar_guard(cal)) is ScalarGuard
    assert type(scalar_guard(cal, ["cusum"])) is not ScalarGuard
    monkeypatch.setenv(OFF, "1")
    assert type(scalar_guard(cal, ["cusum"])) is ScalarGuard


def reports(calibration_seed: int, compiled: bool, monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every info report of a CartPole deployment (reward 1, calibrated on 1.1 +- 0.2) with the default set, a
    monitor and an alert."""
    monkeypatch.setenv(OFF, "0" if compiled else "1")
    rng = np.random.default_rng(calibration_seed)
    cal = Calibration.fit([rng.normal(1.1, 0.2, int(rng.integers(10, 60))) for _ in range(200)], alpha=0.2)
    env = GuardedEnv(gym.make("CartPole-v1"), cal, protocol=Alert(lambda alarm: None),
                     monitor=DeploymentMonitor(cal, alpha=0.2))
    assert (type(env.guard) is ScalarGuard) is not compiled
    out = []
    actions = np.random.default_rng(1)
    for episode in range(30):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, terminated, truncated, info = env.step(int(actions.integers(2)))
            out.append(info["mesaguard"])
            done = terminated or truncated
    return out


def test_guarded_env_reports_the_same_compiled_or_not(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled, python = reports(0, True, monkeypatch), reports(0, False, monkeypatch)
    assert compiled == python
    assert any(r["alarm"] for r in compiled) and not all(r["alarm"] for r in compiled)  # alarms both ways
