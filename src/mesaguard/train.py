"""The base optimizer: PPO (Stable-Baselines3) on a scenario's training variant.

Read top to bottom: the config (every hyperparameter of the recipe), training,
then shipping a policy without pickle, then the command line.

Shipping. ``save_policy`` writes two files beside each other:

* ``<stem>.json``: what to rebuild (policy class name, observation and action
  spaces as plain JSON, ``net_arch``, activation name, ...), the SHA-256 of the
  weights file, and metadata (scenario, timesteps, seed, library versions, the
  command that reproduces the policy, the config);
* ``<stem>.safetensors``: the weights (``safetensors.torch.save_model``).

``load_policy`` maps every name in the JSON through a whitelist, builds the SB3
policy, and loads the weights with ``safetensors.torch.load_model(strict=True)``.
Nothing is unpickled: ``PPO.load`` (which unpickles) is never called. A file that
is missing, corrupt or does not match raises :class:`PolicyFileError` naming the
file and what was expected.

>>> policy = load_agent("strawberry")
>>> from mesaguard.scenarios import make
>>> env = make("strawberry", "train")
>>> obs, _ = env.reset(seed=0)
>>> policy(obs) in range(5)
True

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
import hashlib
import json
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import safetensors.torch
import stable_baselines3
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.vec_env import DummyVecEnv

from mesaguard import scenarios
from mesaguard.files import read_json, write_atomic

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

FORMAT = "mesaguard-policy"
SCHEMA_VERSION = 1


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
    scenario: str, timesteps: int, seed: int, config: PPOConfig, variant: str | None = None, impact: Impact | None = None
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
# Shipping policies without pickle
# ---------------------------------------------------------------------------


class PolicyFileError(ValueError):
    """A policy file that is missing, corrupt, or not what the loader expects."""


# Whitelists: the only names a policy JSON may use.
POLICY_CLASSES: dict[str, type[ActorCriticPolicy]] = {"ActorCriticPolicy": ActorCriticPolicy}
ACTIVATIONS: dict[str, type[torch.nn.Module]] = {
    "Tanh": torch.nn.Tanh,
    "ReLU": torch.nn.ReLU,
    "ELU": torch.nn.ELU,
    "LeakyReLU": torch.nn.LeakyReLU,
    "GELU": torch.nn.GELU,
    "SiLU": torch.nn.SiLU,
}
FEATURE_EXTRACTORS: dict[str, type[torch.nn.Module]] = {"FlattenExtractor": FlattenExtractor}


class LoadedPolicy:
    """A ``policy(obs) -> action`` around an SB3 policy; no gradients.

    One observation gives one action (an ``int`` for a discrete action space);
    a batch ``(n, *obs_shape)`` gives an array of ``n`` actions. Deterministic (the
    most likely action) unless ``deterministic=False``: then actions are sampled from
    the policy's distribution with torch's global generator, as PPO acts while it learns.
    """

    def __init__(self, policy: ActorCriticPolicy, metadata: dict[str, Any], deterministic: bool = True):
        self.policy = policy
        self.metadata = metadata
        self.deterministic = deterministic

    def __call__(self, obs: Any) -> Any:
        with torch.no_grad():
            action, _ = self.policy.predict(obs, deterministic=self.deterministic)
        if isinstance(self.policy.action_space, spaces.Discrete) and np.ndim(action) == 0:
            return int(action)
        return action

    def __repr__(self) -> str:
        return f"LoadedPolicy({self.metadata.get('scenario', '?')!r}, command={self.metadata.get('command')!r})"


def save_policy(model: PPO | ActorCriticPolicy, path_stem: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Write ``<stem>.json`` and ``<stem>.safetensors`` for ``model`` (a PPO model or its policy).

    Returns the stem. Each file is written atomically (temporary file, then rename).
    """
    policy = model.policy if isinstance(model, PPO) else model
    name = type(policy).__name__
    if name not in POLICY_CLASSES or type(policy) is not POLICY_CLASSES[name]:
        raise PolicyFileError(f"cannot ship a {name}; expected one of {sorted(POLICY_CLASSES)}")
    kwargs = policy._get_constructor_parameters()
    activation = kwargs["activation_fn"].__name__
    extractor = kwargs["features_extractor_class"].__name__
    if activation not in ACTIVATIONS or extractor not in FEATURE_EXTRACTORS:
        raise PolicyFileError(
            f"cannot ship activation {activation!r} / features extractor {extractor!r}; "
            f"expected one of {sorted(ACTIVATIONS)} / {sorted(FEATURE_EXTRACTORS)}"
        )
    if kwargs.get("features_extractor_kwargs") or kwargs.get("use_sde"):
        raise PolicyFileError("cannot ship a policy with features_extractor_kwargs or use_sde")
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights = _beside(stem, ".safetensors")
    with tempfile.TemporaryDirectory() as scratch:  # save_model writes a file; the bytes then go in atomically
        tmp = Path(scratch) / weights.name
        safetensors.torch.save_model(policy, tmp)
        data = tmp.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    write_atomic(weights, data)
    config = {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "policy_class": name,
        "observation_space": _space_to_json(policy.observation_space),
        "action_space": _space_to_json(policy.action_space),
        "net_arch": kwargs["net_arch"],
        "activation": activation,
        "features_extractor": extractor,
        "share_features_extractor": policy.share_features_extractor,
        "normalize_images": kwargs["normalize_images"],
        "ortho_init": kwargs["ortho_init"],
        "log_std_init": kwargs["log_std_init"],
        "weights_file": weights.name,
        "weights_sha256": digest,
        "metadata": metadata or {},
    }
    write_atomic(_beside(stem, ".json"), json.dumps(config, indent=2, allow_nan=False) + "\n")
    return stem


