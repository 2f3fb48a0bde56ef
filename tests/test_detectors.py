import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from mesaguard.calibration import Calibration, statistic_traces
from mesaguard.detectors import (
    DETECTORS,
    Cusum,
    DetectorError,
    MeanShift,
    ScoreEnvelope,
    ScoreRank,
    ScoreThreshold,
    detector_class,
)
from mesaguard.detectors.pdt import PartialDegradation

finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)


def fitted(name, rng, n=12, T=8):
    return detector_class(name).fit([rng.normal(1.0, 0.5, size=rng.integers(3, T + 1)) for _ in range(n)])


def test_threshold_hand_values():
    det = ScoreThreshold(n_envs=2)
    assert det.update([1.0, -1.0]).tolist() == [-1.0, 1.0]
    assert det.update([-3.0, 0.5]).tolist() == [2.0, 0.5]


def test_envelope_hand_values_and_fit_carries_final_score():
    det = ScoreEnvelope.fit([np.array([1.0, 1.0, 1.0]), np.array([3.0])])
    # S_t of the two runs: [1, 2, 3] and [3, 3, 3] (the short run keeps its final score)
    np.testing.assert_allclose(det.mean, [2.0, 2.5, 3.0])
    # raw spreads sqrt(2), sqrt(0.5), 0: where both runs agreed exactly, the spread an unseen event would give,
    # the pooled increment spread (std of 1, 1, 1, 3 = 1) over sqrt(n + 1)
    np.testing.assert_allclose(det.std, [np.sqrt(2.0), np.sqrt(0.5), 1 / np.sqrt(3.0)])
    det = ScoreEnvelope(mean=[1.0, 2.0], std=[1.0, 2.0])
    assert [det.update_scalar(u) for u in [0.0, 0.0, 0.0]] == [1.0, 1.0, 1.0]  # past T: the last band


def test_cusum_hand_values():
    det = Cusum(mean=0.0, std=2.0, slack=0.5)
    # z = (0 - u) / 2 - 0.5 ; C = max(0, C + z)
    assert [det.update_scalar(u) for u in [2.0, -3.0, -3.0, 4.0]] == [0.0, 1.0, 2.0, 0.0]


def test_meanshift_hand_values_correlated():
    cov = np.array([[1.0, 0.5], [0.5, 1.0]])
    det = MeanShift(mu=[0.0, 0.0], chol=np.linalg.cholesky(cov))
    # t=1: d=1, 1'S^-1 d / sqrt(1'S^-1 1) = 1 ; t=2: S^-1 1 = (2/3, 2/3), so (4/3) / sqrt(4/3)
    assert det.update_scalar(-1.0) == pytest.approx(1.0)
    assert det.update_scalar(-1.0) == pytest.approx(np.sqrt(4 / 3))
    assert det.update_scalar(-5.0) == pytest.approx(np.sqrt(4 / 3))  # past T: frozen


def test_meanshift_is_standard_normal_under_the_null():
    rng = np.random.default_rng(1)
    T = 6
    A = rng.normal(size=(T, T))
    cov = A @ A.T + T * np.eye(T)
    mu = rng.normal(size=T)
    det = MeanShift(mu=mu, chol=np.linalg.cholesky(cov), n_envs=20_000)
    x = rng.multivariate_normal(mu, cov, size=20_000)
    for t in range(T):
        stat = det.update(x[:, t])
    # mean 0, variance 1: standard errors 1/sqrt(20000) = 0.007 and sqrt(2/20000) = 0.01; 5 sigma
    assert abs(stat.mean()) < 0.035 and abs(stat.var() - 1) < 0.05


