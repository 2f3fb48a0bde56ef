"""The deployment monitor: Ville's bound, exact p-values, mid-episode evidence, vector envs, persistence."""

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from mesaguard.calibration import Calibration, CalibrationError
from mesaguard.detectors import DetectorError
from mesaguard.guard import GuardedEnv, GuardedVectorEnv
from mesaguard.monitor import (
    SHIFTS,
    DeploymentMonitor,
    MonitorError,
    first_deployment_alarm,
    horizon_threshold,
    log_wealth_path,
    replay,
    sequential_pvalues,
)
from mesaguard.protocols import Alert, Fallback, Stop
from tests.test_guard import pendulum_rewards, swing_up


def synthetic_calibration(n_cal: int, seed: int = 0, steps: int = 1) -> Calibration:
    """A calibration whose per-episode statistic is just the (standardized) per-step draws."""
    rng = np.random.default_rng(seed)
    episodes = [rng.normal(0.0, 1.0, steps) for _ in range(2 * n_cal)]
    return Calibration.fit(episodes, alpha=0.1, detectors=["threshold"], scenario="synthetic")


def deploy(monitor: DeploymentMonitor, increments: np.ndarray) -> int | None:
    """One-step episodes, one increment each (statistic: its negative, standardized); the episode count at the alarm."""
    for u in increments:
        monitor.start()
        monitor.update(np.array([u]))
        monitor.finish()
        if monitor.alarm:
            return monitor.alarm_episode
    return None


# -- the statistics -----------------------------------------------------------


def test_sequential_pvalues_are_uniform_for_exchangeable_values():
    """Smoothed sequential ranks of i.i.d. values: exactly U(0, 1), even with ties (discrete values)."""
    rng = np.random.default_rng(1)
    p = np.concatenate(
        [sequential_pvalues(rng.integers(0, 3, 10), rng.integers(0, 3, 20), rng.random(20)) for _ in range(500)]
    )
    # 10,000 p-values: a KS test at level 0.001 fails a correct implementation once in a thousand seeds.
    assert stats.kstest(p, "uniform").pvalue > 0.001


@given(
    st.lists(st.integers(min_value=-3, max_value=3), min_size=1, max_size=30),
    st.floats(min_value=0.01, max_value=3.0),
)
def test_each_bet_has_expectation_one_under_exchangeability(values, shift):
    """Whatever the bag (ties included), a new exchangeable value's bet has mean 1: a martingale factor.

    The new value is each of the N + 1 with equal chance; given which, p is affine
    in the smoothing uniform, so the bet's mean over it is exact:
    the integral of exp(d z - d^2/2) dp over [p0, p1] is Phi(z(p0) - d) - Phi(z(p1) - d).
    """
    values = np.array(values, dtype=float)
    means = []
    for i, x in enumerate(values):
        bag = np.delete(values, i)
        p0, p_half, p1 = (sequential_pvalues(bag, [x], [u])[0] for u in (0.0, 0.5, 1.0))
        assert p_half == pytest.approx((p0 + p1) / 2)
        z0, z1 = -stats.norm.ppf(p0), -stats.norm.ppf(p1)
        means.append((stats.norm.cdf(z0 - shift) - stats.norm.cdf(z1 - shift)) / (p1 - p0))
    assert np.mean(means) == pytest.approx(1.0, abs=1e-9)


def test_online_p_values_equal_the_offline_twin():
    cal = synthetic_calibration(60)
    monitor = DeploymentMonitor(cal, alpha=0.01, seed=3)
    rng = np.random.default_rng(2)
    increments = rng.normal(-0.3, 1.0, 40)
    deploy(monitor, increments)
    u = np.random.default_rng(3).random(40)
    d = cal.detectors["threshold"]
    p = sequential_pvalues(cal.joint_maxima(["threshold"]), (-increments - d.location) / d.scale, u)
    z = -stats.norm.ppf(p)
    log_wealth = np.outer(SHIFTS, z.cumsum()) - np.outer(np.square(SHIFTS) / 2, np.arange(1, 41))  # per shift
    expected = np.log(np.mean(np.exp(log_wealth), axis=0))
    assert log_wealth_path(p) == pytest.approx(expected)
    assert monitor.episodes == 40
    assert math.log(monitor.evidence) == pytest.approx(expected[-1])


