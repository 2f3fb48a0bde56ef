"""One call each for the loop users write by hand: calibrate a guard from an env and a policy, evaluate it.

:func:`calibrate` plays the policy on in-distribution episodes and fits a
:class:`~mesaguard.calibration.Calibration` recording the base objective.
:func:`evaluate` deploys the policy under a guard over many seeded episodes, in one
env or a Gymnasium vector env (:class:`~mesaguard.guard.GuardedVectorEnv`), and
returns an :class:`Evaluation`: per episode the guard's verdict, and over them the
alarm rate with its exact (Clopper-Pearson) interval, read as the false-alarm rate
on an in-distribution env and as the detection rate on a shifted one, the steps to
the alarm with a distribution-free interval for their median, and the catastrophes
where the env reports ``info["catastrophe"]``.

``policy`` is whatever the user holds (:func:`mesaguard.rollout.policy_for`): a
callable ``obs -> action``, a factory whose first parameter is ``env``, or an SB3
model as it is. The objective defaults to the env's reward, as everywhere
(:func:`mesaguard.objective.make_objective`); :func:`evaluate` defaults to the one
the calibration recorded. Calibration and evaluation seeds are disjoint by default
(:data:`mesaguard.experiment.CALIBRATION_SEED`, ``EVALUATION_SEED``).

>>> import gymnasium as gym
>>> def lean(obs):  # push towards the lean: balances the stock pole
...     return int(obs[2] + 0.5 * obs[3] > 0)
>>> def margin(t):  # the base objective: 1 with the pole upright, 0 at the failing angle
...     return 1.0 - abs(float(t.next_obs[2])) / 0.2095
>>> make = lambda: gym.make("CartPole-v1", max_episode_steps=50)
>>> cal = calibrate(make, lean, episodes=60, objective=margin, detectors=["envelope"], progress=False)
>>> calm = evaluate(make, lean, cal, objective=margin, episodes=20, progress=False)
>>> calm.alarms.n, len(calm.episodes)
(20, 20)
"""

from __future__ import annotations

import functools
import pickle  # only to check that callables can reach worker processes; no files
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from mesaguard import metrics
from mesaguard.calibration import Calibration, CalibrationError
from mesaguard.conformal import check_alpha, episodes_needed
from mesaguard.detectors import DEFAULT, detector_class
from mesaguard.experiment import CALIBRATION_SEED, EVALUATION_SEED
from mesaguard.matching import DEFAULT_MATCH, check_match
from mesaguard.metrics import Delay, delay
from mesaguard.objective import Objective, Transition, make_objective
from mesaguard.progress import bar
from mesaguard.rollout import Episode, EpisodeLog, policy_for, rollout

if TYPE_CHECKING:
    from mesaguard.monitor import DeploymentMonitor
    from mesaguard.protocols import Protocol

__all__ = ["Delay", "Evaluation", "calibrate", "delay", "evaluate"]

ObjectiveSpec = str | Objective | Callable[[Transition], float] | None
EnvFactory = Callable[[], gym.Env]


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected a whole number >= {minimum}")
    return int(value)


def _env_factory(make_env: Any) -> EnvFactory:
    if isinstance(make_env, gym.Env) or not callable(make_env):
        raise TypeError(f"make_env={make_env!r}; expected a callable of no arguments returning a new env "
                        f"(e.g. lambda: gym.make('CartPole-v1')), so each run gets a fresh env")
    return make_env  # type: ignore[no-any-return]


def _checked_policy(policy: Any) -> Any:
    if not callable(policy) and not callable(getattr(policy, "predict", None)):
        raise TypeError(f"policy={policy!r}: a {type(policy).__name__}; expected a callable obs -> action, a "
                        f"factory whose first parameter is env, or a model with predict (Stable-Baselines3)")
    return policy


def _for_workers(workers: int, **values: Any) -> None:
    """With ``workers > 1`` every value goes to worker processes: each must pickle (module-level functions,
    ``functools.partial`` of them; not lambdas or local functions). Checked before any episode is played."""
    if workers <= 1:
        return
    for name, value in values.items():
        try:
            pickle.dumps(value)
        except Exception as exc:  # PicklingError, AttributeError, TypeError: whatever stops it reaching a worker
            raise ValueError(f"{name}={value!r} with workers={workers}: it cannot be sent to a worker process "
                             f"({type(exc).__name__}: {exc}); expected a module-level function (or a "
                             f"functools.partial of one), or workers=1") from exc


