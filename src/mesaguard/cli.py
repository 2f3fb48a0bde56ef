"""The ``mesaguard`` command: train, calibrate, deploy, demo, scenarios, bench, export, report.

Heavy imports (torch, MiniGrid, SB3) happen inside commands, so ``mesaguard --help``
stays fast. Every option is checked before any rollout; an expected failure (bad
input, a file that cannot be read or written, a damaged store) prints one line on
stderr and exits with 2 (see :func:`main`); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from collections.abc import Iterator

    from mesaguard.experiment import Row

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
    mesaguard.cli.OptionError: unknown --protocol 'stpo'; expected one of: stop, fallback
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


@app.command()
def train(
    scenario: str,
    timesteps: Annotated[int, typer.Option(min=1)] = 100_000,
    seed: int = 0,
    out: Annotated[
        Path | None, typer.Option(help="Output directory (writes SCENARIO.json and .safetensors there).")
    ] = None,
    variant: Annotated[str | None, typer.Option(help="Train on this variant (default: the training one).")] = None,
    impact: Annotated[str | None, typer.Option(help="rr or aup: train on the reward minus an impact penalty.")] = None,
    beta: Annotated[float, typer.Option(help="Weight of the impact penalty.")] = 1.0,
) -> None:
    """Train the scenario's agent with PPO (the base optimizer) and save it without pickle."""
    from mesaguard.train import Impact
    from mesaguard.train import train as run_training

    spec = _scenario(scenario)
    if variant is not None:
        spec.env_id(variant)  # unknown variants: the error lists the valid ones
    if impact is not None and impact not in ("rr", "aup"):
        raise typer.BadParameter(f"impact={impact!r}; expected 'rr' or 'aup'", param_hint="--impact")
    penalty = None if impact is None else Impact(impact, beta)
    folder = _output("--out", out or Path("runs") / scenario, folder=True)
    path = run_training(scenario, timesteps=timesteps, seed=seed, out=folder, variant=variant, impact=penalty)
    console.print(f"saved the policy to [bold]{path}[/]")


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


def _scenario_only(env: str, **given: Any) -> None:
    """Options that only a scenario takes, refused with ``--env``."""
    for option, value in given.items():
        if value:
            raise OptionError(f"{option} {value!r} is for a scenario; with --env {env!r} expected it unset")


def _user_only(scenario: str, **given: Any) -> None:
    """Options that only ``--env`` takes, refused with a scenario."""
    for option, value in given.items():
        if value is not None:
            raise OptionError(f"{option} {value!r} is for --env; scenario {scenario!r} fixes its env and objective")


@app.command()
def calibrate(
    scenario: Annotated[str | None, typer.Argument(help="A registered scenario (or use --env).")] = None,
    episodes: Annotated[int, typer.Option(min=2, help="In-distribution episodes (half fit, half threshold).")] = 200,
    alpha: Annotated[float, typer.Option(help="Per-episode false-alarm rate.")] = 0.05,
    detectors: Detectors = ALL,
    policy: Annotated[str | None, typer.Option(help=POLICY_HELP + " Default: agent.")] = None,
    out: Annotated[Path | None, typer.Option("-o", "--out")] = None,
    workers: Workers = 1,
    sign_key: Annotated[
        Path | None, typer.Option(help="Sign the file with this Ed25519 signing key (mesaguard keygen).")
    ] = None,
    env: EnvOption = None,
    env_kwargs: EnvKwargs = None,
    objective: ObjectiveOption = None,
) -> None:
    """Fit thresholds on held-out in-distribution episodes of the agent; save them as JSON.

    SCENARIO, or your own env: mesaguard calibrate --env mytask:make_env --policy mytask:pd
    --objective mytask:margin -o cal.json
    """
    scenario, user_env = _target(scenario, env)
    if user_env is not None:
        _calibrate_user(user_env, env_kwargs, policy, objective, episodes, alpha, detectors, out, workers, sign_key)
        return
    assert scenario is not None
    _user_only(scenario, **{"--env-kwargs": env_kwargs, "--objective": objective})
    policy = policy or "agent"
    _scenario(scenario)
    _choice("--policy", policy, POLICIES)
    names = _names(detectors)
    _enough_episodes(episodes, alpha)
    target = _output("--out", out or Path("runs") / scenario / "calibration.json")
    signing_key = _signing_key(sign_key)
    cal = _calibrate(scenario, episodes, alpha, names, policy, workers)
    path = cal.save(target, signing_key=signing_key)
    _show_calibration(cal)
    console.print(f"saved the calibration to [bold]{path}[/]")


