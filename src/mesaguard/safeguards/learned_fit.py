"""Fitting a :class:`~mesaguard.safeguards.learned.LearnedModel` on a scenario's reference variant, from a command.

The data. Only the scenario's ``reference_variant``, never a deployment variant:

* **fit** episodes (seeds ``FIT_SEED + i``): the shipped agent acting, each action replaced with
  probability ``epsilon`` by a uniform random one (the collector's own Generator, seeded by ``seed``), so
  the data also holds actions and states the agent does not take (coverage: the shield asks the model
  about alternatives);
* **held-out** episodes (seeds ``HELD_SEED + i``): the agent alone, as a shield sees it on the reference
  variant. They set the conformal thresholds of the disagreement and scope checks (rank
  ``ceil((n + 1)(1 - alpha / 2))`` of the episode maxima; :func:`mesaguard.calibration.conformal_rank`)
  and are never fitted on.

The seeds differ from the benchmarks' calibration (10,000 + i) and evaluation (20,000 + i) seeds.

The fit. ``members`` MLPs (SiLU, ``hidden`` widths), each on its own bootstrap sample of the fit
transitions and its own initialization, Adam (``learning_rate``, ``weight_decay``) for ``steps``
minibatches of ``batch_size`` (passes over the sample, reshuffled per pass) on: the mean squared error of
the standardized change of the observation (averaged over its dimensions), of the standardized
increment, and the binary cross-entropy of the catastrophe and termination flags. Inputs and outputs are
standardized by the fit data's mean and standard deviation (a dimension that never varies keeps scale 1).
The scope: the principal directions of the standardized fit inputs (at most ``components``, and no more
than the data's numerical rank: eigenvalues above ``RANK_TOLERANCE`` of the largest), their variances,
and the mean variance off them (each floored at ``VARIANCE_FLOOR``): an input that varies where the data
never did is far out of scope. One torch thread, seeded: same command, same bits.

An env of a user's own (not a scenario): :func:`fit_env` with an env factory and a policy, the same
data and fit from ``make_env()`` as its reference variant.

From the shell (the JSON's ``metadata.command`` records the one that made a file)::

    python -m mesaguard.safeguards.learned train lava --seed 0 --out runs/learned
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from mesaguard import scenarios
from mesaguard.calibration import conformal_rank
from mesaguard.policies import load_agent
from mesaguard.safeguards.learned import HEADS, LearnedModel, encode
from mesaguard.safeguards.learned_file import save_learned

__all__ = ["FIT_SEED", "HELD_SEED", "FitConfig", "Transitions", "collect", "collect_env", "fit", "fit_env", "main",
           "train"]

FIT_SEED = 30_000
HELD_SEED = 40_000
VARIANCE_FLOOR = 1e-4  # in standardized units: a direction the data never moves along still has a finite scale
RANK_TOLERANCE = 1e-9  # an eigenvalue below this share of the largest is the data's rank deficiency, not a direction


@dataclass(frozen=True)
class FitConfig:
    """Every choice of the fit; a non-default one becomes a flag of the recorded command."""

    episodes: int = 100  # fit episodes (agent + epsilon-random actions)
    held_out: int = 100  # held-out agent episodes for the thresholds (alpha / 2 = 0.025 needs 39)
    epsilon: float = 0.25  # share of random actions in fit episodes
    members: int = 5
    hidden: tuple[int, ...] = (64, 64)
    steps: int = 3000  # minibatch gradient steps
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    components: int = 256  # at most this many principal directions in the scope (fewer: the data's rank)
    alpha: float = 0.05  # split evenly between the disagreement and the scope checks
    catastrophe_probability: float = 0.5
    max_steps: int = 0  # > 0: cut collected episodes at this many steps (0: the env's own limit)


@dataclass
class Transitions:
    """Collected one-step transitions, flat (``episode`` says which episode each came from)."""

    obs: np.ndarray
    action: np.ndarray
    next_obs: np.ndarray
    increment: np.ndarray
    catastrophe: np.ndarray
    terminated: np.ndarray
    episode: np.ndarray


def collect(scenario: str, variant: str, seeds: range, policy: Any, epsilon: float = 0.0,
            rng: np.random.Generator | None = None, max_steps: int = 0) -> Transitions:
    """Episodes of ``policy`` on ``scenario``'s ``variant``, each action random with probability ``epsilon``."""
    env = scenarios.make(scenario, variant)
    try:
        return collect_env(env, seeds, policy, epsilon, rng, max_steps)
    finally:
        env.close()


