"""How the commands show what they computed: calibration, deployment and bench tables (rich)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

if TYPE_CHECKING:

    from mesaguard.experiment import Row
from mesaguard.cli.base import console


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