def _signing_key(path: Path | None) -> Any:
    """The signing key at ``path`` (None: none); a bad key is an error before any rollout."""
    if path is None:
        return None
    from mesaguard.signing import load_signing_key

    return load_signing_key(path)


def _user_task(env: str, env_kwargs: str | None, policy: str | None, objective: str | None) -> tuple[Any, Any, Any]:
    """The user's env maker, policy maker and objective, each checked (no rollout yet)."""
    from mesaguard import userenv

    if policy is None:
        raise OptionError(f"--env {env!r} needs --policy; expected module:callable or a saved policy's stem")
    maker = userenv.env_maker("--env", env, userenv.json_kwargs("--env-kwargs", env_kwargs))
    agent = userenv.policy_maker("--policy", policy)
    base = userenv.objective_of("--objective", objective) if objective is not None else None
    return maker, agent, base


def _calibrate_user(env: str, env_kwargs: str | None, policy: str | None, objective: str | None, episodes: int,
                    alpha: float, detectors: str, out: Path | None, workers: int, sign_key: Path | None) -> None:
    from mesaguard import userenv

    if out is None:
        raise OptionError(f"--env {env!r} needs -o FILE: where to write the calibration")
    maker, agent, base = _user_task(env, env_kwargs, policy, objective)
    base = base or userenv.objective_of("--objective", "reward")
    names = _names(detectors)
    _enough_episodes(episodes, alpha)
    target = _output("--out", out)
    signing_key = _signing_key(sign_key)
    userenv.check_task(maker, agent, base)
    metadata = {"env": env, "env_kwargs": maker.kwargs, "policy": policy, "objective": objective or "reward"}
    with _progress(f"calibrating {env}", episodes) as advance:
        cal = userenv.calibrate(maker, agent, base, episodes=episodes, alpha=alpha, detectors=names, workers=workers,
                                on_episode=advance, metadata=metadata)
    path = cal.save(target, signing_key=signing_key)
    _show_calibration(cal)
    console.print(f"saved the calibration to [bold]{path}[/] (objective {cal.objective!r})")


def _calibrate(scenario: str, episodes: int, alpha: float, names: list[str], policy: str, workers: int):
    from mesaguard import experiment

    with _progress(f"calibrating {scenario}", episodes) as advance:
        return experiment.calibrate(
            scenario,
            policy=policy,
            episodes=episodes,
            alpha=alpha,
            detectors=names,
            workers=workers,
            on_episode=advance,
        )


def _show_calibration(cal: Any) -> None:
    far = cal.false_alarm
    table = Table(title=f"calibration of {cal.scenario} at alpha={cal.alpha} ({cal.n_fit} fit, {cal.n_cal} held out)")
    for col in ("detector", "threshold"):
        table.add_column(col)
    for name, threshold in cal.thresholds_for(list(cal.detectors)).items():
        table.add_row(name, f"{threshold:.3g}")
    console.print(table)
    console.print(
        f"realized false-alarm rate ~ Beta({far['beta_a']:.0f}, {far['beta_b']:.0f}): "
        f"mean {far['mean']:.3f}, 90% within [{far['q05']:.3f}, {far['q95']:.3f}]"
    )


@app.command()
def keygen(
    out: Annotated[Path, typer.Argument(help="Where to write the signing key (its verify key goes to OUT.pub).")],
) -> None:
    """Make an Ed25519 key pair for signing calibration, scope and policy files (the private key is mode 0600)."""
    from mesaguard.signing import keygen as make_keys

    private, public = make_keys(out)
    console.print(f"signing key [bold]{private}[/] (keep it with the team that calibrates)")
    console.print(f"verify key [bold]{public}[/] (give it to every deployed guard)")


