"""The one-call API: calibrate from an env factory and a policy, evaluate a guard in one env or a vector env."""

from __future__ import annotations

import functools
import io
import json
import math
import sys

import gymnasium as gym
import numpy as np
import pytest
from scipy import stats

import mesaguard
from mesaguard import Alert, Calibration, DeploymentMonitor, Fallback, calibrate, evaluate, evaluation
from mesaguard.calibration import CalibrationError
from mesaguard.conformal import conformal_rank
from mesaguard.evaluation import Evaluation, delay

ANGLE_LIMIT = 12 * 2 * math.pi / 360  # CartPole-v1 fails an episode past 12 degrees


def lean(obs):
    """A scripted policy: push towards the lean (balances the stock pole)."""
    return int(obs[2] + 0.5 * obs[3] > 0)


def margin(t):
    """The user's base objective: 1 with the pole upright, 0 at the failing angle."""
    return 1.0 - abs(float(t.next_obs[2])) / ANGLE_LIMIT


class Falls(gym.Wrapper):
    """Reports the pole's fall as ``info["catastrophe"]``."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "catastrophe": bool(terminated)}


def make_env(length: float = 0.5, falls: bool = False) -> gym.Env:
    env = gym.make("CartPole-v1", max_episode_steps=100)
    cartpole = env.unwrapped
    cartpole.length, cartpole.polemass_length = length, cartpole.masspole * length
    return Falls(env) if falls else env


SHIFTED = functools.partial(make_env, 0.05, True)  # a pole a tenth as long: the PD push overshoots and it falls
CAL_EPISODES = 200


@pytest.fixture(scope="module")
def cal() -> Calibration:
    return calibrate(make_env, lean, episodes=CAL_EPISODES, objective=margin, detectors=["envelope", "meanshift"],
                     progress=False)


def test_calibrate_records_what_it_fitted(cal):
    assert isinstance(cal, Calibration)
    assert cal.objective == "margin" and cal.scenario == "CartPole-v1" and cal.alpha == 0.05
    assert cal.n_fit + cal.n_cal == CAL_EPISODES and sorted(cal.detectors) == ["envelope", "meanshift"]
    assert cal.metadata["seeds"][1] - cal.metadata["seeds"][0] == CAL_EPISODES


def test_false_alarms_stay_within_the_binomial_bound_of_alpha(cal):
    ev = evaluate(make_env, lean, cal, objective=margin, episodes=300, progress=False)
    # given one calibration the per-episode false-alarm rate is Beta(n + 1 - k, k) (mean <= alpha): its 0.999
    # quantile, then the binomial 0.999 quantile over the evaluation episodes
    k = conformal_rank(cal.n_cal, cal.alpha)
    ceiling = stats.binom.ppf(0.999, 300, stats.beta.ppf(0.999, cal.n_cal + 1 - k, k))
    assert ev.false_alarm_rate.n == 300 and ev.false_alarm_rate.k <= ceiling
    assert ev.false_alarm_rate.low <= ev.false_alarm_rate.rate <= ev.false_alarm_rate.high
    assert ev.catastrophes is None  # the stock env does not report info["catastrophe"]


def test_a_shifted_env_is_detected_before_the_fall_and_stopped(cal):
    free = evaluate(SHIFTED, lean, cal, objective=margin, detectors=[], episodes=40, progress=False)
    assert free.catastrophes == 40  # unguarded, every episode falls
    ev = evaluate(SHIFTED, lean, cal, objective=margin, episodes=40, progress=False)
    assert ev.detection_rate.k == 40 and ev.detection_rate.low > 0.9
    falls = {e.seed: e.length for e in free.episodes}
    assert all(e.alarm_step < falls[e.seed] for e in ev.episodes)  # every alarm came before the fall ...
    assert ev.catastrophes == 0  # ... and Stop prevented it
    d = ev.delay
    assert d.n == 40 and d.low <= d.median <= d.high and d.mean == np.mean([e.alarm_step for e in ev.episodes])
    summary = ev.as_dict()
    assert summary["alarms"]["k"] == 40 and summary["catastrophes"] == 0 and summary["delay"]["n"] == 40
    assert repr(ev).startswith("Evaluation(episodes=40, alarms=1.000") and "\n" not in repr(ev)
    assert json.loads(json.dumps(summary)) == summary  # plain JSON values
    table = ev.table()
    assert "40 of 40" in table and "catastrophes" in table and str(d) in table


PROTOCOLS = {
    "stop": lambda: None,
    "fallback": lambda: Fallback(lambda obs: 0),
    "alert": lambda: [Alert(lambda alarm: None)],
}


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("env", [make_env, SHIFTED], ids=["in-distribution", "shifted"])
def test_vector_env_gives_the_same_verdicts_episode_by_episode(cal, env, protocol):
    single = evaluate(env, lean, cal, objective=margin, protocol=PROTOCOLS[protocol](), episodes=24, progress=False)
    vector = evaluate(env, lean, cal, objective=margin, protocol=PROTOCOLS[protocol](), episodes=24, num_envs=5,
                      progress=False)
    assert vector.num_envs == 5
    assert evaluate(env, lean, cal, objective=margin, episodes=3, num_envs=8, progress=False).num_envs == 3
    assert vector.verdicts() == single.verdicts()
    assert [e.length for e in vector.episodes] == [e.length for e in single.episodes]
    for a, b in zip(single.episodes, vector.episodes):
        np.testing.assert_allclose(a.increments, b.increments)
        assert a.acting == b.acting  # who acted at each step: the agent, or the fallback after the alarm
    if protocol == "fallback" and env is SHIFTED:  # the fallback did take over: the comparison above has teeth
        assert all("protocol" in e.acting for e in single.episodes)
    assert vector.catastrophes == single.catastrophes


def test_an_sb3_style_model_is_taken_as_it_is(cal):
    class Model:  # Stable-Baselines3's predict: (action, state)
        def predict(self, obs, deterministic=True):
            return np.asarray(lean(obs)), None

    by_model = evaluate(make_env, Model(), cal, objective=margin, episodes=10, progress=False)
    by_callable = evaluate(make_env, lean, cal, objective=margin, episodes=10, progress=False)
    assert by_model.verdicts() == by_callable.verdicts()


def test_a_different_objective_than_the_calibrated_one_is_an_error(cal):
    with pytest.raises(CalibrationError, match="margin"):
        evaluate(make_env, lean, cal, episodes=2, progress=False)  # the reward is not the calibrated objective


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda c: calibrate(make_env, lean, episodes=1, progress=False), ["episodes=1", ">= 2"]),
        (lambda c: calibrate(make_env, lean, alpha=1.5, progress=False), ["alpha=1.5", "between 0 and 1"]),
        (lambda c: calibrate(make_env, lean, episodes=10, progress=False), ["episodes=10", "alpha=0.05", "least 37"]),
        (lambda c: calibrate(make_env, lean, detectors=["nope"], progress=False), ["'nope'", "expected one of"]),
        (lambda c: calibrate(make_env, lean, match="nope", progress=False), ["match='nope'", "'quantiles'"]),
        (lambda c: calibrate(make_env(), lean, progress=False), ["make_env=", "callable of no arguments"]),
        (lambda c: calibrate(make_env, 3, progress=False), ["policy=3", "callable obs -> action"]),
        (lambda c: evaluate(make_env, lean, "cal.json", progress=False), ["calibration='cal.json'", "Calibration"]),
        (lambda c: evaluate(make_env, lean, c, objective=margin, episodes=0, progress=False), ["episodes=0", ">= 1"]),
        (lambda c: evaluate(make_env, lean, c, objective=margin, num_envs=2.5, progress=False),
         ["num_envs=2.5", "whole number"]),
        (lambda c: evaluate(make_env, lean, c, objective=margin, num_envs=2, workers=2, progress=False),
         ["num_envs=2", "workers=2"]),
        (lambda c: calibrate(lambda: make_env(), lean, workers=2, progress=False),
         ["make_env=<function", "workers=2", "module-level function"]),
        (lambda c: evaluate(make_env, lambda obs: 0, c, objective=margin, workers=2, progress=False),
         ["policy=<function", "workers=2", "module-level function"]),
    ],
    ids=["episodes", "alpha", "too-few", "detector", "match", "env", "policy", "calibration", "eval-episodes",
         "num_envs", "both", "workers-env", "workers-policy"],
)
def test_bad_arguments_name_the_argument_the_value_and_what_was_expected(cal, call, words, monkeypatch):
    monkeypatch.setattr(evaluation, "rollout", None)  # every argument is checked before any episode is played
    with pytest.raises((TypeError, ValueError)) as info:
        call(cal)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_delay_interval_is_an_order_statistic_interval_for_the_median():
    d = delay(list(range(1, 101)))
    assert (d.n, d.median) == (100, 50.5)
    # the interval [x_(j), x_(n+1-j)] with j the binomial (1 - 0.95)/2 quantile covers the median
    j = int(stats.binom.ppf(0.025, 100, 0.5))
    assert (d.low, d.high) == (j, 101 - j)
    assert stats.binom.cdf(100 - j, 100, 0.5) - stats.binom.cdf(j - 1, 100, 0.5) >= 0.95
    assert delay([]).n == 0 and math.isnan(delay([]).median)


def test_the_package_exports_the_one_call_api():
    assert mesaguard.calibrate is calibrate and mesaguard.Evaluation is Evaluation
    assert {"calibrate", "evaluate", "Evaluation"} <= set(dir(mesaguard))


def test_every_exported_name_resolves_and_the_scopes_are_among_them():
    from mesaguard.scope import Scope
    from mesaguard.transition_scope import TransitionScope

    assert mesaguard.Scope is Scope and mesaguard.TransitionScope is TransitionScope
    for name in mesaguard.__all__:
        assert getattr(mesaguard, name) is not None, name


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bars_are_drawn_on_a_terminal_only(monkeypatch, capsys):
    calibrate(make_env, lean, episodes=40, alpha=0.1, objective=margin, detectors=["envelope"])
    assert capsys.readouterr().err == ""  # progress=True, but stderr is not a terminal: nothing drawn
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    calibrate(make_env, lean, episodes=40, alpha=0.1, objective=margin, detectors=["envelope"])
    drawn = terminal.getvalue()
    assert "calibration episodes" in drawn and "fitting detectors" in drawn
    terminal.seek(0)
    terminal.truncate()
    calibrate(make_env, lean, episodes=40, alpha=0.1, objective=margin, detectors=["envelope"], progress=False)
    assert terminal.getvalue() == ""


def test_a_long_fit_reports_each_detector_as_it_is_fitted():
    rng = np.random.default_rng(0)
    episodes = [rng.normal(1.0, 0.1, 500) for _ in range(60)]  # long episodes: a detector's pass is the unit of work
    seen: list[str] = []
    Calibration.fit(episodes, alpha=0.1, detectors=["cusum", "envelope"], on_detector=seen.append)
    assert seen == ["cusum", "envelope"]



class FallsOnly(gym.Wrapper):
    """Puts ``info["catastrophe"]`` only on the step of the fall (no key otherwise)."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "catastrophe": True} if terminated else info


