"""Where a bench's jobs run: this process, local worker processes, or Ray tasks; and how they report progress.

Each backend takes the job specs and yields their :class:`~mesaguard.store.JobRecord`
as they finish (in any order); only the caller writes them to the store. Jobs report
finished episodes to a :class:`Progress` through a sink with ``put((key, n))``: a
direct call here, a multiprocessing queue from worker processes (drained by this
process), a Ray queue from Ray tasks.

Local workers die with this process: each holds the read end of a *lifeline* pipe
whose only write end stays here, and a thread in the worker exits the process when
the pipe reports end-of-file, which the operating system does when this process
ends, however it ends (SIGKILL included). Without it, a bench killed while its
workers wait for work leaves them blocked on the job queue for good.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Sequence
from multiprocessing.connection import Connection
from typing import Any

from mesaguard.bench.config import BenchError, JobSpec
from mesaguard.bench.job import ProgressSink, run_job
from mesaguard.store import JobRecord

__all__ = ["Progress", "die_with_parent", "local", "ray", "serial"]


class Progress:
    """What the bench tells its caller as it goes (the CLI draws rich progress bars)."""

    def start(self, jobs: Sequence[JobSpec], done: int) -> None: ...

    def advance(self, key: tuple[str, int], episodes: int) -> None: ...

    def finish(self, key: tuple[str, int]) -> None: ...

    def waiting(self, run_id: str) -> None:
        """Another bench holds the run: this one waits for it, then resumes what it left."""


class _Direct:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def put(self, item: tuple[tuple[str, int], int]) -> None:
        self.progress.advance(*item)


def serial(specs: Sequence[JobSpec], progress: Progress) -> Generator[JobRecord, None, None]:
    """The jobs one after the other, in this process."""
    for spec in specs:
        yield run_job(spec, _Direct(progress))


# -- local worker processes ------------------------------------------------------------------------------------


def die_with_parent(lifeline: Connection) -> threading.Thread:
    """Exit this process (``os._exit``) as soon as ``lifeline``'s other end is closed everywhere.

    ``lifeline`` is the read end of a ``multiprocessing.Pipe(duplex=False)`` whose write
    end only the parent keeps: nothing is ever sent, so ``recv`` returns only by
    raising ``EOFError`` (or ``OSError``) when the parent is gone. Returns the watching
    (daemon) thread.
    """

    def watch() -> None:
        try:
            lifeline.recv()
        except (EOFError, OSError):
            pass
        os._exit(1)  # the parent is gone: nobody will read this worker's results

    thread = threading.Thread(target=watch, name="mesaguard-lifeline", daemon=True)
    thread.start()
    return thread


class _Worker:
    """A worker process's link to the bench: the progress queue, set once by :func:`_start_worker`.

    A multiprocessing queue reaches a pool's worker only when the worker starts (it
    cannot be sent with each job), so the worker keeps it here; the bench process
    itself keeps no such state.
    """

    sink: ProgressSink | None = None


def _start_worker(queue: Any, lifeline: Connection, parent_end: Connection) -> None:
    parent_end.close()  # this worker's copy of the write end: only the bench's may keep the pipe open
    die_with_parent(lifeline)
    _Worker.sink = queue


def _run_in_worker(spec: JobSpec) -> JobRecord:
    return run_job(spec, _Worker.sink)


def _drain(queue: Any, progress: Progress) -> None:
    import queue as queue_module

    while True:
        try:
            progress.advance(*queue.get_nowait())
        except queue_module.Empty:
            return


def local(specs: Sequence[JobSpec], workers: int, progress: Progress) -> Generator[JobRecord, None, None]:
    """The jobs on ``workers`` local worker processes, which die with this process."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context()
    queue = ctx.Queue()
    lifeline, parent_end = ctx.Pipe(duplex=False)
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(queue, lifeline, parent_end))
    try:
        pending = {pool.submit(_run_in_worker, s) for s in specs}
        while pending:
            done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            _drain(queue, progress)
            for f in done:
                try:
                    yield f.result()
                except BrokenProcessPool:
                    raise BenchError(
                        "a worker process died (killed, or out of memory); the jobs committed so far are kept: "
                        "run the same command again to resume"
                    ) from None
    finally:  # on an error or an interrupt, do not wait for the jobs still queued
        pool.shutdown(wait=True, cancel_futures=True)
        queue.close()
        lifeline.close()
        parent_end.close()  # after the shutdown: closing it first would end the workers mid-job


# -- Ray tasks -------------------------------------------------------------------------------------------------


def ray(specs: Sequence[JobSpec], address: str | None, progress: Progress) -> Generator[JobRecord, None, None]:
    """The jobs as Ray tasks on the cluster at ``address`` (default: ``ray.init()``'s)."""
    try:
        import ray as ray_module
        from ray.util.queue import Queue
    except ImportError:
        raise BenchError("--backend ray needs Ray: pip install 'mesaguard[ray]'") from None
    if not ray_module.is_initialized():
        ray_module.init(address=address)
    queue = Queue()
    task = ray_module.remote(num_cpus=1)(run_job)
    refs = [task.remote(s, queue) for s in specs]
    try:
        while refs:
            ready, refs = ray_module.wait(refs, num_returns=1, timeout=0.1)
            while not queue.empty():
                for item in queue.get_nowait_batch(queue.qsize()):
                    progress.advance(*item)
            for ref in ready:
                yield ray_module.get(ref)
    finally:
        for ref in refs:
            ray_module.cancel(ref)
        queue.shutdown()