@pytest.mark.parametrize("seed", range(5))
def test_offline_first_alarm_equals_the_online_monitor(seed):
    """Episodes of varying length with a drop: the same (episode, step) offline as online, mid-episode included."""
    cal = synthetic_calibration(60, seed=seed)
    rng = np.random.default_rng(seed)
    episodes = [rng.normal(0.4, 1.0, rng.integers(1, 8)) for _ in range(200)]
    monitor = DeploymentMonitor(cal, alpha=0.05, seed=seed)
    online = None
    for j, episode in enumerate(episodes):
        monitor.start()
        for t, x in enumerate(episode):
            monitor.observe(np.array([x]))
            if monitor.alarm and online is None:
                online = (j + 1, t + 1)
        monitor.finish()
        if online:
            break
    offline = first_deployment_alarm(cal.joint_maxima(["threshold"]), episodes, math.log(20), seed=seed)
    assert online is not None and offline == online


def test_horizon_threshold_is_below_villes_and_grows_with_the_horizon():
    c10, c100 = horizon_threshold(10, 0.05, simulations=4000), horizon_threshold(100, 0.05, simulations=4000)
    assert c10 < c100 < math.log(20)


# -- the guarantees, by simulation --------------------------------------------


def test_villes_bound_holds_over_long_null_deployments():
    """400 in-distribution deployments of 100 episodes at alpha = 0.1: any-alarm rate <= 0.1.

    Ville gives <= alpha; the count is binomial, so the test allows 3 standard
    deviations above 40 (of 400), i.e. 58.
    """
    rng = np.random.default_rng(5)
    alarms = 0
    for d in range(400):
        cal = synthetic_calibration(30, seed=1000 + d)
        alarms += deploy(DeploymentMonitor(cal, alpha=0.1, seed=d), rng.normal(0, 1, 100)) is not None
    assert alarms <= 58


def test_fixed_horizon_mode_spends_alpha_exactly():
    """h = 30, alpha = 0.1: the rate of any alarm within 30 episodes is alpha (p-values exactly uniform).

    600 deployments: binomial sd 0.012, Monte Carlo error of c_h about 0.002; 3 sd each side.
    """
    rng = np.random.default_rng(6)
    alarms = 0
    for d in range(600):
        cal = synthetic_calibration(20, seed=5000 + d)
        alarms += deploy(DeploymentMonitor(cal, alpha=0.1, horizon=30, seed=d), rng.normal(0, 1, 40)) is not None
    assert 0.1 - 0.038 <= alarms / 600 <= 0.1 + 0.038


def test_detects_a_persistent_half_sd_drop_within_tens_of_episodes():
    cal = synthetic_calibration(200)
    at = deploy(DeploymentMonitor(cal, alpha=0.05), np.random.default_rng(7).normal(-0.5, 1.0, 500))
    # Expected: log(10 / 0.05) / (0.5^2 / 2) = 42 episodes at the best shift; 3x slack for the walk's spread.
    assert at is not None and at <= 130


# -- mid-episode evidence and the vector form ------------------------------------


@given(st.lists(st.floats(min_value=-3, max_value=3), min_size=1, max_size=20), st.integers(0, 100))
def test_evidence_within_an_episode_is_bounded_by_the_bets_around_it(statistics, seed):
    """Mid-episode evidence grows with the running max and never exceeds the wealth before or after."""
    cal = synthetic_calibration(20)
    monitor = DeploymentMonitor(cal, alpha=0.05, seed=seed)
    deploy(monitor, [0.0, -0.5])
    before = monitor.evidence
    monitor.start()
    seen = [monitor.observe(np.array([x])) for x in statistics]
    monitor.finish()
    assert all(a <= b * (1 + 1e-12) for a, b in itertools.pairwise(seen))
    assert seen[-1] <= max(before, monitor.evidence) * (1 + 1e-12)


