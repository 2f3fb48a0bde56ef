"""The monitor's modes: the change mode's e-detector (ARL guarantee, late changes) and the mode parameter."""

import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from mesaguard.calibration import Calibration, CalibrationError
from mesaguard.monitor import (
    SHIFTS,
    DeploymentMonitor,
    MonitorError,
    check_mode,
    log_threshold,
    log_wealth_path,
    sequential_pvalues,
)


@pytest.fixture(scope="module")
def cal() -> Calibration:
    """One-step episodes: the monitored statistic is the standardized negative increment."""
    rng = np.random.default_rng(0)
    return Calibration.fit([rng.normal(0.0, 1.0, 1) for _ in range(400)], alpha=0.1, detectors=["threshold"])


# -- the mode parameter --------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"mode": "sometimes"}, r"mode='sometimes'; expected one of anytime, fixed, change"),
        ({"mode": "fixed"}, r"horizon=None; fixed mode needs a positive number of episodes"),
        ({"mode": "fixed", "horizon": 0}, r"horizon=0"),
        ({"mode": "fixed", "horizon": 2.5}, r"horizon=2.5"),
        ({"mode": "fixed", "horizon": True}, r"horizon=True"),
        ({"horizon": -3}, r"horizon=-3"),
        ({"mode": "anytime", "horizon": 10}, r"horizon=10 with mode='anytime'; a horizon is for mode='fixed' only"),
        ({"mode": "change", "horizon": 10, "arl": 100}, r"horizon=10 with mode='change'"),
        ({"mode": "change"}, r"arl=None; change mode needs an average run length to a false alarm, a number > 1"),
        ({"mode": "change", "arl": 1}, r"arl=1;"),
        ({"mode": "change", "arl": 0.5}, r"arl=0.5;"),
        ({"mode": "change", "arl": math.inf}, r"arl=inf;"),
        ({"mode": "change", "arl": math.nan}, r"arl=nan;"),
        ({"mode": "change", "arl": "1000"}, r"arl='1000';"),
        ({"mode": "change", "arl": True}, r"arl=True;"),
        ({"arl": 1000}, r"arl=1000 with mode='anytime'; an ARL is for mode='change' only"),
        ({"mode": "fixed", "horizon": 10, "arl": 1000}, r"arl=1000 with mode='fixed'"),
        ({"n_envs": 0}, r"n_envs=0"),
        ({"shifts": [0.5, -1.0]}, r"shifts=\[0.5, -1.0\]"),
    ],
)
def test_bad_mode_arguments_are_named(cal, kw, error):
    with pytest.raises(MonitorError, match=error):
        DeploymentMonitor(cal, **kw)


def test_modes_thresholds_and_reports(cal):
    assert check_mode(None) == "anytime" and check_mode(None, horizon=5) == "fixed"
    anytime, fixed = DeploymentMonitor(cal, alpha=0.05), DeploymentMonitor(cal, alpha=0.05, horizon=50)
    change = DeploymentMonitor(cal, mode="change", arl=1000)
    assert anytime.threshold == pytest.approx(20.0) and fixed.threshold < 20.0
    assert change.threshold == pytest.approx(1000)
    assert [m.report()["mode"] for m in (anytime, fixed, change)] == ["anytime", "fixed:50", "change:1000"]
    assert anytime.evidence == 1.0 and change.evidence == 0.0  # wealth 1; a Shiryaev-Roberts statistic of 0
    with pytest.raises(CalibrationError, match="alpha=2"):
        DeploymentMonitor(cal, alpha=2, mode="change", arl=1000)  # alpha is checked in every mode
    assert log_threshold("change", arl=1000) == pytest.approx(math.log(1000))


# -- the recursion ----------------------------------------------------------------------