def collect_env(env: gym.Env, seeds: range, policy: Any, epsilon: float = 0.0,
                rng: np.random.Generator | None = None, max_steps: int = 0, increment: str = "base_objective"
                ) -> Transitions:
    """Episodes of ``policy`` on ``env`` (any Gymnasium env), each action random with probability ``epsilon``.

    ``increment``: ``"base_objective"`` reads ``info["base_objective"]`` (every scenario reports it);
    ``"reward"`` takes the reward (an env of a user's own).
    """
    if increment not in ("base_objective", "reward"):
        raise ValueError(f"increment={increment!r}; expected 'base_objective' or 'reward'")
    space = env.action_space
    rng = rng if rng is not None else np.random.default_rng(0)
    rows: dict[str, list[Any]] = {f.name: [] for f in dataclasses.fields(Transitions)}
    for i, seed in enumerate(seeds):
        space.seed(int(rng.integers(2**31)))
        obs, _ = env.reset(seed=seed)
        done, t = False, 0
        while not done:
            action = space.sample() if epsilon > 0 and rng.random() < epsilon else policy(obs)
            next_obs, reward, terminated, truncated, info = env.step(action)
            t += 1
            u = float(reward) if increment == "reward" else float(info["base_objective"])
            for key, value in (("obs", obs), ("action", action), ("next_obs", next_obs), ("increment", u),
                               ("catastrophe", bool(info.get("catastrophe", False))),
                               ("terminated", bool(terminated)), ("episode", i)):
                rows[key].append(value)
            obs = next_obs
            done = terminated or truncated or (max_steps > 0 and t >= max_steps)
    return Transitions(**{k: np.asarray(v) for k, v in rows.items()})


def _standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    return mean, np.where(scale > 1e-6, scale, 1.0)