def load_policy(path_stem: str | os.PathLike[str]) -> LoadedPolicy:
    """Rebuild a policy saved by :func:`save_policy`; never unpickles.

    Raises :class:`PolicyFileError` naming the file when either file is missing,
    is not valid, names something outside the whitelists, or when the weights do
    not match the JSON (hash, tensor names or shapes).
    """
    stem = Path(path_stem)
    stem = stem.with_suffix("") if stem.suffix in (".json", ".safetensors") else stem
    json_path, weights = _beside(stem, ".json"), _beside(stem, ".safetensors")
    config = _read_config(json_path)
    try:
        policy_class = POLICY_CLASSES[config["policy_class"]]
        activation = ACTIVATIONS[config["activation"]]
        extractor = FEATURE_EXTRACTORS[config["features_extractor"]]
        observation_space = _space_from_json(config["observation_space"])
        action_space = _space_from_json(config["action_space"])
        policy = policy_class(
            observation_space,
            action_space,
            lr_schedule=lambda _: 0.0,
            net_arch=_net_arch(config["net_arch"]),
            activation_fn=activation,
            features_extractor_class=extractor,
            share_features_extractor=bool(config["share_features_extractor"]),
            normalize_images=bool(config["normalize_images"]),
            ortho_init=bool(config["ortho_init"]),
            log_std_init=float(config["log_std_init"]),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise PolicyFileError(
            f"{json_path}: invalid policy description ({type(err).__name__}: {err}); expected a JSON file written "
            f"by mesaguard.train.save_policy with policy_class in {sorted(POLICY_CLASSES)}, activation in "
            f"{sorted(ACTIVATIONS)}, features_extractor in {sorted(FEATURE_EXTRACTORS)}"
        ) from err
    if not weights.is_file():
        raise PolicyFileError(f"{weights}: missing; expected the safetensors weights beside {json_path.name}")
    digest = _sha256(weights)
    if digest != config.get("weights_sha256"):
        raise PolicyFileError(
            f"{weights}: SHA-256 {digest} does not match {config.get('weights_sha256')} recorded in "
            f"{json_path.name}; the weights are corrupt or belong to another policy"
        )
    try:
        safetensors.torch.load_model(policy, weights, strict=True, device="cpu")
    except Exception as err:  # safetensors raises several types for a bad file; all mean the same here
        raise PolicyFileError(
            f"{weights}: cannot load weights into the policy described by {json_path.name} "
            f"({type(err).__name__}: {err}); expected a safetensors file written by save_policy"
        ) from err
    policy.set_training_mode(False)
    return LoadedPolicy(policy, dict(config.get("metadata", {})))


def load_agent(scenario: str, impact: bool = False) -> LoadedPolicy:
    """The trained agent shipped with mesaguard for ``scenario`` (package data).

    ``impact=True``: the one trained with an impact penalty (``agents/impact/``; its
    metadata holds the command), shipped for the scenarios in :func:`shipped_agents`.
    """
    agents = resources.files("mesaguard") / "agents"
    if impact:
        agents = agents / "impact"
    shipped = shipped_agents(impact)
    if scenario not in shipped:
        kind = "impact-trained agent" if impact else "agent"
        raise PolicyFileError(f"no shipped {kind} for scenario {scenario!r}; shipped: {', '.join(shipped)}")
    with resources.as_file(agents / f"{scenario}.json") as json_path, resources.as_file(
        agents / f"{scenario}.safetensors"
    ):
        return load_policy(json_path)


def shipped_agents(impact: bool = False) -> list[str]:
    """The scenarios with a shipped agent (``impact=True``: one trained with an impact penalty)."""
    agents = resources.files("mesaguard") / "agents"
    if impact:
        agents = agents / "impact"
    return sorted(p.name[: -len(".json")] for p in agents.iterdir() if p.name.endswith(".json"))


def _beside(stem: Path, suffix: str) -> Path:
    """``stem`` + ``suffix``; unlike ``Path.with_suffix`` it keeps dots in the stem (``agent.v2``)."""
    return stem.parent / f"{stem.name}{suffix}"


def _read_config(json_path: Path) -> dict[str, Any]:
    config = read_json(
        json_path,
        PolicyFileError,
        missing=f"{json_path}: missing; expected a policy JSON written by save_policy",
        invalid=f"{json_path}: not valid JSON",
        after="; expected a policy JSON written by save_policy",
    )
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise PolicyFileError(f"{json_path}: not a policy file; expected a JSON object with format {FORMAT!r}")
    if config.get("schema_version") != SCHEMA_VERSION:
        raise PolicyFileError(
            f"{json_path}: schema_version {config.get('schema_version')!r}; this mesaguard reads version {SCHEMA_VERSION}"
        )
    return config


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _net_arch(value: Any) -> list[int] | dict[str, list[int]]:
    if isinstance(value, list) and all(isinstance(v, int) for v in value):
        return value
    if isinstance(value, dict) and set(value) <= {"pi", "vf"} and all(
        isinstance(v, list) and all(isinstance(n, int) for n in v) for v in value.values()
    ):
        return value
    raise ValueError(f"net_arch {value!r}; expected a list of ints or {{'pi': [...], 'vf': [...]}}")


def _bound_to_json(array: np.ndarray) -> Any:
    """Box bounds as JSON: one number when uniform, else nested lists; infinities as strings."""
    values = [v if math.isfinite(v) else ("inf" if v > 0 else "-inf") for v in array.astype(float).ravel().tolist()]
    return values[0] if len(set(values)) == 1 else np.array(values, dtype=object).reshape(array.shape).tolist()


def _bound_from_json(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    parsed = np.vectorize(float, otypes=[np.float64])(np.asarray(value, dtype=object))
    return np.broadcast_to(parsed, shape)


def _space_to_json(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound_to_json(space.low),
            "high": _bound_to_json(space.high),
        }
    raise PolicyFileError(f"cannot ship a policy on space {space}; expected Box or Discrete")


_DTYPES = {"float32", "float64", "uint8", "int64", "int32"}


def _space_from_json(data: dict[str, Any]) -> gym.Space:
    if data["type"] == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data["start"]))
    if data["type"] == "Box":
        if data["dtype"] not in _DTYPES:
            raise ValueError(f"Box dtype {data['dtype']!r}; expected one of {sorted(_DTYPES)}")
        shape, dtype = tuple(int(n) for n in data["shape"]), np.dtype(data["dtype"])
        low, high = _bound_from_json(data["low"], shape), _bound_from_json(data["high"], shape)
        return spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)
    raise ValueError(f"space type {data['type']!r}; expected 'Box' or 'Discrete'")


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