@given(st.lists(st.floats(min_value=1e-6, max_value=1.0, exclude_max=True), min_size=1, max_size=12))
def test_the_change_statistic_sums_the_bets_since_every_possible_change_time(p):
    """log R_n = log mean_d sum_{i <= n} prod_{i <= j <= n} e_j(d): the Shiryaev-Roberts sum, by brute force."""
    p = np.array(p)
    z = -stats.norm.ppf(p)
    d = np.asarray(SHIFTS)[:, None]
    bets = np.exp(d * z - d**2 / 2)  # (shifts, n)
    expected = [
        math.log(np.mean([sum(np.prod(bets[s, i : n + 1]) for i in range(n + 1)) for s in range(len(SHIFTS))]))
        for n in range(p.size)
    ]
    assert log_wealth_path(p, mode="change") == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert (log_wealth_path(p, mode="change") >= log_wealth_path(p) - 1e-12).all()  # i = 1 is the anytime product


@given(
    st.lists(st.floats(min_value=1e-6, max_value=1.0, exclude_max=True), min_size=0, max_size=30),
    st.lists(st.floats(min_value=1e-6, max_value=1.0, exclude_max=True), min_size=1, max_size=30),
)
def test_time_in_distribution_never_delays_the_change_mode(before, after):
    """Pathwise: the same post-change p-values after any prefix raise the change-mode evidence at least as high
    at every step as with no prefix (R after the prefix is >= 0 = R at the start, and R grows with its start)."""
    late = log_wealth_path(np.array(before + after), mode="change")[len(before) :]
    early = log_wealth_path(np.array(after), mode="change")
    assert (late >= early - 1e-9).all()


def test_the_anytime_mode_is_delayed_by_time_in_distribution():
    """The contrast: 2,000 null normal scores before the same change lower the anytime wealth (it decays)."""
    rng = np.random.default_rng(3)
    before, after = rng.random(2000), stats.norm.sf(rng.normal(1.0, 1.0, 30))
    late = log_wealth_path(np.concatenate([before, after]))[2000:]
    assert late[-1] < log_wealth_path(after)[-1]
    changed = log_wealth_path(np.concatenate([before, after]), mode="change")
    assert changed[-1] >= log_wealth_path(after, mode="change")[-1]


def test_online_change_evidence_equals_the_offline_twin(cal):
    rng = np.random.default_rng(2)
    increments = rng.normal(-0.3, 1.0, 60)
    monitor = DeploymentMonitor(cal, seed=3, mode="change", arl=1e6)
    online = []
    for u in increments:
        monitor.start()
        monitor.update(np.array([u]))
        monitor.finish()
        online.append(monitor.log_evidence)
    d = cal.detectors["threshold"]
    p = sequential_pvalues(cal.joint_maxima(["threshold"]), (-increments - d.location) / d.scale,
                           np.random.default_rng(3).random(60))
    assert online == pytest.approx(log_wealth_path(p, mode="change").tolist(), rel=1e-12)


@given(st.lists(st.floats(min_value=-3, max_value=3), min_size=1, max_size=20), st.integers(0, 100))
def test_change_mode_evidence_within_an_episode_is_bounded_by_its_end(cal, statistics, seed):
    """Mid-episode evidence grows with the running max and never exceeds the evidence before or after."""
    monitor = DeploymentMonitor(cal, seed=seed, mode="change", arl=1e9)
    for x in (0.5, 2.0):
        monitor.start(), monitor.observe(np.array([x])), monitor.finish()
    before = monitor.evidence
    monitor.start()
    seen = [monitor.observe(np.array([x])) for x in statistics]
    monitor.finish()
    assert all(a <= b * (1 + 1e-12) for a, b in itertools.pairwise(seen))
    assert seen[-1] <= max(before, monitor.evidence) * (1 + 1e-12)


# -- the guarantee, by simulation -----------------------------------------------------------


def test_a_false_alarm_within_m_episodes_has_probability_at_most_m_over_the_arl():
    """ARL c = 500, m = 50: P(alarm within 50 in-distribution episodes) <= 0.1 (Ville on R_k + m - k).

    1,000 deployments, each with a fresh reference of 30 (so the p-values are exactly i.i.d. uniform): the
    count is binomial with p <= 0.1, so the test allows 3 standard deviations above 100, i.e. 128.
    """
    rng = np.random.default_rng(11)
    p = np.array([sequential_pvalues(rng.normal(size=30), rng.normal(size=50), rng.random(50)) for _ in range(1000)])
    alarms = int((log_wealth_path(p, mode="change").max(axis=1) >= math.log(500)).sum())
    assert alarms <= 128


