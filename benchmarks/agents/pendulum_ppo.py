"""Train the Pendulum-v1 agent the Greenberg-Mannor benchmark deploys, and ship it (JSON + safetensors, no pickle).

Greenberg and Mannor deploy an agent trained on the stock pendulum. This is ours: Stable-Baselines3 PPO with
RL Baselines3 Zoo's Pendulum-v1 hyperparameters, less its state-dependent exploration (``use_sde``), which the
policy file format does not ship; deterministic (the mean action) when deployed. The policy's JSON records this
command, the config, the training time and the mean return of 100 deterministic evaluation episodes.

Run: ``.venv/bin/python benchmarks/agents/pendulum_ppo.py`` (about a minute); it writes
``benchmarks/agents/pendulum.json`` and ``pendulum.safetensors`` beside this file.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from mesaguard.policies import load_policy, save_policy

HERE = Path(__file__).resolve().parent
STEM = HERE / "pendulum"


@dataclass(frozen=True)
class Config:
    timesteps: int = 200_000
    seed: int = 0
    n_envs: int = 4
    n_steps: int = 1024
    gae_lambda: float = 0.95
    gamma: float = 0.9
    n_epochs: int = 10
    ent_coef: float = 0.0
    learning_rate: float = 1e-3
    clip_range: float = 0.2
    torch_threads: int = 1  # deterministic and fair on a shared machine


def evaluate(policy: object, episodes: int = 100, seed: int = 10_000) -> float:
    """Mean return of deterministic episodes on the stock Pendulum-v1 (seeds ``seed + k``)."""
    env = gym.make("Pendulum-v1")
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(policy(obs))  # type: ignore[operator]
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns))


def main(cfg: Config = Config()) -> None:
    torch.set_num_threads(cfg.torch_threads)
    env = make_vec_env("Pendulum-v1", n_envs=cfg.n_envs, seed=cfg.seed)
    model = PPO(
        "MlpPolicy", env, n_steps=cfg.n_steps, gae_lambda=cfg.gae_lambda, gamma=cfg.gamma, n_epochs=cfg.n_epochs,
        ent_coef=cfg.ent_coef, learning_rate=cfg.learning_rate, clip_range=cfg.clip_range, seed=cfg.seed,
        device="cpu", verbose=0,
    )
    start = time.perf_counter()
    model.learn(cfg.timesteps)
    seconds = time.perf_counter() - start
    metadata = {
        "scenario": "Pendulum-v1 (Greenberg-Mannor benchmark)",
        "variant": "stock",
        "timesteps": cfg.timesteps,
        "seed": cfg.seed,
        "config": dataclasses.asdict(cfg),
        "command": "python benchmarks/agents/pendulum_ppo.py",
        "train_seconds": round(seconds, 1),
        "sb3_version": stable_baselines3.__version__,
        "torch_version": torch.__version__,
        "gymnasium_version": gym.__version__,
    }
    save_policy(model, STEM, metadata)
    mean = evaluate(load_policy(STEM))  # the shipped file, as the benchmark loads it
    save_policy(model, STEM, {**metadata, "evaluation_mean_return_100": round(mean, 1)})
    print(f"wrote {STEM}.json / .safetensors: {seconds:.0f} s, mean return {mean:.1f} over 100 episodes")


if __name__ == "__main__":
    main()
