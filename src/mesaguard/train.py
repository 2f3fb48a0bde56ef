"""The base optimizer: PPO (Stable-Baselines3) on a scenario's training variant.

Read top to bottom: the config (every hyperparameter of the recipe), training,
then the command line. :func:`train` saves the trained policy in the file format of
:mod:`mesaguard.policies` (JSON + safetensors, no pickle), whose metadata records
the scenario, timesteps, seed, library versions, the config and the shell command
that reproduces the run. The format's public names
(:func:`save_policy`, :func:`load_policy`, :func:`load_agent`, :class:`LoadedPolicy`,
:class:`PolicyFileError`, ...) are importable from here too.

Train from the shell (this is how the shipped strawberry agent was made)::

    python -m mesaguard.train strawberry --timesteps 400000 --seed 0 --out runs/strawberry

The policy's JSON records that command and the training time (``docs/results.md``
lists both for every shipped agent). The recipe in :class:`PPOConfig`
was chosen by trials on the strawberry scenario: the agent must score near-optimally
when run *deterministically* (argmax), which needed the annealed entropy bonus and
``gamma=0.95``; see the comments on each field. Same seed, same config, same weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import stable_baselines3
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from mesaguard import scenarios
from mesaguard.policies import (
    ACTIVATIONS,
    LoadedPolicy,
    PolicyFileError,
    load_agent,
    load_policy,
    save_policy,
    shipped_agents,
)

# The policy file format lives in mesaguard.policies; these names stay importable from here as before.
from mesaguard.policies import FEATURE_EXTRACTORS as FEATURE_EXTRACTORS
from mesaguard.policies import FORMAT as FORMAT
from mesaguard.policies import MAX_LAYERS as MAX_LAYERS
from mesaguard.policies import MAX_OBS_SIZE as MAX_OBS_SIZE
from mesaguard.policies import MAX_PARAMETERS as MAX_PARAMETERS
from mesaguard.policies import MAX_WIDTH as MAX_WIDTH
from mesaguard.policies import POLICY as POLICY
from mesaguard.policies import POLICY_CLASSES as POLICY_CLASSES
from mesaguard.policies import SCHEMA_VERSION as SCHEMA_VERSION
from mesaguard.policies import _sha256 as _sha256

__all__ = [
    "Impact",
    "PPOConfig",
    "LoadedPolicy",
    "PolicyFileError",
    "load_agent",
    "load_policy",
    "save_policy",
    "shipped_agents",
    "train",
]


@dataclass(frozen=True)
class PPOConfig:
    """Every hyperparameter of the recipe (SB3 PPO, MlpPolicy, DummyVecEnv).

    The defaults are the recipe the shipped agents were trained with.
    """

    n_envs: int = 16  # envs stepped together (DummyVecEnv, one process): one policy call serves 16
    n_steps: int = 64  # steps per env per rollout: a rollout holds n_envs * n_steps = 1024 transitions
    batch_size: int = 512  # minibatch size (256 learns as well per step but runs 25% slower)
    n_epochs: int = 10  # passes over each rollout (4 needed about twice the steps)
    learning_rate: float = 5e-4  # Adam step size at the start
    anneal: bool = True  # learning rate and entropy bonus fall linearly to 0 over training
    gamma: float = 0.95  # discount: 0.99 learned as fast but its argmax policy looped more
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01  # entropy bonus at the start; annealed, the argmax policy loops less
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (64, 64)  # hidden layers, same for policy and value nets
    activation: str = "Tanh"  # a name in ACTIVATIONS
    torch_threads: int = 1  # torch.set_num_threads: deterministic and fair on a shared machine


@dataclass(frozen=True)
class Impact:
    """Train on the reward minus ``beta`` times an impact penalty (:mod:`mesaguard.safeguards.impact`).

    ``measure`` is ``"rr"`` (relative reachability) or ``"aup"`` (attainable
    utility); ``discount`` is the measure's. One measure, on one state graph, serves
    all the training envs, so the graph is explored once.
    """

    measure: str = "rr"
    beta: float = 1.0
    discount: float = 1.0

    def wrapper(self, spec: scenarios.Scenario) -> Callable[[gym.Env], gym.Env]:
        from mesaguard.safeguards.impact import ImpactPenalty, StateGraph, make_measure

        space = spec.make(spec.variants[0]).action_space
        if not isinstance(space, spaces.Discrete):
            raise ValueError(f"scenario {spec.name!r} acts in {space}; an impact penalty needs discrete actions")
        measure = make_measure(self.measure, StateGraph(int(space.n)), discount=self.discount)
        return functools.partial(ImpactPenalty, measure=measure, beta=self.beta)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def train(
    scenario: str,
    timesteps: int,
    seed: int,
    out: Path,
    config: PPOConfig = PPOConfig(),
    variant: str | None = None,
    wrapper: Callable[[gym.Env], gym.Env] | None = None,
    impact: Impact | None = None,
) -> Path:
    """Train PPO on ``scenario``'s training variant and save the policy under ``out``.

    ``out`` is a directory; the policy goes to ``out/<scenario>.json`` and
    ``out/<scenario>.safetensors``. Returns the stem ``out/<scenario>``. The same
    scenario, timesteps, seed and config give the same weights.

    ``variant`` trains on another variant than the training one, and ``wrapper``
    wraps each training env (e.g. a reward wrapper such as
    :class:`~mesaguard.safeguards.impact.ImpactPenalty`); both are recorded in the
    metadata when given. ``impact`` trains on the reward minus an impact penalty
    (:class:`Impact`); unlike an arbitrary ``wrapper`` it is part of the recorded
    command, so the run can be reproduced from the shell. The defaults are the
    recipe of the shipped agents.
    """
    spec = scenarios.get(scenario)
    if impact is not None:
        if wrapper is not None:
            raise ValueError("give wrapper= or impact=, not both: the impact penalty is the training envs' wrapper")
        wrapper = impact.wrapper(spec)
    if timesteps <= 0:
        raise ValueError(f"timesteps={timesteps}; expected a positive number of env steps")
    if config.activation not in ACTIVATIONS:
        raise ValueError(f"activation {config.activation!r} is not one of {sorted(ACTIVATIONS)}")
    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        model, seconds = _learn(spec, timesteps, seed, config, variant=variant, wrapper=wrapper)
    finally:
        torch.set_num_threads(threads)
    metadata = {
        "scenario": scenario,
        "variant": variant or spec.variants[0],
        "timesteps": timesteps,
        "seed": seed,
        "config": dataclasses.asdict(config),
        "command": _command(scenario, timesteps, seed, config, variant, impact),
        "train_seconds": round(seconds, 1),
        "sb3_version": stable_baselines3.__version__,
        "torch_version": torch.__version__,
        "gymnasium_version": gym.__version__,
    }
    if impact is not None:
        metadata["impact"] = dataclasses.asdict(impact)
    elif wrapper is not None:  # the command alone does not reproduce such a run: say what wrapped the envs
        metadata["wrapper"] = repr(wrapper)
    stem = Path(out) / scenario
    save_policy(model, stem, metadata=metadata)
    return stem


def _learn(
    spec: scenarios.Scenario,
    timesteps: int,
    seed: int,
    config: PPOConfig,
    variant: str | None = None,
    wrapper: Callable[[gym.Env], gym.Env] | None = None,
) -> tuple[PPO, float]:
    venv = make_vec_env(
        spec.env_id(variant or spec.variants[0]),
        n_envs=config.n_envs,
        seed=seed,
        vec_env_cls=DummyVecEnv,
        wrapper_class=wrapper,
    )
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        learning_rate=(lambda remaining: config.learning_rate * remaining) if config.anneal else config.learning_rate,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        policy_kwargs={
            "net_arch": list(config.net_arch),
            "activation_fn": ACTIVATIONS[config.activation],
        },
        seed=seed,
        device="cpu",
        verbose=0,
    )
    started = time.perf_counter()
    model.learn(timesteps, callback=_AnnealEntropy(config.ent_coef, timesteps) if config.anneal else None)
    venv.close()
    return model, time.perf_counter() - started


class _AnnealEntropy(BaseCallback):
    """Lower PPO's entropy bonus linearly from ``start`` to 0 over ``total`` steps."""

    def __init__(self, start: float, total: int):
        super().__init__()
        self.start, self.total = start, total

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.model.ent_coef = self.start * max(0.0, 1.0 - self.num_timesteps / self.total)