@app.command()
def deploy(
    scenario: Annotated[str | None, typer.Argument(help="A registered scenario (or use --env).")] = None,
    calibration: Annotated[
        Path, typer.Option(help="Calibration file (mesaguard calibrate).")
    ] = ...,  # type: ignore[assignment]  # required: typer reads ... as no default
    variant: Annotated[str | None, typer.Option(help="Shifted variant (default: the scenario's deploy).")] = None,
    detectors: Detectors = ALL,
    protocol: Annotated[
        str, typer.Option(help="stop, or fallback (the scripted aligned policy takes over; not with --env).")
    ] = "stop",
    policy: Annotated[str | None, typer.Option(help=POLICY_HELP + " Default: agent.")] = None,
    episodes: Episodes = 200,
    workers: Workers = 1,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Where to save the table (JSON).")] = None,
    verify_key: Annotated[
        list[Path] | None,
        typer.Option(help="Require the calibration to be signed by this Ed25519 verify key (repeat for several)."),
    ] = None,
    env: EnvOption = None,
    env_kwargs: EnvKwargs = None,
    shifted_kwargs: Annotated[
        str | None, typer.Option(help="With --env: the shifted env is --env made with these JSON kwargs "
                                      "(over --env-kwargs).")
    ] = None,
    shifted_env: Annotated[
        str | None, typer.Option(help="With --env: the shifted env, a Gymnasium id or module:factory.")
    ] = None,
    objective: ObjectiveOption = None,
) -> None:
    """Deploy the agent with the guard, in-distribution and shifted; print and save the table.

    SCENARIO, or your own env: mesaguard deploy --env mytask:make_env --env-kwargs '{"length": 0.5}'
    --shifted-kwargs '{"length": 1.5}' --policy mytask:pd --objective mytask:margin --calibration cal.json
    """
    from mesaguard.calibration import Calibration
    from mesaguard.signing import load_verify_key

    scenario, user_env = _target(scenario, env)
    if user_env is not None:
        _scenario_only(user_env, **{"--variant": variant, "--protocol": "" if protocol == "stop" else protocol})
        _deploy_user(user_env, env_kwargs, shifted_kwargs, shifted_env, policy, objective, calibration, detectors,
                     episodes, workers, out, verify_key)
        return
    assert scenario is not None
    _user_only(scenario, **{"--env-kwargs": env_kwargs, "--shifted-kwargs": shifted_kwargs,
                            "--shifted-env": shifted_env, "--objective": objective})
    policy = policy or "agent"
    spec = _scenario(scenario)
    if variant is not None:
        spec.env_id(variant)  # unknown variants: the error lists the valid ones
    _choice("--policy", policy, POLICIES)
    _choice("--protocol", protocol, PROTOCOLS)
    names = _names(detectors)
    target = _output("--out", out or calibration.parent / "deploy.json")
    keys = [load_verify_key(k) for k in verify_key] if verify_key else None
    cal = Calibration.load(calibration, verify_key=keys)  # with keys: unsigned or wrongly signed is an error
    cal.check(scenario=scenario)  # fitted on another scenario: an error before any rollout
    cal.joint_maxima(names)  # a detector it lacks: likewise
    configs = [[n] for n in names] + ([names] if len(names) > 1 else [])
    rows = _deploy(scenario, cal, configs, variant, policy, protocol, episodes, workers)
    _report(scenario, rows, target)


def _deploy_objective(cal: Any, calibration: Path, objective: str | None) -> Any:
    """The objective the guard computes: ``--objective``, else the calibration's recorded one (a recorded callable
    must be named again, never imported from the file), checked against the recorded one."""
    from mesaguard import userenv
    from mesaguard.guard.core import guard_objective

    if objective is None:
        recorded = cal.objective
        if recorded is not None and recorded != "reward" and not recorded.startswith("info:"):
            hint = cal.metadata.get("objective")
            spec = hint if isinstance(hint, str) and userenv.is_spec(hint) else "module:callable"
            raise OptionError(f"{calibration} was fitted on the objective {recorded!r}, a function of the "
                              f"transition; expected --objective {spec}")
        return guard_objective(cal, None)
    return guard_objective(cal, userenv.objective_of("--objective", objective))


