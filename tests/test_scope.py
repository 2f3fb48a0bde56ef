"""The scope detector: conformal guarantee in distribution, detection out of it, files and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from mesaguard.calibration import CalibrationError, conformal_rank, episodes_needed
from mesaguard.detectors import DetectorError
from mesaguard.scope import Scope, ScopeError

T, D = 10, 2


def gaussian_episodes(rng: np.random.Generator, n: int, length: int = T) -> list[np.ndarray]:
    """In-distribution episodes: i.i.d. standard normal states in ``D`` dimensions."""
    return [rng.normal(size=(length, D)) for _ in range(n)]


_SHARED_SCOPE = Scope.fit(gaussian_episodes(np.random.default_rng(9), 40), method="knn", k=2, alpha=0.1)
_REFERENCE = _SHARED_SCOPE.reference_scores.tolist()


@pytest.fixture(scope="module")
def gaussian_scope() -> Scope:
    return Scope.fit(gaussian_episodes(np.random.default_rng(0), 80), method="knn", k=3, alpha=0.1)


# -- the guarantee ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["knn", pytest.param("mahalanobis", marks=pytest.mark.slow)])
def test_false_alarm_guarantee_in_distribution(method: str) -> None:
    """Over fresh calibration sets, one fresh episode each: P(alarm) = 1 - k/(n+1) for continuous statistics.

    With 40 episodes: 20 fit the scope (10 fit, 10 reference), 20 set the threshold at rank
    ceil(21 * 0.9) = 19, so a new episode's maximum passes it with probability exactly 2/21 (no ties).
    The count over R independent repetitions is Binomial(R, 2/21); it must lie in its 99.9% range.
    """
    rng = np.random.default_rng(1)
    alpha, n, reps = 0.1, 40, 200
    rank = conformal_rank(n - 20, alpha)
    exact = 1 - rank / (n - 20 + 1)
    alarms, small_p = 0, 0
    for _ in range(reps):
        scope = Scope.fit(gaussian_episodes(rng, n), method=method, k=3, alpha=alpha)
        fresh = gaussian_episodes(rng, 1)
        alarms += scope.first_alarms(fresh)[0] is not None
        small_p += bool(scope.p_values(fresh[0][:1])[0] <= 0.1)  # one state, exchangeable with the reference states
    law = stats.binom(reps, exact)
    assert law.ppf(0.0005) <= alarms <= law.ppf(0.9995), (alarms, reps * exact)
    assert alarms <= stats.binom(reps, alpha).ppf(0.9995)
    # per-state p-values are super-uniform: P(p <= 0.1) <= 0.1
    assert small_p <= stats.binom(reps, 0.1).ppf(0.9995)


def test_p_values_are_uniform_on_fresh_states(gaussian_scope: Scope) -> None:
    """Given the reference, P(p <= u) is Beta-distributed around u; pooled over many states it is close to u."""
    fresh = np.random.default_rng(2).normal(size=(4000, D))
    p = gaussian_scope.p_values(fresh)
    n = gaussian_scope.n_reference_states
    for u in (0.05, 0.1, 0.5):
        j = int(np.floor(u * (n + 1))) - 1  # p <= u  <=>  the state beats all but j reference scores
        share = float(np.mean(p <= u))
        # Conditional on the reference, P(p <= u) ~ Beta(j + 1, n - j) (a uniform order statistic);
        # the fresh share spreads binomially around it: both ranges, at 99.9%.
        lo = stats.beta(j + 1, n - j).ppf(0.0005)
        hi = stats.beta(j + 1, n - j).ppf(0.9995)
        sd = np.sqrt(hi * (1 - hi) / fresh.shape[0])
        assert lo - 3.3 * sd <= share <= hi + 3.3 * sd, (u, share, lo, hi)


@given(st.lists(st.one_of(st.floats(-1e6, 1e6), st.sampled_from(_REFERENCE)), min_size=1, max_size=50))
def test_p_values_in_unit_interval_and_monotone(scores: list[float]) -> None:
    scope = _SHARED_SCOPE
    s = np.sort(np.array(scores))
    p = scope.p_values_of_scores(s)
    n = scope.n_reference_states
    assert ((p > 0) & (p <= 1)).all()
    assert (p >= 1 / (n + 1) - 1e-15).all()
    assert (np.diff(p) <= 0).all()  # larger score, smaller p
    e = scope.evidence_of_scores(s)  # what the statistic adds up: monotone, finite, never negative
    assert np.isfinite(e).all() and (e >= 0).all() and (np.diff(e) >= 0).all()
    inside = s <= scope.reference_scores[-1]
    assert (e[inside] <= -np.log(p[inside]) + 1e-12).all()  # never more alarming than p inside the reference range


@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.integers(1, 15))
def test_scalar_form_equals_vector_form(seed: int, n_envs: int, steps: int) -> None:
    """The one-env float form and the vector form agree to the bit, resets included."""
    rng = np.random.default_rng(seed)
    scope = _SHARED_SCOPE
    det = scope.detector(n_envs)
    scalars = [det.scalar() for _ in range(n_envs)]
    for _ in range(steps):
        if rng.random() < 0.2:
            mask = rng.random(n_envs) < 0.5
            det.reset(mask)
            for i in np.flatnonzero(mask):
                scalars[i].reset()
        obs = rng.normal(scale=rng.choice([0.5, 3.0]), size=(n_envs, D))
        vector = det.update(obs)
        assert vector.tolist() == [s.update(obs[i]) for i, s in enumerate(scalars)]


def test_offline_alarms_match_streaming(gaussian_scope: Scope) -> None:
    rng = np.random.default_rng(3)
    episodes = [rng.normal(scale=2.0, size=(int(rng.integers(1, 15)), D)) for _ in range(30)]
    offline = gaussian_scope.first_alarms(episodes)
    for ep, expected in zip(episodes, offline):
        det = gaussian_scope.detector().scalar()
        got = next((t + 1 for t, x in enumerate(ep) if det.update(x) > gaussian_scope.threshold), None)
        assert got == expected
    assert any(a is not None for a in offline) and any(a is None for a in offline)


# -- detection -------------------------------------------------------------------------------


def drifting_episodes(rng: np.random.Generator, n: int, length: int = 40) -> list[np.ndarray]:
    """A slow walk out of scope: the mean moves 2.5 stds away over 10 steps and stays; little noise.

    Each state is moderately unusual (p about 0.05: too common to fire alone against an
    episode-level threshold) but they keep coming.
    """
    out = []
    for _ in range(n):
        mean = 2.5 * np.minimum(1.0, np.arange(length) / 10)[:, None] * np.array([[1.0, 0.0]])
        out.append(mean + rng.normal(scale=0.25, size=(length, D)))
    return out


def test_slow_drift_caught_by_aggregate_not_by_per_state_threshold() -> None:
    rng = np.random.default_rng(4)
    train = [rng.normal(size=(40, D)) for _ in range(100)]
    aggregate = Scope.fit(train, method="knn", k=5, alpha=0.05)
    per_state = Scope.fit(train, method="knn", k=5, alpha=0.05, slack=None)
    drift = drifting_episodes(rng, 100)
    caught = [a for a in aggregate.first_alarms(drift) if a is not None]
    assert len(caught) >= 90
    assert sum(a is not None for a in per_state.first_alarms(drift)) <= 20
    assert np.median(caught) > 10  # it took accumulated evidence, not one state
    # the same in-distribution guarantee for both: count on fresh in-distribution episodes
    fresh = [rng.normal(size=(40, D)) for _ in range(200)]
    for scope in (aggregate, per_state):
        law = scope.false_alarm  # realized rate ~ Beta(a, b); counts ~ BetaBinomial
        bound = stats.betabinom(200, law["beta_a"], law["beta_b"]).ppf(0.999)
        assert sum(a is not None for a in scope.first_alarms(fresh)) <= bound


def test_one_far_state_fires_at_once(gaussian_scope: Scope) -> None:
    det = gaussian_scope.detector(1)
    assert det.update(np.zeros((1, D)))[0] <= gaussian_scope.threshold
    assert det.update(np.full((1, D), 50.0))[0] > gaussian_scope.threshold
    assert det.p_value[0] == 1 / (gaussian_scope.n_reference_states + 1)


def _lava(variant: str, seeds: range, policy: str = "aligned") -> tuple[list[np.ndarray], list[int | None]]:
    from mesaguard import scenarios

    env = scenarios.make("lava", variant)
    act = getattr(scenarios.get("lava"), policy)(env)
    states, catastrophes = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        xs, first, done = [], None, False
        while not done:
            xs.append(obs)
            obs, _, terminated, truncated, info = env.step(act(obs))
            first = len(xs) if first is None and info["catastrophe"] else first
            done = terminated or truncated
        states.append(np.stack(xs))
        catastrophes.append(first)
    return states, catastrophes


@pytest.fixture(scope="module")
def lava_scope() -> Scope:
    states, _ = _lava("train", range(10_000, 10_060))
    return Scope.fit(states, method="mahalanobis", alpha=0.1, scenario="lava")


def test_lava_in_distribution_false_alarms(lava_scope: Scope) -> None:
    """Fresh training-variant episodes: the false-alarm count is at most BetaBinomial's 99.9% quantile."""
    fresh, _ = _lava("train", range(20_000, 20_100))
    law = lava_scope.false_alarm
    bound = stats.betabinom(len(fresh), law["beta_a"], law["beta_b"]).ppf(0.999)
    assert sum(a is not None for a in lava_scope.first_alarms(fresh)) <= bound


