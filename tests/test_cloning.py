"""The quantilizer's base cloned from demonstrations on the reference variant only."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from mesaguard.bench import BenchConfig, BenchError
from mesaguard.safeguards.cloning import behaviour_clone, demonstrations


def test_demonstrations_record_what_was_taken_with_the_noise_share():
    env = gym.make("CartPole-v1")
    xs, ys = demonstrations(lambda: env, lambda e: (lambda obs: 1), range(30), noise=0.2, seed=0)
    assert xs.shape == (len(ys), 4)
    # action 0 is only ever a random one, drawn with chance noise / 2 = 0.1: within four binomial standard deviations
    assert abs((ys == 0).mean() - 0.1) < 4 * np.sqrt(0.1 * 0.9 / len(ys))
    with pytest.raises(ValueError, match="noise=1.5"):
        demonstrations(lambda: env, lambda e: (lambda obs: 1), range(1), noise=1.5)


def test_the_clone_is_a_distribution_with_a_floor_under_every_action():
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(400, 3))
    ys = (xs[:, 0] > 0).astype(int)  # actions 0 and 1 only; action 2 never demonstrated
    base = behaviour_clone(xs, ys, n_actions=3, floor=0.03)
    p = base(np.array([2.0, 0.0, 0.0]))
    assert p.sum() == pytest.approx(1.0) and p[2] == pytest.approx(0.01) and p[1] > 0.9
    only = behaviour_clone(xs, np.zeros(400, dtype=int), n_actions=3, floor=0.03)
    assert only(xs[0]).tolist() == pytest.approx([0.98, 0.01, 0.01])
    with pytest.raises(ValueError, match="floor=0"):
        behaviour_clone(xs, ys, n_actions=3, floor=0.0)


def test_the_bench_runs_the_cloned_quantilizer_on_discrete_scenarios_only():
    BenchConfig(scenarios=("lava",), detectors=("cusum",), seeds=(0,), episodes=5, calibration_episodes=40,
                safeguards=("quantilizer-bc",))
    with pytest.raises(BenchError, match="discrete"):
        BenchConfig(scenarios=("cheetah",), detectors=("cusum",), seeds=(0,), episodes=5, calibration_episodes=40,
                    safeguards=("quantilizer-bc",))
