import dataclasses
import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesaguard.calibration import (
    Calibration,
    CalibrationError,
    conformal_rank,
    episode_maxima,
    false_alarm_spread,
    min_episodes,
    statistic_traces,
)
from mesaguard.detectors import DEFAULT, DETECTORS, DetectorError, detector_class
from mesaguard.matching import MATCHES, map_level, map_value, tail_floor, tail_map
from mesaguard.maxima import crossfit_maxima

FOUR = ["threshold", "envelope", "cusum", "meanshift"]  # the detectors these tests name


def ar1_episodes(rng, n, T=15, mean=1.0, rho=0.5, shift=0.0):
    """Correlated in-episode increments of random length, as rewards of an RL episode are."""
    out = []
    for _ in range(n):
        length = int(rng.integers(T // 2, T + 1))
        e = np.empty(length)
        x = rng.normal()
        for t in range(length):
            x = rho * x + math.sqrt(1 - rho**2) * rng.normal()
            e[t] = mean + 0.5 * x - shift
        out.append(e)
    return out


@pytest.fixture(scope="module")
def calibration():
    return Calibration.fit(ar1_episodes(np.random.default_rng(0), 120), alpha=0.1, scenario="ar1", obs_shape=(3,),
                           detectors=FOUR)


def test_rank_and_minimum_episodes():
    assert conformal_rank(19, 0.05) == 19
    assert conformal_rank(99, 0.01) == 99
    assert conformal_rank(1000, 0.05) == 951
    for alpha in (0.5, 0.2, 0.1, 0.05, 0.01):
        n = min_episodes(alpha)
        assert conformal_rank(n, alpha) <= n
        with pytest.raises(CalibrationError, match=f"too few for alpha={alpha}"):
            conformal_rank(n - 1, alpha)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 2, "0.05"])
def test_alpha_outside_unit_interval(alpha):
    with pytest.raises(CalibrationError, match="strictly between 0 and 1"):
        conformal_rank(100, alpha)


def test_too_few_episodes_is_an_error_not_a_fallback():
    episodes = ar1_episodes(np.random.default_rng(0), 30)  # 15 held out: fewer than 19
    too_few = "30 episodes leave 15 held out .* too few for alpha=0.05, which needs 19 held out; pass at least 37"
    with pytest.raises(CalibrationError, match=too_few):
        Calibration.fit(episodes, alpha=0.05)


def test_beta_spread_matches_order_statistics():
    spread = false_alarm_spread(100, 96)
    assert spread["mean"] == pytest.approx(5 / 101)
    assert spread["q05"] < 0.05 < spread["q95"]


@pytest.mark.parametrize("names", [["threshold"], ["envelope"], ["cusum"], ["meanshift"], list(DEFAULT),
                                   sorted(DETECTORS)])
def test_false_alarm_guarantee_holds_on_fresh_episodes(names):
    """Realized per-episode false-alarm rate, averaged over independent calibrations.

    Each calibration (n = 100 held out, alpha = 0.05, rank k = 96) has a realized rate
    distributed Beta(5, 96): mean 5/101 = 0.0495, variance 4.6e-4. Measured on M = 500
    fresh episodes it adds binomial variance of at most 0.05 * 0.95 / 500 = 9.5e-5.
    Over R = 40 calibrations the mean has standard deviation sqrt(5.6e-4 / 40) = 0.0037:
    the mean must lie within 4 standard deviations (0.015) of 0.0495. The joint rows run
    the default set and every detector at once: the union is calibrated as one detector, so the same law holds.
    """
    rng = np.random.default_rng(1234)
    rates = []
    for _ in range(40):
        cal = Calibration.fit(ar1_episodes(rng, 200), alpha=0.05, detectors=names)
        thresholds = cal.thresholds_for(names)
        fresh = ar1_episodes(rng, 500)
        alarm = np.zeros(len(fresh), dtype=bool)
        for name in names:
            alarm |= episode_maxima(cal.detectors[name].build(), fresh) > thresholds[name]
        rates.append(alarm.mean())
    assert abs(np.mean(rates) - 5 / 101) < 0.015


