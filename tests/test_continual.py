"""Continual deployment: rounds of learning under a fixed guard, checkpoints, rollback on alarm."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO

from mesaguard.calibration import Calibration
from mesaguard.continual import ContinualDeployment, ContinualError, EpisodeSeeds, ppo_from_policy
from mesaguard.guard import GuardedEnv
from mesaguard.objective import Transition
from mesaguard.train import load_agent, load_policy


class Switch:
    """A base objective the test can corrupt: CartPole's reward, or -10 a step while ``bad``."""

    def __init__(self) -> None:
        self.bad = False

    def __call__(self, t: Transition) -> float:
        return -10.0 if self.bad else t.reward


@pytest.fixture
def setup(tmp_path):
    rng = np.random.default_rng(0)
    # Hand-made calibration: in-distribution increments near 1 (CartPole pays 1 a step).
    cal = Calibration.fit([rng.normal(1.0, 0.1, 30) for _ in range(100)], alpha=0.05, detectors=["cusum"])
    switch = Switch()
    env = GuardedEnv(gym.make("CartPole-v1"), cal, objective=switch)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    deployment = ContinualDeployment(model, env, rounds=3, steps_per_round=32, record=tmp_path / "rounds.jsonl",
                                     checkpoint_dir=tmp_path / "checkpoints")
    return deployment, switch, tmp_path


def _params(model: PPO) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.policy.state_dict().items()}


def _optimizer_tensors(model: PPO) -> list[torch.Tensor]:
    state = model.policy.optimizer.state_dict()["state"]
    return [v for slot in sorted(state) for _, v in sorted(state[slot].items()) if torch.is_tensor(v)]


def test_round_without_alarm_checkpoints_the_parameters_that_acted(setup):
    """A passing round blesses the parameters that acted in it, not the update PPO made from it (unchecked)."""
    deployment, switch, tmp = setup
    model = deployment.model
    start = _params(model)
    r = deployment.step()
    assert (r.round, r.alarms, r.rolled_back, r.checkpoint) == (1, 0, False, 1)
    assert r.steps == 32 and r.total_steps == 32
    after = _params(model)
    assert any(not torch.equal(start[k], after[k]) for k in start)  # it did learn
    assert all(torch.equal(deployment.checkpoint.policy[k], start[k]) for k in start)  # what acted in round 1
    assert deployment.checkpoint.total_steps == 0  # ... from step 0 on
    assert (tmp / "checkpoints" / "checkpoint-0001.safetensors").is_file()
    shipped = load_policy(tmp / "checkpoints" / "checkpoint-0001")  # the checkpoint file holds the same weights
    assert all(torch.equal(v, start[k]) for k, v in shipped.policy.state_dict().items())


def test_rollback_restores_the_checkpoint_parameters_exactly(setup):
    deployment, switch, _ = setup
    model = deployment.model
    deployment.step()  # passes; PPO's update from it acts in round 2
    acting = _params(model)
    acting_optimizer = [t.clone() for t in _optimizer_tensors(model)]
    assert acting_optimizer  # Adam has moments after one update
    deployment.step()  # passes: checkpoint 2 holds what acted in round 2
    assert any(not torch.equal(acting[k], v) for k, v in _params(model).items())  # round 2's update moved them
    switch.bad = True
    r = deployment.step()
    assert r.rolled_back and r.alarms == 1 and r.checkpoint == 2
    restored = _params(model)
    assert restored.keys() == acting.keys()
    assert all(torch.equal(acting[k], restored[k]) for k in acting)
    assert all(torch.equal(a, b) for a, b in zip(acting_optimizer, _optimizer_tensors(model), strict=True))
    # the restored tensors are the model's own: learning goes on from the checkpoint
    assert restored["action_net.weight"].data_ptr() != deployment.checkpoint.policy["action_net.weight"].data_ptr()


def test_an_update_that_breaks_the_agent_is_never_checkpointed(setup):
    """Round 1 passes and PPO updates; the update is bad (the alarm comes in round 2): back to what acted in 1."""
    deployment, switch, _ = setup
    start = _params(deployment.model)
    deployment.step()
    switch.bad = True  # as if round 1's update had broken the agent
    r = deployment.step()
    assert r.rolled_back and r.checkpoint == 1
    assert all(torch.equal(start[k], v) for k, v in _params(deployment.model).items())


def test_changed_parameters_are_restored_after_an_alarm(setup):
    """Parameters moved during the bad round (learning before the alarm) come back to the checkpoint."""
    deployment, switch, _ = setup
    model = deployment.model
    saved = _params(model)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(1.0)  # as if learning had moved them
    switch.bad = True
    deployment.step()
    assert all(torch.equal(saved[k], v) for k, v in _params(model).items())


