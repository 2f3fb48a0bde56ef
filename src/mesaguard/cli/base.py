"""What every ``mesaguard`` command shares: the Typer app, the consoles, option types and the checks of options.

Every check here runs before any rollout and raises :class:`OptionError` (or a
mesaguard error) naming the option, the value and what was expected.
"""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from collections.abc import Iterator



app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.split("\n")[0])


console = Console()


errors = Console(stderr=True, soft_wrap=True)  # one unbroken line per error, greppable


ALL = "threshold,envelope,cusum,meanshift"


Detectors = Annotated[str, typer.Option(help="Comma-separated detector names.")]


Episodes = Annotated[int, typer.Option(min=1, help="Episodes per variant.")]


Workers = Annotated[int, typer.Option(min=1, help="Worker processes for rollouts.")]


POLICIES = ("agent", "aligned", "misaligned")  # experiment.policy_factory's names


PROTOCOLS = ("stop", "fallback")  # experiment._protocol's names


class OptionError(ValueError):
    """A command-line value that cannot work: a name not among the valid ones, a path of the wrong kind."""


def _choice(option: str, value: str, valid: tuple[str, ...]) -> str:
    """``value`` if it is one of ``valid``, else :class:`OptionError` naming the option, the value and the choices.

    >>> _choice("--protocol", "stpo", PROTOCOLS)
    Traceback (most recent call last):
    ...
    mesaguard.cli.base.OptionError: unknown --protocol 'stpo'; expected one of: stop, fallback
    """
    if value not in valid:
        raise OptionError(f"unknown {option} {value!r}; expected one of: {', '.join(valid)}")
    return value


def _scenario(name: str) -> Any:
    """The scenario ``name``; a :class:`ScenarioError` for an unknown name, an :class:`OptionError` naming the
    pip extra to install when the packages it needs are missing."""
    from mesaguard.scenarios import get

    scenario = get(name)
    extra = scenario.missing_extra()
    if extra:
        raise OptionError(f"scenario {name!r} needs the {extra} extra: pip install 'mesaguard[{extra}]'")
    return scenario


def _output(option: str, path: Path, folder: bool = False) -> Path:
    """``path`` if a file (``folder=False``) or a folder can be written there: checked before any work."""
    if folder and path.exists() and not path.is_dir():
        raise OptionError(f"{option} {path} is a file; expected a folder")
    if not folder and path.is_dir():
        raise OptionError(f"{option} {path} is a folder; expected a file")
    parent = next((q for q in path.parents if q.exists()), None)
    if parent is not None and not parent.is_dir():
        raise OptionError(f"{option} {path}: {parent} is a file, not a folder")
    return path


def _enough_episodes(episodes: int, alpha: float) -> None:
    """A :class:`CalibrationError` before any rollout when ``episodes`` cannot calibrate at ``alpha``."""
    from mesaguard.calibration import CalibrationError, check_alpha, episodes_needed

    if episodes < episodes_needed(check_alpha(alpha)):
        raise CalibrationError(
            f"--episodes {episodes} is too few to calibrate at alpha={alpha}: "
            f"pass --episodes {episodes_needed(alpha)} or more, or a larger --alpha"
        )


def _runnable(names: list[str], every: bool) -> list[str]:
    """``names`` whose packages are installed: with ``every`` (``--scenarios all``) the others are skipped with one
    line each naming the extra to install; a scenario named explicitly must be runnable."""
    from mesaguard.scenarios import get

    runnable = []
    for name in names:
        extra = get(name).missing_extra()
        if extra and every:
            errors.print(f"skipping {name}: it needs the {extra} extra: pip install 'mesaguard[{extra}]'",
                         highlight=False, markup=False)
            continue
        runnable.append(_scenario(name).name)
    return runnable


@contextmanager
def _store_errors(db: Path) -> Iterator[None]:
    """Turn an SQLite failure inside the block (a damaged file, a lock held too long) into a StoreError naming
    ``db``. ``ProgrammingError`` (a wrong query: a bug) passes through."""
    from mesaguard.store import StoreError

    try:
        yield
    except sqlite3.DatabaseError as exc:
        if isinstance(exc, sqlite3.ProgrammingError):
            raise
        raise StoreError(f"{db}: SQLite says {exc} ({type(exc).__name__}); the store is damaged or in use") from exc


def _existing_store(db: Path) -> Path:
    """``db`` if a store is there (reading commands must not create an empty one)."""
    from mesaguard.store import StoreError

    if not db.exists():
        raise StoreError(f"no store at {db}; create one with `mesaguard bench --db {db}`")
    return db


def _names(detectors: str) -> list[str]:
    from mesaguard.detectors import detector_class

    names = [d.strip() for d in detectors.split(",") if d.strip()]
    for name in names:
        detector_class(name)  # unknown names: a clear error listing the valid ones
    return names


@contextmanager
def _progress(description: str, total: int) -> Iterator[Any]:
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda _episode: bar.advance(task)


Store = Annotated[Path, typer.Option("--db", help="The bench's SQLite store.")]


DEFAULT_DB = Path("runs/bench.sqlite")
