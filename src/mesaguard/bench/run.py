"""A bench run: the jobs of a configuration that the store lacks, run on a backend and committed one by one.

Only this process writes to the :class:`~mesaguard.store.Store`, one transaction per
job, so a run cut off at any point resumes by running the jobs the store lacks. Two
benches of the same run on the same store do not race: the second waits for the
first (:mod:`mesaguard.bench.lock`) and then resumes, running only what the first
left (nothing, if it finished).
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import closing

from mesaguard.bench import backends
from mesaguard.bench.backends import Progress
from mesaguard.bench.config import BenchConfig, BenchError
from mesaguard.bench.lock import run_lock
from mesaguard.store import JobRecord, Store

__all__ = ["run_bench"]


def run_bench(
    config: BenchConfig,
    store: Store,
    *,
    run_id: str | None = None,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    progress: Progress | None = None,
) -> str:
    """Run the jobs of ``config`` the store lacks, committing each as it finishes; return the run id.

    ``backend="local"`` runs ``workers`` worker processes (``workers=1``: this
    process); ``backend="ray"`` submits one Ray task per job to the cluster at
    ``address`` (default: ``ray.init()``'s, a local one where none is running).
    The same run id with the same config resumes; with another config it is an error.
    While another bench runs the same run on the same store, this one waits for it
    (``progress.waiting(run_id)`` says so), then resumes.
    """
    if backend not in ("local", "ray"):
        raise BenchError(f"backend {backend!r}; expected 'local' or 'ray'")
    progress = progress or Progress()
    run_id = run_id or config.run_id()
    with run_lock(store.path, run_id, on_wait=lambda: progress.waiting(run_id)):
        store.create_run(run_id, config.as_dict())
        done = store.done_jobs(run_id)
        specs = [s for s in config.jobs() if s.key not in done]
        progress.start(specs, len(done))
        if not specs:
            return run_id
        results: Generator[JobRecord, None, None]
        if backend == "ray":
            results = backends.ray(specs, address, progress)
        elif workers <= 1 or len(specs) == 1:
            results = backends.serial(specs, progress)
        else:
            results = backends.local(specs, min(workers, len(specs)), progress)
        with closing(results):  # an error here stops the backend (its workers) before the lock is let go
            for record in results:
                store.write_job(run_id, record)
                progress.finish((record.scenario, record.seed))
    return run_id
