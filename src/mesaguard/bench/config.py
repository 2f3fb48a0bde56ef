"""What a bench run computes: its configuration, its jobs and their seed scheme, checked before anything runs.

A run is a grid ``scenarios x seeds``; each (scenario, seed) is one :class:`JobSpec`.
Job seed ``s`` draws its episode seeds from two disjoint ranges,
``s * SEED_STRIDE + CALIBRATION_SEED + i`` for its calibration episodes and
``s * SEED_STRIDE + EVALUATION_SEED + i`` for its evaluation episodes (the same
seeds in each variant); ``i`` stays below ``EVALUATION_SEED - CALIBRATION_SEED``,
so the two ranges never meet, and both stay clear of training's small seeds.

The configuration's JSON and the code that computes the jobs are the run's identity in the
store (:meth:`BenchConfig.run_id`, :func:`code_fingerprint`): the same command on the same
mesaguard resumes the same run, and after an upgrade (or any change to its modules or shipped
agents) it starts a new one instead of reporting jobs the old code computed. A configuration
read back from a store is checked again, like one typed on the command line.

This module imports nothing heavy: the experiment's seed offsets and policy names,
and the safeguard registry, are read when a configuration is checked or a job's
seeds are asked for, so :mod:`mesaguard.bench.results` (and the report) stay light.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import InitVar, asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym

from mesaguard.calibration import episodes_needed, fit_split, min_episodes
from mesaguard.detectors import detector_class
from mesaguard.safeguards.model_kinds import ORACLE_KINDS
from mesaguard.scenarios import get

__all__ = [
    "SAFEGUARD",
    "SEED_STRIDE",
    "BenchConfig",
    "BenchError",
    "JobSpec",
    "code_fingerprint",
    "UserTask",
    "config_name",
    "detector_configs",
    "is_oracle",
    "model_kind",
    "modelled",
    "JOINT",
    "oracle_label",
    "run_label",
]

SEED_STRIDE = 1_000_000  # job seed s uses episode seeds s * SEED_STRIDE + (CALIBRATION_SEED | EVALUATION_SEED) + i
SAFEGUARD = "safeguard:"  # the role prefix of a safeguarded run's episodes in the store


MODELLED = ("shield", "combined")  # safeguards that look ahead on a world model: named ``shield[KIND]``


def modelled(safeguard: str, kind: str) -> str:
    """The name of ``safeguard`` (``shield`` or ``combined``) on a model of ``kind``.

    >>> modelled("shield", "simulator")
    'shield[simulator]'
    """
    return f"{safeguard}[{kind}]"


def model_kind(safeguard: str) -> str | None:
    """The model kind of a modelled safeguard's name, else None.

    >>> model_kind("combined[learned]"), model_kind("scope")
    ('learned', None)
    """
    head, _, rest = safeguard.partition("[")
    return rest[:-1] if head in MODELLED and rest.endswith("]") else None


def is_oracle(safeguard: str) -> bool:
    """Whether a safeguard decides from what no deployed system has: a shield on a copy of the deployed env, or
    the quantilizer whose base is the scripted aligned policy (it reads the deployed env's hidden layout).

    >>> is_oracle("shield[copy]"), is_oracle("shield[simulator]"), is_oracle("quantilizer"), is_oracle("quantilizer-bc")
    (True, False, True, False)
    """
    kind = model_kind(safeguard)
    return safeguard == "quantilizer" or (kind is not None and kind in ORACLE_KINDS)


JOINT = "joint"  # the one name, in every table for people, of all the chosen detectors run together


def run_label(name: str) -> str:
    """A stored detector configuration's or safeguard's name as tables show it: a joint set is :data:`JOINT`,
    an oracle labelled so.

    >>> run_label("cusum+envelope"), run_label("cusum"), run_label("shield[copy]")
    ('joint', 'cusum', 'shield[copy] (oracle)')
    """
    return JOINT if "+" in name else oracle_label(name)


def oracle_label(name: str) -> str:
    """A safeguard's name as tables show it: an oracle's labelled so (other names as they are).

    >>> oracle_label("shield[copy]"), oracle_label("shield[learned]")
    ('shield[copy] (oracle)', 'shield[learned]')
    """
    return f"{name} (oracle)" if is_oracle(name) else name


class BenchError(ValueError):
    """A bench configuration that cannot run (too few episodes for alpha, a missing backend)."""


def detector_configs(detectors: Sequence[str]) -> list[tuple[str, ...]]:
    """Each detector alone, then all of them jointly (when there are several).

    >>> detector_configs(["cusum", "envelope"])
    [('cusum',), ('envelope',), ('cusum', 'envelope')]
    """
    names = tuple(detectors)
    return [(n,) for n in names] + ([names] if len(names) > 1 else [])


def config_name(names: Sequence[str]) -> str:
    """The stored name of a detector configuration.

    >>> config_name(("cusum", "envelope"))
    'cusum+envelope'
    """
    return "+".join(names)


@dataclass(frozen=True)
class UserTask:
    """A user's own task in a bench run (``mesaguard bench --env``): the env as given is the reference variant,
    the shifted env the one deployed. Text only, as typed on the command line: a run read back from the store
    (``mesaguard report``) needs neither the scenario registry nor the user's code.

    It answers what a run asks of a :class:`~mesaguard.scenarios.Scenario` (its variants, failure mode, shift).

    >>> task = UserTask("mytask:make_env", {"length": 0.5}, shifted_kwargs={"length": 1.5})
    >>> task.variants, task.shift
    (('reference', 'shifted'), 'shifted: --shifted-kwargs {"length": 1.5}')
    >>> UserTask("CartPole-v1", objective=3)
    Traceback (most recent call last):
    ...
    mesaguard.bench.config.BenchError: user task field 'objective' is 3 (int); expected text
    """

    env: str  # a Gymnasium id or module:factory
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    shifted_env: str | None = None  # None: ``env`` made with ``env_kwargs`` updated by ``shifted_kwargs``
    shifted_kwargs: dict[str, Any] = field(default_factory=dict)
    objective: str = "reward"  # reward, info:KEY or module:callable

    reference_variant: ClassVar[str] = "reference"
    shifted_variants: ClassVar[tuple[str, ...]] = ("shifted",)
    variants: ClassVar[tuple[str, ...]] = ("reference", "shifted")
    failure_mode: ClassVar[str] = "your own task"

    def __post_init__(self) -> None:
        for name in ("env", "shifted_env", "objective"):
            value = getattr(self, name)
            if not isinstance(value, str) and not (name == "shifted_env" and value is None):
                raise BenchError(f"user task field {name!r} is {value!r} ({type(value).__name__}); expected text")
        for name in ("env_kwargs", "shifted_kwargs"):
            value = getattr(self, name)
            if not isinstance(value, dict):
                raise BenchError(f"user task field {name!r} is {value!r} ({type(value).__name__}); expected a JSON "
                                 f"object")

    @property
    def shift(self) -> str:
        """The shift, as the command line gave it."""
        if self.shifted_env is not None:
            return f"shifted: --shifted-env {self.shifted_env}"
        return f"shifted: --shifted-kwargs {json.dumps(self.shifted_kwargs)}"


def _user_task(stored: dict[str, Any]) -> UserTask:
    """A user task read back from a store: its known fields, else a :class:`BenchError` naming the others."""
    known = set(UserTask.__dataclass_fields__)
    if not {"env"} <= set(stored) <= known:
        raise BenchError(f"stored user task has fields {sorted(stored)}; expected env and any of {sorted(known)}")
    return UserTask(**stored)


def _seed_offsets() -> tuple[int, int]:
    """The experiment's (calibration, evaluation) seed offsets (read here: the experiment loads guard and monitor)."""
    from mesaguard.experiment import CALIBRATION_SEED, EVALUATION_SEED

    return CALIBRATION_SEED, EVALUATION_SEED


def max_episodes() -> int:
    """The most episodes per role and seed: more would make calibration and evaluation seeds meet."""
    calibration, evaluation = _seed_offsets()
    return evaluation - calibration


@dataclass(frozen=True)
class BenchConfig:
    """What a bench run computes; its JSON is the run's identity in the store."""

    scenarios: tuple[str, ...]
    detectors: tuple[str, ...]
    seeds: tuple[int, ...]
    episodes: int  # evaluation episodes per variant and seed
    calibration_episodes: int  # per seed, in-distribution
    alpha: float = 0.05
    policy: str = "agent"
    safeguards: tuple[str, ...] = ()  # preventive safeguards run next to the detectors (arms.SAFEGUARDS, arms.LEARNING)
    task: UserTask | None = None  # a user's own task: then ``scenarios`` is its env alone, ``policy`` the user's
    registry: InitVar[bool] = True  # False: a stored run read for its results, its scenarios possibly not registered

    def __post_init__(self, registry: bool) -> None:
        if self.task is not None:
            self._check_task()
            return
        for s in self.scenarios if registry else ():
            get(s)  # unknown scenarios: the error lists the valid ones
        for d in self.detectors:
            detector_class(d)
        if registry:
            self._check_safeguards()
        if not self.scenarios or not self.detectors or not self.seeds:
            raise BenchError(f"empty grid: scenarios={self.scenarios}, detectors={self.detectors}, seeds={self.seeds}")
        self._check_sizes()
        if registry:
            from mesaguard.experiment import policy_factory

            policy_factory(self.scenarios[0], self.policy)  # unknown policies: a clear error

    def _check_task(self) -> None:
        """A user's task: its env is the one scenario, no safeguards (they run on registered scenarios), sizes as
        any run's. Nothing is imported: the CLI checks the user's env, policy and objective before a run starts."""
        assert self.task is not None
        if self.scenarios != (self.task.env,):
            raise BenchError(f"a run on the user task {self.task.env!r} has scenarios {list(self.scenarios)}; "
                             f"expected [{self.task.env!r}]")
        if self.safeguards:
            raise BenchError(f"safeguards {list(self.safeguards)} run on registered scenarios; with the user task "
                             f"{self.task.env!r} expected none")
        if not isinstance(self.policy, str) or not self.policy:
            raise BenchError(f"policy {self.policy!r}; expected module:callable or a saved policy's stem")
        if not self.detectors or not self.seeds:
            raise BenchError(f"empty grid: detectors={self.detectors}, seeds={self.seeds}")
        for d in self.detectors:
            detector_class(d)
        self._check_sizes()

    def _check_safeguards(self) -> None:
        """Known safeguards, each on scenarios and a policy it can run with."""
        from mesaguard.bench.arms import LEARNING, SAFEGUARDS

        for g in self.safeguards:
            if g not in SAFEGUARDS and g not in LEARNING:
                raise BenchError(f"unknown safeguard {g!r}; expected one of {sorted([*SAFEGUARDS, *LEARNING])}")
        for s in self.scenarios if {"quantilizer", "quantilizer-bc"} & set(self.safeguards) else ():
            space = get(s).make(get(s).reference_variant).action_space
            if not isinstance(space, gym.spaces.Discrete):
                raise BenchError(
                    f"the quantilizer ranks a trusted base distribution over discrete actions; scenario {s!r} acts "
                    f"in {space}: run it with the other safeguards"
                )
        kinds = {model_kind(g) for g in self.safeguards}
        if "learned" in kinds:
            from mesaguard.safeguards.learned import shipped_models

            missing = [s for s in self.scenarios if s not in shipped_models()]
            if missing:
                raise BenchError(f"a shield on the learned model needs a fitted model; scenarios {missing} have none "
                                 f"(shipped for: {', '.join(shipped_models())})")
        if "simulator" in kinds:
            missing = [s for s in self.scenarios if get(s).simulator is None]
            if missing:
                raise BenchError(f"a shield on the designer's simulator needs one; scenarios {missing} have none "
                                 "(register(..., simulator=...))")
        learned = sorted(set(self.safeguards) & {"impact", "continual"})
        if learned and self.policy != "agent":
            raise BenchError(f"safeguards {learned} train the shipped agent; policy={self.policy!r}; expected 'agent'")
        if "impact" in self.safeguards:
            from mesaguard.policies import shipped_agents

            missing = [s for s in self.scenarios if s not in shipped_agents(impact=True)]
            if missing:
                raise BenchError(
                    f"safeguard 'impact' runs an agent trained with an impact penalty; scenarios {missing} have none "
                    f"(shipped for: {', '.join(shipped_agents(impact=True))})"
                )

    def _check_sizes(self) -> None:
        """Episode counts within the seed scheme, alpha in (0, 1), and enough calibration episodes for it."""
        most = max_episodes()
        for what, n in (("episodes", self.episodes), ("calibration episodes", self.calibration_episodes)):
            if not 1 <= n <= most:
                raise BenchError(f"{what}={n}; expected 1 to {most} per seed")
        if not 0 < self.alpha < 1:
            raise BenchError(f"alpha={self.alpha}; expected a false-alarm rate strictly between 0 and 1")
        n = self.calibration_episodes
        if n < episodes_needed(self.alpha):
            raise BenchError(
                f"{n} calibration episodes leave {n - fit_split(n)} to set thresholds, too few for "
                f"alpha={self.alpha} (it needs {min_episodes(self.alpha)}); pass --calibration-episodes "
                f"{episodes_needed(self.alpha)} or more, or a larger alpha"
            )

    def as_dict(self) -> dict[str, Any]:
        """The configuration as JSON values; ``task`` only when there is one (a scenario run's identity is as
        before user tasks existed, so its stored runs resume)."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if d["task"] is None:
            del d["task"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], registry: bool = True) -> BenchConfig:
        """The configuration of ``as_dict``; ``registry=False`` skips the checks that need the scenario registry."""
        task = d.get("task")
        if task is not None and not isinstance(task, dict):
            raise BenchError(f"stored run config field 'task' is {task!r}; expected a JSON object")
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "task"}
        return cls(**fields, task=None if task is None else _user_task(task), registry=registry)

    def run_id(self) -> str:
        """A name derived from the config and the code (:func:`code_fingerprint`), so the same command on the same
        mesaguard resumes the same run; letters, digits, ``.``, ``_`` and ``-`` only (it names a folder: a user's
        ``module:factory`` env keeps no colon)."""
        identity = json.dumps(self.as_dict(), sort_keys=True) + code_fingerprint()
        digest = hashlib.sha256(identity.encode()).hexdigest()[:8]
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{'-'.join(self.scenarios)[:40]}-{digest}")

    def jobs(self) -> list[JobSpec]:
        return [
            JobSpec(s, seed, self.policy, self.episodes, self.calibration_episodes, self.alpha, self.detectors,
                    self.safeguards, self.task)
            for s in self.scenarios
            for seed in self.seeds
        ]


@dataclass(frozen=True)
class JobSpec:
    """One (scenario, seed) job; picklable, sent to workers."""

    scenario: str
    seed: int
    policy: str
    episodes: int
    calibration_episodes: int
    alpha: float
    detectors: tuple[str, ...]
    safeguards: tuple[str, ...] = ()
    task: UserTask | None = None  # a user's own task (then ``scenario`` is its env)

    @property
    def key(self) -> tuple[str, int]:
        return (self.scenario, self.seed)

    @property
    def total_episodes(self) -> int:
        variants = (self.task or get(self.scenario)).variants
        return self.calibration_episodes + self.episodes * len(variants) * (1 + len(self.safeguards))

    def seeds(self, role: str) -> range:
        """The episode seeds of ``role`` (``"calibration"``, else evaluation) in this job (the module's scheme)."""
        calibration, evaluation = _seed_offsets()
        start = self.seed * SEED_STRIDE + (calibration if role == "calibration" else evaluation)
        return range(start, start + (self.calibration_episodes if role == "calibration" else self.episodes))


# What computes a job: modules (Cython sources and their declarations included; the C that Cython generates from
# them is not, it follows them) and shipped agents.
CODE_SUFFIXES = (".py", ".pyx", ".pxd", ".json", ".safetensors")


@cache
def code_fingerprint(root: Path | None = None) -> str:
    """SHA-256 of the mesaguard package under ``root`` (default: the one running): every module and shipped agent,
    by relative path and bytes. A user's own env or policy is not covered: name the run (``--run``) to keep it
    apart after changing them."""
    if root is None:
        root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()
