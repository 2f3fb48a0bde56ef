"""Continual deployment: the agent keeps learning while deployed; the guard stays fixed; alarms roll it back.

The bench's other experiments train an agent once and deploy it frozen. Here the
base optimizer (SB3 PPO) goes on adjusting the agent on deployment episodes, while
the guard around the deployed env keeps its **design-time calibration fixed**: the
thresholds say what the accepted agent did, and a learner that drifts away from
that (toward a proxy, say) meets the same thresholds. Deployment runs in rounds:

1. ``model.learn(steps_per_round, reset_num_timesteps=False)`` on the guarded env
   (:class:`~mesaguard.guard.GuardedEnv`), the agent learning from what it sees;
2. a round in which no alarm fired *passes*: the parameters that acted during its
   last rollout (a whole rollout under the guard without an alarm) become the new
   checkpoint (an in-memory copy of the policy's ``state_dict`` and of the
   optimizer's as they were when that rollout began, and, with ``checkpoint_dir``,
   policy files written by :func:`mesaguard.train.save_policy`). The parameters PPO
   computed from that rollout are live but **not yet checked**: they act in the
   next round, and pass or fail there;
3. on an alarm the round stops at once (``stop_on_alarm``) and the policy and its
   optimizer are **rolled back** to the last checkpoint that passed, exactly
   (tensor for tensor); learning then goes on from there.

Only parameters that acted under the guard are ever checkpointed: taking the
parameters after a round's update instead would bless an update nobody checked,
and an update that broke the agent would become the checkpoint every later alarm
rolls back to (at the recipe's initial learning rate this rule halved the share of
reference episodes with an alarm on lava and side-effects:
``benchmarks/results/recorded.json``).

Checkpoint 0 is the agent as deployed (accepted at design time). Every round is
recorded as a :class:`Round` and, with ``record``, as one JSON line of a file
rewritten atomically after each round: round, env steps, episodes finished,
alarms, whether it rolled back, the checkpoint in force after it, and the mean
base objective (the guard's score) of the episodes it finished.

What to expect. The guard's false-alarm rate is per episode (alpha), so even an
agent that stays as good as the accepted one is rolled back now and then: about
``1 - (1 - alpha) ** episodes_per_round`` of rounds. A round is at least one PPO
rollout (``n_steps * n_envs`` steps): ``steps_per_round`` is rounded up to it by SB3.
PPO updates the policy only after a whole rollout, so a round that an alarm stops
earlier has not changed it yet; the rollback then discards the partial rollout, and
an agent that trips the guard before every update never learns in deployment (the
shipped side-effects agent on ``deploy`` does exactly that: it corners the box within
a few dozen steps, round after round).

>>> import gymnasium as gym, numpy as np
>>> from stable_baselines3 import PPO
>>> from mesaguard.calibration import Calibration
>>> from mesaguard.guard import GuardedEnv
>>> rng = np.random.default_rng(0)
>>> cal = Calibration.fit([rng.normal(1.0, 0.1, 30) for _ in range(100)], alpha=0.05)
>>> env = GuardedEnv(gym.make("CartPole-v1"), cal, detectors=["cusum"])
>>> model = PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
>>> rounds = ContinualDeployment(model, env, rounds=2, steps_per_round=32).run()
>>> [(r.round, r.alarms, r.rolled_back, r.checkpoint) for r in rounds]
[(1, 0, False, 1), (2, 0, False, 2)]
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from mesaguard.files import write_atomic
from mesaguard.objective import Objective, Transition, make_objective
from mesaguard.rollout import Episode, EpisodeLog
from mesaguard.train import LoadedPolicy, PPOConfig, save_policy

__all__ = ["Checkpoint", "ContinualDeployment", "ContinualError", "EpisodeSeeds", "Round", "ppo_from_policy"]

_RECIPE = PPOConfig()  # the shipped agents' recipe: ppo_from_policy's default (frozen, so one shared instance)


class ContinualError(ValueError):
    """Bad parameters, or an env that does not report a guard's verdict."""


