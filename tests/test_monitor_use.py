"""The deployment monitor refuses misuse loudly: call orders, non-finite input, one episode-number convention."""

import math

import numpy as np
import pytest

from mesaguard.calibration import Calibration
from mesaguard.detectors import DetectorError
from mesaguard.monitor import DeploymentMonitor, MonitorError, first_deployment_alarm, log_threshold, replay


@pytest.fixture(scope="module")
def cal() -> Calibration:
    rng = np.random.default_rng(0)
    return Calibration.fit([rng.normal(0.0, 1.0, 4) for _ in range(120)], alpha=0.1, detectors=["threshold"])


# -- call orders ----------------------------------------------------------------

CALLS = {
    "start": lambda m: m.start(),
    "update": lambda m: m.update(np.array([0.5])),
    "scalar": lambda m: m.update_scalar(0.5),
    "observe": lambda m: m.observe(np.array([0.5])),
    "censor": lambda m: m.censor(),
    "finish": lambda m: m.finish(),
    "cut": lambda m: m.finish(censored=True),
    "clear": lambda m: m.clear(),
    "fail": lambda m: m.fail(),
}

NO_EPISODE = "with no started episode: call start()"

# Each row: the calls in order; every call but the last must pass; the last raises the named error (or passes: None).
ORDERS = [
    (["update"], r"update\(\) in env \[0\] " + NO_EPISODE),
    (["scalar"], r"update_scalar\(\) " + NO_EPISODE),
    (["observe"], r"observe\(\) in env \[0\] " + NO_EPISODE),
    (["finish"], r"finish\(\) in env \[0\] " + NO_EPISODE),
    (["cut"], r"finish\(\) in env \[0\] " + NO_EPISODE),
    (["censor"], r"censor\(\) in env \[0\] " + NO_EPISODE),
    (["start", "update", "finish", "update"], r"update\(\) in env \[0\] " + NO_EPISODE),
    (["start", "scalar", "finish", "scalar"], r"update_scalar\(\) " + NO_EPISODE),
    (["start", "observe", "finish", "observe"], r"observe\(\) in env \[0\] " + NO_EPISODE),
    (["start", "update", "finish", "finish"], r"finish\(\) in env \[0\] " + NO_EPISODE),
    (["start", "update", "finish", "censor"], r"censor\(\) in env \[0\] " + NO_EPISODE),
    (["start", "update", "cut", "update"], r"update\(\) in env \[0\] " + NO_EPISODE),
    (["clear", "update"], r"update\(\) in env \[0\] " + NO_EPISODE),
    (["clear", "finish"], r"finish\(\) in env \[0\] " + NO_EPISODE),
    (["start", "clear", "finish", "update"], r"update\(\) in env \[0\] " + NO_EPISODE),
    # always allowed, in any order
    (["fail"], None),
    (["clear"], None),
    (["clear", "fail", "clear"], None),
    (["start"], None),
    (["start", "start"], None),  # a restart: the first episode ends censored
    (["start", "finish"], None),  # an episode replaced before its first step: no bet
    (["start", "update", "scalar", "observe", "censor", "update", "finish"], None),
    (["start", "update", "clear", "update", "finish"], None),
    (["start", "fail", "update", "finish", "start", "update", "cut"], None),
    (["fail", "finish"], None),  # under a standing alarm a refusing guard may end an env twice: nothing to lose
    (["start", "update", "fail", "finish", "finish", "cut"], None),
    (["fail", "censor"], r"censor\(\) in env \[0\] " + NO_EPISODE),
    (["fail", "update"], r"update\(\) in env \[0\] " + NO_EPISODE),
    (["fail", "clear", "finish"], r"finish\(\) in env \[0\] " + NO_EPISODE),
]


@pytest.mark.parametrize(("calls", "error"), ORDERS, ids=["-".join(c) for c, _ in ORDERS])
def test_every_call_order_is_accepted_or_refused_by_name(cal, calls, error):
    monitor = DeploymentMonitor(cal, seed=0)
    for name in calls[:-1]:
        CALLS[name](monitor)
    before = (monitor.steps, monitor.finished, monitor.episodes, monitor.log_evidence, monitor.alarm)
    if error is None:
        CALLS[calls[-1]](monitor)
        return
    with pytest.raises(MonitorError, match=error):
        CALLS[calls[-1]](monitor)
    assert (monitor.steps, monitor.finished, monitor.episodes, monitor.log_evidence, monitor.alarm) == before