def _deploy_user(env: str, env_kwargs: str | None, shifted_kwargs: str | None, shifted_env: str | None,
                 policy: str | None, objective: str | None, calibration: Path, detectors: str, episodes: int,
                 workers: int, out: Path | None, verify_key: list[Path] | None) -> None:
    from mesaguard import userenv
    from mesaguard.calibration import Calibration
    from mesaguard.signing import load_verify_key

    if (shifted_kwargs is None) == (shifted_env is None):
        raise OptionError(f"--env {env!r} needs the shifted env: expected one of --shifted-kwargs JSON and "
                          f"--shifted-env ENV")
    maker, agent, _ = _user_task(env, env_kwargs, policy, None)
    if shifted_env is not None:
        shifted = userenv.env_maker("--shifted-env", shifted_env, {})
    else:
        more = userenv.json_kwargs("--shifted-kwargs", shifted_kwargs)
        shifted = userenv.env_maker("--env", env, {**maker.kwargs, **more}, "--shifted-kwargs")
    names = _names(detectors)
    target = _output("--out", out or calibration.parent / "deploy.json")
    keys = [load_verify_key(k) for k in verify_key] if verify_key else None
    cal = Calibration.load(calibration, verify_key=keys)
    made = maker()
    shape = made.observation_space.shape
    made.close()
    cal.check(scenario=env, obs_shape=shape)  # fitted on another env: an error before any rollout
    cal.joint_maxima(names)
    base = _deploy_objective(cal, calibration, objective)
    catastrophes = userenv.check_task(maker, agent, base)
    userenv.check_task(shifted, agent, base)
    configs = [[n] for n in names] + ([names] if len(names) > 1 else [])
    with _progress(f"deploying {env}", episodes * 2 * (len(configs) + 1)) as advance:
        rows = userenv.deploy(maker, shifted, agent, base, cal, configs, episodes=episodes, catastrophes=catastrophes,
                              workers=workers, on_episode=advance)
    _report_user(env, shifted_env or f"--shifted-kwargs {shifted_kwargs}", rows, target)


def _report_user(env: str, shift: str, rows: list[Any], out: Path) -> None:
    from mesaguard.files import write_atomic

    catastrophes = rows[0].catastrophes_free is not None
    table = Table(
        title=f"{env}: guard at work ({rows[0].episodes} episodes per env, Stop protocol; shifted: {shift})",
        caption="FA: in-distribution runs with an alarm [95% CI]; shifted alarms: shifted runs with an alarm; "
        "detected: of the shifted runs that misbehaved (a negative increment"
        + (", a catastrophe" if catastrophes else "")
        + " or a score below the in-distribution alpha-quantile); delay: steps from the first harm; "
        "shifted G / F: mean base objective guarded / free (no guard)",
    )
    columns = ["detectors", "FA", "shifted alarms", "detected", "delay", "shifted G / F"]
    for col in columns + (["catastrophes G / F"] if catastrophes else []):
        table.add_column(col)
    for r in rows:
        cells = [r.detectors, str(r.false_alarms), str(r.shifted_alarms), str(r.detection.rate),
                 _fmt(r.detection.mean_delay, ".1f"), f"{_fmt(r.score_shifted_guarded)} / {_fmt(r.score_shifted_free)}"]
        if catastrophes:
            cells.append(f"{r.catastrophes_guarded} / {r.catastrophes_free}")
        table.add_row(*cells)
    console.print(table)
    write_atomic(out, json.dumps({"env": env, "shifted": shift, "rows": [r.as_dict() for r in rows]}, indent=1))
    console.print(f"saved the table to [bold]{out}[/]")


def _deploy(scenario, cal, configs, variant, policy, protocol, episodes, workers) -> list[Row]:
    from mesaguard import experiment

    total = episodes * 2 * (len(configs) + 1)
    with _progress(f"deploying {scenario}", total) as advance:
        return experiment.deploy(
            scenario, cal, configs, variant=variant, policy=policy, protocol=protocol,
            episodes=episodes, workers=workers, on_episode=advance,
        )


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or math.isnan(x) else format(x, spec)


