"""The bench's commands: ``bench`` (scenarios, or a user's own task, x detectors x seeds into a SQLite store),
``export``, ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mesaguard.cli.base import (
    ALL,
    DEFAULT_DB,
    POLICIES,
    POLICY_HELP,
    Detectors,
    EnvKwargs,
    EnvOption,
    FormatOption,
    ObjectiveOption,
    OptionError,
    ShiftedEnv,
    ShiftedKwargs,
    Store,
    _choice,
    _existing_store,
    _names,
    _output,
    _runnable,
    _scenario_only,
    _shifted,
    _store_errors,
    _target,
    _user_only,
    _user_task,
    app,
    console,
    messages,
    set_format,
)
from mesaguard.cli.tables import bench_views, show


class _BenchBars:
    """Rich progress for the bench: one bar for all jobs, one per job while it runs."""

    def __init__(self, bar: Progress) -> None:
        self.bar, self.tasks, self.overall = bar, {}, None

    def start(self, jobs: list[Any], done: int) -> None:
        self.specs = {j.key: j for j in jobs}
        self.overall = self.bar.add_task("jobs", total=len(jobs) + done, completed=done)

    def advance(self, key: tuple[str, int], episodes: int) -> None:
        if key not in self.tasks:
            total = self.specs[key].total_episodes
            self.tasks[key] = self.bar.add_task(f"  {key[0]} seed {key[1]} (episodes)", total=total)
        self.bar.advance(self.tasks[key], episodes)

    def finish(self, key: tuple[str, int]) -> None:
        if key in self.tasks:
            self.bar.update(self.tasks[key], completed=self.specs[key].total_episodes, visible=False)
        self.bar.advance(self.overall)

    def waiting(self, run_id: str) -> None:
        self.bar.console.print(f"another bench is running run [bold]{escape(run_id)}[/] on this store: waiting for it "
                               "to finish, then resuming what it left")


@app.command()
def bench(
    scenarios: Annotated[
        str | None, typer.Option(help="Comma-separated scenario names, or 'all' (the default; not with --env).")
    ] = None,
    detectors: Detectors = ALL,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per scenario (0, 1, ..., SEEDS-1): one job each.")] = 3,
    episodes: Annotated[int, typer.Option(min=1, help="Evaluation episodes per variant and seed.")] = 100,
    calibration_episodes: Annotated[
        int | None, typer.Option(help="In-distribution calibration episodes per seed (default: --episodes).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Per-episode false-alarm rate the guards are calibrated to.")] = 0.05,
    policy: Annotated[str | None, typer.Option(help=POLICY_HELP + " Default with scenarios: agent.")] = None,
    safeguards: Annotated[
        str, typer.Option(help="Comma-separated preventive safeguards run next to the detectors: "
                                 "scope, shield, quantilizer (its base the scripted aligned policy: an oracle), "
                                 "quantilizer-bc (its base cloned from reference demonstrations), combined, impact "
                                 "(the agent trained with an impact penalty), continual (the agent keeps learning, "
                                 "rolled back on alarm). Scenarios only.")
    ] = "",
    shield_model: Annotated[
        str, typer.Option(help="Comma-separated models the shield and combined look ahead on, each its own row: "
                                 "simulator (the scenario's designer's simulator), learned (the shipped learned "
                                 "model), copy (a copy of the deployed env: the oracle, an upper bound).")
    ] = "simulator,learned,copy",
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes (1: in this process).")] = 1,
    backend: Annotated[str, typer.Option(help="local (worker processes) or ray (Ray tasks).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: ray.init()'s).")] = None,
    db: Store = DEFAULT_DB,
    run: Annotated[
        str | None, typer.Option(help="Run name (default: derived from the options, so reruns resume).")
    ] = None,
    env: EnvOption = None,
    env_kwargs: EnvKwargs = None,
    shifted_kwargs: ShiftedKwargs = None,
    shifted_env: ShiftedEnv = None,
    objective: ObjectiveOption = None,
    format: FormatOption = "table",
) -> None:
    """Measure every detector on every scenario over seeds; store the runs; resume a run cut off.

    Or on your own task, the env as given against the shifted one: mesaguard bench --env mytask:make_env
    --shifted-kwargs '{"length": 1.5}' --policy mytask:pd --objective mytask:margin
    """
    set_format(format)
    _choice("--backend", backend, ("local", "ray"))
    names = _names(detectors)
    sizes: dict[str, Any] = {
        "detectors": tuple(names), "seeds": tuple(range(seeds)), "episodes": episodes,
        "calibration_episodes": calibration_episodes or episodes, "alpha": alpha,
    }
    if env is not None and scenarios is not None:
        raise OptionError(f"both --scenarios {scenarios!r} and --env {env!r}; expected one of them")
    scenario, user_env = _target(None, env) if env is not None else (scenarios, None)
    if user_env is not None:
        _scenario_only(user_env, **{"--safeguards": safeguards})
        config = _user_config(user_env, env_kwargs, shifted_kwargs, shifted_env, policy, objective, sizes)
    else:
        config = _scenario_config(scenario, policy, _modelled(safeguards, shield_model), sizes, env_kwargs=env_kwargs,
                                  shifted_kwargs=shifted_kwargs, shifted_env=shifted_env, objective=objective)
    _run(config, run, backend, workers, ray_address, db)


def _modelled(safeguards: str, shield_models: str) -> str:
    """``--safeguards`` with ``shield`` and ``combined`` expanded to one name per ``--shield-model``."""
    from mesaguard.bench.config import MODELLED, modelled
    from mesaguard.safeguards.model_kinds import MODEL_KINDS

    kinds = [k.strip() for k in shield_models.split(",") if k.strip()]
    for k in kinds:
        _choice("--shield-model", k, MODEL_KINDS)
    if not kinds:
        raise OptionError(f"--shield-model {shield_models!r}; expected one or more of {', '.join(MODEL_KINDS)}")
    names = [g.strip() for g in safeguards.split(",") if g.strip()]
    return ",".join(n for g in names for n in ([modelled(g, k) for k in kinds] if g in MODELLED else [g]))


def _scenario_config(scenarios: str | None, policy: str | None, safeguards: str, sizes: dict[str, Any],
                     **user: str | None) -> Any:
    """The run of registered scenarios (``all``: those whose extras are installed, the others skipped)."""
    from mesaguard.bench import BenchConfig
    from mesaguard.scenarios import SCENARIOS

    chosen = (scenarios or "all").strip()
    _user_only(chosen, **{f"--{k.replace('_', '-')}": v for k, v in user.items()})
    names = list(SCENARIOS) if chosen == "all" else [s.strip() for s in chosen.split(",") if s.strip()]
    names = _runnable(names, every=chosen == "all")
    policy = _choice("--policy", policy or "agent", POLICIES)
    return BenchConfig(scenarios=tuple(names), policy=policy,
                       safeguards=tuple(g.strip() for g in safeguards.split(",") if g.strip()), **sizes)


def _user_config(env: str, env_kwargs: str | None, shifted_kwargs: str | None, shifted_env: str | None,
                 policy: str | None, objective: str | None, sizes: dict[str, Any]) -> Any:
    """The run of a user's task: its env, policy and objective checked on one step of each env, before any job."""
    from mesaguard import userenv
    from mesaguard.bench import BenchConfig
    from mesaguard.bench.config import UserTask

    maker, agent, base = _user_task(env, env_kwargs, policy, objective)
    shifted, more = _shifted(env, maker, shifted_kwargs, shifted_env)
    base = base or userenv.objective_of("--objective", "reward")
    userenv.check_task(maker, agent, base)
    userenv.check_task(shifted, agent, base)
    task = UserTask(env, maker.kwargs, shifted_env, more, objective or "reward")
    assert policy is not None  # _user_task requires it
    return BenchConfig(scenarios=(env,), policy=policy, task=task, **sizes)