def test_detects_a_drop(calibration):
    """A drop of one in-distribution std of the increment per step is caught in most episodes
    by the score detectors; the plain threshold (the baseline) only sees scores that go low in
    absolute terms, and catches fewer."""
    shifted = ar1_episodes(np.random.default_rng(5), 200, shift=0.5)
    rate = {
        name: (episode_maxima(d.build(), shifted) > d.threshold).mean() for name, d in calibration.detectors.items()
    }
    assert min(rate["envelope"], rate["cusum"], rate["meanshift"]) > 0.5
    assert rate["threshold"] < min(rate["envelope"], rate["cusum"], rate["meanshift"])


@given(st.lists(st.floats(-1e3, 1e3), min_size=19, max_size=60), st.floats(0.05, 0.5), st.floats(0.05, 0.5))
def test_threshold_monotone_in_alpha(maxima, a1, a2):
    from mesaguard.calibration import DetectorCalibration

    lo, hi = sorted((a1, a2))
    cal = Calibration(
        "s", None, 0.1, 2, len(maxima),
        {"cusum": DetectorCalibration("cusum", {"mean": 0.0, "std": 1.0, "slack": 0.25}, 0.0, 0.0, 1.0, maxima)},
    )
    assert cal.thresholds_for(["cusum"], lo)["cusum"] >= cal.thresholds_for(["cusum"], hi)["cusum"]


def test_joint_threshold_reduces_to_single(calibration):
    for name in calibration.detectors:
        assert calibration.thresholds_for([name]) == pytest.approx({name: calibration.thresholds[name]})


@pytest.mark.parametrize("match", MATCHES)
def test_a_set_read_from_a_larger_calibration_gets_the_thresholds_of_its_own(match):
    """Each member's fit, maxima and scale do not depend on the other detectors calibrated with it, under either
    rule: benchmarks read every joint set from one calibration of all detectors (greenberg_mannor.py)."""
    episodes = ar1_episodes(np.random.default_rng(9), 120)
    every = Calibration.fit(episodes, alpha=0.1, detectors=FOUR, match=match)
    for names in (["cusum", "meanshift"], ["threshold", "envelope", "meanshift"]):
        alone = Calibration.fit(episodes, alpha=0.1, detectors=names, match=match)
        assert every.thresholds_for(names) == alone.thresholds_for(names)


@pytest.mark.parametrize("match", MATCHES)
def test_thresholds_for_detectors_not_calibrated_are_refused_by_name(calibration, match):
    cal = dataclasses.replace(calibration, match=match)
    with pytest.raises(CalibrationError, match=r"detectors \['pdt'\] are not in this calibration"):
        cal.thresholds_for(["cusum", "pdt"])
    with pytest.raises(CalibrationError, match="no detectors given"):
        cal.thresholds_for([])


def test_save_load_round_trip(tmp_path, calibration):
    path = calibration.save(tmp_path / "cal.json")
    assert Calibration.load(path) == calibration
    assert [p.name for p in tmp_path.iterdir()] == ["cal.json"]  # no temporary file left behind
    data = json.loads(path.read_text())
    assert data["schema_version"] == 3 and data["content_hash"].startswith("sha256:")
    assert data["obs_shape"] == [3] and data["scenario"] == "ar1"


def test_corrupt_and_foreign_files(tmp_path, calibration):
    path = calibration.save(tmp_path / "cal.json")
    data = json.loads(path.read_text())

    data["detectors"]["cusum"]["threshold"] += 1.0
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="corrupt: its content hash does not match"):
        Calibration.load(path)

    path.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(CalibrationError, match=r"schema version 99; this mesaguard reads version 3 \(and the older"):
        Calibration.load(path)

    path.write_text('{"detectors": ')
    with pytest.raises(CalibrationError, match="not valid JSON"):
        Calibration.load(path)

    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CalibrationError, match="not a mesaguard calibration file"):
        Calibration.load(path)

    with pytest.raises(CalibrationError, match="no calibration file"):
        Calibration.load(tmp_path / "missing.json")


