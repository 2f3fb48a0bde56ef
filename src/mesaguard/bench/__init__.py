"""The bench: how well each safeguard does on each scenario, scenarios x detectors x seeds.

A *job* is one (scenario, seed): rolled out once unguarded, calibrated, every detector
configuration replayed offline, every safeguard run for real. A *run* is the grid of
jobs of one configuration, stored job by job and resumable. One module per concept:

======================  =====================================================================
:mod:`.config`          :class:`BenchConfig`, :class:`JobSpec`, the seed scheme, validation
:mod:`.replay`          :func:`first_alarms`: a guard's first alarm on recorded increments
:mod:`.arms`            the safeguard arms: :func:`calibrate`, :func:`fit_safeguards`
                        (a :class:`FittedSafeguards`), :data:`SAFEGUARDS`, :data:`LEARNING`
:mod:`.job`             :func:`run_job`: one (scenario, seed) job
:mod:`.userjob`         one seed of a user's own task (``mesaguard bench --env``, :class:`.config.UserTask`)
:mod:`.backends`        this process, local worker processes (they die with it), Ray tasks
:mod:`.lock`            one bench at a time per run of a store
:mod:`.run`             :func:`run_bench`: the jobs the store lacks, committed one by one
:mod:`.results`         :func:`table`, :func:`tradeoff`, :func:`load_run`, :data:`RESULT_COLUMNS`
:mod:`.deployment`      :func:`deployment_table`: the deployment monitor's view
======================  =====================================================================

The names below are imported from their modules on first use, so that reading
results (``mesaguard.bench.results``, the report) does not load the rollout side.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesaguard.bench.arms import LEARNING, SAFEGUARDS, FittedSafeguards, calibrate, fit_safeguards
    from mesaguard.bench.backends import Progress
    from mesaguard.bench.config import BenchConfig, BenchError, JobSpec, config_name, detector_configs
    from mesaguard.bench.deployment import DeploymentRow, deployment_table
    from mesaguard.bench.job import run_job
    from mesaguard.bench.replay import first_alarms
    from mesaguard.bench.results import (
        RESULT_CAPTION,
        RESULT_COLUMNS,
        BenchRow,
        Column,
        StoredJob,
        load_run,
        run_summary,
        table,
        tradeoff,
    )
    from mesaguard.bench.run import run_bench

_WHERE = {
    "arms": ("LEARNING", "SAFEGUARDS", "FittedSafeguards", "calibrate", "fit_safeguards"),
    "backends": ("Progress",),
    "config": ("BenchConfig", "BenchError", "JobSpec", "config_name", "detector_configs"),
    "deployment": ("DeploymentRow", "deployment_table"),
    "job": ("run_job",),
    "replay": ("first_alarms",),
    "results": ("RESULT_CAPTION", "RESULT_COLUMNS", "BenchRow", "Column", "StoredJob", "load_run", "run_summary",
                "table", "tradeoff"),
    "run": ("run_bench",),
}
_MODULE = {name: module for module, names in _WHERE.items() for name in names}

__all__ = [
    "LEARNING",
    "RESULT_CAPTION",
    "RESULT_COLUMNS",
    "SAFEGUARDS",
    "BenchConfig",
    "BenchError",
    "BenchRow",
    "Column",
    "DeploymentRow",
    "FittedSafeguards",
    "JobSpec",
    "Progress",
    "StoredJob",
    "calibrate",
    "config_name",
    "deployment_table",
    "detector_configs",
    "first_alarms",
    "fit_safeguards",
    "load_run",
    "run_bench",
    "run_job",
    "run_summary",
    "table",
    "tradeoff",
]  # the names of _WHERE (tests/test_bench_package.py holds them equal)


def __getattr__(name: str) -> Any:
    """A public name of the bench, imported from its module on first use."""
    if name not in _MODULE:
        raise AttributeError(f"module 'mesaguard.bench' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mesaguard.bench.{_MODULE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