def test_vector_monitor_bets_in_start_order_like_the_offline_twin():
    """Three envs, episodes of different lengths ending out of order: the final wealth is the offline one."""
    cal = synthetic_calibration(50)
    monitor = DeploymentMonitor(cal, alpha=0.001, n_envs=3, seed=4)
    rng = np.random.default_rng(8)
    monitor.start()  # episodes 0, 1, 2 in envs 0, 1, 2; observe() takes standardized statistics
    lengths = {0: 3, 1: 1, 2: 2}
    values = {}
    for t in range(3):
        x = rng.normal(0, 1, 3)
        live = np.array([t < lengths[i] for i in range(3)])
        before = monitor.evidence
        monitor.observe(x, live)
        for i in range(3):
            if live[i]:
                values[i] = max(values.get(i, -np.inf), x[i])
        ended = np.array([t == lengths[i] - 1 for i in range(3)])
        monitor.finish(ended)
        assert before >= 0
    assert monitor.episodes == 3
    u = np.random.default_rng(4).random(3)
    p = sequential_pvalues(cal.joint_maxima(["threshold"]), [values[0], values[1], values[2]], u)
    z = -stats.norm.ppf(p)
    expected = np.log(np.mean(np.exp(np.asarray(SHIFTS) * z.sum() - np.square(SHIFTS) / 2 * 3)))
    assert math.log(monitor.evidence) >= expected - 1e-9  # the max over prefixes includes the full product


def test_a_running_episode_counts_as_plus_infinity_in_a_later_bag():
    cal = synthetic_calibration(20)
    monitor = DeploymentMonitor(cal, alpha=0.05, n_envs=2, seed=0)
    monitor.start()
    monitor.observe(np.array([0.0, 5.0]))
    monitor.finish(np.array([False, True]))  # episode 1 ends before episode 0
    assert monitor.episodes == 0  # not bet on yet: episode 0 comes first
    monitor.observe(np.array([0.1, 0.0]), live=np.array([True, False]))
    monitor.finish(np.array([True, False]))
    assert monitor.episodes == 2


# -- the guard carries it --------------------------------------------------------


@pytest.fixture(scope="module")
def pendulum():
    episodes = pendulum_rewards(range(120))
    return Calibration.fit(episodes, alpha=0.05, detectors=["envelope"], scenario="pendulum", obs_shape=(3,))


def heavier_cost(transition):
    return 1.3 * transition.reward  # a cost term 30% heavier; the agent's behaviour is unchanged


def episodes_until_alarm(env, seeds, steps_limit=200):
    for n, seed in enumerate(seeds):
        obs, _ = env.reset(seed=seed)
        for _ in range(steps_limit):
            obs, _, terminated, truncated, info = env.step(swing_up(obs))
            if terminated or truncated:
                break
        if info["mesaguard"]["deployment"]["alarm"]:
            return n + 1, info
    return None, info


def test_guarded_env_reports_the_deployment_and_stops_every_later_episode_until_cleared(pendulum):
    alarms = []
    monitor = DeploymentMonitor(pendulum, alpha=0.05, scenario="pendulum")
    env = GuardedEnv(
        gym.make("Pendulum-v1"), pendulum, protocol=[Alert(alarms.append)], objective=heavier_cost, monitor=monitor
    )
    n, info = episodes_until_alarm(env, range(2000, 2100))
    assert n is not None and n <= 40
    report = info["mesaguard"]["deployment"]
    assert report["evidence"] >= report["threshold"] == pytest.approx(20.0)
    assert any(a.detector == "deployment" for a in alarms)
    # Alert only: the agent keeps acting.
    stopping = GuardedEnv(
        gym.make("Pendulum-v1"), pendulum, protocol=Stop(), objective=heavier_cost,
        monitor=DeploymentMonitor(pendulum, alpha=0.05),
    )
    n, _ = episodes_until_alarm(stopping, range(2000, 2100))
    assert n is not None
    for seed in (3000, 3001):  # later episodes: refused at once, the action never runs
        stopping.reset(seed=seed)
        _obs, reward, _terminated, truncated, info = stopping.step(np.array([2.0], dtype=np.float32))
        assert truncated and reward == 0.0 and info["mesaguard"]["acting"] == "protocol"
    stopping.clear()
    stopping.reset(seed=3002)
    _, _, _, truncated, info = stopping.step(swing_up(np.array([1.0, 0.0, 0.0])))
    assert not truncated and info["mesaguard"]["acting"] == "agent"
    assert info["mesaguard"]["deployment"]["alarm"] is False