def _run(config: Any, run: str | None, backend: str, workers: int, ray_address: str | None, db: Path) -> None:
    """Run (or resume) ``config`` into the store ``db``; show its tables."""
    import time

    from mesaguard.bench import deployment_table, run_bench, table
    from mesaguard.store import Store as SQLiteStore

    run_id = run or config.run_id()
    start = time.perf_counter()
    say = messages()
    with _store_errors(db), SQLiteStore(db) as store:
        done = len(store.done_jobs(run_id))
        if done:
            say.print(f"resuming run [bold]{run_id}[/]: {done} of {len(config.jobs())} jobs already stored")
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=say) as bar:
            run_bench(config, store, run_id=run_id, backend=backend, workers=workers, address=ray_address,
                      progress=_BenchBars(bar))
        rows = table(store, run_id)
        deployments = deployment_table(store, run_id)
    show(bench_views(rows, deployments, f"run {run_id}: {len(config.jobs())} jobs, "
                                        f"{time.perf_counter() - start:.1f} s"))
    say.print(f"stored in [bold]{db}[/] as run [bold]{run_id}[/]; "
              f"see it with: mesaguard report {run_id} --db {db} -o report.html")


@app.command()
def export(
    run: str,
    format: Annotated[str, typer.Option("--format", help="csv or parquet (needs pyarrow).")] = "csv",
    db: Store = DEFAULT_DB,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Folder (default: runs/RUN).")] = None,
) -> None:
    """Write a bench run's results, jobs, episodes and alarms as CSV or Parquet files."""
    from mesaguard.bench import table
    from mesaguard.store import Store as SQLiteStore
    from mesaguard.store import export as export_run

    _output("--out", out or db.parent / run, folder=True)
    with _store_errors(_existing_store(db)), SQLiteStore(db) as store:
        store.run_config(run)
        paths = export_run(store, run, out or db.parent / run, format, [r.flat() for r in table(store, run)])
    for path in paths:
        console.print(f"wrote [bold]{path}[/]")


@app.command()
def report(
    run: str,
    db: Store = DEFAULT_DB,
    out: Annotated[Path, typer.Option("-o", "--out", help="The HTML file to write.")] = Path("report.html"),
) -> None:
    """Write one self-contained HTML report of a bench run (opens offline)."""
    from mesaguard.report import write_report
    from mesaguard.store import Store as SQLiteStore

    _output("--out", out)
    with _store_errors(_existing_store(db)), SQLiteStore(db) as store:
        path = write_report(store, run, out)
    console.print(f"wrote [bold]{path}[/] ({path.stat().st_size / 1e6:.1f} MB)")