def test_round_with_alarm_triggers_rollback_and_is_recorded(setup):
    deployment, switch, tmp = setup
    rounds = []
    for bad in (False, True, False):
        switch.bad = bad
        rounds.append(deployment.step())
    assert [(r.round, r.rolled_back, r.checkpoint) for r in rounds] == [(1, False, 1), (2, True, 1), (3, False, 2)]
    assert rounds[1].alarms == 1 and rounds[1].steps == 1  # the round stops at the alarm's step
    assert rounds[1].episodes == 1  # the guard's Stop ended the episode
    # the episode ended at the alarm: its good steps (+1 each, all of them in round 1 if none ended there) and -10
    if rounds[0].episodes == 0:
        assert rounds[1].mean_base_objective == 32 - 10
    assert rounds[1].mean_base_objective < 32 - 10 + 1
    lines = [json.loads(line) for line in (tmp / "rounds.jsonl").read_text().splitlines()]
    assert lines == [r.as_dict() for r in rounds]
    assert lines[1]["rolled_back"] is True and lines[1]["alarms"] == 1


def test_run_plays_every_round(setup):
    deployment, _, _ = setup
    rounds = deployment.run()
    assert [r.round for r in rounds] == [1, 2, 3] and rounds[-1].total_steps == 96
    assert all(not r.rolled_back for r in rounds) and rounds[-1].checkpoint == 3
    assert sum(r.episodes for r in rounds) >= 1
    assert all(r.mean_base_objective is None or r.mean_base_objective > 0 for r in rounds)


def test_run_until_episodes_plays_the_given_seeds_in_order():
    """Episodes as a frozen agent's rollout would start them: seed i for episode i, each logged."""
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.0, 0.1, 30) for _ in range(100)], alpha=0.05, detectors=["cusum"])
    seeds = [101, 7, 55, 3, 12]
    starts = []
    env = EpisodeSeeds(GuardedEnv(gym.make("CartPole-v1"), cal, objective="reward"), seeds, objective="reward",
                       on_episode=lambda e: starts.append(e.seed))
    obs, _ = env.reset(seed=999)  # the learner's seed is ignored: the first episode starts from seeds[0]
    assert np.array_equal(obs, gym.make("CartPole-v1").reset(seed=seeds[0])[0])
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [16]})
    rounds = ContinualDeployment(model, env, rounds=1, steps_per_round=32).run(episodes=len(seeds))
    assert sum(r.episodes for r in rounds) >= len(seeds) and sum(r.episodes for r in rounds[:-1]) < len(seeds)
    assert starts[: len(seeds)] == seeds  # then seeds[-1] + 1, + 2, ...
    assert starts[len(seeds):] == list(range(13, 13 + len(starts) - len(seeds)))
    for e in env.episodes:  # CartPole pays 1 a step: the logged increments are the episode's steps
        assert e.length >= 1 and np.all(e.increments == 1.0) and e.catastrophes.size == 0
    with pytest.raises(ContinualError, match="seeds is empty"):
        EpisodeSeeds(gym.make("CartPole-v1"), [])
    with pytest.raises(ContinualError, match="episodes=0"):
        ContinualDeployment(model, env, rounds=1, steps_per_round=32).run(episodes=0)


def test_unguarded_env_is_refused():
    env = gym.make("CartPole-v1")
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    with pytest.raises(ContinualError, match="GuardedEnv"):
        ContinualDeployment(model, env, rounds=1, steps_per_round=32).step()
    with pytest.raises(ContinualError, match="rounds=0"):
        ContinualDeployment(model, env, rounds=0, steps_per_round=32)


def test_ppo_from_shipped_policy_acts_like_it():
    shipped = load_agent("side-effects")
    from mesaguard.scenarios import make

    env = make("side-effects", "deploy")
    model = ppo_from_policy(shipped, env)
    rng = np.random.default_rng(0)
    obs = np.stack([env.reset(seed=int(s))[0] for s in rng.integers(0, 10_000, 50)])
    ours, _ = model.predict(obs, deterministic=True)
    assert np.array_equal(ours, shipped(obs))
    for k, v in shipped.policy.state_dict().items():
        assert torch.equal(v, model.policy.state_dict()[k])


@pytest.mark.slow
def test_shipped_side_effects_agent_is_rolled_back_on_deploy(tmp_path):
    """The real case: the shipped agent keeps learning on side-effects deploy under its design-time guard.

    It corners the box in about half the deploy episodes (-1 on that step, far below anything
    seen in training), so alarms come within a few rounds, and each rolls the agent back.
    """
    from mesaguard.experiment import OBJECTIVE, calibrate
    from mesaguard.scenarios import make

    cal = calibrate("side-effects", episodes=60, alpha=0.1)
    env = GuardedEnv(make("side-effects", "deploy"), cal, objective=OBJECTIVE, scenario="side-effects")
    model = ppo_from_policy(load_agent("side-effects"), env)
    deployment = ContinualDeployment(model, env, rounds=6, steps_per_round=64, record=tmp_path / "r.jsonl")
    rounds = deployment.run()
    assert any(r.rolled_back for r in rounds)
    previous = 0
    for r in rounds:
        assert r.checkpoint == (previous if r.rolled_back else previous + 1)
        previous = r.checkpoint
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 6