def _report(scenario: str, rows: list[Row], out: Path) -> None:
    from mesaguard.files import write_atomic

    table = Table(
        title=f"{scenario}: guard at work ({rows[0].episodes} episodes per variant, Stop protocol)",
        caption="FA: false alarms on reference runs [95% CI]; detected: of the deploy runs that misbehaved; "
        "delay: steps from the first harm; G / F: guarded / free (no guard): mean base objective, catastrophes; "
        "deployment: the runs in seed order as one deployment under the anytime monitor (reference: any alarm; "
        "deploy: episode and total steps at the alarm)",
    )
    for col in ("detectors", "FA", "detected", "delay", "reference G / F", "deploy G / F", "catastrophes G / F",
                "deployment reference", "deployment deploy"):
        table.add_column(col)
    for r in rows:
        hit = r.deployment_alarm
        table.add_row(
            r.detectors,
            str(r.false_alarms),
            str(r.detection.rate),
            _fmt(r.detection.mean_delay, ".1f"),
            f"{_fmt(r.score_train_guarded)} / {_fmt(r.score_train_free)}",
            f"{_fmt(r.score_deploy_guarded)} / {_fmt(r.score_deploy_free)}",
            f"{r.catastrophes_guarded} / {r.catastrophes_free}",
            "alarm" if r.deployment_false_alarm else "no alarm",
            "no alarm" if hit is None else f"episode {hit.episode} ({hit.steps} steps)",
        )
    console.print(table)
    write_atomic(out, json.dumps({"scenario": scenario, "rows": [r.as_dict() for r in rows]}, indent=1))
    console.print(f"saved the table to [bold]{out}[/]")


@app.command()
def demo(
    scenario: str = "strawberry",
    episodes: Episodes = 200,
    alpha: float = 0.05,
    workers: Workers = 1,
    out: Annotated[Path, typer.Option("-o", "--out")] = Path("runs/demo"),
) -> None:
    """The shipped agent end to end: calibrate at alpha, deploy with every detector, show the table."""
    _scenario(scenario)
    _enough_episodes(episodes, alpha)
    _output("--out", out, folder=True)
    names = _names(ALL)
    cal = _calibrate(scenario, episodes, alpha, names, "agent", workers)
    cal.save(out / "calibration.json")
    _show_calibration(cal)
    rows = _deploy(scenario, cal, [[n] for n in names] + [names], None, "agent", "stop", episodes, workers)
    _report(scenario, rows, out / "deploy.json")


@app.command()
def scenarios() -> None:
    """List the failure-mode scenarios."""
    from mesaguard.scenarios import SCENARIOS

    table = Table(title="scenarios")
    for col in ("name", "failure mode", "shift", "base objective", "variants"):
        table.add_column(col)
    for s in SCENARIOS.values():
        table.add_row(s.name, s.failure_mode, s.shift, s.base_objective, ", ".join(s.variants))
    console.print(table)


# ---------------------------------------------------------------------------
# The bench: grid, store, export, report
# ---------------------------------------------------------------------------

