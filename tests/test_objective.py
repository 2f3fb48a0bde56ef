import math

import numpy as np
import pytest

from mesaguard.objective import Batch, FromCallable, FromInfo, FromReward, ObjectiveError, Transition, make_objective


def test_sources():
    t = Transition(reward=2.0, info={"base_objective": -1.5, "other": 3})
    assert make_objective().increment(t, 1) == 2.0
    assert make_objective("reward").increment(t, 1) == 2.0
    assert make_objective("info:base_objective").increment(t, 1) == -1.5
    assert make_objective(lambda tr: tr.info["other"] * 2).increment(t, 1) == 6.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nonfinite_increment_names_step_and_value(bad):
    with pytest.raises(ObjectiveError, match=rf"increment {bad} at step 7"):
        FromInfo().increment(Transition(0.0, {"base_objective": bad}), 7)


def test_missing_info_key_lists_keys():
    with pytest.raises(ObjectiveError, match=r"no key 'base_objective' \(keys: \['x'\]\)"):
        FromInfo().increment(Transition(0.0, {"x": 1}), 1)


def test_unknown_spec():
    with pytest.raises(ObjectiveError, match="unknown objective 'bogus'"):
        make_objective("bogus")
    with pytest.raises(TypeError):
        FromCallable(3)


def test_batch_values_from_vector_infos():
    rewards = np.array([1.0, 2.0, 3.0])
    infos = {"base_objective": np.array([0.5, 0.0, -1.0]), "_base_objective": np.array([True, False, True])}
    batch = Batch(rewards, infos)
    np.testing.assert_array_equal(FromReward().batch_values(batch), rewards)
    np.testing.assert_array_equal(FromInfo().batch_values(batch), [0.5, np.nan, -1.0])
    np.testing.assert_array_equal(FromInfo("absent").batch_values(batch), [np.nan] * 3)
    # the generic per-env path sees only what each env reported, and only the live envs
    seen = FromCallable(lambda t: t.reward + t.info.get("base_objective", 100.0)).batch_values(batch)
    np.testing.assert_array_equal(seen, [1.5, 102.0, 2.0])
    batch.live = np.array([True, False, True])
    seen = FromCallable(lambda t: t.reward).batch_values(batch)
    np.testing.assert_array_equal(seen, [1.0, np.nan, 3.0])


def test_batch_transitions_carry_every_field():
    obs, actions, next_obs = np.arange(6).reshape(3, 2), np.array([0, 1, 1]), np.arange(6, 12).reshape(3, 2)
    batch = Batch(np.zeros(3), {}, obs, actions, next_obs, np.array([False, True, False]), np.zeros(3, dtype=bool))
    t = batch.transition(1)
    assert t.obs.tolist() == [2, 3] and t.action == 1 and t.next_obs.tolist() == [8, 9] and t.terminated