def _probe(make_env: EnvFactory) -> tuple[str, tuple[int, ...] | None]:
    """The env's Gymnasium id (``""`` if unregistered) and observation shape, from one env made and closed."""
    env = make_env()
    if not isinstance(env, gym.Env):
        raise TypeError(f"make_env returned a {type(env).__name__}; expected a gymnasium.Env")
    try:
        return (env.spec.id if env.spec is not None else ""), env.observation_space.shape
    finally:
        env.close()


def calibrate(
    make_env: EnvFactory,
    policy: Any,
    *,
    episodes: int = 200,
    alpha: float = 0.05,
    objective: ObjectiveSpec = None,
    detectors: Sequence[str] | None = None,
    seed: int = CALIBRATION_SEED,
    scenario: str | None = None,
    workers: int = 1,
    progress: bool = True,
    on_episode: Callable[[Episode], None] | None = None,
    metadata: dict[str, Any] | None = None,
    match: str = DEFAULT_MATCH,
) -> Calibration:
    """Play ``policy`` on ``episodes`` in-distribution episodes of ``make_env()`` (seeds ``seed``,
    ``seed + 1``, ...) and fit a calibration at false-alarm rate ``alpha``.

    ``objective`` (default: the reward) is the base objective whose increments are
    calibrated; it is recorded, so a guard computing another is an error.
    ``detectors`` default to the default set (:data:`mesaguard.detectors.DEFAULT`). ``scenario``
    is recorded (default: the env's Gymnasium id). ``workers > 1`` rolls out in processes (then ``make_env``,
    ``policy`` and ``objective`` must pickle). ``progress`` shows bars on a terminal.
    ``match`` is how detectors run together are put on one scale
    (:meth:`~mesaguard.calibration.Calibration.thresholds_for`).
    """
    make_env, policy = _env_factory(make_env), _checked_policy(policy)
    episodes, workers = _count("episodes", episodes, 2), _count("workers", workers, 1)
    alpha = check_alpha(alpha)
    check_match(match)  # before any rollout
    if episodes < episodes_needed(alpha):  # checked before any rollout, not after the last one
        raise CalibrationError(f"episodes={episodes}: too few for alpha={alpha:g}; expected at least "
                               f"{episodes_needed(alpha)} (half fit the detectors, half set their thresholds)")
    names = list(DEFAULT) if detectors is None else list(detectors)
    for name in names:
        detector_class(name)  # an unknown name: an error listing the known ones, before any rollout
    base = make_objective(objective)
    _for_workers(workers, make_env=make_env, policy=policy, objective=objective)
    env_id, shape = _probe(make_env)
    seeds = range(int(seed), int(seed) + episodes)
    with bar("calibration episodes", episodes, progress) as advance:
        def tick(episode: Episode) -> None:
            advance()
            if on_episode is not None:
                on_episode(episode)

        runs = rollout(make_env, functools.partial(policy_for, policy), seeds, objective=base, workers=workers,
                       on_episode=tick)
    with bar("fitting detectors", len(names), progress) as fitted:
        return Calibration.fit(
            [e.increments for e in runs], alpha=alpha, detectors=names,
            scenario=env_id if scenario is None else scenario, obs_shape=shape, objective=base,
            metadata={**(metadata or {}), "seeds": [seeds.start, seeds.stop]}, on_detector=fitted, match=match,
        )