VECTOR_ORDERS = [
    # start the envs of the first mask, then the call: an env of the call without a running episode is named
    ([True, False, True], lambda m: m.update(np.zeros(3)), r"update\(\) in env \[1\] " + NO_EPISODE),
    ([True, False, True], lambda m: m.observe(np.zeros(3)), r"observe\(\) in env \[1\] " + NO_EPISODE),
    ([False, False, True], lambda m: m.finish(), r"finish\(\) in env \[0, 1\] " + NO_EPISODE),
    ([True, False, False], lambda m: m.censor(np.array([0, 1, 1])), r"censor\(\) in env \[1, 2\] " + NO_EPISODE),
    ([True, False, True], lambda m: m.update(np.zeros(3), live=np.array([1, 0, 1])), None),
    ([True, False, True], lambda m: m.update(np.array([0.0, np.nan, 0.0]), live=np.array([1, 0, 1])), None),
    ([True, False, True], lambda m: m.finish(np.array([True, False, True])), None),
    ([True, True, True], lambda m: m.update(np.zeros(2)), r"shape \(2,\)"),
    ([True, True, True], lambda m: m.finish(np.array([True, False])), r"mask=\[True, False\]; expected 3 booleans"),
    ([True, True, True], lambda m: m.update(np.zeros(3), live=np.array([2, 0, 1])), r"live=\[2, 0, 1\]"),
    ([True, True, True], lambda m: m.finish(censored=[True, False]), r"censored=\[True, False\]"),
]


@pytest.mark.parametrize(("started", "call", "error"), VECTOR_ORDERS)
def test_vector_calls_name_the_envs_without_an_episode(cal, started, call, error):
    monitor = DeploymentMonitor(cal, n_envs=3, seed=0)
    monitor.start(np.array(started))
    if error is None:
        call(monitor)
    else:
        with pytest.raises((MonitorError, DetectorError), match=error):
            call(monitor)


def test_the_issues_case_fifty_dropped_episodes_without_start_is_refused_at_the_first_update(cal):
    """Issue 15 item 5: 50 episodes of a large drop fed with no start() were taken silently (evidence 1.0)."""
    monitor = DeploymentMonitor(cal)
    with pytest.raises(MonitorError, match="update_scalar"):
        for _ in range(50):
            for _ in range(4):
                monitor.update_scalar(-5.0)
            monitor.finish()
    with pytest.raises(MonitorError, match=r"update\(\)"):
        monitor.update(np.array([-5.0]))
    started = DeploymentMonitor(cal)  # the same drop, used as documented: the alarm
    for _ in range(50):
        started.start()
        for _ in range(4):
            started.update_scalar(-5.0)
        started.finish()
    assert started.alarm


# -- non-finite input ---------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_increment_is_an_error_and_censors_the_episode(cal, bad):
    for feed in (lambda m: m.update_scalar(bad), lambda m: m.update(np.array([bad]))):
        monitor = DeploymentMonitor(cal)
        monitor.start()
        with pytest.raises(DetectorError, match="not finite"):
            feed(monitor)
        assert monitor._episodes.running[0].censored and monitor.steps == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_statistic_is_an_error_and_censors_the_episode(cal, bad):
    monitor = DeploymentMonitor(cal, n_envs=2)
    monitor.start()
    with pytest.raises(MonitorError, match=r"statistics \[.*\] at env \[1\] are not finite"):
        monitor.observe(np.array([0.0, bad]))
    assert monitor._episodes.running[1].censored and not monitor._episodes.running[0].censored
    monitor.observe(np.array([0.0, bad]), live=np.array([True, False]))  # a non-live env's statistic is not read


@pytest.mark.filterwarnings("ignore:overflow encountered")
def test_finite_increments_that_overflow_the_statistic_are_an_error(cal):
    """Issue 15 item 7: 1e308 twice overflows the score to inf; the monitor must not take it as no evidence."""
    for feed in (lambda m, u: m.update_scalar(u), lambda m, u: m.update(np.array([u]))):
        monitor = DeploymentMonitor(cal)
        monitor.start()
        with pytest.raises((MonitorError, DetectorError), match="not finite|finite number"):
            for u in (1e308, 1e308, -1.0):
                feed(monitor, u)
        assert monitor._episodes.running[0].censored


