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


class _Shown:
    """The ``--format`` of the command running: ``table`` shows progress and messages on stdout with the tables;
    any other keeps stdout for the table alone and sends them to stderr."""

    format = "table"


def set_format(fmt: str) -> str:
    """Check ``--format`` (an :class:`OptionError` otherwise) and route what the command prints by it."""
    _Shown.format = _choice("--format", fmt, ("table", "csv", "json", "markdown"))
    return fmt


def shown_format() -> str:
    """The ``--format`` of the command running."""
    return _Shown.format


def output() -> Console:
    """Where tables go: stdout."""
    return console


def messages() -> Console:
    """Where progress and messages go: stdout with ``--format table``, else stderr."""
    return console if _Shown.format == "table" else _notes


_notes = Console(stderr=True)


@app.callback()
def _each_command() -> None:
    """Before every command: tables and messages on stdout until the command's ``--format`` says otherwise."""
    _Shown.format = "table"


FormatOption = Annotated[
    str,
    typer.Option("--format", help="table (for people; fits 80 columns), csv or json (the main table for scripts, "
                                  "every value at full precision; json: a list of row objects) or markdown (a pipe "
                                  "table). With csv, json and markdown, progress and messages go to stderr."),
]


ALL = "cusum,meanshift"  # mesaguard.detectors.DEFAULT (a test holds them equal; the CLI starts without NumPy)
MATCH = "linear"  # mesaguard.matching.DEFAULT_MATCH (a test holds them equal)


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
    with Progress(*columns, console=messages(), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda _episode: bar.advance(task)


Store = Annotated[Path, typer.Option("--db", help="The bench's SQLite store.")]


DEFAULT_DB = Path("runs/bench.sqlite")


# -- a user's own task (--env): the options that name it, and their checks ------------------------------------


EnvOption = Annotated[
    str | None,
    typer.Option("--env", help="Your own env instead of SCENARIO: a Gymnasium id (CartPole-v1) or module:factory "
                               "(a callable returning an env, imported from the current directory or the path)."),
]


EnvKwargs = Annotated[
    str | None, typer.Option(help="JSON object of keyword arguments for --env (gymnasium.make's or the factory's).")
]


ObjectiveOption = Annotated[
    str | None,
    typer.Option(help="With --env: the base objective, reward (default), info:KEY or module:callable (a function "
                      "of the Transition). deploy defaults to the calibration's recorded one."),
]


ShiftedKwargs = Annotated[
    str | None, typer.Option(help="With --env: the shifted env is --env made with these JSON kwargs "
                                  "(over --env-kwargs).")
]


ShiftedEnv = Annotated[
    str | None, typer.Option(help="With --env: the shifted env, a Gymnasium id or module:factory.")
]


POLICY_HELP = ("SCENARIO: agent, aligned or misaligned. With --env: module:callable (obs -> action; a callable whose "
               "first parameter is named env is a factory env -> policy; an SB3 model's predict is used) or the "
               "stem of a policy saved with mesaguard.policies.save_policy (STEM.json + STEM.safetensors; "
               "save_policy(model, STEM) works for your own SB3 PPO model).")


def _target(scenario: str | None, env: str | None) -> tuple[str | None, str | None]:
    """(scenario, user env): exactly one of SCENARIO and --env; ``--env NAME`` of a registered scenario is SCENARIO."""
    from mesaguard.scenarios import SCENARIOS

    if scenario is not None and env is not None:
        raise OptionError(f"both SCENARIO {scenario!r} and --env {env!r}; expected one of them")
    if scenario is None and env is None:
        raise OptionError("no SCENARIO and no --env; expected a scenario name (mesaguard scenarios) or --env ENV")
    if env is not None and env in SCENARIOS:
        return env, None
    return scenario, env


def _user_only(scenario: str, **given: Any) -> None:
    """Options that only ``--env`` takes, refused with a scenario."""
    for option, value in given.items():
        if value is not None:
            raise OptionError(f"{option} {value!r} is for --env; scenario {scenario!r} fixes its env and objective")


def _scenario_only(env: str, **given: Any) -> None:
    """Options that only a scenario takes, refused with ``--env``."""
    for option, value in given.items():
        if value:
            raise OptionError(f"{option} {value!r} is for a scenario; with --env {env!r} expected it unset")


def _user_task(env: str, env_kwargs: str | None, policy: str | None, objective: str | None) -> tuple[Any, Any, Any]:
    """The user's env maker, policy maker and objective, each checked (no rollout yet)."""
    from mesaguard import userenv

    if policy is None:
        raise OptionError(f"--env {env!r} needs --policy; expected module:callable or a saved policy's stem")
    maker = userenv.env_maker("--env", env, userenv.json_kwargs("--env-kwargs", env_kwargs))
    agent = userenv.policy_maker("--policy", policy)
    base = userenv.objective_of("--objective", objective) if objective is not None else None
    return maker, agent, base


def _shifted(env: str, maker: Any, shifted_kwargs: str | None, shifted_env: str | None) -> tuple[Any, dict[str, Any]]:
    """The shifted env's maker (checked) and the kwargs that shift it: exactly one of ``--shifted-kwargs`` and
    ``--shifted-env``."""
    from mesaguard import userenv

    if (shifted_kwargs is None) == (shifted_env is None):
        raise OptionError(f"--env {env!r} needs the shifted env: expected one of --shifted-kwargs JSON and "
                          f"--shifted-env ENV")
    if shifted_env is not None:
        return userenv.env_maker("--shifted-env", shifted_env, {}), {}
    more = userenv.json_kwargs("--shifted-kwargs", shifted_kwargs)
    return userenv.env_maker("--env", env, {**maker.kwargs, **more}, "--shifted-kwargs"), more
