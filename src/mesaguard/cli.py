"""The ``mesaguard`` command: train, calibrate, deploy, demo, scenarios.

Heavy imports (torch, MiniGrid, SB3) happen inside commands, so ``mesaguard --help``
stays fast.
"""

from __future__ import annotations

import json
import math
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
    out: Annotated[Path | None, typer.Option(help="Output stem (writes STEM.json and STEM.safetensors).")] = None,
) -> None:
    """Train the scenario's agent with PPO (the base optimizer) and save it without pickle."""
    from mesaguard.scenarios import get
    from mesaguard.train import train as run_training

    get(scenario)
    stem = out or Path("runs") / scenario / "agent"
    path = run_training(scenario, timesteps=timesteps, seed=seed, out=stem)
    console.print(f"saved the policy to [bold]{path}[/]")


@app.command()
def calibrate(
    scenario: str,
    episodes: Annotated[int, typer.Option(min=2, help="In-distribution episodes (half fit, half threshold).")] = 200,
    alpha: Annotated[float, typer.Option(help="Per-episode false-alarm rate.")] = 0.05,
    detectors: Detectors = ALL,
    policy: Annotated[str, typer.Option(help="agent, aligned or misaligned.")] = "agent",
    out: Annotated[Path | None, typer.Option("-o", "--out")] = None,
    workers: Workers = 1,
) -> None:
    """Fit thresholds on held-out in-distribution episodes of the agent; save them as JSON."""
    cal = _calibrate(scenario, episodes, alpha, _names(detectors), policy, workers)
    path = cal.save(out or Path("runs") / scenario / "calibration.json")
    _show_calibration(cal)
    console.print(f"saved the calibration to [bold]{path}[/]")


def _calibrate(scenario: str, episodes: int, alpha: float, names: list[str], policy: str, workers: int):
    from mesaguard import experiment

    with _progress(f"calibrating {scenario}", episodes) as advance:
        return experiment.calibrate(
            scenario, policy=policy, episodes=episodes, alpha=alpha, detectors=names, workers=workers, on_episode=advance
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
def deploy(
    scenario: str,
    calibration: Annotated[Path, typer.Option(help="Calibration file (mesaguard calibrate).")],
    variant: Annotated[str | None, typer.Option(help="Shifted variant (default: the scenario's deploy).")] = None,
    detectors: Detectors = ALL,
    protocol: Annotated[str, typer.Option(help="stop, or fallback (the scripted aligned policy takes over).")] = "stop",
    policy: str = "agent",
    episodes: Episodes = 200,
    workers: Workers = 1,
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Where to save the table (JSON).")] = None,
) -> None:
    """Deploy the agent with the guard, in-distribution and shifted; print and save the table."""
    from mesaguard.calibration import Calibration

    cal = Calibration.load(calibration)
    names = _names(detectors)
    configs = [[n] for n in names] + ([names] if len(names) > 1 else [])
    rows = _deploy(scenario, cal, configs, variant, policy, protocol, episodes, workers)
    _report(scenario, rows, out or calibration.parent / "deploy.json")


def _deploy(scenario, cal, configs, variant, policy, protocol, episodes, workers) -> list[Row]:
    from mesaguard import experiment

    total = episodes * 2 * (len(configs) + 1)
    with _progress(f"deploying {scenario}", total) as advance:
        return experiment.deploy(
            scenario, cal, configs, variant=variant, policy=policy, protocol=protocol,
            episodes=episodes, workers=workers, on_episode=advance,
        )  # fmt: skip


def _fmt(x: float, spec: str = ".2f") -> str:
    return "-" if math.isnan(x) else format(x, spec)


def _report(scenario: str, rows: list[Row], out: Path) -> None:
    from mesaguard.files import write_atomic

    table = Table(title=f"{scenario}: guard at work ({rows[0].episodes} episodes per variant)")
    for col in (
        "detectors", "false alarms (train)", "detected (deploy)", "mean delay", "base obj. train guarded / free",
        "base obj. deploy guarded / free", "catastrophes deploy guarded / free",
    ):  # fmt: skip
        table.add_column(col)
    for r in rows:
        table.add_row(
            r.detectors,
            str(r.false_alarms),
            str(r.detection.rate),
            _fmt(r.detection.mean_delay, ".1f"),
            f"{_fmt(r.score_train_guarded)} / {_fmt(r.score_train_free)}",
            f"{_fmt(r.score_deploy_guarded)} / {_fmt(r.score_deploy_free)}",
            f"{r.catastrophes_guarded} / {r.catastrophes_free}",
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


def main() -> None:
    """Entry point: mesaguard's own errors (bad input) print one clear line and exit with 2."""
    try:
        app()
    except ValueError as exc:
        if not type(exc).__module__.startswith("mesaguard"):
            raise
        errors.print(f"[red]{type(exc).__name__}[/]: {escape(str(exc))}", highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
