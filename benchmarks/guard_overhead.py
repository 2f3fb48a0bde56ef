"""Guard overhead per step, against Gymnasium's RecordEpisodeStatistics, and vector guard throughput.

What it measures
----------------
Part 1, one env: the time a ``GuardedEnv`` adds to each ``env.step`` call, set
against the time ``gymnasium.wrappers.RecordEpisodeStatistics`` adds on the same
env, in the same process. Two cheap envs, so that wrapper cost is visible next to
the env's own step: ``CartPole-v1`` and ``MiniGrid-Empty-8x8-v0`` (with
``ImgObsWrapper``), and, for scale, a real physics step: ``HalfCheetah-v5`` (MuJoCo);
every overhead is also given as a share of the bare env's own step. Guards run each detector of the default set
(:data:`mesaguard.detectors.DEFAULT`) alone and the set jointly, the cusum guard and
the set once more carrying a :class:`~mesaguard.monitor.DeploymentMonitor`
(and that variant again in plain Python, ``MESAGUARD_PYTHON_GUARD=1``: what the compiled guard core and step of
:mod:`mesaguard.guard.compiled` and the monitor's compiled data, :mod:`mesaguard.monitor.compiled`, save), and a
guard with no detector at all: the wrapper's floor (the objective, the report in ``info``, the protocol's
checks), which no detector can go below; and, as a reference that is not mesaguard, the default set and the
monitor's per-step work inlined in one
function (``fused_floor.py``, checked equal to the guard's statistics first): the least
any Python wrapper doing this work costs; and the same work compiled (``fused_compiled.py``: one C function
called from a Python wrapper, also checked equal; left out where the machine has no C compiler): the least a
guard whose step is compiled can cost, with no work per episode (the guard's compiled step runs a monitored
episode's start, its bets and its end as well); and a wrapper that computes nothing and only writes a report of the
guard's shape in ``info`` (``fused_floor.ReportOnly``): the least any wrapper that reports every step costs. Where
RecordEpisodeStatistics' overhead does not stand out of the noise floor (a slow,
noisy env step), and on the cheetah, there for scale, ratios are not given.

Part 1b, where the time goes: the same comparison on a do-nothing env (its step
returns precomputed rewards), where nothing but the wrappers is on the clock, with
the guard core (what ``GuardedEnv`` steps: compiled where built, and the plain-Python ``ScalarGuard`` beside
it) alone, so the guard's overhead splits into core (``update``) and the rest of the wrapper; and the default set with a
monitor (and RES) on episodes of 200 and of 20 steps, which splits the overhead into a part per step and a part per
episode (the monitor's bet, its evidence refreshes, the resets): ``per step + per episode / length``.

Part 2, many envs: the ``Guard`` array core alone over 1,024 envs (no env, no
Gymnasium): ``guard.update(u)`` on precomputed increments, with ``guard.reset(mask)``
as staggered 200-step episodes end. Reported as monitored env-steps per second,
set against plain NumPy doing the least any monitor must do on the same arrays
(``score += u``; ``score[done] = 0``).

How
---
* Part 1: calibrate on 60 episodes of a seeded random policy on the same env
  (``Calibration.fit``, alpha = 0.05). Precompute the random actions once. Each
  variant (bare env, RecordEpisodeStatistics, GuardedEnv per detector set) is a
  fresh env reset with the same seed and stepped through the same actions
  (``reset`` when an episode ends, inside the timed loop for every variant alike).
  The protocol is ``Alert`` with a callback that only counts, so no episode is
  cut short and every variant steps the same trajectory. The machine is shared
  and noisy, so variants are interleaved finely: the actions are cut into blocks
  of 200 steps and every variant steps each block in turn (a fresh seeded random
  order per block), garbage collector off while timing (as ``timeit`` does). A
  block's overhead is its time per step minus the bare env's on the same block;
  a round's overhead is the median over its blocks. Seven rounds (fresh envs
  each); the table shows the median over rounds and the range of the rounds. A
  second bare instance measured the same way shows the noise floor (ideally 0).
  ratio = median guard overhead / median RecordEpisodeStatistics overhead.
* Part 1b: the same block interleaving; a synthetic calibration (below).
* Part 2: a synthetic calibration (Gaussian increments, 200-step episodes) so
  that MeanShift's covariance is 200 x 200 like a Pendulum-length task; 400 steps
  of 1,024 envs per timing, seven interleaved rounds, medians.
  ratio = NumPy baseline time / guard time (the share of a bare NumPy monitor's
  speed the guard keeps; 1/ratio is the slowdown). Minor page faults per step are
  counted too (``resource.getrusage``): a detector that allocates large
  temporaries every step can pay for fresh pages each time, depending on the
  allocator's state, and this column shows when it does.

Target
------
Issue 12's: the default joint set with a deployment monitor at most 3x RecordEpisodeStatistics'
overhead per step (part 1; every variant is checked against it); the vector guard with the default set at least 10
million env-steps per second over 1,024 envs (part 2).

Run: ``.venv/bin/python benchmarks/guard_overhead.py [--quick] [--out FILE]`` (about a minute, one core).
Results: printed as tables and written to ``benchmarks/results/guard_overhead.json``.
"""

