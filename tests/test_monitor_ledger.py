"""The ledger's one-pending-episode path against its general form, its cache, and both against the offline twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesaguard.detectors.meanshift import MeanShift
from mesaguard.monitor.episodes import Episode
from mesaguard.monitor.evidence import SHIFTS
from mesaguard.monitor.ledger import Ledger

MODES = ["anytime", "change"]


def ledger(mode: str, reference: list[float], bets: list[float]) -> Ledger:
    """A ledger with ``reference`` in its bag and finished episodes of values ``bets`` committed."""
    book = Ledger(mode, np.array(SHIFTS), math.log(20.0), None, reference)
    for i, value in enumerate(bets):
        book.commit(Episode(i, u=0.5, value=value, steps=1, done=True))
    return book


values = st.floats(-5, 5, allow_nan=False)


@pytest.mark.parametrize("mode", MODES)
@given(
    reference=st.lists(values, min_size=1, max_size=30),
    bets=st.lists(values, max_size=10),
    value=values,
    u=st.floats(0, 1, exclude_max=True),
)
def test_one_pending_episode_in_floats_equals_the_general_level(mode, reference, bets, value, u):
    book = ledger(mode, reference, bets)
    running = Episode(len(bets), u=u, value=value, steps=3)
    fast = book.level([running], running.id + 1)
    general = book._level([running], running.id + 1)
    assert fast[1] == general[1] or abs(fast[0] - book.log_threshold) < 1e-9
    assert fast[0] == pytest.approx(general[0], rel=1e-12, abs=1e-12)


# Shifts of at least 1e-6 in size: a subnormal shift's gain d (z - d/2) underflows to 0 (hypothesis found 5e-324).
@given(shifts=st.lists(st.floats(-3, 3, allow_nan=False).filter(lambda d: abs(d) >= 1e-6), min_size=1, max_size=10),
       p=st.floats(1e-6, 1 - 1e-6))
def test_inside_the_losing_p_values_a_bet_lifts_no_shift_and_outside_some_shift_gains(shifts, p):
    """The shortcut of the one-pending-episode path: where the p-value lies in ``_losing``, a bet on it would
    lower or keep every shift's wealth, so the level is the evidence already proven."""
    book = Ledger("anytime", np.array(shifts), math.log(20.0), None, [0.0])
    low, high = book._losing
    factors = [b - w for b, w in zip(book._after(book._base, p), book.log_wealth)]  # log of each shift's factor
    if low <= p <= high:
        assert max(factors) <= 0.0
    elif p < low - 1e-6 or p > high + 1e-6:  # clear of the hair it is taken inside: some shift gains
        assert max(factors) > 0.0


def test_change_mode_has_no_losing_p_values():
    assert Ledger("change", np.array(SHIFTS), math.log(20.0), None, [0.0])._losing == (math.inf, -math.inf)


@pytest.mark.parametrize("mode", MODES)
@given(reference=st.lists(values, min_size=1, max_size=30), bets=st.lists(values, min_size=1, max_size=10))
def test_committed_evidence_equals_the_offline_wealth_path(mode, reference, bets):
    """The ledger's bets in plain floats against evidence.py's NumPy form (what the offline twin computes)."""
    from mesaguard.monitor.evidence import _components, _log_mean
    from mesaguard.monitor.pvalues import sequential_pvalues

    book = ledger(mode, reference, bets)
    p = sequential_pvalues(reference, bets, [0.5] * len(bets))
    offline = float(_log_mean(_components(p, SHIFTS, mode))[-1])
    assert book.log_evidence == pytest.approx(offline, rel=1e-9, abs=1e-9)


def test_the_level_is_recomputed_when_the_p_value_moves_and_only_then():
    book = ledger("anytime", [float(k) for k in range(20)], [])
    running = Episode(0, u=0.5, value=0.2, steps=1)
    first = book.level([running], 1)
    running.value = 0.7  # still between 0 and 1 in the bag: the same p-value, the same level (not recomputed)
    assert book.level([running], 1) is first
    running.value = 25.0  # past every bag value: a smaller p-value, a higher level
    assert book.level([running], 1)[0] > first[0]
    book.commit(Episode(0, u=0.5, value=25.0, steps=1, done=True))  # a bet placed: the cache is dropped
    later = Episode(1, u=0.5, value=25.0, steps=1)
    assert book.level([later], 2)[0] == pytest.approx(book._level([later], 2)[0], rel=1e-12)


def test_scalar_meanshift_past_its_listed_rows_equals_the_vector_form():
    rng = np.random.default_rng(0)
    B = 100  # more blocks than the scalar form keeps as lists
    a = rng.normal(size=(B, B)) / B
    chol = np.linalg.cholesky(a @ a.T + np.eye(B))
    det = MeanShift(mu=rng.normal(size=B), chol=chol)
    scalar, vector = det.scalar(), det.with_envs(1)
    stream = rng.normal(size=B + 5)
    got = [scalar.update(float(u)) for u in stream]
    want = [vector.update_scalar(u) for u in stream]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
