"""Tests of the quantilizer: q = 1 reproduces the base distribution, q near 0 the argmax."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mesaguard.safeguards.quantilizer import Quantilizer, QuantilizerError, quantile_distribution, quantilize


@st.composite
def problems(draw, max_actions: int = 8):
    """A base distribution (some zeros allowed, not all) and values with ties likely."""
    n = draw(st.integers(1, max_actions))
    weights = np.array(draw(st.lists(st.one_of(st.just(0.0), st.floats(1e-3, 10.0)), min_size=n, max_size=n)))
    if weights.sum() == 0:
        weights[draw(st.integers(0, n - 1))] = 1.0
    values = np.array(draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), dtype=float)
    return weights / weights.sum(), values


qs = st.floats(1e-6, 1.0)


@settings(max_examples=100, deadline=None)
@given(problems(), qs)
def test_is_a_distribution_bounded_by_base_over_q(problem, q):
    p, v = problem
    d = quantile_distribution(p, v, q)
    assert np.all(d >= 0) and abs(d.sum() - 1.0) < 1e-12
    assert np.all(d <= p / q + 1e-9)  # Taylor: no action gains more than a factor 1/q over the base
    assert np.all(d[p == 0] == 0)  # never outside the base's support


@settings(max_examples=100, deadline=None)
@given(problems())
def test_q_one_is_the_base(problem):
    p, v = problem
    np.testing.assert_allclose(quantile_distribution(p, v, 1.0), p, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(problems())
def test_q_to_zero_is_the_argmax_in_the_support(problem):
    p, v = problem
    d = quantile_distribution(p, v, 1e-12)
    top = v == v[p > 0].max()
    best = top & (p > 0)
    assert abs(d[best].sum() - 1.0) < 1e-9  # all mass on the best supported actions...
    np.testing.assert_allclose(d[best], p[best] / p[best].sum(), atol=1e-9)  # ...ties shared as the base does


@settings(max_examples=100, deadline=None)
@given(problems(), qs, qs)
def test_expected_value_falls_as_q_grows(problem, q1, q2):
    p, v = problem
    lo, hi = sorted((q1, q2))
    assert quantile_distribution(p, v, lo) @ v >= quantile_distribution(p, v, hi) @ v - 1e-9


@settings(max_examples=100, deadline=None)
@given(problems(), qs, st.permutations(range(8)))
def test_does_not_depend_on_the_order_of_actions(problem, q, perm):
    p, v = problem
    perm = np.array([i for i in perm if i < p.size])
    np.testing.assert_allclose(quantile_distribution(p[perm], v[perm], q), quantile_distribution(p, v, q)[perm],
                               atol=1e-12)


def test_taylor_construction_by_hand():
    p, v = [0.1, 0.2, 0.3, 0.4], [3.0, 2.0, 2.0, 0.0]
    # top 0.2: all of action 0 (0.1), then 0.1 of the tied block {1, 2} (mass 0.5), shared 0.2 : 0.3
    np.testing.assert_allclose(quantile_distribution(p, v, 0.2), [0.5, 0.2, 0.3, 0.0])
    np.testing.assert_allclose(quantile_distribution(p, v, 0.6), [1 / 6, 1 / 3, 1 / 2, 0.0])
    np.testing.assert_allclose(quantile_distribution(p, v, 0.8), [0.125, 0.25, 0.375, 0.25])


def test_batches_and_per_row_q():
    p = np.array([[0.5, 0.5], [0.25, 0.75]])
    v = np.array([[1.0, 0.0], [0.0, 1.0]])
    d = quantile_distribution(p, v, np.array([1.0, 0.5]))
    np.testing.assert_allclose(d, [[0.5, 0.5], [0.0, 1.0]])


@pytest.mark.parametrize(
    ("p", "v", "q", "fragment"),
    [
        ([0.5, 0.5], [1.0, 0.0], 0.0, "q=0.0"),
        ([0.5, 0.5], [1.0, 0.0], 1.5, "q=1.5"),
        ([0.5, 0.5], [1.0, 0.0], float("nan"), "q=nan"),
        ([0.5, 0.6], [1.0, 0.0], 0.5, "sum to"),
        ([1.5, -0.5], [1.0, 0.0], 0.5, "negative"),
        ([0.5, 0.5], [1.0], 0.5, "values has shape"),
        ([0.5, 0.5], [1.0, float("nan")], 0.5, "NaN"),
    ],
)
def test_bad_input_is_named(p, v, q, fragment):
    with pytest.raises(QuantilizerError, match=fragment):
        quantile_distribution(p, v, q)


def _frequencies(sample, n_actions, draws):
    counts = np.bincount([sample() for _ in range(draws)], minlength=n_actions)
    return counts


def test_sampled_q_one_reproduces_the_base_distribution():
    """Chi-square goodness of fit at a fixed seed; under the null the p-value is uniform, so p > 1e-3 fails
    one seed in a thousand."""
    p, v = np.array([0.1, 0.2, 0.3, 0.4]), np.array([4.0, 3.0, 2.0, 1.0])
    rng = np.random.default_rng(0)
    counts = _frequencies(lambda: quantilize(p, v, 1.0, rng), 4, 4_000)
    assert stats.chisquare(counts, 4_000 * p).pvalue > 1e-3
    policy = Quantilizer(base=lambda obs: p, values=lambda obs: v, q=1.0, seed=1)
    counts = _frequencies(lambda: policy(None), 4, 4_000)
    assert stats.chisquare(counts, 4_000 * p).pvalue > 1e-3


def test_sampled_q_near_zero_is_the_argmax():
    p, v = np.array([0.1, 0.2, 0.3, 0.4]), np.array([1.0, 3.0, 2.0, 0.0])
    rng = np.random.default_rng(0)
    assert {quantilize(p, v, 1e-9, rng) for _ in range(500)} == {1}
    policy = Quantilizer(base=lambda obs: p, values=lambda obs: v, q=1e-9, seed=0)
    assert {policy(None) for _ in range(500)} == {1}
    batch = quantilize(np.tile(p, (5, 1)), np.tile(v, (5, 1)), 1e-9, rng)
    assert batch.tolist() == [1] * 5


def test_uncertainty_moves_q_toward_the_base():
    p, v = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    policy = Quantilizer(base=lambda obs: p, values=lambda obs: v, q=0.1, uncertainty=lambda obs: obs, q_max=1.0)
    assert policy.q_at(0.0) == pytest.approx(0.1) and policy.q_at(1.0) == pytest.approx(1.0)
    assert policy.q_at(7.0) == pytest.approx(1.0)  # clipped
    np.testing.assert_allclose(policy.distribution(0.0), [1.0, 0.0])
    np.testing.assert_allclose(policy.distribution(1.0), p)
    with pytest.raises(QuantilizerError, match="0 < q <= q_max"):
        Quantilizer(base=lambda obs: p, values=lambda obs: v, q=0.5, q_max=0.2)
    with pytest.raises(QuantilizerError, match="rng="):
        quantilize(p, v, 0.5, rng=0)
