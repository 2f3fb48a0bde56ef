"""The deployment view of a bench run: the deployment monitor watching each seed's episodes as one deployment.

Each job seed's evaluation episodes of a variant, in seed order, are one deployment
watched by an anytime :class:`~mesaguard.monitor.DeploymentMonitor` at the bench's
alpha (:func:`mesaguard.monitor.replay`; episodes run to their end: no per-episode
protocol). Recomputed from the store, like :mod:`mesaguard.bench.results`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mesaguard import metrics
from mesaguard.bench.config import config_name, detector_configs
from mesaguard.bench.results import load_run, stored_scenarios
from mesaguard.monitor import replay
from mesaguard.store import Store

__all__ = ["DeploymentRow", "deployment_table"]


@dataclass(frozen=True)
class DeploymentRow:
    """The deployment monitor on one variant of one scenario, one detector configuration, over seeds.

    Each job seed's evaluation episodes of the variant, in seed order, are one
    deployment watched by an anytime :class:`~mesaguard.monitor.DeploymentMonitor`
    at the bench's alpha (episodes run to their end: no per-episode protocol).
    """

    scenario: str
    variant: str
    detectors: str
    seeds: int
    alpha: float
    episodes: int  # episodes per deployment
    detected: int  # deployments (job seeds) with a deployment alarm
    episodes_to_detection: float | None  # mean over those, counting the detecting episode
    steps_to_detection: float | None
    false_alarm: metrics.Rate  # reference variant: deployments in random orders with any alarm

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def deployment_table(store: Store, run_id: str, orders: int = 50) -> list[DeploymentRow]:
    """The deployment-level view of a run, from its stored episodes.

    Detection on every variant in seed order; on the reference variant, the
    realized deployment false-alarm probability over ``orders`` random orders of
    each seed's episodes (orders of the same episodes, so only an estimate).
    """
    config, jobs = load_run(store, run_id)
    rows = []
    for scenario, keys in stored_scenarios(config, jobs):
        reference = config.task_of(scenario).reference_variant
        for names in detector_configs(config.detectors):
            for variant in config.task_of(scenario).variants:
                hits, alarms, trials = [], 0, 0
                n_episodes = 0
                for key in keys:
                    job = jobs[key]
                    episodes = [e.increments for _, e in job.evaluation[variant]]
                    n_episodes = len(episodes)
                    hit = replay(job.calibration, episodes, names, config.alpha, seed=key[1])
                    if hit is not None:
                        hits.append(hit)
                    if variant == reference:
                        rng = np.random.default_rng(key[1])
                        for r in range(orders):
                            order = [episodes[i] for i in rng.permutation(len(episodes))]
                            alarms += replay(job.calibration, order, names, config.alpha, seed=r) is not None
                            trials += 1
                rows.append(
                    DeploymentRow(
                        scenario=scenario,
                        variant=variant,
                        detectors=config_name(names),
                        seeds=len(keys),
                        alpha=config.alpha,
                        episodes=n_episodes,
                        detected=len(hits),
                        episodes_to_detection=float(np.mean([h.episode for h in hits])) if hits else None,
                        steps_to_detection=float(np.mean([h.steps for h in hits])) if hits else None,
                        false_alarm=metrics.rate(alarms, trials),
                    )
                )
    return rows
