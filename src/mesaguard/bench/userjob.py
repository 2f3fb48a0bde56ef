"""One bench job on a user's own task (``mesaguard bench --env``): the env as given, and the shifted env.

The job of a registered scenario (:func:`mesaguard.bench.job.run_job`) with the
user's env, policy and base objective named as text (:class:`~mesaguard.bench.config.UserTask`,
made to run by :mod:`mesaguard.userenv`): the policy is rolled out once,
unguarded, on the same seed scheme; calibration episodes on the env as given
(variant ``reference``) fit a calibration of every detector at ``alpha``;
evaluation episodes on ``reference`` and on ``shifted`` are replayed for every
detector configuration. The result is stored like any job: the results table, the
deployment view and the report read it without the user's code.
"""

from __future__ import annotations

import time

from mesaguard import metrics, userenv
from mesaguard.bench.config import JobSpec, UserTask
from mesaguard.bench.job import ProgressSink, Ticker, evaluated
from mesaguard.calibration import Calibration
from mesaguard.rollout import rollout
from mesaguard.store import AlarmRecord, EpisodeRecord, JobRecord

__all__ = ["makers", "run_user_job"]


def makers(task: UserTask) -> tuple[userenv.EnvMaker, userenv.EnvMaker]:
    """The reference and shifted env makers of ``task``: the shifted one is ``--shifted-env``, else ``--env`` made
    with ``--env-kwargs`` updated by ``--shifted-kwargs``."""
    reference = userenv.EnvMaker(task.env, dict(task.env_kwargs))
    if task.shifted_env is not None:
        return reference, userenv.EnvMaker(task.shifted_env, dict(task.shifted_kwargs), "--shifted-env")
    return reference, userenv.EnvMaker(task.env, {**task.env_kwargs, **task.shifted_kwargs})


def run_user_job(spec: JobSpec, progress: ProgressSink | None = None) -> JobRecord:
    """Roll out, calibrate and replay one seed of a user's task; ``progress.put((key, n))`` counts episodes."""
    assert spec.task is not None, "run_user_job runs a user task's job"
    start = time.perf_counter()
    task = spec.task
    if not userenv.is_spec(spec.policy):  # a saved policy runs torch: one thread per worker process
        import torch

        torch.set_num_threads(1)
    reference, shifted = makers(task)
    policy = userenv.PolicyMaker(spec.policy)
    objective = userenv.objective_of("--objective", task.objective)
    tick = Ticker(spec.key, progress)
    cal_runs = rollout(reference, policy, spec.seeds("calibration"), objective=objective, on_episode=tick)
    made = reference()
    shape = made.observation_space.shape
    made.close()
    calibration = Calibration.fit(
        [e.increments for e in cal_runs], alpha=spec.alpha, detectors=list(spec.detectors), scenario=spec.scenario,
        obs_shape=shape, objective=objective,
        metadata={"policy": spec.policy, "variant": task.reference_variant, "job_seed": spec.seed,
                  "objective": task.objective},
    )
    records = [EpisodeRecord("calibration", task.reference_variant, e.seed, e.increments, e.catastrophes)
               for e in cal_runs]
    alarms: list[AlarmRecord] = []
    for variant, maker in zip(task.variants, (reference, shifted), strict=True):
        runs = rollout(maker, policy, spec.seeds("evaluation"), objective=objective, on_episode=tick)
        evaluated(calibration, spec.detectors, variant, runs, records, alarms)
    tick.flush()
    floor = metrics.score_floor([e.score for e in cal_runs], spec.alpha)
    return JobRecord(spec.scenario, spec.seed, calibration.to_dict(), floor, time.perf_counter() - start, records,
                     alarms)
