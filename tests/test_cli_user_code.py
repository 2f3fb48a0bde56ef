"""A user's own code that fails part-way through a run: the command prints one line naming it and exits 2.

:func:`mesaguard.userenv.check_task` tries the first step before any rollout; what fails later (a policy that
raises at its hundredth call, an objective that divides by zero one episode in, an env whose step returns
``info=None``) is the user's code, not a bug of mesaguard: one line names the option, the value, the exception and
where it was raised.
"""

from __future__ import annotations

import pytest

from tests.test_cli_user_env import run, user_module

MODULE = "flaky_task"
TASK = '''
import gymnasium as gym

CALLS = {"policy": 0, "objective": 0}


class NoInfo(gym.Wrapper):
    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, (None if self.env.unwrapped.steps_beyond_terminated is None
                                                     and obs[0] > 0.05 else info)


def make_env():
    return gym.make("CartPole-v1", max_episode_steps=30)


def make_no_info():
    return NoInfo(make_env())


def controller(obs):
    return int(obs[2] + 0.5 * obs[3] > 0)


def tiring(obs):
    CALLS["policy"] += 1
    if CALLS["policy"] > 100:
        raise RuntimeError("policy bug at call 101")
    return controller(obs)


def margin(t):
    CALLS["objective"] += 1
    return 1.0 / (100 - CALLS["objective"])
'''


@pytest.fixture
def task(tmp_path, monkeypatch):
    yield from user_module(tmp_path, monkeypatch, MODULE, TASK)


@pytest.mark.parametrize(
    "env, policy, objective, named",
    [
        ("make_env", "tiring", "reward", f"--policy '{MODULE}:tiring' raised RuntimeError: policy bug at call 101"),
        ("make_env", "controller", "margin", f"--objective '{MODULE}:margin' raised ZeroDivisionError"),
        ("make_no_info", "controller", "reward", f"--env '{MODULE}:make_no_info' returned info=None from step"),
    ],
    ids=["policy", "objective", "env info"],
)
def test_user_code_failing_mid_run_is_one_line_naming_it(task, monkeypatch, capsys, env, policy, objective, named):
    objective = objective if objective == "reward" else f"{MODULE}:{objective}"
    code = run(monkeypatch, "calibrate", "--env", f"{MODULE}:{env}", "--policy", f"{MODULE}:{policy}",
               "--objective", objective, "--episodes", "40", "--alpha", "0.1", "--detectors", "cusum",
               "-o", str(task / "cal.json"))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("UserCodeError: ") and named in " ".join(err.split())
    assert not (task / "cal.json").exists()