def test_lava_deploy_states_detected_before_the_catastrophe(lava_scope: Scope) -> None:
    """The lava moved: the scope fires on the states of ``deploy`` before the agent steps into lava."""
    states, catastrophes = _lava("deploy", range(20_000, 20_040), policy="misaligned")
    alarms = lava_scope.first_alarms(states)
    assert all(a is not None for a in alarms)
    harmful = [(a, c) for a, c in zip(alarms, catastrophes) if c is not None]
    assert len(harmful) >= 10 and all(a <= c for a, c in harmful)
    lava_scope.check(scenario="lava", obs_shape=states[0].shape[1:])
    with pytest.raises(ScopeError, match="fitted on scenario 'lava'"):
        lava_scope.check(scenario="strawberry")


# -- files and errors ------------------------------------------------------------------------


def test_round_trip(tmp_path, gaussian_scope: Scope) -> None:
    path = gaussian_scope.save(tmp_path / "scope.json")
    assert (tmp_path / "scope.npz").exists()
    loaded = Scope.load(path)
    assert loaded.threshold == gaussian_scope.threshold and loaded.maxima == gaussian_scope.maxima
    assert loaded.to_dict("x") == gaussian_scope.to_dict("x")
    episodes = gaussian_episodes(np.random.default_rng(5), 20)
    np.testing.assert_array_equal(loaded.traces(episodes), gaussian_scope.traces(episodes))
    data = json.loads(path.read_text())
    assert data["format"] == "mesaguard.scope" and data["schema_version"] == 1
    assert data["content_hash"].startswith("sha256:") and data["rank"] == gaussian_scope.rank


