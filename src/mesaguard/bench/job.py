"""One bench job: a (scenario, seed) rolled out once unguarded, calibrated, replayed, and its safeguards run.

The job rolls the policy out **once, unguarded**:

* calibration episodes on the scenario's reference variant (where the agent's
  behaviour was checked: the training variant unless the scenario names another),
  fit a :class:`~mesaguard.calibration.Calibration` of every detector at ``alpha``;
* evaluation episodes on the reference variant and on every other variant (the
  seed scheme of :mod:`mesaguard.bench.config`).

Every detector configuration (each detector alone, and all of them jointly) is then
evaluated *offline* (:func:`~mesaguard.bench.replay.first_alarms`). Each safeguard
of the job runs for real on every variant (:mod:`mesaguard.bench.arms`). The result
is one :class:`~mesaguard.store.JobRecord`, written to the store in one transaction.
"""

from __future__ import annotations

import functools
import time
from typing import Protocol

import numpy as np

from mesaguard import metrics
from mesaguard.bench.arms import LEARNING, SAFEGUARDS, calibrate, fit_safeguards, needs_states
from mesaguard.bench.config import SAFEGUARD, JobSpec, config_name, detector_configs
from mesaguard.bench.replay import first_alarms
from mesaguard.calibration import Calibration
from mesaguard.experiment import OBJECTIVE, plain_env, policy_factory
from mesaguard.rollout import Episode, rollout
from mesaguard.scenarios import get
from mesaguard.store import AlarmRecord, EpisodeRecord, JobRecord

__all__ = ["ProgressSink", "Ticker", "evaluated", "run_job"]


class ProgressSink(Protocol):
    """Where a job reports finished episodes: ``put((job key, episodes finished since the last put))``."""

    def put(self, item: tuple[tuple[str, int], int]) -> None: ...


def run_job(spec: JobSpec, progress: ProgressSink | None = None) -> JobRecord:
    """Roll out, calibrate and replay one (scenario, seed) job; ``progress.put((key, n))`` counts episodes.

    A user's own task (``spec.task``) runs :func:`mesaguard.bench.userjob.run_user_job`.
    """
    if spec.task is not None:
        from mesaguard.bench.userjob import run_user_job

        return run_user_job(spec, progress)
    start = time.perf_counter()
    if spec.policy == "agent":  # a trained agent runs torch: one thread per worker process
        import torch

        torch.set_num_threads(1)
    scenario = get(spec.scenario)
    train = scenario.reference_variant  # calibrate where the agent's behaviour was checked
    make_policy = policy_factory(spec.scenario, spec.policy)
    tick = Ticker(spec.key, progress)

    def run(variant: str, role: str) -> list[Episode]:
        make_env = functools.partial(plain_env, spec.scenario, variant)
        return rollout(make_env, make_policy, spec.seeds(role), objective=OBJECTIVE, on_episode=tick)

    cal_runs, calibration = calibrate(
        spec, make_policy, spec.policy, on_episode=tick, record_states=needs_states(spec.safeguards)
    )
    records = [EpisodeRecord("calibration", train, e.seed, e.increments, e.catastrophes) for e in cal_runs]
    alarms: list[AlarmRecord] = []
    for variant in scenario.variants:
        evaluated(calibration, spec.detectors, variant, run(variant, "evaluation"), records, alarms)
    fitted = fit_safeguards(spec, cal_runs)
    for name in spec.safeguards:  # real runs: a safeguard changes what happens, so nothing is replayed
        for variant in scenario.variants:
            if name in LEARNING:
                runs = LEARNING[name](spec, variant, fitted, tick)
            else:
                make_env, make_guarded_policy = SAFEGUARDS[name](spec, variant, calibration, fitted)
                runs = rollout(make_env, make_guarded_policy, spec.seeds("evaluation"), objective=OBJECTIVE,
                               on_episode=tick)
            first = len(records)
            role = f"{SAFEGUARD}{name}"
            records += [EpisodeRecord(role, variant, e.seed, e.increments, e.catastrophes) for e in runs]
            alarms += [
                AlarmRecord(name, first + i, int(e.alarm_step), str(e.detector))
                for i, e in enumerate(runs)
                if e.alarm_step is not None
            ]
    tick.flush()
    floor = metrics.score_floor([e.score for e in cal_runs], spec.alpha)
    return JobRecord(
        spec.scenario, spec.seed, calibration.to_dict(), floor, time.perf_counter() - start, records, alarms
    )


def evaluated(calibration: Calibration, detectors: tuple[str, ...], variant: str, runs: list[Episode],
              records: list[EpisodeRecord], alarms: list[AlarmRecord]) -> None:
    """Append the evaluation ``runs`` of ``variant`` to ``records``, and to ``alarms`` where each detector
    configuration (:func:`~mesaguard.bench.config.detector_configs`) would first have fired on them (replayed)."""
    first = len(records)
    records += [EpisodeRecord("evaluation", variant, e.seed, e.increments, e.catastrophes) for e in runs]
    traces: dict[str, np.ndarray] = {}
    for names in detector_configs(detectors):
        for i, hit in enumerate(first_alarms(calibration, names, [e.increments for e in runs], traces=traces)):
            if hit is not None:
                alarms.append(AlarmRecord(config_name(names), first + i, hit[0], hit[1]))


class Ticker:
    """Counts finished episodes and sends them in batches (at most ten messages a second)."""

    def __init__(self, key: tuple[str, int], sink: ProgressSink | None) -> None:
        self.key, self.sink, self.count, self.last = key, sink, 0, time.monotonic()

    def __call__(self, _episode: Episode) -> None:
        self.count += 1
        if self.sink is not None and time.monotonic() - self.last > 0.1:
            self.flush()

    def flush(self) -> None:
        if self.sink is not None and self.count:
            self.sink.put((self.key, self.count))
        self.count, self.last = 0, time.monotonic()