def test_fallback_takes_over_in_later_episodes(pendulum):
    rest = np.array([0.0], dtype=np.float32)
    env = GuardedEnv(
        gym.make("Pendulum-v1"), pendulum, protocol=Fallback(lambda obs: rest), objective=heavier_cost,
        monitor=DeploymentMonitor(pendulum, alpha=0.05),
    )
    n, _ = episodes_until_alarm(env, range(2000, 2100))
    assert n is not None
    env.reset(seed=4000)
    actors = {env.step(swing_up(np.array([1.0, 0.0, 0.0])))[4]["mesaguard"]["acting"] for _ in range(5)}
    assert actors == {"protocol"}


def test_in_distribution_deployment_raises_no_alarm_on_these_seeds(pendulum):
    env = GuardedEnv(
        gym.make("Pendulum-v1"), pendulum, protocol=Alert(lambda a: None), monitor=DeploymentMonitor(pendulum)
    )
    n, info = episodes_until_alarm(env, range(5000, 5030))
    assert n is None and info["mesaguard"]["deployment"]["episodes"] == 30


def test_scalar_and_vector_guards_report_the_same_evidence(pendulum):
    """One sub-env in a vector env: the same evidence at every step as GuardedEnv."""
    single = GuardedEnv(gym.make("Pendulum-v1"), pendulum, protocol=Alert(lambda a: None), objective=heavier_cost,
                        monitor=DeploymentMonitor(pendulum, seed=1))
    vector = GuardedVectorEnv(
        gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1")]), pendulum, protocol=Alert(lambda a: None),
        objective=heavier_cost, monitor=DeploymentMonitor(pendulum, n_envs=1, seed=1),
    )
    for seed in (6000, 6001, 6002):
        obs1, _ = single.reset(seed=seed)
        obs2, _ = vector.reset(seed=seed)
        for _ in range(200):
            obs1, _, _, _trunc1, info1 = single.step(swing_up(obs1))
            obs2, _, _, _trunc2, info2 = vector.step(swing_up(obs2[0])[None])
            evidence = info2["mesaguard"]["deployment"]["evidence"]
            assert info1["mesaguard"]["deployment"]["evidence"] == pytest.approx(evidence)
        vector.step(np.zeros((1, 1), dtype=np.float32))  # next-step autoreset: the reset step
    assert single.monitor.episodes == vector.monitor.episodes == 3


# -- bad input -------------------------------------------------------------------


def test_bad_input_gets_the_documented_errors(pendulum):
    monitor = DeploymentMonitor(pendulum)
    monitor.start()
    with pytest.raises(DetectorError, match="not finite"):
        monitor.update(np.array([np.nan]))
    with pytest.raises(CalibrationError, match="alpha=1.5"):
        DeploymentMonitor(pendulum, alpha=1.5)
    with pytest.raises(CalibrationError, match="pendulum"):
        DeploymentMonitor(pendulum, scenario="lava")
    with pytest.raises(MonitorError, match="horizon=0"):
        DeploymentMonitor(pendulum, horizon=0)
    with pytest.raises(DetectorError, match="unknown detector"):
        DeploymentMonitor(pendulum, detectors=["nope"])
    with pytest.raises(ValueError, match="n_envs=1"):
        GuardedEnv(gym.make("Pendulum-v1"), pendulum, monitor=DeploymentMonitor(pendulum, n_envs=2))