@dataclass(frozen=True)
class Round:
    """What one round of continual deployment did.

    Attributes
    ----------
    round
        1, 2, ...
    steps, total_steps
        Env steps in this round; the model's ``num_timesteps`` after it.
    episodes
        Episodes that ended in this round.
    alarms
        Alarms the guard raised in this round (at most one per episode).
    rolled_back
        The round had an alarm and the agent was restored to ``checkpoint``.
    checkpoint
        The checkpoint in force after the round: a new one if the round passed,
        else the one rolled back to.
    mean_base_objective
        Mean guard score (base objective) of the episodes that ended this round;
        None when none ended.
    """

    round: int
    steps: int
    total_steps: int
    episodes: int
    alarms: int
    rolled_back: bool
    checkpoint: int
    mean_base_objective: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Checkpoint:
    """Parameters that passed: the policy's and the optimizer's ``state_dict`` (deep copies) as they were when
    they began to act (``total_steps``: the model's env steps then), and the round they passed in."""

    id: int
    round: int
    total_steps: int
    policy: dict[str, torch.Tensor]
    optimizer: dict[str, Any]


class _Watch(BaseCallback):
    """Counts episodes, alarms and guard scores from ``info["mesaguard"]``; stops learning at an alarm.

    Keeps ``passed``: the parameters (policy and optimizer state) that acted during the
    last rollout that ended without an alarm.
    """

    def __init__(self, stop_on_alarm: bool):
        super().__init__()
        self.stop_on_alarm = stop_on_alarm
        self.episodes, self.alarms, self.scores = 0, 0, []
        self.acting: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
        self.passed: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None
        self.acting_steps = self.passed_steps = 0  # the model's num_timesteps when they began to act

    def _on_rollout_start(self) -> None:
        self.acting, self.acting_steps = _parameters(self.model.policy), int(self.model.num_timesteps)

    def _on_rollout_end(self) -> None:
        if self.alarms == 0:
            self.passed, self.passed_steps = self.acting, self.acting_steps

    def _on_step(self) -> bool:
        alarm = False
        for info, done in zip(self.locals["infos"], self.locals["dones"]):
            verdict = info.get("mesaguard")
            if verdict is None:
                raise ContinualError(
                    "the deployed env reports no info['mesaguard']: wrap it in mesaguard.guard.GuardedEnv "
                    "with the design-time calibration"
                )
            if verdict["alarm"] and verdict["alarm_step"] == verdict["step"]:  # fired at this step
                self.alarms += 1
                alarm = True
            if done:
                self.episodes += 1
                self.scores.append(float(verdict["score"]))
        return not (alarm and self.stop_on_alarm)