Store = Annotated[Path, typer.Option("--db", help="The bench's SQLite store.")]
DEFAULT_DB = Path("runs/bench.sqlite")


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
    scenarios: Annotated[str, typer.Option(help="Comma-separated scenario names, or 'all'.")] = "all",
    detectors: Detectors = ALL,
    seeds: Annotated[int, typer.Option(min=1, help="Seeds per scenario (0, 1, ..., SEEDS-1): one job each.")] = 3,
    episodes: Annotated[int, typer.Option(min=1, help="Evaluation episodes per variant and seed.")] = 100,
    calibration_episodes: Annotated[
        int | None, typer.Option(help="In-distribution calibration episodes per seed (default: --episodes).")
    ] = None,
    alpha: Annotated[float, typer.Option(help="Per-episode false-alarm rate the guards are calibrated to.")] = 0.05,
    policy: Annotated[str, typer.Option(help="agent, aligned or misaligned.")] = "agent",
    safeguards: Annotated[
        str, typer.Option(help="Comma-separated preventive safeguards run next to the detectors: "
                                 "scope, shield, quantilizer, combined, impact (the agent trained with an impact "
                                 "penalty), continual (the agent keeps learning, rolled back on alarm).")
    ] = "",
    workers: Annotated[int, typer.Option(min=1, help="Local worker processes (1: in this process).")] = 1,
    backend: Annotated[str, typer.Option(help="local (worker processes) or ray (Ray tasks).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray cluster address (default: ray.init()'s).")] = None,
    db: Store = DEFAULT_DB,
    run: Annotated[
        str | None, typer.Option(help="Run name (default: derived from the options, so reruns resume).")
    ] = None,
) -> None:
    """Measure every detector on every scenario over seeds; store the runs; resume a run cut off."""
    import time

    from mesaguard.bench import BenchConfig, deployment_table, run_bench, table
    from mesaguard.scenarios import SCENARIOS
    from mesaguard.store import Store as SQLiteStore

    names = list(SCENARIOS) if scenarios.strip() == "all" else [s.strip() for s in scenarios.split(",") if s.strip()]
    names = _runnable(names, every=scenarios.strip() == "all")
    _choice("--policy", policy, POLICIES)
    _choice("--backend", backend, ("local", "ray"))
    config = BenchConfig(
        scenarios=tuple(names),
        detectors=tuple(_names(detectors)),
        seeds=tuple(range(seeds)),
        episodes=episodes,
        calibration_episodes=calibration_episodes or episodes,
        alpha=alpha,
        policy=policy,
        safeguards=tuple(g.strip() for g in safeguards.split(",") if g.strip()),
    )
    run_id = run or config.run_id()
    start = time.perf_counter()
    with _store_errors(db), SQLiteStore(db) as store:
        done = len(store.done_jobs(run_id))
        if done:
            console.print(f"resuming run [bold]{run_id}[/]: {done} of {len(config.jobs())} jobs already stored")
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=console) as bar:
            run_bench(config, store, run_id=run_id, backend=backend, workers=workers, address=ray_address,
                      progress=_BenchBars(bar))
        rows = table(store, run_id)
        deployments = deployment_table(store, run_id)
    _show_bench(rows, f"run {run_id}: {len(config.jobs())} jobs, {time.perf_counter() - start:.1f} s")
    _show_deployments(deployments)
    console.print(f"stored in [bold]{db}[/] as run [bold]{run_id}[/]; "
                  f"see it with: mesaguard report {run_id} --db {db} -o report.html")


def _show_bench(rows: list[Any], title: str) -> None:
    from rich.text import Text

    from mesaguard.bench.results import RESULT_CAPTION, RESULT_COLUMNS

    table = Table(title=title, caption=RESULT_CAPTION)
    for col in RESULT_COLUMNS:
        table.add_column(col.header, no_wrap=col.header.startswith("FA"))
    for r in rows:
        table.add_row(*(Text(c.cell(r), style="bold red" if c.warn and c.warn(r) else "") for c in RESULT_COLUMNS))
    console.print(table)


def _show_deployments(rows: list[Any]) -> None:
    table = Table(
        title="deployment monitor (anytime; each seed's evaluation episodes in order are one deployment)",
        caption="detected: deployments with a deployment alarm / seeds; episodes, steps: mean until it fired; "
        "deployment FA: reference-variant deployments in random orders with any alarm [95% CI]",
    )
    for col in ("scenario", "variant", "detectors", "alpha", "detected", "episodes", "steps", "deployment FA"):
        table.add_column(col, no_wrap=col == "deployment FA")
    for r in rows:
        fa = r.false_alarm
        table.add_row(
            r.scenario,
            r.variant,
            "all, jointly" if "+" in r.detectors else r.detectors,
            f"{r.alpha:g}",
            f"{r.detected}/{r.seeds}",
            _fmt(r.episodes_to_detection, ".1f"),
            _fmt(r.steps_to_detection, ".0f"),
            "" if fa.n == 0 else f"{fa.rate:.3f} [{fa.low:.3f}, {fa.high:.3f}]",
        )
    console.print(table)


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


if __name__ == "__main__":
    main()
