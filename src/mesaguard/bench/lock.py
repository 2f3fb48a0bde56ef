"""One bench at a time per run of a store: a second waits for the first, then resumes what it left.

Two ``mesaguard bench`` with the same run on the same store would both run the jobs
the store lacks and the second to commit a job would hit the store's uniqueness of
(run, scenario, seed). The run's lock is an exclusive ``flock`` on a file beside the
store (``<store>.<run digest>.lock``): the operating system releases it when its
holder ends, however it ends (SIGKILL included), so a killed bench never leaves a
run locked. The holder removes the file when it is done; a waiter that acquires a
file removed meanwhile tries again on the new one.

Where ``fcntl`` is missing (not POSIX), or for an in-memory store, there is no lock:
the store itself still stays consistent, and the second bench stops at its first
duplicate job with the store's error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

__all__ = ["lock_path", "run_lock"]


def lock_path(store_path: str, run_id: str) -> str:
    """The lock file of ``run_id`` in the store at ``store_path``.

    >>> lock_path("runs/bench.sqlite", "demo")
    'runs/bench.sqlite.2a97516c354b6884.lock'
    """
    return f"{store_path}.{hashlib.sha256(run_id.encode()).hexdigest()[:16]}.lock"


def _is_file_at(fd: int, path: str) -> bool:
    """Whether ``fd`` is (still) the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@contextmanager
def run_lock(store_path: str, run_id: str, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold ``run_id``'s lock in the store at ``store_path`` for the block; ``on_wait()`` once if it must wait."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (see the module's docstring)
        fcntl = None  # type: ignore[assignment]
    if fcntl is None or store_path == ":memory:":
        yield
        return
    path = lock_path(store_path, run_id)
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)  # an interrupt here (Ctrl-C while waiting) closes fd below
            if _is_file_at(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the holder removed the file while this one waited on it: lock the new one
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)  # before the unlock: a waiter on this file sees it gone and tries the next one
        os.close(fd)