def test_unknown_detector_in_file_is_named(tmp_path, calibration):
    from mesaguard.artifacts import content_hash

    data = calibration.to_dict()
    data["detectors"]["bogus"] = data["detectors"].pop("cusum")
    body = {k: v for k, v in data.items() if k != "content_hash"}
    path = tmp_path / "cal.json"
    path.write_text(json.dumps({**body, "content_hash": content_hash(body)}))
    with pytest.raises(CalibrationError, match="unknown detector 'bogus'"):
        Calibration.load(path)
    body = {k: v for k, v in data.items() if k not in ("content_hash", "detectors")} | {"detectors": {}}
    path.write_text(json.dumps({**body, "content_hash": content_hash(body)}))
    with pytest.raises(CalibrationError, match=r"field detectors is \{\}; expected one or more calibrated detectors"):
        Calibration.load(path)


def test_mismatched_env(calibration):
    calibration.check(scenario="ar1", obs_shape=(3,))
    other = r"fitted on scenario 'ar1' with observation shape \(3,\); scenario 'lava' has observation shape \(9, 9, 3\)"
    with pytest.raises(CalibrationError, match=other):
        calibration.check(scenario="lava", obs_shape=(9, 9, 3))


def test_unknown_detector_and_bad_fit_input():
    episodes = ar1_episodes(np.random.default_rng(0), 60)
    with pytest.raises(DetectorError, match="unknown detector 'nope'"):
        Calibration.fit(episodes, detectors=["nope"])
    with pytest.raises(DetectorError, match="increment nan at step 2"):
        Calibration.fit([np.array([1.0, np.nan])] + episodes)
    for detectors in ([], "cusum"):  # no detector could never alarm; a string is not a list of names
        with pytest.raises(CalibrationError, match=re.escape(f"detectors={detectors!r}: expected a list of one or")):
            Calibration.fit(episodes, detectors=detectors)
    with pytest.raises(CalibrationError, match="a detector is named twice"):
        Calibration.fit(episodes, detectors=["cusum", "cusum"])


def test_saved_file_has_the_usual_permissions(tmp_path, calibration):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        path = calibration.save(tmp_path / "cal.json")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- large arrays in a binary sidecar ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_calibration():
    """Episodes of 40 steps: meanshift's 40 x 40 factor (820 numbers in its triangle) and more go to the sidecar."""
    rng = np.random.default_rng(3)
    return Calibration.fit([rng.normal(1.0, 0.5, size=40) for _ in range(40)], alpha=0.1, scenario="long",
                           detectors=FOUR)


def test_large_arrays_go_to_a_hashed_sidecar_and_come_back_identical(tmp_path, long_calibration):
    from mesaguard.calibration import SIDECAR_MIN

    path = long_calibration.save(tmp_path / "cal.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cal.json", "cal.safetensors"]
    data = json.loads(path.read_text())
    chol = data["detectors"]["meanshift"]["params"]["chol"]
    assert chol == {"$array": "meanshift.chol", "shape": [40, 40], "layout": "tril"}
    assert data["detectors"]["envelope"]["params"]["mean"] == long_calibration.detectors["envelope"].params["mean"]
    assert 40 < SIDECAR_MIN <= 40 * 40  # per-step lists stay in the JSON; the factor does not
    assert data["arrays"]["file"] == "cal.safetensors" and data["arrays"]["hash"].startswith("sha256:")
    loaded = Calibration.load(path)
    assert loaded == long_calibration
    assert loaded.to_dict() == long_calibration.to_dict()  # the inline form, as the bench stores it
    assert Calibration.from_dict(loaded.to_dict()) == long_calibration
    stat = loaded.detectors["meanshift"].build(2).update(np.array([1.0, -3.0]))
    np.testing.assert_array_equal(stat, long_calibration.detectors["meanshift"].build(2).update(np.array([1.0, -3.0])))