def test_false_alarms_per_episode_are_at_most_one_over_the_arl_when_each_is_cleared(cal):
    """The online monitor, ARL c = 40, 6,000 in-distribution episodes, each alarm cleared: alarms <= N / c = 150.

    Exact in expectation: R_n - n plus the evidence at every alarm before n is a martingale from 0, and each
    alarm takes evidence >= c, so c E[alarms] <= N. The alarms are a renewal process (the p-values stay i.i.d.
    uniform, each test restarts from 0) with near-geometric run lengths, so their count is near-Poisson: the test
    allows 3 Poisson standard deviations, 150 + 3 sqrt(150), i.e. 186.
    """
    monitor = DeploymentMonitor(cal, seed=5, mode="change", arl=40)
    alarms = 0
    for x in np.random.default_rng(12).normal(0.0, 1.0, 6000):
        monitor.start()
        monitor.update(np.array([x]))
        monitor.finish()
        if monitor.alarm:
            alarms += 1
            monitor.clear()
    assert 0 < alarms <= 186


def test_a_late_change_is_caught_by_the_change_mode_as_fast_as_an_early_one(cal):
    """A 1-sd drop after 2,000 in-distribution episodes, ARL 1,000: caught within the delay a change at the start
    has in theory, log(c) / (d^2 / 2) = 14 episodes at the best shift, with 4x slack for the walk's spread."""
    rng = np.random.default_rng(13)
    monitor = DeploymentMonitor(cal, seed=6, mode="change", arl=1000)
    n = 0
    for j, x in enumerate(np.concatenate([rng.normal(0.0, 1.0, 2000), rng.normal(-1.0, 1.0, 500)])):
        monitor.start()
        monitor.update(np.array([x]))
        monitor.finish()
        if monitor.alarm:
            if j < 2000:  # a false alarm (ARL 1,000: likely within 2,000 episodes), cleared as a user would
                monitor.clear()
                continue
            n = monitor.alarm_episode - 2000
            break
    assert 0 < n <= 56


@given(
    st.lists(st.tuples(st.integers(0, 2), st.floats(-3, 3)), min_size=1, max_size=40),
    st.sampled_from(["anytime", "change"]),
    st.integers(0, 20),
)
def test_vector_evidence_is_a_lower_bound_of_the_start_order_twin(cal, steps, mode, seed):
    """Three envs, episodes ending in any order: at every moment the evidence is at most the offline twin's best
    over the episodes in start order, and once all have ended the final evidence is the twin's."""
    monitor = DeploymentMonitor(cal, n_envs=3, seed=seed, mode=mode, **({"arl": 1e9} if mode == "change" else {}))
    monitor.start()
    draws = np.random.default_rng(seed).random(len(steps))  # the monitor draws one uniform per episode's first step
    running, started = [0, 1, 2], 3
    value: dict[int, float] = {}
    u: dict[int, float] = {}
    seen = []
    for env, x in steps:  # a step in env `env` with statistic x; x < -2 also ends the episode and starts the next
        live = np.arange(3) == env
        monitor.observe(np.where(live, x, 0.0), live)
        episode = running[env]
        if episode not in u:
            u[episode] = draws[len(u)]
        value[episode] = max(value.get(episode, -np.inf), x)
        seen.append(monitor.log_evidence)
        if x < -2:
            monitor.finish(live)
            monitor.start(live)
            running[env], started = started, started + 1
    monitor.finish(monitor.running)  # the rest end (complete, not censored)
    order = sorted(value)  # start order; episodes without a step are neither bet on nor ranked
    p = sequential_pvalues(cal.joint_maxima(["threshold"]), [value[i] for i in order], [u[i] for i in order])
    path = log_wealth_path(p, mode=mode)
    assert monitor.episodes == len(order)
    start = 0.0 if mode == "anytime" else -np.inf  # a new test's evidence: wealth 1, or an SR statistic of 0
    assert max(seen) <= max(start, path.max()) + 1e-9
    assert monitor.log_evidence == pytest.approx(path[-1], rel=1e-9, abs=1e-9)