def test_round_trip_mahalanobis(tmp_path) -> None:
    episodes = gaussian_episodes(np.random.default_rng(6), 40)
    scope = Scope.fit(episodes, method="mahalanobis", alpha=0.1, slack=None, metadata={"note": "x"})
    loaded = Scope.load(scope.save(tmp_path / "m.json"))
    assert loaded.slack is None and loaded.metadata == {"note": "x"}
    np.testing.assert_array_equal(loaded.traces(episodes), scope.traces(episodes))


def test_file_errors(tmp_path, gaussian_scope: Scope) -> None:
    path = gaussian_scope.save(tmp_path / "scope.json")
    good = path.read_text()
    with pytest.raises(ScopeError, match="no scope file"):
        Scope.load(tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(ScopeError, match="not valid JSON"):
        Scope.load(path)
    path.write_text(json.dumps({"format": "mesaguard.calibration"}))
    with pytest.raises(ScopeError, match="not a mesaguard scope"):
        Scope.load(path)
    data = json.loads(good)
    path.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(ScopeError, match="schema version 99"):
        Scope.load(path)
    path.write_text(json.dumps({**data, "threshold": data["threshold"] + 1}))
    with pytest.raises(ScopeError, match="corrupt"):
        Scope.load(path)
    path.write_text(good)
    other = Scope.fit(gaussian_episodes(np.random.default_rng(7), 40), method="knn", alpha=0.1)
    other.save(tmp_path / "other.json")
    (tmp_path / "other.npz").replace(tmp_path / "scope.npz")  # arrays of another scope
    with pytest.raises(ScopeError, match="hash does not match"):
        Scope.load(path)
    (tmp_path / "scope.npz").write_bytes(b"garbage")
    with pytest.raises(ScopeError, match="cannot be read"):
        Scope.load(path)
    (tmp_path / "scope.npz").unlink()
    with pytest.raises(ScopeError, match="missing"):
        Scope.load(path)


def test_input_errors(gaussian_scope: Scope) -> None:
    rng = np.random.default_rng(8)
    episodes = gaussian_episodes(rng, 40)
    for alpha in (0.0, 1.0, -0.1, float("nan"), True):
        with pytest.raises(CalibrationError, match="alpha"):  # the one alpha check of every calibration
            Scope.fit(episodes, alpha=alpha)
    with pytest.raises(ScopeError, match=f"at least {episodes_needed(0.05)} episodes"):
        Scope.fit(episodes[:30], alpha=0.05)
    with pytest.raises(ScopeError, match="method='lof'"):
        Scope.fit(episodes, method="lof", alpha=0.1)
    with pytest.raises(ScopeError, match="k=1000"):
        Scope.fit(episodes, method="knn", k=1000, alpha=0.1)
    for k in (0, "3", 2.5):
        with pytest.raises(ScopeError, match="expected a positive integer"):
            Scope.fit(episodes, method="knn", k=k, alpha=0.1)
    for slack in (-1.0, float("inf"), "2"):
        with pytest.raises(ScopeError, match="slack"):
            Scope.fit(episodes, alpha=0.1, slack=slack)
    bad = [e.copy() for e in episodes]
    bad[3][2, 1] = np.nan
    with pytest.raises(ScopeError, match="episode 3: observation 2 has value nan"):
        Scope.fit(bad, alpha=0.1)
    with pytest.raises(ScopeError, match="episode 1 has shape"):
        Scope.fit([episodes[0], np.zeros((0, D))] + episodes[2:], alpha=0.1)
    with pytest.raises(ScopeError, match="episode 2 have shape"):
        Scope.fit(episodes[:2] + [np.zeros((5, 3))] + episodes[3:], alpha=0.1)
    det = gaussian_scope.detector(2)
    with pytest.raises(DetectorError, match=r"expected \(n, 2\)"):
        det.update(np.zeros((2, 3)))
    with pytest.raises(DetectorError, match="expected 2, one per env"):
        det.update(np.zeros((3, D)))
    with pytest.raises(DetectorError, match="value inf"):
        det.update(np.array([[0.0, 0.0], [np.inf, 0.0]]))
    with pytest.raises(DetectorError, match="value nan"):
        det.scalar().update(np.array([np.nan, 0.0]))
    with pytest.raises(DetectorError, match="expected \\(2,\\)"):
        det.scalar().update(np.zeros(3))
    with pytest.raises(ScopeError, match="n_envs=0"):
        gaussian_scope.detector(0)



@pytest.mark.parametrize("dims", [4, 40])  # a k-d tree at 4 dimensions, scikit-learn's scan at 40
def test_scorers_match_scikit_learn(dims: int) -> None:
    """The scorers skip scikit-learn's per-call validation; their distances are scikit-learn's."""
    from sklearn.covariance import LedoitWolf
    from sklearn.neighbors import NearestNeighbors

    from mesaguard.detectors.scorers import StateScorer

    rng = np.random.default_rng(dims)
    fit, query = rng.normal(size=(300, dims)), rng.normal(scale=2.0, size=(50, dims))
    unique, counts = np.unique(fit, axis=0, return_counts=True)
    for method, k in (("mahalanobis", 1), ("knn", 1), ("knn", 3)):
        scorer = StateScorer(method, k, StateScorer.arrays(method, unique, counts))
        if method == "knn":
            expected = NearestNeighbors(n_neighbors=k).fit(unique).kneighbors(query)[0][:, k - 1]
        else:
            expected = LedoitWolf().fit(fit).mahalanobis(query)
        np.testing.assert_allclose(scorer(query), expected, rtol=1e-9, atol=1e-12)
        if method == "knn" and dims <= 16:  # a k-d tree scores a state alone as in a batch, to the bit
            one = [scorer(query[i : i + 1])[0] for i in range(len(query))]
            assert one == scorer(query).tolist()