def fit(scenario: str, seed: int = 0, config: FitConfig = FitConfig(), command: str | None = None) -> LearnedModel:
    """Collect reference-variant data, fit the ensemble and its thresholds (module docstring)."""
    spec = scenarios.get(scenario)
    variant = spec.reference_variant
    started = time.perf_counter()
    agent = load_agent(scenario)
    env = spec.make(variant)
    observation_space, action_space = env.observation_space, env.action_space
    env.close()
    if not isinstance(observation_space, spaces.Box):
        raise ValueError(f"scenario {scenario!r} observes {observation_space}; a learned model needs flat Box ones")
    rng = np.random.default_rng([seed, 1])
    data = collect(scenario, variant, range(FIT_SEED, FIT_SEED + config.episodes), agent, config.epsilon, rng,
                   config.max_steps)
    held = collect(scenario, variant, range(HELD_SEED, HELD_SEED + config.held_out), agent, 0.0, rng,
                   config.max_steps)
    model = _fit_model(data, held, observation_space, action_space, config, seed)
    model.metadata = {
        "scenario": scenario,
        "variant": variant,
        **_fit_metadata(data, held, seed, config, command or _command(scenario, seed, config)),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return model


def fit_env(make_env: Callable[[], gym.Env], policy: Callable[[Any], Any], seed: int = 0,
            config: FitConfig = FitConfig(), command: str | None = None, name: str = "",
            increment: str = "reward") -> LearnedModel:
    """Fit a learned model on an env of a user's own: ``make_env()`` is its reference (checked) variant.

    The same data and fit as :func:`fit` (fit episodes of ``policy`` with ``epsilon`` random actions,
    held-out episodes of ``policy`` alone for the thresholds, the same seeds), from an env factory
    instead of a scenario. ``increment``: ``"reward"`` (default) or ``"base_objective"`` (read from
    ``info``) is what the increment head learns. The metadata names the env (``name``, else its spec id)
    and records ``command`` (what reproduces the fit; default: this function and the env's name).
    """
    started = time.perf_counter()
    env = make_env()
    observation_space, action_space = env.observation_space, env.action_space
    if not isinstance(observation_space, spaces.Box):
        env.close()
        raise ValueError(f"the env observes {observation_space}; a learned model needs flat Box observations")
    label = name or (env.spec.id if env.spec is not None else type(env.unwrapped).__name__)
    rng = np.random.default_rng([seed, 1])
    try:
        data = collect_env(env, range(FIT_SEED, FIT_SEED + config.episodes), policy, config.epsilon, rng,
                           config.max_steps, increment)
        held = collect_env(env, range(HELD_SEED, HELD_SEED + config.held_out), policy, 0.0, rng,
                           config.max_steps, increment)
    finally:
        env.close()
    model = _fit_model(data, held, observation_space, action_space, config, seed)
    model.name = label
    model.metadata = {
        "env": label,
        **_fit_metadata(data, held, seed, config, command or f"mesaguard.safeguards.learned_fit.fit_env (env {label})"),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    return model


def _fit_model(data: Transitions, held: Transitions, observation_space: spaces.Box, action_space: spaces.Space[Any],
               config: FitConfig, seed: int) -> LearnedModel:
    """The ensemble fitted on ``data``, its disagreement and scope thresholds set on ``held`` (module docstring)."""
    arrays = _fit_arrays(data, observation_space, action_space, config, seed)
    model = LearnedModel(observation_space, action_space, arrays, scope_residual=float(arrays.pop("_residual")[0]),
                         catastrophe_probability=config.catastrophe_probability, disagreement_threshold=0.0,
                         scope_threshold=0.0, alpha=config.alpha)
    prediction = model.assess(held.obs, held.action)
    k = conformal_rank(config.held_out, config.alpha / 2)
    thresholds = {}
    for field in ("disagreement", "scope"):
        maxima = np.array([getattr(prediction, field)[held.episode == i].max() for i in range(config.held_out)])
        thresholds[field] = float(np.sort(maxima)[k - 1])
    model.disagreement_threshold, model.scope_threshold = thresholds["disagreement"], thresholds["scope"]
    return model


def _fit_metadata(data: Transitions, held: Transitions, seed: int, config: FitConfig, command: str) -> dict[str, Any]:
    """What a model file records of its fit: seed, config, the command, the data's sizes and seeds."""
    return {
        "seed": seed,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        "command": command,
        "data": {
            "fit_episodes": config.episodes, "fit_transitions": len(data.obs),
            "fit_catastrophes": int(data.catastrophe.sum()), "held_out_episodes": config.held_out,
            "held_out_transitions": len(held.obs), "fit_seeds": [FIT_SEED, FIT_SEED + config.episodes],
            "held_out_seeds": [HELD_SEED, HELD_SEED + config.held_out],
            "threshold_rank": conformal_rank(config.held_out, config.alpha / 2),
        },
        "torch_version": torch.__version__,
    }


def _fit_arrays(data: Transitions, observation_space: spaces.Box, action_space: spaces.Space[Any], config: FitConfig,
                seed: int) -> dict[str, np.ndarray]:
    """The ensemble's and the scope's arrays (float32), plus ``_residual`` (the scope's residual variance)."""
    d = int(np.prod(observation_space.shape))
    x = encode(data.obs, data.action, d, action_space)
    change = data.next_obs.reshape(len(x), -1).astype(np.float64) - x[:, :d]
    y = np.concatenate([change, data.increment[:, None]], axis=1)
    in_mean, in_scale = _standardizer(x)
    out_mean, out_scale = _standardizer(y)
    z = (x - in_mean) / in_scale
    arrays = {"in_mean": in_mean, "in_scale": in_scale, "out_mean": out_mean, "out_scale": out_scale}
    arrays.update(_scope(z, config.components))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        arrays.update(_train(z, (y - out_mean) / out_scale, data.catastrophe, data.terminated, config, seed))
    finally:
        torch.set_num_threads(threads)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}


def _scope(z: np.ndarray, components: int) -> dict[str, np.ndarray]:
    """Probabilistic PCA of the standardized inputs: mean, top directions, their variances, the residual's."""
    mean = z.mean(axis=0)
    cov = np.cov(z - mean, rowvar=False, bias=True)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1]
    values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
    rank = int((values > RANK_TOLERANCE * max(values[0], VARIANCE_FLOOR)).sum())
    k = max(1, min(components, rank))
    rest = z.shape[1] - k
    residual = max(float(values[k:].sum() / rest) if rest else VARIANCE_FLOOR, VARIANCE_FLOOR)
    # Signs fixed (largest entry positive) so the basis does not depend on the eigensolver's choice.
    basis = vectors[:, :k].T
    basis *= np.sign(basis[np.arange(k), np.abs(basis).argmax(axis=1)])[:, None]
    return {"scope_mean": mean, "scope_basis": basis, "scope_variance": np.maximum(values[:k], VARIANCE_FLOOR),
            "_residual": np.array([residual])}


