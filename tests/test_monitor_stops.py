"""Episodes stopped by the per-episode alarm are evidence for the deployment monitor, with its guarantee kept."""

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import SyncVectorEnv

from mesaguard.calibration import Calibration
from mesaguard.guard import GuardedEnv, GuardedVectorEnv
from mesaguard.guard.core import ScalarGuard
from mesaguard.monitor import CROSSED, DeploymentMonitor, MonitorError, reference_keys, replay
from mesaguard.protocols import Alert, Fallback, Stop

DETECTORS = ["envelope", "meanshift"]  # the user's pair in the CartPole case


def calibration(n: int, steps: int, seed: int) -> Calibration:
    rng = np.random.default_rng(seed)
    return Calibration.fit([rng.normal(1.0, 0.5, steps) for _ in range(n)], alpha=0.1, detectors=DETECTORS)


def stopped_deployment(cal: Calibration, episodes: np.ndarray, seed: int, evidence: bool = True):
    """One env, the guard's per-episode alarm under ``Stop`` (what GuardedEnv does, in arrays): the monitor and stops.

    ``evidence=False`` is the monitor before: stopped episodes censored.
    """
    guard = ScalarGuard(cal)
    monitor = DeploymentMonitor(cal, alpha=0.1, seed=seed)
    if evidence:
        monitor.stop_at(dict(zip(guard.names, guard.thresholds)))
    stops = 0
    for increments in episodes:
        guard.reset()
        monitor.start()
        fired = False
        for u in increments:
            fired = guard.update(u)
            monitor.update_scalar(u)
            if fired:
                break
        monitor.finish(censored=fired)
        stops += fired
        if monitor.alarm:
            break
    return monitor, stops


# -- the key ---------------------------------------------------------------------


def test_reference_keys_rank_the_episodes_the_rule_fires_in_above_all_others():
    cal = calibration(200, 10, seed=0)
    thresholds = cal.thresholds_for(DETECTORS)
    keys = reference_keys(cal, DETECTORS, thresholds)
    fired = np.zeros(cal.n_cal, dtype=bool)
    for name, threshold in thresholds.items():
        fired |= np.asarray(cal.detectors[name].maxima) > threshold
    assert fired.any() and (keys[fired] == CROSSED).all()
    assert (keys[~fired] == cal.joint_maxima(DETECTORS)[~fired]).all() and keys[~fired].max() < CROSSED
    assert 1 <= fired.sum() <= math.floor(0.1 * (cal.n_cal + 1))  # the conformal rule: at most alpha (n + 1) above
    assert (reference_keys(cal, DETECTORS, None) == cal.joint_maxima(DETECTORS)).all()


def test_a_stopped_episode_ties_with_the_top_class_instead_of_ranking_below_every_earlier_stop():
    """Two stops in a row: the second is ranked at CROSSED (tied with the first), not below it as +inf."""
    cal = calibration(200, 10, seed=1)
    guard = ScalarGuard(cal)
    monitor = DeploymentMonitor(cal, alpha=0.1, seed=0)
    monitor.stop_at(dict(zip(guard.names, guard.thresholds)))
    for _ in range(2):
        guard.reset()
        monitor.start()
        fired = False
        for u in [1.0] * 4 + [-3.0] * 6:
            fired = guard.update(u)
            monitor.update_scalar(u)
            if fired:
                break
        assert fired
        monitor.finish(censored=True)
    assert monitor.crossings == 2
    bag = monitor.ledger.bag
    assert bag.count(CROSSED) == int((monitor.reference == CROSSED).sum()) + 2 and math.inf not in bag


def test_the_rule_is_fixed_before_the_first_episode_and_checked():
    cal = calibration(120, 5, seed=2)
    monitor = DeploymentMonitor(cal)
    monitor.start()
    with pytest.raises(MonitorError, match="before the first episode"):
        monitor.stop_at({"envelope": 1.0})
    with pytest.raises(MonitorError, match="'cusum', not in this calibration"):
        DeploymentMonitor(cal, stops={"cusum": 1.0})
    with pytest.raises(MonitorError, match="expected a finite threshold"):
        DeploymentMonitor(cal, stops={"envelope": math.nan})
    stopping = DeploymentMonitor(cal, stops=cal.thresholds_for(DETECTORS))
    stopping.start()
    with pytest.raises(MonitorError, match="without crossed="):
        stopping.observe(np.array([0.0]))


@pytest.mark.parametrize(("protocol", "ranked"), [(Stop(), True), (Fallback(lambda obs: 0), True),
                                                  (Alert(lambda a: None), False)])
def test_a_guard_whose_protocol_cuts_episodes_short_makes_its_alarm_the_rule(protocol, ranked):
    cal = calibration(120, 5, seed=3)
    monitor = DeploymentMonitor(cal, n_envs=2)
    env = GuardedVectorEnv(SyncVectorEnv([lambda: Drifting(0.0, 0.0, 5)] * 2), cal, protocol=protocol, monitor=monitor)
    assert bool(monitor.stops) is ranked
    assert monitor.stops == (dict(zip(env.guard.names, env.guard.thresholds)) if ranked else {})
    single = DeploymentMonitor(cal)
    GuardedEnv(Drifting(0.0, 0.0, 5), cal, protocol=protocol, monitor=single)
    assert single.stops == monitor.stops


# -- the guarantee, by simulation ---------------------------------------------------