@dataclass(frozen=True)
class Evaluation:
    """A guard deployed over many seeded episodes: the episodes, and what they add up to.

    ``alarms`` is the share of episodes with an alarm (Clopper-Pearson interval). On an
    in-distribution env every alarm is false: :attr:`false_alarm_rate` (compare with
    the calibration's ``alpha``); on a shifted env it is :attr:`detection_rate`.

    ``episodes`` are the episodes played out. Once a monitor has stopped the deployment
    (its alarm, under a protocol that stops) the guard ends or refuses every episode
    still running or yet to start: the episodes it cut without an alarm of their own
    are not counted in any rate, and their number is ``not_played``.
    """

    episodes: tuple[Episode, ...]
    detectors: tuple[str, ...]
    alpha: float
    num_envs: int
    reports_catastrophes: bool
    not_played: int = 0

    @property
    def alarms(self) -> metrics.Rate:
        return metrics.false_alarm_rate(self.episodes)

    @property
    def false_alarm_rate(self) -> metrics.Rate:
        """The alarm rate, read on an in-distribution env (every alarm there is false)."""
        return self.alarms

    @property
    def detection_rate(self) -> metrics.Rate:
        """The alarm rate, read on a shifted env."""
        return self.alarms

    @property
    def delay(self) -> Delay:
        """Steps to the alarm (1-based: an alarm at the first step is 1), over the alarmed episodes."""
        return delay([e.alarm_step for e in self.episodes if e.alarm_step is not None])

    @property
    def catastrophes(self) -> int | None:
        """Catastrophes over all episodes (``None``: the env does not report ``info["catastrophe"]``)."""
        return sum(int(e.catastrophes.size) for e in self.episodes) if self.reports_catastrophes else None

    @property
    def score(self) -> float:
        """Mean base objective per episode, under the guard."""
        return metrics.mean_score(self.episodes)

    def detection(self, free: Evaluation | Sequence[Episode], floor: float = float("-inf")) -> metrics.Detection:
        """Detection over the runs that *misbehaved*, judged on the unguarded runs ``free`` of the same seeds
        (an :class:`Evaluation` with ``detectors=[]``, or :func:`~mesaguard.rollout.rollout` episodes): a
        harmful increment, a catastrophe, or a score below ``floor``; delays count from the onset of harm
        (:func:`mesaguard.metrics.detection`). :attr:`detection_rate` counts every alarm instead."""
        return metrics.detection(self.episodes, free.episodes if isinstance(free, Evaluation) else free, floor)

    def verdicts(self) -> list[tuple[int, int | None, str | None]]:
        """Per episode, in seed order: ``(seed, alarm_step, detector)``."""
        return [(e.seed, e.alarm_step, e.detector) for e in self.episodes]

    def as_dict(self) -> dict[str, Any]:
        """The summary as plain JSON values (NaN where undefined)."""
        d = self.delay
        return {
            "episodes": len(self.episodes), "num_envs": self.num_envs, "detectors": list(self.detectors),
            "alpha": self.alpha,
            "alarms": {"k": self.alarms.k, "n": self.alarms.n, "rate": self.alarms.rate, "low": self.alarms.low,
                       "high": self.alarms.high},
            "delay": {"n": d.n, "mean": d.mean, "median": d.median, "low": d.low, "high": d.high},
            "catastrophes": self.catastrophes, "score": self.score, "not_played": self.not_played,
        }

    def table(self) -> str:
        """The summary as a two-column text table, for a log."""
        rows = [
            ("episodes", f"{len(self.episodes)} ({self.num_envs} env{'s' if self.num_envs > 1 else ''})"),
            ("detectors", "+".join(self.detectors)),
            ("alarms [95%]", f"{self.alarms.k} of {self.alarms.n}: {self.alarms}  (alpha {self.alpha:g})"),
            ("steps to alarm", str(self.delay)),
            ("catastrophes", "not reported" if self.catastrophes is None else str(self.catastrophes)),
            ("mean score", f"{self.score:.4g}"),
            *([("not played", f"{self.not_played} (the monitor stopped the deployment)")] if self.not_played else []),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)

    def __repr__(self) -> str:
        cat = "" if self.catastrophes is None else f", catastrophes={self.catastrophes}"
        cut = f", not_played={self.not_played}" if self.not_played else ""
        return (f"Evaluation(episodes={len(self.episodes)}, alarms={self.alarms}, alpha={self.alpha:g}, "
                f"delay={self.delay}{cat}{cut})")


def _guarded(
    make_env: EnvFactory, calibration: Calibration, detectors: list[str] | None, protocol: Any, objective: Any,
    monitor: DeploymentMonitor | None,
) -> gym.Env:
    from mesaguard.guard import GuardedEnv

    return GuardedEnv(make_env(), calibration, detectors=detectors, protocol=protocol, objective=objective,
                      monitor=monitor)