def test_a_nan_increment_in_a_guard_censors_the_episode_and_fails_closed(pendulum):
    calls = iter([0.0, float("nan")])
    env = GuardedEnv(gym.make("Pendulum-v1"), pendulum, protocol=Stop(), objective=lambda t: next(calls),
                     monitor=DeploymentMonitor(pendulum))
    env.reset(seed=0)
    env.step(np.zeros(1, dtype=np.float32))
    *_, truncated, info = env.step(np.zeros(1, dtype=np.float32))
    assert truncated and info["mesaguard"]["detector"] == "error"
    assert env.monitor.finished == 1 and env.monitor.alarm is False  # an error ends the episode, not the deployment


def test_replay_over_recorded_episodes_matches_a_guarded_deployment(pendulum):
    """The offline deployment view (bench, CLI) gives the alarm the GuardedEnv's monitor gave."""
    monitor = DeploymentMonitor(pendulum, alpha=0.05, seed=3)
    env = GuardedEnv(gym.make("Pendulum-v1"), pendulum, protocol=Alert(lambda a: None), objective=heavier_cost,
                     monitor=monitor)
    episodes, online = [], None
    for seed in range(7000, 7200):
        obs, _ = env.reset(seed=seed)
        increments, done = [], False
        while not done:
            obs, _, terminated, truncated, info = env.step(swing_up(obs))
            increments.append(info["mesaguard"]["increment"])
            if info["mesaguard"]["deployment"]["alarm"] and online is None:
                online = (len(episodes) + 1, len(increments), monitor.steps)
            done = terminated or truncated
        episodes.append(np.array(increments))
        if online:
            break
    hit = replay(pendulum, episodes, alpha=0.05, seed=3)
    assert online is not None and (hit.episode, hit.step, hit.steps) == online


@given(st.lists(st.lists(st.floats(-3, 3), min_size=1, max_size=8), min_size=1, max_size=6), st.integers(0, 50))
def test_scalar_updates_equal_vector_updates(episodes, seed):
    cal = Calibration.fit([np.random.default_rng(i).normal(0, 1, 6) for i in range(60)], alpha=0.1,
                          detectors=["cusum", "envelope"])
    scalar, vector = DeploymentMonitor(cal, seed=seed), DeploymentMonitor(cal, seed=seed)
    for episode in episodes:
        scalar.start(), vector.start()
        for u in episode:
            assert scalar.update_scalar(u) == pytest.approx(vector.update(np.array([u])), rel=1e-12)
        scalar.finish(), vector.finish()
    assert scalar.episodes == vector.episodes and scalar.log_evidence == pytest.approx(vector.log_evidence)


def test_a_monitor_in_a_guard_reads_the_guards_statistics_and_judges_as_it_would_alone(pendulum):
    """Sharing the guard's statistics (``reads_from``) leaves every evidence value as the monitor alone computes it."""
    shared = DeploymentMonitor(pendulum, seed=2)
    env = GuardedEnv(gym.make("Pendulum-v1"), pendulum, protocol=Alert(lambda a: None), objective=heavier_cost,
                     monitor=shared)
    assert shared.statistic.shared is not None  # the guard runs every detector the monitor needs, fitted the same
    alone = DeploymentMonitor(pendulum, seed=2)
    for seed in range(2000, 2006):
        obs, _ = env.reset(seed=seed)
        alone.start()
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(swing_up(obs))
            done = terminated or truncated
            alone.update_scalar(info["mesaguard"]["increment"])
            if done:  # the guard ends the monitor's episode at its last step, before it reports
                alone.finish()
            assert alone.evidence == info["mesaguard"]["deployment"]["evidence"]
    other = Calibration.fit([np.ones(5) + 0.01 * i for i in range(40)], alpha=0.2)
    assert not DeploymentMonitor(pendulum).reads_from(list(pendulum.detectors), other)  # other fits: its own
    assert not DeploymentMonitor(pendulum).reads_from(["cusum"], pendulum)  # the guard lacks some: its own