# -- one convention for episode numbers -------------------------------------------


@pytest.mark.parametrize("mode", ["anytime", "fixed", "change"])
@pytest.mark.parametrize("seed", range(4))
def test_alarm_episode_replay_and_first_alarm_agree_on_1_based_numbers(cal, mode, seed):
    """The online monitor, replay and first_deployment_alarm name the same episode (1-based) and step."""
    kw = {"anytime": {}, "fixed": {"horizon": 300}, "change": {"arl": 200}}[mode]
    rng = np.random.default_rng(seed)
    # a deployment in distribution for 20 episodes, then every increment drops by half a step's spread
    episodes = [rng.normal(0.0 if j < 20 else -0.5, 1.0, rng.integers(1, 7)) for j in range(300)]
    monitor = DeploymentMonitor(cal, alpha=0.05, seed=seed, mode=mode, **kw)
    online = None
    for j, episode in enumerate(episodes):
        monitor.start()
        for t, u in enumerate(episode):
            monitor.update_scalar(float(u))
            if monitor.alarm and online is None:
                online = (j + 1, t + 1, monitor.steps)
        monitor.finish()
        if online:
            break
    assert online is not None and monitor.alarm_episode == online[0] and monitor.alarm_steps == online[2]
    hit = replay(cal, episodes, alpha=0.05, seed=seed, mode=mode, **kw)
    assert (hit.episode, hit.step, hit.steps) == online
    d = cal.detectors["threshold"]
    statistics = [(-np.cumsum(e) - d.location) / d.scale for e in episodes]
    offline = first_deployment_alarm(
        cal.joint_maxima(["threshold"]), statistics, log_threshold(mode, 0.05, **kw), seed=seed, mode=mode
    )
    assert offline == online[:2]


def test_the_alarm_names_the_episode_it_fired_in_not_the_count_finished(cal):
    """Extreme one-step episodes: the alarm fires inside episode n, and n (not n - 1 finished) is its number."""
    monitor = DeploymentMonitor(cal, alpha=0.1)
    n = 0
    while not monitor.alarm:
        monitor.start()
        monitor.observe(np.array([50.0]))  # above every reference value: p-values as small as the bag allows
        monitor.finish()
        n += 1
    assert monitor.alarm_episode == n


def test_fail_names_the_latest_started_episode(cal):
    monitor = DeploymentMonitor(cal)
    monitor.fail()
    assert monitor.alarm and monitor.alarm_episode == 0  # before the first episode
    monitor.clear()
    for _ in range(3):
        monitor.start()
    monitor.fail()
    assert monitor.alarm_episode == 3


# -- one guard at a time ---------------------------------------------------------


def test_a_monitor_serves_one_guard_at_a_time(cal):
    """Two guards feeding one monitor would mix their episodes in one ledger (before: unnoticed until the first
    episode's end, where the monitor failed with a message about call order). The second is refused when it is
    made; closing the first hands the monitor over, evidence and all."""
    import gymnasium as gym

    from mesaguard.guard import GuardedEnv, GuardedVectorEnv

    monitor = DeploymentMonitor(cal)
    first = GuardedEnv(gym.make("CartPole-v1"), cal, monitor=monitor)
    with pytest.raises(MonitorError, match=r"serves another guard \(GuardedEnv\); give each guard its own monitor"):
        GuardedEnv(gym.make("CartPole-v1"), cal, monitor=monitor)
    vector_monitor = DeploymentMonitor(cal, n_envs=2)
    vector = GuardedVectorEnv(gym.make_vec("CartPole-v1", 2), cal, monitor=vector_monitor)
    with pytest.raises(MonitorError, match=r"serves another guard \(GuardedVectorEnv\)"):
        GuardedVectorEnv(gym.make_vec("CartPole-v1", 2), cal, monitor=vector_monitor)
    first.reset(seed=0)
    first.step(0)
    first.close()
    second = GuardedEnv(gym.make("CartPole-v1"), cal, monitor=monitor)
    second.reset(seed=1)  # the first guard's open episode ends censored here
    second.step(0)
    assert monitor.steps == 2 and monitor.finished == 1
    vector.close()