def _parameters(policy: ActorCriticPolicy) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Copies of the policy's ``state_dict`` and of its optimizer's."""
    return (
        {k: v.detach().clone() for k, v in policy.state_dict().items()},
        copy.deepcopy(policy.optimizer.state_dict()),
    )


class ContinualDeployment:
    """Keep training ``model`` on the guarded deployment env in rounds; roll back on alarm.

    Parameters
    ----------
    model
        An SB3 PPO model (e.g. from :func:`ppo_from_policy`).
    env
        The deployed env under :class:`~mesaguard.guard.GuardedEnv` (calibration
        fixed), a list of them, or a ``VecEnv`` of them; set as the model's env.
    rounds
        Number of rounds :meth:`run` plays.
    steps_per_round
        Env steps of learning per round (SB3 rounds it up to whole rollouts).
    stop_on_alarm
        End a round at the step of its first alarm (default), so a drifting agent
        learns no further before it is rolled back.
    record
        A JSON-lines file, rewritten atomically after each round with every round so far.
    checkpoint_dir
        If given, each checkpoint is also written there as policy files
        (``checkpoint-0001.json`` / ``.safetensors``) by :func:`~mesaguard.train.save_policy`.
    """

    def __init__(
        self,
        model: PPO,
        env: gym.Env | Sequence[gym.Env] | VecEnv,
        rounds: int,
        steps_per_round: int,
        *,
        stop_on_alarm: bool = True,
        record: str | os.PathLike[str] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        if not isinstance(model, PPO):
            raise ContinualError(f"model is a {type(model).__name__}; expected a stable_baselines3 PPO model")
        if int(rounds) < 1 or int(steps_per_round) < 1:
            raise ContinualError(f"rounds={rounds}, steps_per_round={steps_per_round}; expected positive integers")
        if isinstance(env, gym.Env):
            env = DummyVecEnv([lambda: env])
        elif not isinstance(env, VecEnv):
            envs = list(env)
            env = DummyVecEnv([lambda e=e: e for e in envs])
        model.set_env(env)  # resets the env on the first round: a new deployment starts from reset
        self.model = model
        self.rounds = int(rounds)
        self.steps_per_round = int(steps_per_round)
        self.stop_on_alarm = stop_on_alarm
        self.record = None if record is None else Path(record)
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.history: list[Round] = []
        self.checkpoint = self._snapshot(0, 0)

    def _snapshot(self, id: int, round: int, watch: _Watch | None = None) -> Checkpoint:
        """Checkpoint ``id``: what ``watch`` saw pass (default: the model as it is), with a policy file if asked."""
        if watch is not None and watch.passed is not None:
            (policy_state, optimizer_state), steps = watch.passed, watch.passed_steps
        else:
            (policy_state, optimizer_state), steps = _parameters(self.model.policy), int(self.model.num_timesteps)
        checkpoint = Checkpoint(id=id, round=round, total_steps=steps, policy=policy_state, optimizer=optimizer_state)
        if self.checkpoint_dir is not None:
            policy = self.model.policy
            live = {k: v.detach().clone() for k, v in policy.state_dict().items()}
            policy.load_state_dict(policy_state, strict=True)  # the checkpoint's weights, in the live tensors
            try:
                save_policy(
                    policy,
                    self.checkpoint_dir / f"checkpoint-{id:04d}",
                    metadata={"checkpoint": id, "round": round, "total_steps": checkpoint.total_steps},
                )
            finally:
                policy.load_state_dict(live, strict=True)
        return checkpoint

    def rollback(self) -> Checkpoint:
        """Restore the policy and its optimizer to the last checkpoint that passed, exactly."""
        policy = self.model.policy
        policy.load_state_dict(self.checkpoint.policy, strict=True)  # copies into the live tensors
        policy.optimizer.load_state_dict(copy.deepcopy(self.checkpoint.optimizer))
        return self.checkpoint

    def step(self) -> Round:
        """Play one round: learn, then checkpoint (no alarm) or roll back (alarm); record it."""
        before = int(self.model.num_timesteps)
        watch = _Watch(self.stop_on_alarm)
        self.model.learn(self.steps_per_round, callback=watch, reset_num_timesteps=False)
        number = len(self.history) + 1
        rolled_back = watch.alarms > 0
        if rolled_back:
            self.rollback()
        elif watch.passed is not None:  # the parameters that acted through a whole rollout without an alarm
            self.checkpoint = self._snapshot(self.checkpoint.id + 1, number, watch)
        scores = watch.scores
        result = Round(
            round=number,
            steps=int(self.model.num_timesteps) - before,
            total_steps=int(self.model.num_timesteps),
            episodes=watch.episodes,
            alarms=watch.alarms,
            rolled_back=rolled_back,
            checkpoint=self.checkpoint.id,
            mean_base_objective=math.fsum(scores) / len(scores) if scores else None,
        )
        self.history.append(result)
        if self.record is not None:
            lines = "".join(json.dumps(r.as_dict(), allow_nan=False) + "\n" for r in self.history)
            write_atomic(self.record, lines)
        return result

    def run(self, episodes: int | None = None) -> list[Round]:
        """Play ``rounds`` rounds, or with ``episodes`` rounds until that many episodes have ended.

        Returns every round played so far. The last round may end a few episodes more
        (a round is whole rollouts, unless an alarm stops it).
        """
        if episodes is None:
            for _ in range(self.rounds):
                self.step()
        else:
            if int(episodes) < 1:
                raise ContinualError(f"episodes={episodes!r}; expected a positive integer")
            ended = 0
            while ended < episodes:
                ended += self.step().episodes
        return list(self.history)


class EpisodeSeeds(gym.Wrapper):
    """Episode ``i`` starts from ``reset(seed=seeds[i])``, whatever seed the learner asks for; each is logged.

    SB3 resets the envs it learns on itself (and without seeds after the first
    episode); this wrapper makes continual deployment play the same episode starts
    as a frozen agent's :func:`~mesaguard.rollout.rollout` over ``seeds``, and keeps
    every finished episode as a :class:`~mesaguard.rollout.Episode` in ``episodes``
    (increments by ``objective``, catastrophes, the guard's verdict). Put it outside
    the guard, so it sees the guard's ``info["mesaguard"]``. After the last seed,
    episodes go on from ``seeds[-1] + 1``, ``+ 2``, ...
    """

    def __init__(
        self,
        env: gym.Env,
        seeds: Sequence[int],
        objective: str | Objective | Callable[[Transition], float] | None = "info:base_objective",
        on_episode: Callable[[Episode], None] | None = None,
    ) -> None:
        super().__init__(env)
        self.seeds = [int(s) for s in seeds]
        if not self.seeds:
            raise ContinualError("seeds is empty; expected the seed of each episode to play")
        self.objective = make_objective(objective)
        self.on_episode = on_episode
        self.episodes: list[Episode] = []
        self._log: EpisodeLog | None = None
        self._obs: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        i = len(self.episodes)
        seed = self.seeds[i] if i < len(self.seeds) else self.seeds[-1] + i - len(self.seeds) + 1
        self._obs, info = self.env.reset(seed=seed, options=options)
        self._log = EpisodeLog(seed, self.objective)
        return self._obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._log is None:
            raise ContinualError("step() before reset(); call env.reset() first")
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._log.step(self._obs, action, float(reward), obs, terminated, truncated, info):
            self.episodes.append(self._log.episode())
            self._log = None
            if self.on_episode is not None:
                self.on_episode(self.episodes[-1])
        self._obs = obs
        return obs, reward, terminated, truncated, info


def ppo_from_policy(
    policy: LoadedPolicy | ActorCriticPolicy,
    env: gym.Env | VecEnv,
    config: PPOConfig = _RECIPE,
    *,
    learning_rate: float = 1e-5,
    ent_coef: float = 0.0,
    seed: int = 0,
) -> PPO:
    """A PPO model on ``env`` whose policy holds ``policy``'s weights (e.g. a shipped agent).

    The hyperparameters come from ``config`` (the recipe the agent was trained
    with), except the two the recipe annealed to 0 by the end of training: the
    learning rate is held constant at ``learning_rate``, since continual deployment
    has no planned end, and the entropy bonus is ``ent_coef`` (default 0, where the
    recipe ended). The default rate, 1e-5, is a fiftieth of the recipe's initial
    rate, where its annealing stood with 2% of training left. At the initial rate
    (5e-4), PPO's updates on one deployed env's rollouts (64 steps, 10 epochs) broke
    the shipped supervisor agent within a few rounds on ``supervised``, where reward
    and base objective agree; at 1e-5 they did not (``benchmarks/results/recorded.json``).
    The minibatch is at most one rollout (``n_steps`` times the number of envs), so a
    single deployed env gets full-batch updates instead of SB3's warning.
    """
    sb3_policy = policy.policy if isinstance(policy, LoadedPolicy) else policy
    n_envs = env.num_envs if isinstance(env, VecEnv) else 1
    params = sb3_policy._get_constructor_parameters()
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=config.n_steps,
        batch_size=min(config.batch_size, config.n_steps * n_envs),
        n_epochs=config.n_epochs,
        learning_rate=learning_rate,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        policy_kwargs={
            "net_arch": params["net_arch"],
            "activation_fn": params["activation_fn"],
            "ortho_init": params["ortho_init"],
            "share_features_extractor": sb3_policy.share_features_extractor,
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    try:
        model.policy.load_state_dict(sb3_policy.state_dict(), strict=True)
    except RuntimeError as err:
        raise ContinualError(f"cannot put the policy's weights into a PPO model built from config ({err})") from err
    return model
