import functools

import gymnasium as gym
import numpy as np

from mesaguard.rollout import rollout


def make_cartpole():
    return gym.make("CartPole-v1")


def lean(direction, env):
    return lambda obs: direction if obs[2] < 0 else 1 - direction


def test_rollout_collects_increments_in_seed_order_and_parallel_matches_serial():
    policy = functools.partial(lean, 0)
    serial = rollout(make_cartpole, policy, seeds=range(6), objective="reward")
    parallel = rollout(make_cartpole, policy, seeds=range(6), objective="reward", workers=2)
    assert [e.seed for e in parallel] == list(range(6))
    for a, b in zip(serial, parallel):
        np.testing.assert_array_equal(a.increments, b.increments)
    assert all(e.score == e.length for e in serial)  # CartPole: +1 per step
    assert all(e.alarm_step is None and e.catastrophes.size == 0 for e in serial)


def test_on_episode_reports_progress():
    seen = []
    rollout(make_cartpole, functools.partial(lean, 1), seeds=[3, 4], objective="reward", on_episode=seen.append)
    assert [e.seed for e in seen] == [3, 4]


def test_the_default_objective_is_the_reward_as_everywhere():
    # CartPole reports no info["base_objective"]: the default must not ask for it
    (episode,) = rollout(make_cartpole, functools.partial(lean, 0), seeds=[0])
    assert episode.score == episode.length  # +1 reward per step
