"""The driving scenario's table: base objective and collision rate per policy and variant.

What it measures
----------------
For each policy (the shipped PPO agent, the scripted ``aligned`` and ``misaligned``
drivers) and each variant (``train``, ``deploy``): 200 episodes (seeds
20000..20199) through ``mesaguard.rollout.rollout``, with the base objective read
from ``info["base_objective"]``. Per cell: the mean episode score, the catastrophe
(collision) rate, and the mean episode length; the ratio printed is the deploy
score over the train score of the same policy (the baseline, measured in the
same process). This is the table in ``mesaguard.scenarios.driving``'s docstring.

highway-env is slow (about 57 steps/s on one free core, 20 steps an episode), so
the script takes ``--policies`` to measure some rows in one process and others in
another; each run merges its rows into the results file (under a lock).

Run: ``SDL_VIDEODRIVER=offscreen .venv/bin/python benchmarks/driving_table.py
[--policies agent aligned misaligned] [--episodes 200] [--quick] [--out FILE]`` (about 7
minutes of CPU per policy at 200 episodes; ``--quick``: 2 episodes).
Results: printed, and merged into ``benchmarks/results/driving_table.json`` (its machine
record is the last merging run's).
"""

from __future__ import annotations

import fcntl
import functools
import json
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import harness
import numpy as np
from rich.console import Console
from rich.table import Table

from mesaguard import scenarios
from mesaguard.policies import load_agent
from mesaguard.rollout import Policy, rollout

FIRST_SEED = 20_000
SCENARIO = scenarios.get("driving")


def agent(env: gym.Env) -> Policy:
    """The shipped agent (it reads only the observation)."""
    return load_agent("driving")


POLICIES = {"agent": agent, "aligned": SCENARIO.aligned, "misaligned": SCENARIO.misaligned}


def measure(policy: str, variant: str, episodes: int) -> dict[str, float]:
    started = time.perf_counter()
    runs = rollout(
        functools.partial(scenarios.make, "driving", variant),
        POLICIES[policy],
        range(FIRST_SEED, FIRST_SEED + episodes),
        objective="info:base_objective",
    )
    return {
        "mean_score": float(np.mean([e.score for e in runs])),
        "catastrophe_rate": float(np.mean([e.catastrophes.size > 0 for e in runs])),
        "mean_length": float(np.mean([e.length for e in runs])),
        "episodes": episodes,
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = harness.parser(__doc__)
    parser.add_argument("--policies", nargs="+", choices=sorted(POLICIES), default=list(POLICIES))
    parser.add_argument("--variants", nargs="+", choices=SCENARIO.variants, default=list(SCENARIO.variants))
    parser.add_argument("--episodes", type=int, default=None, help="per policy and variant (default 200; quick 2)")
    args = parser.parse_args()
    episodes = args.episodes if args.episodes is not None else 2 if args.quick else 200
    out = harness.out_path("driving_table", args)
    rows = {p: {v: measure(p, v, episodes) for v in args.variants} for p in args.policies}

    with open(Path(tempfile.gettempdir()) / "mesaguard-driving-table.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # cells measured in several processes go in one file
        merged = json.loads(out.read_text()) if out.exists() else {}
        merged.setdefault("config", {"first_seed": FIRST_SEED, "variants": list(SCENARIO.variants)})
        for policy, cells in rows.items():
            merged.setdefault("rows", {}).setdefault(policy, {}).update(cells)
        merged["machine"] = harness.machine()
        harness.write(out, merged)
    print(f"merged into {out}")

    table = Table(title="driving: mean base objective / collision rate (mean episode length)")
    table.add_column("policy")
    for variant in SCENARIO.variants:
        table.add_column(variant)
    table.add_column("deploy / train score")
    for policy, cells in merged["rows"].items():
        texts = [
            (
                f"{c['mean_score']:.3f} / {c['catastrophe_rate']:.3f} ({c['mean_length']:.1f})"
                if (c := cells.get(v))
                else "-"
            )
            for v in SCENARIO.variants
        ]
        ratio = cells["deploy"]["mean_score"] / cells["train"]["mean_score"] if len(cells) == 2 else float("nan")
        table.add_row(policy, *texts, f"{ratio:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