def test_sidecar_problems_are_named(tmp_path, long_calibration):
    import safetensors.numpy

    from mesaguard.artifacts import content_hash

    path = long_calibration.save(tmp_path / "cal.json")
    sidecar = tmp_path / "cal.safetensors"
    good = sidecar.read_bytes()
    sidecar.write_bytes(good[:-8] + bytes(8))
    with pytest.raises(CalibrationError, match=r"cal.safetensors is corrupt .*field arrays.hash"):
        Calibration.load(path)
    sidecar.unlink()
    with pytest.raises(CalibrationError, match=r"cal.json: its arrays file .*cal.safetensors is missing"):
        Calibration.load(path)

    def craft(arrays):  # a sidecar and a JSON made to agree, as an attacker would
        data = safetensors.numpy.save(arrays)
        sidecar.write_bytes(data)
        doc = json.loads(path.read_text())
        doc["arrays"]["hash"] = "sha256:" + __import__("hashlib").sha256(data).hexdigest()
        body = {k: v for k, v in doc.items() if k != "content_hash"}
        path.write_text(json.dumps({**body, "content_hash": content_hash(body)}))

    original = safetensors.numpy.load(good)
    bad = dict(original)
    bad["meanshift.chol"] = original["meanshift.chol"].copy()
    bad["meanshift.chol"][5] = np.nan
    craft(bad)
    with pytest.raises(CalibrationError, match=r"field detectors.meanshift.params.chol.\$array is 'meanshift.chol'"):
        Calibration.load(path)
    craft({**original, "meanshift.chol": original["meanshift.chol"][:-1]})
    with pytest.raises(CalibrationError, match=r"float64 of shape \[820\]; the sidecar holds float64 \[819\]"):
        Calibration.load(path)
    craft({**original, "extra": np.zeros(3)})
    with pytest.raises(CalibrationError, match=r"holds \['extra'\], which no field references"):
        Calibration.load(path)
    craft({k: v for k, v in original.items() if k != "meanshift.chol"})
    with pytest.raises(CalibrationError, match=r"the name of an array in the sidecar"):
        Calibration.load(path)
    with pytest.raises(CalibrationError, match=r"references a sidecar file; read it with Calibration.load"):
        Calibration.from_dict(json.loads(path.read_text()))


def test_the_signature_covers_the_sidecar(tmp_path, long_calibration):
    from mesaguard.artifacts import generate_key

    key = generate_key()
    path = long_calibration.save(tmp_path / "cal.json", signing_key=key)
    assert Calibration.load(path, verify_key=key.public_key()) == long_calibration
    other = Calibration.fit([np.full(40, 1.0) + 0.1 * np.sin(np.arange(40) * i) for i in range(40)], alpha=0.1)
    other.save(tmp_path / "other.json")
    (tmp_path / "other.safetensors").replace(tmp_path / "cal.safetensors")  # a sidecar of another calibration
    with pytest.raises(CalibrationError, match="cal.safetensors is corrupt"):
        Calibration.load(path, verify_key=key.public_key())


def test_schema_1_files_are_still_read(tmp_path, calibration):
    """Version 1 (every array inline, before the sidecar): the same fields, still read."""
    from mesaguard.artifacts import content_hash

    data = calibration.to_dict()
    body = {k: v for k, v in data.items() if k != "content_hash"} | {"schema_version": 1}
    path = tmp_path / "v1.json"
    path.write_text(json.dumps({**body, "content_hash": content_hash(body)}))
    assert Calibration.load(path) == calibration


@pytest.mark.parametrize("match", ["linear", "quantiles"])
@pytest.mark.parametrize("names", [["threshold"], ["envelope"], ["cusum"], ["meanshift"], ["pdt"], ["rank"],
                                   ["threshold", "envelope", "cusum", "meanshift"]])
def test_a_repeated_calibration_episode_never_fires(names, match):
    """A deterministic agent repeats its episode exactly: the threshold back in each detector's units must not
    fall below that episode's statistic by rounding (it did for meanshift alone: every episode fired)."""
    episode = np.array([-0.01] * 8 + [0.99])
    cal = Calibration.fit([episode] * 200, alpha=0.05, detectors=sorted(set(names) | {"meanshift", "pdt"}),
                          match=match)
    thresholds = cal.thresholds_for(names)
    for name in names:
        trace = statistic_traces(cal.detectors[name].build(), [episode])
        assert np.nanmax(trace) <= thresholds[name], (name, np.nanmax(trace), thresholds[name])


