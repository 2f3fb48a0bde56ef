import math

import numpy as np
import pytest

from mesaguard.metrics import detection, false_alarm_rate, harm_prevented, rate, score_kept
from mesaguard.rollout import Episode


def ep(seed, increments, catastrophes=(), alarm=None):
    return Episode(seed, np.asarray(increments, float), np.asarray(catastrophes, np.int64), alarm_step=alarm,
                   detector="cusum" if alarm else None, stopped=alarm is not None)


def test_rate_interval_is_clopper_pearson():
    r = rate(0, 20)
    assert r.rate == 0 and r.low == 0 and r.high == pytest.approx(1 - 0.025 ** (1 / 20))
    assert math.isnan(rate(0, 0).rate)


def test_false_alarm_rate():
    eps = [ep(i, [1.0], alarm=1 if i < 3 else None) for i in range(10)]
    fa = false_alarm_rate(eps)
    assert (fa.k, fa.n, fa.rate) == (3, 10, 0.3)


def test_detection_delays_and_harm():
    free = [ep(0, [0, -1, -1, -1], [4]), ep(1, [1, 1, -2], [3]), ep(2, [1, 1, 1])]
    guarded = [ep(0, [0, -1, -1], alarm=3), ep(1, [1], alarm=1), ep(2, [1, 1, 1])]
    d = detection(guarded, free)  # seeds 0 and 1 misbehaved (harm); seed 2 did not
    assert (d.rate.k, d.rate.n) == (2, 2)
    # delays from the first harmful step: 3 - 2 and 1 - 3 (an alarm before the harm counts negative)
    assert d.mean_delay == pytest.approx(-0.5) and d.median_delay == pytest.approx(-0.5)
    low = detection(guarded, free, floor=3.5)  # seed 2 scored 3 < 3.5: it misbehaved too, undetected
    assert (low.rate.k, low.rate.n) == (2, 3)
    assert harm_prevented(guarded, free) == 1.0


def test_score_kept_and_pairing_errors():
    free = [ep(0, [1, 1]), ep(1, [1, 1])]
    assert score_kept([ep(0, [1, 1]), ep(1, [1])], free) == pytest.approx(0.75)
    assert math.isnan(harm_prevented(free, free))  # no catastrophes to prevent
    with pytest.raises(ValueError, match=r"guarded seeds \[7\] have no unguarded run"):
        detection([ep(7, [1])], free)
