"""The ``mesaguard`` command: train, calibrate, deploy, demo, scenarios, bench, export, report, keygen.

Heavy imports (torch, MiniGrid, SB3) happen inside commands, so ``mesaguard --help``
stays fast. Every option is checked before any rollout; an expected failure (bad
input, a file that cannot be read or written, a damaged store) prints one line on
stderr and exits with 2 (see :func:`main`); anything else is a bug and keeps its
traceback.

One module per concept: :mod:`~mesaguard.cli.base` (the app and the option checks),
:mod:`~mesaguard.cli.tasks` (the commands on one task), :mod:`~mesaguard.cli.bench`
(the bench's commands), :mod:`~mesaguard.cli.tables` (what they show).
"""

from __future__ import annotations

import sqlite3

from rich.markup import escape

from mesaguard.cli.base import OptionError, app, console, errors

# isort: off
from mesaguard.cli import tasks  # noqa: F401  (importing registers the commands on app, in this order)
from mesaguard.cli import bench  # noqa: F401
# isort: on

__all__ = ["OptionError", "app", "console", "expected", "main", "one_line"]


def expected(exc: BaseException) -> bool:
    """Whether ``exc`` is an expected failure rather than a bug.

    Expected: mesaguard's own errors (every one subclasses ``ValueError`` in a
    ``mesaguard`` module: bad input, named), ``OSError`` (a missing file, a folder
    where a file was expected, no permission, a full disk) and SQLite's errors
    about the database file (damaged, locked). A plain ``ValueError`` or
    ``sqlite3.ProgrammingError`` is not: it is a bug and keeps its traceback.

    >>> expected(IsADirectoryError(21, "Is a directory", "runs")), expected(ValueError("x"))
    (True, False)
    """
    if isinstance(exc, sqlite3.DatabaseError):
        return not isinstance(exc, sqlite3.ProgrammingError)
    if isinstance(exc, OSError):
        return True
    own = isinstance(exc, OptionError) or type(exc).__module__.split(".")[0] == "mesaguard"  # OptionError: -m too
    return isinstance(exc, ValueError) and own


def one_line(exc: BaseException) -> str:
    """``exc`` as one line: its type and message; an ``OSError`` as its reason and the path(s) it names.

    >>> one_line(IsADirectoryError(21, "Is a directory", "runs/cal"))
    "IsADirectoryError: Is a directory: 'runs/cal'"
    """
    message = str(exc)
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        message = f"{exc.strerror}: {str(exc.filename)!r}"
        if exc.filename2 is not None:
            message += f" -> {str(exc.filename2)!r}"
    return f"{type(exc).__name__}: {' '.join(message.splitlines())}"


def main() -> None:
    """Entry point: an :func:`expected` failure prints one line on stderr and exits 2; a bug keeps its traceback."""
    try:
        app()
    except Exception as exc:
        if not expected(exc):
            raise
        kind, _, message = one_line(exc).partition(": ")
        errors.print(f"[red]{kind}[/]: {escape(message)}", highlight=False)
        raise SystemExit(2) from None