def test_schema_2_files_are_read_with_the_rule_they_had(tmp_path, calibration):
    """Version 2 (before the joint rule was recorded): no match, no cross-fitted maxima; read as match='linear',
    with the thresholds a version 2 file gave."""
    from mesaguard.artifacts import content_hash

    data = calibration.to_dict()
    body = {k: v for k, v in data.items() if k not in ("content_hash", "match")} | {"schema_version": 2}
    body["detectors"] = {n: {k: v for k, v in d.items() if k != "crossfit"} for n, d in body["detectors"].items()}
    path = tmp_path / "v2.json"
    path.write_text(json.dumps({**body, "content_hash": content_hash(body)}))
    old = Calibration.load(path)
    assert old.match == "linear" and all(d.crossfit is None for d in old.detectors.values())
    assert old.thresholds_for(FOUR) == dataclasses.replace(calibration, match="linear").thresholds_for(FOUR)
    with pytest.raises(CalibrationError, match="detector 'threshold' has no cross-fitted maxima"):
        dataclasses.replace(old, match="quantiles").thresholds_for(FOUR)


def test_the_joint_rule_is_recorded_and_checked(tmp_path):
    rng = np.random.default_rng(5)
    assert Calibration.fit(ar1_episodes(rng, 40), alpha=0.1).match == "linear"  # the default
    cal = Calibration.fit(ar1_episodes(rng, 120), alpha=0.1, detectors=FOUR, match="quantiles")
    path = cal.save(tmp_path / "q.json")
    loaded = Calibration.load(path)
    assert loaded == cal and loaded.match == "quantiles"
    assert loaded.thresholds_for(FOUR) == cal.thresholds_for(FOUR)
    assert cal.thresholds_for(FOUR) != dataclasses.replace(cal, match="linear").thresholds_for(FOUR)
    with pytest.raises(CalibrationError, match="match='bogus'; expected one of 'linear', 'quantiles'"):
        Calibration.fit(ar1_episodes(rng, 40), alpha=0.1, match="bogus")
    with pytest.raises(CalibrationError, match="match='Linear'; expected one of"):
        dataclasses.replace(cal, match="Linear").thresholds_for(FOUR)
    from mesaguard.artifacts import content_hash

    def rewritten(change):
        data = json.loads(path.read_text())
        body = {k: v for k, v in data.items() if k != "content_hash"}
        change(body)
        out = tmp_path / "bad.json"
        out.write_text(json.dumps({**body, "content_hash": content_hash(body)}))
        return out

    with pytest.raises(CalibrationError, match="field match is 'Quantiles'; expected one of 'linear', 'quantiles'"):
        Calibration.load(rewritten(lambda b: b.update(match="Quantiles")))
    with pytest.raises(CalibrationError, match=r"field detectors.cusum.crossfit is .*; expected the cross-fitted"):
        Calibration.load(rewritten(lambda b: b["detectors"]["cusum"].update(crossfit=[2.0, 1.0])))
    with pytest.raises(CalibrationError, match=r"field detectors.envelope.crossfit is None; expected the cross-fi"):
        Calibration.load(rewritten(lambda b: b["detectors"]["envelope"].pop("crossfit")))


finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=1, max_size=60), st.lists(finite, min_size=1, max_size=30))
def test_a_tail_map_is_increasing_and_its_inverse_undoes_it(crossfit, xs):
    m = tail_map(crossfit)
    x = np.sort(np.asarray(xs + crossfit))
    level = map_level(m, x)
    assert (np.diff(level) >= 0).all()
    back = np.array([map_value(m, lv) for lv in level])
    assert np.allclose(back, x, rtol=1e-7, atol=1e-6 * (1 + np.ptp(x)))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([0.05, 0.1, 0.2]), st.booleans())