@pytest.mark.parametrize("name", sorted(DETECTORS))
@given(data=st.data())
def test_scalar_and_vector_forms_agree(name, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    det = fitted(name, rng)
    n = data.draw(st.integers(1, 5))
    T = data.draw(st.integers(1, 12))
    streams = data.draw(arrays(np.float64, (n, T), elements=finite))
    vec = det.with_envs(n)
    vector = np.stack([vec.update(streams[:, t]) for t in range(T)], axis=1)
    for i in range(n):
        one = det.with_envs(1)
        np.testing.assert_allclose([one.update_scalar(u) for u in streams[i]], vector[i], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(DETECTORS))
@given(data=st.data())
def test_python_scalar_form_agrees_with_vector_form(name, data):
    """The single-env guard's plain-float stepper against the NumPy form, across a reset."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    det = fitted(name, rng)
    first = data.draw(arrays(np.float64, st.integers(1, 12), elements=finite))
    second = data.draw(arrays(np.float64, st.integers(1, 12), elements=finite))
    scalar, vector = det.scalar(), det.with_envs(1)
    for stream in (first, second):
        scalar.reset()
        vector.reset()
        got = [scalar.update(float(u)) for u in stream]
        want = [vector.update_scalar(u) for u in stream]
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_reset_mask_restarts_only_those_envs(name):
    rng = np.random.default_rng(0)
    det = fitted(name, rng).with_envs(2)
    fresh = fitted(name, np.random.default_rng(0)).with_envs(2)
    det.update([-5.0, -5.0])
    det.reset(np.array([False, True]))
    a, b = det.update([1.0, 1.0]), fresh.update([1.0, 1.0])
    assert a[1] == b[1] and a[0] != b[0]


@given(arrays(np.float64, st.integers(1, 30), elements=finite))
def test_cusum_is_nonnegative(stream):
    det = Cusum(mean=0.3, std=1.2)
    assert all(det.update_scalar(u) >= 0 for u in stream)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_bad_input_is_named(name):
    det = fitted(name, np.random.default_rng(0)).with_envs(2)
    with pytest.raises(DetectorError, match=r"shape \(3,\); expected \(2,\)"):
        det.update(np.zeros(3))
    with pytest.raises(DetectorError, match=r"\[nan\] at env \[1\] are not finite"):
        det.update(np.array([0.0, np.nan]))
    with pytest.raises(DetectorError, match="at least 2"):
        detector_class(name).fit([np.ones(3)])
    with pytest.raises(DetectorError, match=r"increment inf at step 2"):
        detector_class(name).fit([np.ones(3), np.array([1.0, np.inf])])


def test_unknown_detector_lists_valid_names():
    with pytest.raises(
        DetectorError,
        match=r"unknown detector 'cusm'; expected one of "
        r"\['cusum', 'envelope', 'meanshift', 'pdt', 'rank', 'threshold'\]",
    ):
        detector_class("cusm")


def test_bad_parameters():
    with pytest.raises(DetectorError, match="positive std"):
        Cusum(mean=0.0, std=0.0)
    with pytest.raises(DetectorError, match="slack=-1"):
        Cusum(mean=0.0, std=1.0, slack=-1)
    with pytest.raises(DetectorError, match="std must be positive"):
        ScoreEnvelope(mean=[0.0], std=[0.0])
    with pytest.raises(DetectorError, match="n_envs=0"):
        ScoreThreshold(n_envs=0)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_staggered_episodes_agree_with_scalar_runs(name):
    """Sub-envs at different steps of their episodes (a vector env after resets)."""
    rng = np.random.default_rng(3)
    det = fitted(name, rng)
    lengths = [[5, 9], [3, 4, 7], [11, 3]]  # consecutive episodes per env, all summing to 14 steps
    streams = [[rng.normal(1.0, 1.0, n) for n in env] for env in lengths]
    vec = det.with_envs(3)
    flat = [np.concatenate(s) for s in streams]
    ends = [np.cumsum(env) for env in lengths]
    got = np.empty((3, 14))
    for t in range(14):
        starting = np.array([t in np.concatenate([[0], e[:-1]]) for e in ends])
        if t and starting.any():
            vec.reset(starting)
        got[:, t] = vec.update(np.array([f[t] for f in flat]))
    for i, episodes in enumerate(streams):
        want = []
        for e in episodes:
            one = det.with_envs(1)
            want += [one.update_scalar(u) for u in e]
        np.testing.assert_allclose(got[i], want, rtol=1e-9, atol=1e-9)


# --- time-indexed references: spreads that vary by orders of magnitude within an episode --------------------------

QUIET = 1e-6  # the quiet phase's spread, a millionth of the loud phase's


def _profiled(rng, n, shift=0.0):
    """Episodes of 60 steps: 30 loud steps (sd 1) then 30 quiet ones (sd 1e-6); ``shift`` lowers the quiet mean."""
    loud = rng.normal(-1.0, 1.0, size=(n, 30))
    quiet = rng.normal(-shift, QUIET, size=(n, 30))
    return list(np.concatenate([loud, quiet], axis=1))


@pytest.mark.parametrize("name", ["cusum", "meanshift", "pdt", "envelope", "rank", "threshold"])
def test_false_alarms_stay_within_alpha_when_the_spread_varies_a_millionfold(name):
    from scipy import stats

    rng = np.random.default_rng(0)
    cal = Calibration.fit(_profiled(rng, 400), alpha=0.1, detectors=[name])
    fresh = _profiled(rng, 1000)
    maxima = statistic_traces(cal.detectors[name].build(len(fresh)), fresh).max(axis=1)
    false_alarms = int((maxima > cal.thresholds[name]).sum())
    # conformal: given this calibration the realized rate is Beta(n + 1 - k, k) (mean <= alpha); take its 0.999
    # quantile, then the binomial 0.999 quantile of 1000 fresh episodes at that rate
    n, k = cal.n_cal, cal.rank
    rate = stats.beta.ppf(0.999, n + 1 - k, k)
    assert false_alarms <= stats.binom.ppf(0.999, 1000, rate), false_alarms


@pytest.mark.parametrize("name", ["cusum", "meanshift"])
def test_a_small_deviation_in_the_quiet_phase_is_detected(name):
    rng = np.random.default_rng(1)
    cal = Calibration.fit(_profiled(rng, 400), alpha=0.05, detectors=[name])
    shifted = _profiled(rng, 200, shift=5 * QUIET)  # five quiet spreads: invisible to one pooled spread (~0.7)
    traces = statistic_traces(cal.detectors[name].build(len(shifted)), shifted)
    detected = (traces > cal.thresholds[name]).any(axis=1)
    assert detected.mean() > 0.95
    assert (traces[:, :30] <= cal.thresholds[name]).mean() > 0.9  # not before the quiet phase starts, mostly


def test_meanshift_blocks_by_hand():
    # block sums of two steps; an identity covariance: the statistic after j blocks is sum(d) / sqrt(j)
    det = MeanShift(mu=[2.0, 2.0], chol=np.eye(2), block=2)
    stats = [det.update_scalar(u) for u in [1.0, 1.0, 0.0, 1.0, 5.0]]
    assert stats == [0.0, 0.0, 0.0, pytest.approx(1 / np.sqrt(2)), pytest.approx(1 / np.sqrt(2))]
    vec = MeanShift(mu=[2.0, 2.0], chol=np.eye(2), block=2, n_envs=2)
    out = [vec.update(np.array([u, 2 * u])) for u in [1.0, 1.0, 0.0, 1.0]]
    assert out[-1].tolist() == [pytest.approx(1 / np.sqrt(2)), pytest.approx(((2 - 4) + (2 - 2)) / np.sqrt(2))]


def test_meanshift_keeps_each_blocks_own_variance():
    rng = np.random.default_rng(2)
    episodes = _profiled(rng, 300)
    det = MeanShift.fit(episodes, block=10)
    variances = np.sum(det.chol**2, axis=1)  # the diagonal of L L'
    sums = np.stack([np.add.reduceat(e, [0, 10, 20, 30, 40, 50]) for e in episodes])
    np.testing.assert_allclose(variances, sums.var(axis=0, ddof=1), rtol=1e-6)  # quiet blocks: ~1e-11, not ~1


def test_cusum_innovations_from_autocorrelated_increments():
    rng = np.random.default_rng(3)
    ar = np.zeros((200, 50))
    for t in range(1, 50):  # a smooth objective: AR(1) with coefficient 0.9
        ar[:, t] = 0.9 * ar[:, t - 1] + rng.normal(0, 1, 200)
    det = Cusum.fit(list(ar))
    assert 0.8 < det.rho < 0.95
    assert Cusum.fit(list(ar), innovations=False).rho == 0.0


def test_cusum_blocks_by_hand():
    # block sums of two steps against their own references: C after each block, held within the next
    det = Cusum(mean=[2.0, 3.0], std=[1.0, 2.0], slack=0.0, block=2)
    stats = [det.update_scalar(u) for u in [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]]
    assert stats == [0.0, 0.0, 0.0, 1.0, 1.0, 2.5]  # past the last block: its reference
    vec = Cusum(mean=[2.0, 3.0], std=[1.0, 2.0], slack=0.0, block=2, n_envs=2)
    out = [vec.update(np.array([u, 2 * u])) for u in [1.0, 1.0, 0.0, 1.0]]
    assert out[-1].tolist() == [1.0, 0.5]  # env 2: sums 4 then 2, z = 2 then -0.5: C = max(0, -2) = 0, then 0.5


def test_the_udt_and_pdt_share_cusums_resolution_whatever_one_long_episode_does():
    # strawberry's shape: short episodes and one that ran to the time limit; up to MAX_BLOCKS steps every step is a
    # block (at 50 blocks the one long episode put every episode in blocks of 2 steps)
    rng = np.random.default_rng(9)
    episodes = [rng.normal(1.0, 0.3, 20) for _ in range(39)] + [rng.normal(1.0, 0.3, 100)]
    for cls in (Cusum, MeanShift, PartialDegradation):
        assert cls.MAX_BLOCKS == 100 and cls.fit(episodes).block == 1
    long = [rng.normal(1.0, 0.3, 1000) for _ in range(40)]
    udt = MeanShift.fit(long)
    assert udt.block == 10 and udt.mu.size == 100 == Cusum.fit(long).mean.size
    scalar = udt.scalar()  # every forward-substitution row listed at the default resolution, as the vector form
    trace = [scalar.update(float(u)) for u in long[0] - 0.05]
    udt.reset()
    np.testing.assert_allclose(trace, [float(udt.update(np.array([u]))[0]) for u in long[0] - 0.05], rtol=1e-12)


def test_cusum_fits_long_episodes_in_blocks_against_each_blocks_own_reference():
    rng = np.random.default_rng(8)
    phase = rng.uniform(0, 2 * np.pi, size=(60, 1))
    gait = list(np.sin(phase + np.arange(1000) / 3.0) + rng.normal(0, 0.1, (60, 1000)))  # even spread, periodic
    det = Cusum.fit(gait)
    assert det.block == 10 and det.mean.size == 100  # at most Cusum.MAX_BLOCKS blocks, each its own reference
    sums = np.stack([e.reshape(100, 10).sum(axis=1) for e in gait])
    np.testing.assert_allclose(det.mean, sums.mean(axis=0))
    assert Cusum.fit(gait, block=1).block == 1 and Cusum.fit(gait, block=1).mean.size == 1  # even: one pooled
    short = [np.ones(5), np.ones(20), np.ones(3)]  # one episode completes a block of 20 steps: every step a block
    assert Cusum.fit(short, block=20).block == 1
    assert Cusum.fit(gait, block=np.int64(20)).mean.size == 50  # a NumPy integer is a number of steps too
    for bad in (0, 2.5, "10", True):
        with pytest.raises(DetectorError, match=f"cusum block={bad!r}; expected a positive number of steps"):
            Cusum.fit(gait, block=bad)
    with pytest.raises(DetectorError, match="block=0"):
        Cusum(mean=0.0, std=1.0, block=0)


@given(data=st.data())
def test_cusum_in_blocks_scalar_and_vector_forms_agree(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    det = Cusum.fit([rng.normal(1.0, 0.5, size=rng.integers(3, 13)) for _ in range(12)], block=3, reference="step")
    streams = [data.draw(arrays(np.float64, st.integers(1, 12), elements=finite)) for _ in range(2)]
    scalar, vector = det.scalar(), det.with_envs(1)
    for stream in streams:  # across a reset: a partial block is dropped
        scalar.reset()
        vector.reset()
        np.testing.assert_allclose([scalar.update(float(u)) for u in stream],
                                   [vector.update_scalar(u) for u in stream], rtol=1e-9, atol=1e-9)


def test_pdt_is_the_top_share_of_the_whitened_deficits():
    from mesaguard.detectors.pdt import _top_share

    rng = np.random.default_rng(4)
    chol = np.linalg.cholesky(np.cov(rng.normal(size=(40, 6)), rowvar=False))
    mu = rng.normal(size=6)
    det = PartialDegradation(mu=mu, chol=chol, share=0.34)
    x = rng.normal(size=6)
    stats = [det.update_scalar(v) for v in x]
    from scipy.linalg import solve_triangular

    e = solve_triangular(chol, mu - x, lower=True)  # whitened deficits, by hand
    assert stats == pytest.approx([_top_share(e[: j + 1], 0.34) for j in range(6)])
    vec = PartialDegradation(mu=mu, chol=chol, share=0.34, n_envs=2)
    out = [vec.update(np.array([v, v])) for v in x]
    assert [o[1] for o in out] == pytest.approx(stats)


def test_pdt_sees_a_drop_confined_to_a_few_steps_and_udt_a_uniform_one():
    rng = np.random.default_rng(5)
    train = list(rng.normal(0, 1, size=(400, 40)))
    confined = rng.normal(0, 1, size=(300, 40))
    confined[:, 10:12] -= 3.0  # two steps of forty, by three sds
    uniform = rng.normal(0, 1, size=(300, 40)) - 0.4  # every step, by 0.4 sd
    found = {}
    for name in ["pdt", "meanshift"]:
        cal = Calibration.fit(train, alpha=0.05, detectors=[name], options={name: {"block": 1}})
        for what, runs in [("confined", confined), ("uniform", uniform)]:
            traces = statistic_traces(cal.detectors[name].build(300), list(runs))
            found[name, what] = (traces > cal.thresholds[name]).any(axis=1).mean()
    # each is the stronger test of its own alternative (300 episodes: a rate's standard error is below 0.03)
    assert found["pdt", "confined"] > found["meanshift", "confined"] + 0.1, found
    assert found["meanshift", "uniform"] > found["pdt", "uniform"] + 0.1, found


def test_rank_is_the_scores_rank_among_the_reference_at_the_same_step():
    rng = np.random.default_rng(6)
    episodes = [rng.normal(0, 1, 5) for _ in range(200)]
    det = ScoreRank.fit(episodes, k=9)
    scores = np.cumsum(np.stack(episodes), axis=1)
    np.testing.assert_allclose(det.quantiles[2], np.quantile(scores[:, 2], (np.arange(1, 10) - 0.5) / 9))
    run = rng.normal(0, 1, 5)
    stats = [det.update_scalar(u) for u in run]
    q = det.quantiles
    by_hand = [np.log(10) - np.log(1 + (q[t] < s).sum()) + max(q[t, 0] - s, 0) / (q[t, -1] - q[t, 0])
               for t, s in enumerate(np.cumsum(run))]
    assert stats == pytest.approx(by_hand)
    vec = ScoreRank.fit(episodes, k=9, n_envs=2)
    assert [float(vec.update(np.array([u, u]))[1]) for u in run] == pytest.approx(stats)
    low = ScoreRank(quantiles=[[0.0, 1.0]])
    assert low.update_scalar(-3.0) == pytest.approx(np.log(3) + 3.0)  # below every quantile it keeps growing


def test_cusum_chooses_per_step_references_only_where_the_spread_changes_by_orders_of_magnitude():
    rng = np.random.default_rng(7)
    even = [rng.normal(0, 1, 50) for _ in range(100)]
    assert Cusum.fit(even).mean.size == 1 and Cusum.fit(even, reference="step").mean.size == 50
    profiled = _profiled(rng, 100)  # a loud phase then a quiet one, a millionth of its spread
    assert Cusum.fit(profiled).mean.size == 60 and Cusum.fit(profiled, reference="pooled").mean.size == 1
    with pytest.raises(DetectorError, match="reference='daily'"):
        Cusum.fit(even, reference="daily")


def test_rank_where_every_reference_agreed_uses_the_unseen_event_floor():
    """A deterministic agent repeats its episode: the reference scores agree exactly at every step. A score a
    hair below them is not astronomically unusual (it was 2e6 with the resolution as the range, 1e16 in a
    gridworld, and it set every joint threshold)."""
    episode = np.array([0.0, 0.0, 1.0])
    det = detector_class("rank").fit([episode] * 100)
    assert det.params()["floor"] == pytest.approx(np.std(np.tile(episode, 100), ddof=1) / np.sqrt(101))
    stat = statistic_traces(det, [episode - np.array([0.0, 0.0, 1e-9])])
    K = det.quantiles.shape[1]
    assert np.nanmax(stat) < np.log(K + 1) + 1e-6
    again = detector_class("rank")(**det.params())
    assert again.params() == det.params()


@given(data=st.data())
def test_rank_counts_quantiles_below_the_score_as_comparing_with_all_of_them(data):
    """The vector rank's binary search over rows padded to a power of two, against the plain count, any K, ties."""
    from mesaguard.detectors.rank import ScoreRank

    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    T, K, n = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 30))
    quantiles = np.sort(np.round(rng.normal(size=(T, K)), 1), axis=1)  # rounded: ties within and across rows
    det = ScoreRank(quantiles=quantiles, n_envs=n)
    det.score = np.round(rng.normal(size=n) * 1.5, 1)
    i = rng.integers(0, T, n)
    np.testing.assert_array_equal(det._below(i), (quantiles[i] < det.score[:, None]).sum(axis=1))


def test_time_indexed_references_on_episodes_of_unequal_length_by_hand():
    """Per step, the moments of the episodes still running; a finished run's score stays where it ended; a step
    fewer than two episodes reach takes the last step that two reached."""
    from mesaguard.detectors.reference import StepReference

    episodes = [np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0]), np.array([5.0])]
    increments = StepReference.fit(episodes)
    assert increments.count.tolist() == [3, 2, 1]
    np.testing.assert_allclose(increments.mean, [3.0, 3.0, 3.0])  # step 3: one episode left, step 2's taken
    np.testing.assert_allclose(increments.std, [2.0, np.sqrt(2.0), np.sqrt(2.0)])
    scores = StepReference.fit(episodes, cumulative=True)  # scores [1, 3, 6], [3, 7, 7], [5, 5, 5]
    assert scores.count.tolist() == [3, 3, 3]
    np.testing.assert_allclose(scores.mean, [3.0, 5.0, 6.0])
    np.testing.assert_allclose(scores.std, [2.0, 2.0, 1.0])