def test_catastrophes_count_where_the_env_reports_them_only_when_they_happen(cal):
    shifted = evaluate(lambda: FallsOnly(make_env(0.05)), lean, cal, objective=margin, detectors=[], episodes=5,
                       progress=False)
    assert shifted.catastrophes == 5
    assert evaluate(lambda: FallsOnly(make_env()), lean, cal, objective=margin, episodes=5,
                    progress=False).catastrophes is None  # none happened, and one step does not show the key


@pytest.mark.parametrize("num_envs", [1, 4])
def test_episodes_a_monitor_refused_after_stopping_the_deployment_are_not_counted(cal, num_envs):
    monitor = DeploymentMonitor(cal, n_envs=num_envs)
    ev = evaluate(SHIFTED, lean, cal, objective=margin, episodes=20, num_envs=num_envs, monitor=monitor,
                  progress=False)
    assert ev.not_played > 0  # the monitor stopped the deployment: later episodes were refused from the start
    assert len(ev.episodes) + ev.not_played == 20 and all(e.length > 0 for e in ev.episodes)
    assert ev.detection_rate.n == len(ev.episodes) and ev.detection_rate.k == len(ev.episodes)  # each one alarmed
    assert f"not_played={ev.not_played}" in repr(ev) and ev.as_dict()["not_played"] == ev.not_played
    taken_over = evaluate(SHIFTED, lean, cal, objective=margin, episodes=20, num_envs=num_envs, progress=False,
                          monitor=DeploymentMonitor(cal, n_envs=num_envs), protocol=Fallback(lambda obs: 0))
    assert taken_over.not_played == 0 and len(taken_over.episodes) == 20  # a fallback plays every episode out


def test_detection_over_the_runs_that_misbehaved_pairs_with_the_unguarded_runs(cal):
    free = evaluate(SHIFTED, lean, cal, objective=margin, detectors=[], episodes=12, progress=False)
    guarded = evaluate(SHIFTED, lean, cal, objective=margin, episodes=12, progress=False)
    d = guarded.detection(free)  # every unguarded run falls (a catastrophe): every run misbehaved
    assert d.rate.n == 12 and d.rate.k == guarded.detection_rate.k
    assert d == guarded.detection(list(free.episodes))
    calm = evaluate(make_env, lean, cal, objective=margin, detectors=[], episodes=12, progress=False)
    assert guarded.detection(calm).rate.n == 0  # paired with runs that did not misbehave: nothing to detect