from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import harness
import minigrid  # noqa: F401  registers the MiniGrid-* env ids
import numpy as np
from fused_compiled import FusedCompiled, build
from fused_floor import FusedFloor, ReportOnly
from gymnasium.wrappers import RecordEpisodeStatistics
from minigrid.wrappers import ImgObsWrapper
from rich.console import Console
from rich.table import Table

from mesaguard.calibration import Calibration
from mesaguard.detectors import DEFAULT
from mesaguard.guard import Guard, GuardedEnv, ScalarGuard
from mesaguard.guard.compiled import OFF, scalar_guard
from mesaguard.monitor import DeploymentMonitor
from mesaguard.protocols import Alert


@dataclass(frozen=True)
class Config:
    seed: int = 0
    calibration_episodes: int = 60  # random-policy episodes of the same env
    alpha: float = 0.05  # 60 episodes leave 30 held out; alpha = 0.05 needs 19
    rounds: int = 7  # repetitions; medians over them
    block: int = 200  # steps per interleaved timing block (part 1)
    null_steps: int = 4_000  # timed steps per variant per round on the do-nothing env (part 1b)
    cartpole_steps: int = 10_000  # timed steps per variant per round (CartPole steps ~7 us)
    minigrid_steps: int = 3_000  # MiniGrid steps ~110 us, so fewer
    cheetah_steps: int = 2_000  # a MuJoCo step: the cost of a real physics step, for scale
    vector_envs: int = 1_024
    vector_steps: int = 400  # two episodes of every env per timing
    vector_episode_length: int = 200  # staggered: ~5 envs end on every step
    vector_calibration_episodes: int = 200


CONFIG = Config()
QUICK = Config(rounds=2, block=100, null_steps=400, cartpole_steps=400, minigrid_steps=200, cheetah_steps=200,
               vector_envs=64, vector_steps=50)
RATIOS = ("guard", "reference")  # the rows given as multiples of RES's overhead
FLOOR = "reference: the default set + monitor's per-step work inlined in one function (a floor)"
COMPILED = "reference: the same work compiled (C), in a Python wrapper"
PYTHON = "guard: default set + deployment monitor, in plain Python"
REPORT = "reference: a wrapper that only writes the report in info (no statistic computed)"
DETECTOR_SETS: dict[str, list[str]] = {
    **{name: [name] for name in DEFAULT},
    "default set": list(DEFAULT),  # mesaguard.detectors.DEFAULT, jointly
}


# ---------------------------------------------------------------------------- envs


def python_guard(make: Callable[[], object]) -> object:
    """What ``make`` makes with the plain-Python guard, core, step and monitor (``MESAGUARD_PYTHON_GUARD=1``
    meanwhile)."""
    before = os.environ.get(OFF)
    os.environ[OFF] = "1"
    try:
        return make()
    finally:
        if before is None:
            del os.environ[OFF]
        else:
            os.environ[OFF] = before


def make_cartpole() -> gym.Env:
    return gym.make("CartPole-v1")


def make_minigrid() -> gym.Env:
    return ImgObsWrapper(gym.make("MiniGrid-Empty-8x8-v0"))


def make_cheetah() -> gym.Env:
    return gym.make("HalfCheetah-v5")