def test_villes_bound_holds_with_stops_at_the_calibrated_threshold():
    """200 null deployments of 100 five-step episodes, each a fresh calibration (n_cal 30, alpha 0.1) and Stop.

    The guard stops an in-distribution episode with probability ``1 - k / (n + 1) = 3/31`` on
    average over calibrations (the conformal rank k = 28 of 30): 20,000 episodes, and a
    per-deployment stop rate whose spread over calibrations (Beta(3, 28): sd 0.052) dominates,
    so the mean over 200 deployments is within 3 x 0.052 / sqrt(200) = 0.011 of 3/31. Every
    stop must be ranked as evidence (``crossings``). Ville: P(any alarm) <= 0.1; the count is
    binomial, so at most 20 + 3 sd (4.2) = 32 of 200.
    """
    rng = np.random.default_rng(11)
    alarms = stops = episodes = crossings = 0
    for d in range(200):
        cal = calibration(60, 5, seed=10_000 + d)
        monitor, n_stops = stopped_deployment(cal, rng.normal(1.0, 0.5, (100, 5)), seed=d)
        alarms += monitor.alarm
        stops += n_stops
        episodes += monitor.finished
        crossings += monitor.crossings
    assert crossings == stops
    assert abs(stops / episodes - 3 / 31) <= 0.011 + 3 * math.sqrt(0.1 / episodes)
    assert alarms <= 32


# -- power: the case ------------------------------------------------------


class Drifting(gym.Env):
    """Increments N(1, 0.5) for ``steps`` steps; with probability ``bad`` an episode drops by ``drop`` in its
    second half (a pole that falls), otherwise it is ``good`` better than in calibration (a steadier pole)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,))
    action_space = gym.spaces.Discrete(2)

    def __init__(self, bad: float, drop: float, good: float = 0.0, steps: int = 20) -> None:
        self.bad, self.drop, self.good, self.steps = bad, drop, good, steps

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.falls = 0, self.np_random.random() < self.bad
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        self.t += 1
        shift = -self.drop if self.falls and self.t > self.steps // 2 else self.good
        u = float(self.np_random.normal(1.0 + shift, 0.5))
        return np.zeros(1, dtype=np.float32), u, self.t >= self.steps, False, {}


def vector_deployment(cal: Calibration, seed: int, evidence: bool, episodes: int = 100):
    """GuardedVectorEnv of 8 Drifting envs under Stop: the episode whose evidence alarmed (None) and the share
    of episodes the per-episode guard stopped (the deployment alarm's own stops included)."""
    monitor = DeploymentMonitor(cal, alpha=0.05, n_envs=8, seed=seed)
    env = GuardedVectorEnv(SyncVectorEnv([lambda: Drifting(0.36, 1.0, 0.1)] * 8), cal, protocol=Stop(), monitor=monitor)
    if not evidence:
        monitor.stop_at(None)  # the monitor before: stopped episodes censored
    env.reset(seed=seed)
    ended = stopped = 0
    while ended < episodes and not monitor.alarm:
        _, _, terminated, truncated, _ = env.step(np.zeros(8, dtype=np.int64))
        ended += int((terminated | truncated).sum())
        stopped += int((truncated & ~terminated).sum())
    return monitor.alarm_episode, stopped / ended


@pytest.fixture(scope="module")
def user_case() -> Calibration:
    rng = np.random.default_rng(0)
    return Calibration.fit([rng.normal(1.0, 0.5, 20) for _ in range(400)], alpha=0.05, detectors=DETECTORS)


def test_a_shift_seen_mostly_in_stopped_episodes_now_raises_the_deployment_alarm(user_case):
    """The issue's CartPole case in a vector env: about 36% of episodes fall (their margin drops late), the rest
    are a little steadier than in calibration; Stop per episode. Ranked as censored, the stopped episodes carry
    less evidence (each ranks below every earlier stop) and the steadier ones bet against it; ranked as evidence,
    the monitor fires in more of 20 deployments within 100 episodes, and sooner on average (undetected: 100)."""
    before = [vector_deployment(user_case, seed, evidence=False) for seed in range(20)]
    after = [vector_deployment(user_case, seed, evidence=True) for seed in range(20)]
    assert min(share for _, share in before + after) >= 0.25  # the per-episode guard stops a quarter or more
    detected_before = sum(at is not None for at, _ in before)
    detected_after = sum(at is not None for at, _ in after)
    assert detected_after >= 15 and detected_after > detected_before
    assert np.mean([at or 100 for at, _ in after]) < np.mean([at or 100 for at, _ in before])


def test_replay_ranks_recorded_episodes_by_their_keys_as_the_online_monitor_does(user_case):
    """Offline twin with ``stops``: the same first alarm as online on episodes recorded to their end."""
    rng = np.random.default_rng(5)
    stops = user_case.thresholds_for(DETECTORS)
    episodes = [rng.normal(1.0, 0.5, 20) - np.r_[np.zeros(10), np.full(10, rng.random() < 0.4)] for _ in range(150)]
    monitor = DeploymentMonitor(user_case, alpha=0.05, seed=3, stops=stops)
    online = None
    for j, episode in enumerate(episodes):
        monitor.start()
        for t, u in enumerate(episode):
            monitor.update_scalar(float(u))
            if monitor.alarm and online is None:
                online = (j + 1, t + 1)
        monitor.finish()
        if online:
            break
    hit = replay(user_case, episodes, alpha=0.05, seed=3, stops=stops)
    assert online is not None and hit is not None and (hit.episode, hit.step) == online
    assert monitor.crossings > 0