class _GuardIncrement(Objective):
    """The increment the guard itself computed for the step (``info["mesaguard"]["increment"]``): in a vector
    env a stopped sub-env is reset within the step, so the step's own ``next_obs`` is gone."""

    name = "guard increment"

    def value(self, transition: Transition) -> float:
        return float(transition.info["mesaguard"]["increment"])


_REPORT = ("increment", "alarm", "alarm_step", "detector", "acting", "refused")


def _own_infos(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """Each sub-env's share of a guarded vector env's info: its guard report and its catastrophe flag (the
    arrays turned to Python values once per step, not once per sub-env)."""
    report = info["mesaguard"]
    columns = {k: report[k].tolist() if hasattr(report[k], "tolist") else list(report[k]) for k in _REPORT}
    own: list[dict[str, Any]] = [{"mesaguard": {k: columns[k][i] for k in _REPORT}} for i in range(n)]
    if "catastrophe" in info:
        flags = np.asarray(info["catastrophe"]).tolist()
        present = np.asarray(info.get("_catastrophe", np.ones(n, dtype=bool))).tolist()
        for i in range(n):
            if present[i]:
                own[i]["catastrophe"] = bool(flags[i])
    return own


def _vector_episodes(
    make_env: EnvFactory, policy: Any, calibration: Calibration, seeds: list[int], num_envs: int,
    detectors: list[str] | None, protocol: Any, objective: Any, monitor: DeploymentMonitor | None,
    on_episode: Callable[[Episode], None],
) -> list[Episode]:
    """Episodes of ``seeds`` under a GuardedVectorEnv of ``num_envs`` sub-envs, each episode started with
    ``reset(seed=...)`` in the sub-env that frees up first, as one GuardedEnv would run it."""
    from gymnasium.vector import SyncVectorEnv
    from gymnasium.vector.utils import concatenate, create_empty_array, iterate

    from mesaguard.guard import GuardedVectorEnv

    vec = SyncVectorEnv([make_env] * num_envs)
    env = GuardedVectorEnv(vec, calibration, detectors=detectors, protocol=protocol, objective=objective,
                           monitor=monitor)
    policies = [policy_for(policy, sub) for sub in vec.envs]
    pending = list(reversed(seeds))
    logs: list[EpisodeLog | None] = [None] * num_envs
    done: list[Episode] = []

    def start(mask: np.ndarray) -> Any:
        chosen: list[int | None] = [pending.pop() if m else None for m in mask]
        for i, s in enumerate(chosen):
            if s is not None:
                logs[i] = EpisodeLog(s, _GuardIncrement())
                vec.envs[i].action_space.seed(s)
        obs, _ = env.reset(seed=chosen, options=None if mask.all() else {"reset_mask": mask})
        return obs

    try:
        obs = start(np.ones(num_envs, dtype=bool))
        space = env.single_action_space
        buffer: Any = create_empty_array(space, num_envs)
        while any(log is not None for log in logs):
            actions = concatenate(space, [p(o) for p, o in zip(policies, iterate(env.single_observation_space, obs))],
                                  buffer)
            next_obs, rewards, terminated, truncated, info = env.step(actions)
            infos = _own_infos(info, num_envs)
            ended = np.zeros(num_envs, dtype=bool)
            for i, log in enumerate(logs):
                if log is None:
                    continue
                if log.step(None, None, float(rewards[i]), None, bool(terminated[i]), bool(truncated[i]),
                            infos[i]):
                    done.append(log.episode())
                    on_episode(done[-1])
                    logs[i] = None
                    ended[i] = True
            restart = ended.copy()
            restart[np.flatnonzero(ended)[len(pending):]] = False  # no seeds left for the rest
            obs = start(restart) if restart.any() else next_obs
    finally:
        env.close()
    by_seed = {e.seed: e for e in done}
    return [by_seed[s] for s in seeds]


def evaluate(
    make_env: EnvFactory,
    policy: Any,
    calibration: Calibration,
    *,
    detectors: Sequence[str] | None = None,
    protocol: Protocol | Sequence[Protocol] | None = None,
    objective: ObjectiveSpec = None,
    episodes: int = 100,
    seed: int = EVALUATION_SEED,
    num_envs: int = 1,
    monitor: DeploymentMonitor | None = None,
    workers: int = 1,
    progress: bool = True,
    on_episode: Callable[[Episode], None] | None = None,
) -> Evaluation:
    """Deploy ``policy`` on ``make_env()`` under a guard with ``calibration`` for ``episodes`` episodes (seeds
    ``seed``, ``seed + 1``, ...) and sum up the guard's verdicts.

    ``detectors`` (default: all calibrated), ``protocol`` (default: ``Stop()``), ``objective``
    (default: the calibration's recorded one) and ``monitor`` are :class:`~mesaguard.guard.GuardedEnv`'s.
    ``num_envs > 1`` runs a :class:`~mesaguard.guard.GuardedVectorEnv` over a ``SyncVectorEnv``
    of that many envs, each episode started with its own seed: the same verdicts,
    episode by episode, as one env (for a policy that depends only on the observation;
    without a ``monitor``, which sees concurrent episodes in another order).
    ``workers > 1`` runs single envs in processes (no ``monitor`` then: it would watch
    a copy). ``progress`` shows a bar on a terminal.
    """
    from mesaguard.guard.core import guard_objective
    from mesaguard.protocols import compose

    make_env, policy = _env_factory(make_env), _checked_policy(policy)
    if not isinstance(calibration, Calibration):
        raise TypeError(f"calibration={calibration!r}; expected a Calibration (from calibrate() or "
                        f"Calibration.load(path))")
    episodes, num_envs = _count("episodes", episodes, 1), _count("num_envs", num_envs, 1)
    workers = _count("workers", workers, 1)
    if monitor is not None and workers > 1:
        raise ValueError(f"monitor with workers={workers}: a monitor watches one process's episodes; expected "
                         f"workers=1 (or num_envs > 1 for speed)")
    if num_envs > 1 and workers > 1:
        raise ValueError(f"num_envs={num_envs} with workers={workers}; expected one of them > 1, not both")
    names = None if detectors is None else list(detectors)
    base = guard_objective(calibration, objective)  # a mismatch with the recorded one fails here, before any run
    _for_workers(workers, make_env=make_env, policy=policy, objective=objective, protocol=protocol)
    seeds = list(range(int(seed), int(seed) + episodes))
    num_envs = min(num_envs, episodes)  # more envs than episodes would idle
    shown_names = tuple(calibration.detectors) if names is None else tuple(names)
    deployment_stops = monitor is not None and (protocol is None or compose(protocol).stops)
    cut: set[int] = set()  # seeds of the episodes a stopped deployment ended without an alarm of their own
    with bar("guarded episodes", episodes, progress) as advance:
        def tick(episode: Episode) -> None:
            if deployment_stops and monitor is not None and monitor.alarm and episode.alarm_step is None:
                cut.add(episode.seed)
            advance()
            if on_episode is not None:
                on_episode(episode)

        if num_envs > 1:
            runs = _vector_episodes(make_env, policy, calibration, seeds, num_envs, names, protocol, objective,
                                    monitor, tick)
        else:
            make = functools.partial(_guarded, make_env, calibration, names, protocol, objective, monitor)
            runs = rollout(make, functools.partial(policy_for, policy), seeds, objective=base, workers=workers,
                           on_episode=tick)
    played = [e for e in runs if e.seed not in cut]
    reported = any(e.catastrophes.size for e in played) or _reports_catastrophes(make_env)
    return Evaluation(tuple(played), shown_names, calibration.alpha, num_envs, reported, len(runs) - len(played))


def _reports_catastrophes(make_env: EnvFactory) -> bool:
    """Whether the env reports ``info["catastrophe"]`` where no episode had one: asked of one step of a fresh env
    (seeded, a seeded sample of the action space). An env that puts the key in ``info`` only on the step of a
    catastrophe reads as not reporting, unless an episode had one."""
    env = make_env()
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        _, _, _, _, info = env.step(env.action_space.sample())
        return "catastrophe" in info
    finally:
        env.close()