def test_matched_at_every_quantile_the_union_keeps_the_conformal_count(seed, alpha, repeated):
    """match='quantiles': at most n - k held-out episodes fire on the union, however differently the members'
    tails are shaped (a Pareto-tailed increment, repeated episodes with tied maxima)."""
    rng = np.random.default_rng(seed)
    if repeated:
        pool = [np.round(rng.normal(1.0, 0.3, 12), 1) for _ in range(6)]
        episodes = [pool[i] for i in rng.integers(0, 6, 100)]
    else:
        episodes = [1.0 + rng.pareto(2.0, 12) * rng.choice([-1.0, 1.0], 12) for _ in range(100)]
    names = ["cusum", "meanshift", "rank"]
    cal = Calibration.fit(episodes, alpha=alpha, detectors=names, match="quantiles")
    thresholds = cal.thresholds_for(names)
    fired = np.any([np.asarray(cal.detectors[n].maxima) > thresholds[n] for n in names], axis=0)
    assert fired.sum() <= cal.n_cal - conformal_rank(cal.n_cal, alpha)


@pytest.mark.parametrize("folds", [2, 10, 50])
def test_cross_fitted_maxima_take_each_episode_under_a_fit_without_it(folds):
    """One maximum per fitting episode, each under a detector fitted on the other folds only: an episode unlike
    every other (a sudden drop) is extreme under a fit that never saw it, however many folds; with more folds than
    episodes, each episode is its own fold."""
    rng = np.random.default_rng(3)
    episodes = [rng.normal(1.0, 0.1, 20) for _ in range(30)]
    episodes[7] = np.concatenate([np.full(10, 1.0), np.full(10, -5.0)])
    crossfit = crossfit_maxima(detector_class("cusum"), episodes, {}, folds=folds)
    assert crossfit.shape == (30,)
    assert int(np.argmax(crossfit)) == 7
    assert crossfit[7] > 10 * np.sort(crossfit)[-2]
    fitted_on_all = episode_maxima(detector_class("cusum").fit(episodes), [episodes[7]])[0]
    assert crossfit[7] > fitted_on_all  # a fit that saw the drop takes it for noise, in part


@pytest.mark.parametrize(
    "crossfit, held",
    [
        (np.zeros(50), np.zeros(50)),  # a CUSUM that never left zero
        (0.0017 + 1e-16 * np.arange(50), np.full(50, 0.0018)),  # one constant up to rounding, refitted a hair higher
    ],
    ids=["all tied", "rounding noise"],
)
def test_a_member_whose_maxima_barely_vary_leaves_the_others_their_thresholds(crossfit, held):
    """match='quantiles': a standardized member whose cross-fitted maxima are one value (or one up to rounding) is
    at a common level on every held-out episode, so it neither sets the joint threshold nor takes the others'
    power: the rank keeps the threshold it has alone (before, every held-out episode looked as rare as the rarest
    and the union's thresholds went out of reach)."""
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.0, 0.5, 20) for _ in range(100)], alpha=0.1, detectors=["cusum", "rank"],
                          match="quantiles")
    flat = dataclasses.replace(cal.detectors["cusum"], crossfit=crossfit.tolist(), maxima=held.tolist())
    cal = dataclasses.replace(cal, detectors={**cal.detectors, "cusum": flat})
    joint = cal.thresholds_for(["cusum", "rank"])
    assert joint["rank"] == pytest.approx(cal.thresholds["rank"], rel=1e-9)
    assert joint["cusum"] < float(held[0]) + 0.01  # a deficit of a hundredth past the constant fires


def test_a_standardized_members_map_never_calls_a_thousandth_of_its_unit_rare():
    rounding = 0.0017 + 1e-16 * np.arange(100)
    assert map_level(tail_map(rounding, unit=1.0), [0.0018])[0] < 0.2  # a hair past: about as common as they are
    assert map_level(tail_map(rounding), [0.0018])[0] > 1e6  # in the objective's own units nothing bounds it
    floor = tail_floor(1.0)
    knots, levels, scale = tail_map(np.r_[np.zeros(50), 1e-5 * np.arange(50)], unit=1.0)
    assert scale >= floor and (np.diff(levels) > 0).all()
    assert (np.diff(levels) <= np.diff(knots) / floor * (1 + 1e-9)).all()
    normal = np.random.default_rng(1).normal(size=100)  # maxima of a real spread: the floor changes nothing
    assert np.allclose(tail_map(normal, unit=1.0)[1], tail_map(normal)[1], rtol=0, atol=1e-9)