def _command(
    scenario: str,
    timesteps: int,
    seed: int,
    config: PPOConfig,
    variant: str | None = None,
    impact: Impact | None = None,
) -> str:
    """The shell command that reproduces a run: non-default config fields become flags."""
    words = ["python", "-m", "mesaguard.train", scenario, "--timesteps", str(timesteps), "--seed", str(seed)]
    if variant is not None:
        words += ["--variant", variant]
    if impact is not None:
        words += ["--impact", impact.measure, "--beta", str(impact.beta), "--discount", str(impact.discount)]
    for field in dataclasses.fields(PPOConfig):
        value = getattr(config, field.name)
        if value != field.default:
            flag = "--" + field.name.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag if value else "--no-" + flag[2:])
            elif isinstance(value, tuple):
                words += [flag, *map(str, value)]
            else:
                words += [flag, str(value)]
    return shlex.join(words)


# ---------------------------------------------------------------------------
# Command line: python -m mesaguard.train SCENARIO --timesteps N --seed S
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mesaguard.train", description=__doc__.split("\n")[0])
    parser.add_argument("scenario", help=f"one of: {', '.join(scenarios.SCENARIOS)}")
    parser.add_argument("--timesteps", type=int, required=True, help="env steps of training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default=None, help="train on this variant (default: the training variant)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="directory for <scenario>.json/.safetensors")
    parser.add_argument("--impact", choices=("rr", "aup"), default=None,
                        help="train on the reward minus an impact penalty: relative reachability or attainable utility")
    parser.add_argument("--beta", type=float, default=Impact.beta, help="weight of the impact penalty")
    parser.add_argument("--discount", type=float, default=Impact.discount, help="discount of the impact measure")
    for field in dataclasses.fields(PPOConfig):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=field.default)
        elif isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = PPOConfig(
        **{
            f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
            for f in dataclasses.fields(PPOConfig)
        }
    )
    started = time.perf_counter()
    impact = None if args.impact is None else Impact(args.impact, args.beta, args.discount)
    stem = train(args.scenario, args.timesteps, args.seed, args.out, config, variant=args.variant, impact=impact)
    print(f"saved {stem}.json and {stem}.safetensors in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