def _train(z: np.ndarray, y: np.ndarray, catastrophe: np.ndarray, terminated: np.ndarray, config: FitConfig,
           seed: int) -> dict[str, np.ndarray]:
    """Fit ``config.members`` MLPs at once (batched weights ``[M, fan_in, fan_out]``) on bootstrap samples."""
    gen = torch.Generator().manual_seed(seed)
    m, n = config.members, len(z)
    sizes = [z.shape[1], *config.hidden, y.shape[1] - 1 + HEADS]
    weights, biases = [], []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / np.sqrt(fan_in)  # torch.nn.Linear's initialization
        weights.append(((torch.rand(m, fan_in, fan_out, generator=gen, dtype=torch.float32) * 2 - 1) * bound)
                       .requires_grad_())
        biases.append(((torch.rand(m, fan_out, generator=gen, dtype=torch.float32) * 2 - 1) * bound).requires_grad_())
    params = [*weights, *biases]
    optimizer = torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    zt = torch.as_tensor(z, dtype=torch.float32)
    targets = torch.as_tensor(np.concatenate([y, catastrophe[:, None], terminated[:, None]], axis=1),
                              dtype=torch.float32)
    d = y.shape[1] - 1
    boot = torch.randint(0, n, (m, n), generator=gen)
    batches = max(1, n // config.batch_size)
    order = boot
    for step in range(config.steps):
        b = step % batches
        if b == 0:
            order = torch.stack([boot[i, torch.randperm(n, generator=gen)] for i in range(m)])
        index = order[:, b * config.batch_size:(b + 1) * config.batch_size]
        h = zt[index]
        for i, (w, bias) in enumerate(zip(weights, biases)):
            h = torch.baddbmm(bias[:, None, :], h, w)
            if i < len(weights) - 1:
                h = torch.nn.functional.silu(h)
        t = targets[index]
        loss = (
            ((h[..., :d] - t[..., :d]) ** 2).mean()
            + ((h[..., d] - t[..., d]) ** 2).mean()
            + torch.nn.functional.binary_cross_entropy_with_logits(h[..., d + 1:], t[..., d + 1:])
        )
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    out: dict[str, np.ndarray] = {}
    for i, (w, bias) in enumerate(zip(weights, biases)):
        out[f"w{i}"], out[f"b{i}"] = w.detach().numpy().copy(), bias.detach().numpy().copy()
    return out


def train(scenario: str, seed: int, out: Path, config: FitConfig = FitConfig()) -> Path:
    """Fit a model for ``scenario`` and save it as ``out/<scenario>.json`` + ``.safetensors``; return the stem."""
    model = fit(scenario, seed, config)
    return save_learned(model, Path(out) / scenario)


def _command(scenario: str, seed: int, config: FitConfig) -> str:
    """The shell command that reproduces a fit: non-default config fields become flags."""
    words = ["python", "-m", "mesaguard.safeguards.learned", "train", scenario, "--seed", str(seed)]
    for field in dataclasses.fields(FitConfig):
        value = getattr(config, field.name)
        if value != field.default:
            flag = "--" + field.name.replace("_", "-")
            words += [flag, *map(str, value)] if isinstance(value, tuple) else [flag, str(value)]
    return shlex.join(words)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mesaguard.safeguards.learned train",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("scenario", help=f"one of: {', '.join(scenarios.SCENARIOS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/learned"),
                        help="directory for <scenario>.json/.safetensors")
    for field in dataclasses.fields(FitConfig):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, tuple):
            parser.add_argument(flag, type=int, nargs="+", default=field.default)
        else:
            parser.add_argument(flag, type=type(field.default), default=field.default)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = FitConfig(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v  # type: ignore[arg-type]
                          for f in dataclasses.fields(FitConfig)})
    started = time.perf_counter()
    stem = train(args.scenario, args.seed, args.out, config)
    print(f"saved {stem}.json and {stem}.safetensors in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