class NullEnv(gym.Env):
    """An env that costs nothing: hands out precomputed N(1, 0.5) rewards in 200-step episodes.

    Stepping it leaves only the wrappers' own cost on the clock (part 1b).
    """

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, rewards: list[float], episode_length: int = 200) -> None:
        self.rewards, self.episode_length = rewards, episode_length
        self.obs = np.zeros(1, dtype=np.float32)
        self.i = self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self.obs, {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = self.rewards[self.i]
        self.i = (self.i + 1) % len(self.rewards)
        self.t += 1
        return self.obs, reward, False, self.t >= self.episode_length, {}


def envs(cfg: Config) -> dict[str, tuple[Callable[[], gym.Env], int, bool]]:
    """The part-1 envs: name -> (constructor, timed steps per variant per round, whether ratios to RES are given).

    The cheetah is there for scale (the share of a physics step); RES's fraction of a microsecond on its 50 us step
    is noise, and a ratio to it would be too."""
    return {
        "CartPole-v1": (make_cartpole, cfg.cartpole_steps, True),
        "MiniGrid-Empty-8x8-v0 (ImgObsWrapper)": (make_minigrid, cfg.minigrid_steps, True),
        "HalfCheetah-v5": (make_cheetah, cfg.cheetah_steps, False),
    }


def random_episodes(make_env: Callable[[], gym.Env], n: int, seed: int) -> list[np.ndarray]:
    """Rewards (the base objective here) of ``n`` episodes of a seeded uniform random policy."""
    env = make_env()
    env.action_space.seed(seed)
    episodes = []
    for i in range(n):
        env.reset(seed=seed + i)
        rewards, done = [], False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            rewards.append(float(reward))
            done = terminated or truncated
        episodes.append(np.array(rewards))
    return episodes


# ---------------------------------------------------------------------------- part 1: one env


def seconds_per_step(env: gym.Env, actions: np.ndarray) -> float:
    """Seconds per ``env.step`` over ``actions`` (resets inside the loop, as in deployment)."""
    step, reset = env.step, env.reset
    gc.disable()
    start = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = step(a)
        if terminated or truncated:
            reset()
    elapsed = time.perf_counter() - start
    gc.enable()
    return elapsed / len(actions)


def single_env_overhead(
    name: str, make_env: Callable[[], gym.Env], steps: int, cfg: Config, ratios: bool = True
) -> dict:
    episodes = random_episodes(make_env, cfg.calibration_episodes, cfg.seed)
    shape = make_env().observation_space.shape
    cal = Calibration.fit(episodes, alpha=cfg.alpha, obs_shape=shape)
    probe = make_env()
    probe.action_space.seed(cfg.seed + 1)
    actions = np.array([probe.action_space.sample() for _ in range(steps)])
    alarms = {label: 0 for label in DETECTOR_SETS}

    def counter(label: str) -> Callable[[object], None]:
        def count(alarm: object) -> None:
            alarms[label] += 1

        return count

    variants: dict[str, Callable[[], gym.Env]] = {
        "bare": make_env,
        "bare, second instance (noise floor)": make_env,
        "RecordEpisodeStatistics": lambda: RecordEpisodeStatistics(make_env()),
    }
    for label, names in DETECTOR_SETS.items():
        variants[f"guard: {label}"] = lambda names=names, label=label: GuardedEnv(
            make_env(), cal, detectors=names, protocol=Alert(counter(label))
        )
    # The floor: the wrapper with no detector (the objective, the report in info, the protocol's checks).
    variants["guard: no detector (the wrapper's floor)"] = lambda: GuardedEnv(
        make_env(), cal, detectors=[], protocol=Alert(lambda alarm: None)
    )
    # The deployment monitor on top of the guard: it reads the guard's statistics (reads_from), and
    # places a p-value and bets whenever the running maximum of the episode's statistic rises.
    variants["guard: cusum + deployment monitor"] = lambda: GuardedEnv(
        make_env(), cal, detectors=["cusum"], protocol=Alert(lambda alarm: None),
        monitor=DeploymentMonitor(cal, detectors=["cusum"]),
    )
    variants["guard: default set + deployment monitor"] = lambda: GuardedEnv(
        make_env(), cal, detectors=DETECTOR_SETS["default set"], protocol=Alert(lambda alarm: None),
        monitor=DeploymentMonitor(cal, detectors=DETECTOR_SETS["default set"]),
    )
    variants[PYTHON] = lambda: python_guard(variants["guard: default set + deployment monitor"])
    variants.update(references(make_env, cal, actions))

    # Fine-grained interleaving: every variant steps the same block of actions in turn
    # (a fresh random order per block), so load from other processes hits all variants
    # alike; a block's overhead is its time minus the bare env's time on that block.
    rng = np.random.default_rng(cfg.seed)
    starts = range(0, steps, cfg.block)
    per_round: dict[str, list[float]] = {v: [] for v in variants}  # median over blocks, per round, us
    step_us: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(cfg.rounds):
        envs = {v: make() for v, make in variants.items()}
        for env in envs.values():
            env.reset(seed=cfg.seed)
        blocks: dict[str, list[float]] = {v: [] for v in variants}
        for b in starts:
            for v in rng.permutation(list(variants)):
                blocks[v].append(seconds_per_step(envs[v], actions[b : b + cfg.block]))
        bare = np.array(blocks["bare"])
        for v, t in blocks.items():
            per_round[v].append(float(np.median(np.array(t) - bare)) * 1e6)
            step_us[v].append(float(np.median(t)) * 1e6)
        for env in envs.values():
            env.close()

    res = float(np.median(per_round["RecordEpisodeStatistics"]))
    # A ratio means something only where RecordEpisodeStatistics' overhead stands out of the noise (the second
    # bare instance's range over rounds); on an env whose own step is slow and noisy it may not (None then).
    noise = max(abs(x) for x in per_round["bare, second instance (noise floor)"])
    measurable = ratios and res > noise
    rows = {}
    for v, o in per_round.items():
        if v == "bare":
            continue
        med = float(np.median(o))
        rows[v] = {
            "step_us": float(np.median(step_us[v])),
            "overhead_us": med,
            "overhead_round_range_us": [float(min(o)), float(max(o))],
            "ratio_to_res": med / res if measurable else None,
            "share_of_step": med / float(np.median(step_us["bare"])),  # of the bare env's own step
        }
    total_steps = cfg.rounds * steps
    return {
        "env": name,
        "steps_per_round": steps,
        "bare_step_us": float(np.median(step_us["bare"])),
        "variants": rows,
        "alarms_per_1000_steps": {k: 1000 * n / total_steps for k, n in alarms.items()},
        "thresholds": cal.thresholds,
    }


def references(
    make_env: Callable[[], gym.Env], cal: Calibration, actions: np.ndarray
) -> dict[str, Callable[[], gym.Env]]:
    """The timing references that are not mesaguard: a wrapper that only writes the report (no statistic), and, each
    checked equal to ``GuardedEnv``'s statistics first, the per-step arithmetic inlined in one Python function
    (fused_floor.py) and compiled (fused_compiled.py; left out where no C compiler is found)."""
    out: dict[str, Callable[[], gym.Env]] = {REPORT: lambda: ReportOnly(make_env(), cal)}  # nothing to check
    for label, floor in ((FLOOR, FusedFloor), (COMPILED, FusedCompiled)):
        if floor is FusedCompiled and build() is None:
            continue
        check_floor(make_env, cal, actions, floor)
        out[label] = lambda floor=floor: floor(make_env(), cal)
    return out


def check_floor(make_env: Callable[[], gym.Env], cal: Calibration, actions: np.ndarray,
                floor: type[gym.Wrapper] = FusedFloor) -> None:
    """Raise unless ``floor`` (a reference that is not mesaguard) gives ``GuardedEnv``'s statistics at every step."""
    guarded = GuardedEnv(make_env(), cal, detectors=list(DEFAULT), protocol=Alert(lambda alarm: None))
    reference = floor(make_env(), cal)
    for env in (guarded, reference):
        env.reset(seed=0)
    for k, a in enumerate(actions):
        (*_, te, tr, mine), (*_, _, _, theirs) = guarded.step(a), reference.step(a)
        if mine["mesaguard"]["statistics"] != theirs["mesaguard"]["statistics"]:
            raise AssertionError(f"{floor.__name__}'s statistics differ from GuardedEnv's at step {k}")
        if te or tr:
            guarded.reset()
            reference.reset()


# ---------------------------------------------------------------------------- part 1b: where the time goes


def core_seconds_per_step(
    guard: Any, increments: list[float], ends: list[bool], start: int, stop: int
) -> float:
    """Seconds per ``guard.update`` over steps ``start..stop-1`` (``reset`` where an episode ends there)."""
    update, reset = guard.update, guard.reset
    gc.disable()
    t0 = time.perf_counter()
    for k in range(start, stop):
        update(increments[k])
        if ends[k]:
            reset()
    elapsed = time.perf_counter() - t0
    gc.enable()
    return elapsed / (stop - start)


def guard_breakdown(cfg: Config) -> dict:
    """On a do-nothing env: RecordEpisodeStatistics, GuardedEnv, and its guard core alone (compiled, and Python)."""
    rng = np.random.default_rng(cfg.seed)
    T = cfg.vector_episode_length
    cal = Calibration.fit([rng.normal(1.0, 0.5, T) for _ in range(cfg.vector_calibration_episodes)], alpha=cfg.alpha)
    rewards = rng.normal(1.0, 0.5, cfg.null_steps).tolist()
    increments = rewards  # what GuardedEnv hands its core: one float per step
    ends = [(k + 1) % T == 0 for k in range(cfg.null_steps)]
    actions = np.zeros(cfg.null_steps, dtype=np.int64)
    variants: dict[str, Callable[[], object]] = {
        "null env": lambda: NullEnv(rewards, T),
        "RecordEpisodeStatistics": lambda: RecordEpisodeStatistics(NullEnv(rewards, T)),
    }
    for label, names in DETECTOR_SETS.items():
        variants[f"GuardedEnv: {label}"] = lambda names=names: GuardedEnv(
            NullEnv(rewards, T), cal, detectors=names, protocol=Alert(lambda alarm: None)
        )
        variants[f"Guard core: {label}"] = lambda names=names: scalar_guard(cal, names)  # compiled where built
        variants[f"Python guard core: {label}"] = lambda names=names: ScalarGuard(cal, names)
    # The monitor bets once per episode and refreshes its evidence when an episode's running maximum rises: a cost
    # per episode, which short episodes spread over few steps. The same guard on episodes of T and of T / 10 steps.
    monitored, short = DETECTOR_SETS["default set"], T // 10
    variants[f"RES, {short}-step episodes"] = lambda: RecordEpisodeStatistics(NullEnv(rewards, short))
    for length in (T, short):  # RES on T-step episodes is the RecordEpisodeStatistics variant above
        variants[f"GuardedEnv + monitor, {length}-step episodes"] = lambda n=length: GuardedEnv(
            NullEnv(rewards, n), cal, detectors=monitored, protocol=Alert(lambda alarm: None),
            monitor=DeploymentMonitor(cal, detectors=monitored),
        )
    per_round: dict[str, list[float]] = {v: [] for v in variants}
    null_step: list[float] = []
    for _ in range(cfg.rounds):
        objs = {v: make() for v, make in variants.items()}
        for obj in objs.values():
            if isinstance(obj, gym.Env):
                obj.reset(seed=cfg.seed)
        blocks: dict[str, list[float]] = {v: [] for v in variants}
        for b in range(0, cfg.null_steps, cfg.block):
            for v in rng.permutation(list(variants)):
                obj = objs[v]
                if not isinstance(obj, gym.Env):  # a guard core
                    blocks[v].append(core_seconds_per_step(obj, increments, ends, b, b + cfg.block))
                else:
                    blocks[v].append(seconds_per_step(obj, actions[b : b + cfg.block]))
        null = np.array(blocks["null env"])
        null_step.append(float(np.median(null)) * 1e6)
        for v, t in blocks.items():
            t = np.array(t)
            # envs: minus the null env's own step on the same block; the core has no env
            per_round[v].append(float(np.median(t if "Guard core" in v else t - null)) * 1e6)
    med = {v: float(np.median(o)) for v, o in per_round.items()}
    res = med["RecordEpisodeStatistics"]
    rows = {}
    for label in DETECTOR_SETS:
        wrapped, core = med[f"GuardedEnv: {label}"], med[f"Guard core: {label}"]
        rows[label] = {
            "guarded_env_overhead_us": wrapped,
            "guard_core_us": core,
            "python_guard_core_us": med[f"Python guard core: {label}"],
            "wrapper_rest_us": wrapped - core,  # Transition, objective, info["mesaguard"], protocol checks
            "ratio_to_res": wrapped / res,
        }
    guard = [med[f"GuardedEnv + monitor, {n}-step episodes"] for n in (T, short)]
    res_short = med[f"RES, {short}-step episodes"]
    return {
        "null_env_step_us": float(np.median(null_step)),
        "res_overhead_us": res,
        "res_round_range_us": [min(per_round["RecordEpisodeStatistics"]), max(per_round["RecordEpisodeStatistics"])],
        "detectors": rows,
        "episode_length": {  # the default set + monitor: overhead per step = per step + per episode / length
            "lengths": [T, short],
            "guard_with_monitor_us": guard,
            "res_us": [res, res_short],
            "guard_per_episode_us": (guard[1] - guard[0]) / (1 / short - 1 / T),
            "res_per_episode_us": (res_short - res) / (1 / short - 1 / T),
        },
    }


# ---------------------------------------------------------------------------- part 2: many envs


def vector_throughput(cfg: Config) -> dict:
    rng = np.random.default_rng(cfg.seed)
    T, n = cfg.vector_episode_length, cfg.vector_envs
    # In-distribution increments: N(1, 0.5) per step, like a dense-reward task.
    cal = Calibration.fit([rng.normal(1.0, 0.5, T) for _ in range(cfg.vector_calibration_episodes)], alpha=cfg.alpha)
    increments = rng.normal(1.0, 0.5, size=(cfg.vector_steps, n))
    offset = np.arange(n) % T  # env i is offset steps into its episode at the start
    done = (np.arange(1, cfg.vector_steps + 1)[:, None] + offset[None, :]) % T == 0  # its episode ends after this step

    def run_guard(names: list[str]) -> tuple[float, int]:
        guard = Guard(cal, names, n_envs=n)
        update, reset = guard.update, guard.reset
        gc.disable()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for u, d in zip(increments, done):
            update(u)
            if d.any():
                reset(d)
        elapsed = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        gc.enable()
        return elapsed, faults

    def run_numpy() -> tuple[float, int]:
        score = np.zeros(n)
        gc.disable()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        for u, d in zip(increments, done):
            score += u
            if d.any():
                score[d] = 0.0
        elapsed = time.perf_counter() - start
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        gc.enable()
        return elapsed, faults

    variants: dict[str, Callable[[], tuple[float, int]]] = {"numpy score += u": run_numpy}
    for label, names in DETECTOR_SETS.items():
        variants[f"guard: {label}"] = lambda names=names: run_guard(names)
    measured = harness.interleaved(variants, cfg.rounds, rng)
    times = {v: [elapsed for elapsed, _ in m] for v, m in measured.items()}
    faults = {v: [f for _, f in m] for v, m in measured.items()}
    env_steps = cfg.vector_steps * n
    base = np.median(times["numpy score += u"])
    rows = {}
    for v, t in times.items():
        med = float(np.median(t))
        rows[v] = {
            "step_us": med / cfg.vector_steps * 1e6,  # one update of all n envs
            "env_steps_per_s": env_steps / med,
            "ratio_to_numpy": float(base / med),  # share of the bare NumPy speed kept
            "slowdown_vs_numpy": float(med / base),
            # Minor page faults per vector step: fresh memory touched each step (large temporaries
            # that malloc hands back to the OS and maps again); it makes the time depend on the
            # process's allocation history.
            "page_faults_per_step": float(np.median(faults[v])) / cfg.vector_steps,
        }
    return {"n_envs": n, "steps": cfg.vector_steps, "episode_length": T, "variants": rows}


# ---------------------------------------------------------------------------- report


def main(cfg: Config = CONFIG, out: Path = harness.RESULTS / "guard_overhead.json") -> None:
    console = Console(width=120)
    started = time.perf_counter()
    single = [single_env_overhead(name, make, steps, cfg, ratios) for name, (make, steps, ratios) in envs(cfg).items()]
    for r in single:
        table = Table(
            title=f"{r['env']}: overhead per step (bare step {r['bare_step_us']:.1f} us; median of {cfg.rounds} rounds)"
        )
        for col in ("wrapper", "step us", "overhead us", "range over rounds", "x RES overhead", "alarms/1k steps"):
            table.add_column(col, justify="left" if col == "wrapper" else "right")
        for v, row in r["variants"].items():
            label = v.removeprefix("guard: ")
            table.add_row(
                v,
                f"{row['step_us']:.1f}",
                f"{row['overhead_us']:.2f}",
                f"{row['overhead_round_range_us'][0]:.2f} .. {row['overhead_round_range_us'][1]:.2f}",
                "-" if not v.startswith(RATIOS) or row["ratio_to_res"] is None else f"{row['ratio_to_res']:.1f}",
                f"{r['alarms_per_1000_steps'][label]:.2f}" if label in DETECTOR_SETS else "-",
            )
        console.print(table)
    breakdown = guard_breakdown(cfg)
    table = Table(
        title=f"Do-nothing env (step {breakdown['null_env_step_us']:.2f} us): where the guard's time goes; "
        f"RecordEpisodeStatistics adds {breakdown['res_overhead_us']:.2f} us"
    )
    cols = ("detectors", "GuardedEnv overhead us", "Guard core (update) us", "Python core us", "rest of wrapper us",
            "x RES overhead")
    for col in cols:
        table.add_column(col, justify="left" if col == "detectors" else "right")
    for label, row in breakdown["detectors"].items():
        table.add_row(
            label,
            f"{row['guarded_env_overhead_us']:.2f}",
            f"{row['guard_core_us']:.2f}",
            f"{row['python_guard_core_us']:.2f}",
            f"{row['wrapper_rest_us']:.2f}",
            f"{row['ratio_to_res']:.1f}",
        )
    console.print(table)
    lengths = breakdown["episode_length"]
    console.print(
        f"default set + monitor on {lengths['lengths'][0]}- and {lengths['lengths'][1]}-step episodes: "
        f"{lengths['guard_with_monitor_us'][0]:.2f} and {lengths['guard_with_monitor_us'][1]:.2f} us a step "
        f"(RES {lengths['res_us'][0]:.2f} and {lengths['res_us'][1]:.2f}); per episode (bet, refreshes, reset) "
        f"{lengths['guard_per_episode_us']:.1f} us (RES {lengths['res_per_episode_us']:.1f})"
    )
    vector = vector_throughput(cfg)
    table = Table(
        title=f"Guard array core over {vector['n_envs']} envs ({vector['steps']} steps, median of {cfg.rounds})"
    )
    for col in ("monitor", "us per vector step", "env-steps / s", "speed vs numpy", "slowdown", "page faults / step"):
        table.add_column(col, justify="left" if col == "monitor" else "right")
    for v, row in vector["variants"].items():
        table.add_row(
            v,
            f"{row['step_us']:.1f}",
            f"{row['env_steps_per_s']:.3g}",
            f"{row['ratio_to_numpy']:.3f}",
            f"{row['slowdown_vs_numpy']:.1f}x",
            f"{row['page_faults_per_step']:.1f}",
        )
    console.print(table)
    target = 3.0
    verdict = {
        r["env"]: {
            v.removeprefix("guard: "): row["ratio_to_res"] <= target
            for v, row in r["variants"].items()
            if v.startswith("guard") and row["ratio_to_res"] is not None
        }
        for r in single
    }
    verdict["null env"] = {label: row["ratio_to_res"] <= target for label, row in breakdown["detectors"].items()}
    met = sum(ok for per_env in verdict.values() for ok in per_env.values())
    total = sum(len(per_env) for per_env in verdict.values())
    console.print(
        f"target: guard overhead <= {target}x RecordEpisodeStatistics' overhead: met in {met} of {total} cases"
    )
    elapsed = time.perf_counter() - started
    results = {
        "benchmark": "guard_overhead",
        "config": asdict(cfg),
        "target": {"guard_overhead_over_res_overhead_max": target, "met": verdict},
        "single_env": single,
        "breakdown_null_env": breakdown,
        "vector": vector,
        "machine": harness.machine(),
        "seconds": elapsed,
    }
    console.print(f"wrote {harness.write(out, results)} ({elapsed:.0f} s)")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("guard_overhead", args))
