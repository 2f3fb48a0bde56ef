"""How the commands show what they computed: one :class:`View` per table, printed in the chosen ``--format``.

* ``table`` (the default): a rich table for people, laid out for 80 columns (a CI log,
  ``| tee``, a narrow terminal): a few short columns, a cell's parts on lines of their
  own, long names wrapped, never cut with an ellipsis;
* ``markdown``: the same columns as a pipe table, one line per row;
* ``csv`` (the :mod:`csv` module) and ``json`` (a list of row objects): the command's
  main table for scripts, one flat record per row with every value at full precision
  (the ``+``-joined detector configuration, rates with their counts and intervals).

The set of all the chosen detectors, run together, is named :data:`JOINT` in every table for people.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from mesaguard.bench.config import JOINT, run_label
from mesaguard.cli.base import messages, output, shown_format

__all__ = ["FORMATS", "JOINT", "View", "bench_views", "calibration_view", "deploy_view", "flat", "scenarios_view",
           "show", "user_deploy_view"]

FORMATS = ("table", "csv", "json", "markdown")

"""The name, in the tables for people, of the detector configuration that runs every chosen detector at once."""


@dataclass
class View:
    """One table: cells for people (a cell's lines separated by ``\\n``) and flat records for scripts.

    ``main``: the table that ``csv`` and ``json`` print (one per command); ``notes``: lines shown after it;
    ``warn``: per row, the columns to mark (a value that says the guard broke its promise); ``wrap``: the columns
    of names and text, wrapped (folded within a word if need be) to fit; the others (numbers) are never broken.
    """

    title: str
    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    records: list[dict[str, Any]]
    caption: str = ""
    main: bool = True
    notes: Sequence[str] = ()
    warn: Sequence[Sequence[bool]] = field(default_factory=list)
    wrap: Sequence[int] = (0,)


def flat(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of keys joined by ``_``; lists as comma-separated text; NaN and infinities as
    None (JSON has none of them).

    >>> flat({"a": {"k": 1, "rate": float("nan")}, "b": [1, 2], "c": None})
    {'a_k': 1, 'a_rate': None, 'b': '1,2', 'c': None}
    """
    out: dict[str, Any] = {}
    for key, v in value.items():
        name = f"{prefix}{key}"
        if isinstance(v, dict):
            out.update(flat(v, f"{name}_"))
        elif isinstance(v, (list, tuple)):
            out[name] = ",".join(str(x) for x in v)
        elif isinstance(v, float) and not math.isfinite(v):
            out[name] = None
        else:
            out[name] = v
    return out


def show(views: Sequence[View]) -> None:
    """Print ``views`` on stdout in the command's ``--format``: every view as a table or markdown; the main one as
    csv or json."""
    fmt = shown_format()
    if fmt in ("csv", "json"):
        (view,) = [v for v in views if v.main]
        for note in view.notes:
            messages().print(note, markup=False, highlight=False)
        if fmt == "json":
            sys.stdout.write(json.dumps(view.records, indent=1) + "\n")
        else:
            _csv(view.records)
        return
    for view in views:
        if fmt == "markdown":
            _markdown(view)
        else:
            _rich(view)


def _csv(records: list[dict[str, Any]]) -> None:
    keys = list(dict.fromkeys(k for r in records for k in r))
    writer = csv.DictWriter(sys.stdout, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)


def _md(text: str) -> str:
    return " ".join(text.split("\n")).replace("|", "\\|")


def _markdown(view: View) -> None:
    lines = [f"**{_md(view.title)}**", "", "| " + " | ".join(_md(h) for h in view.headers) + " |",
             "|" + "|".join(" --- " for _ in view.headers) + "|"]
    lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in view.rows]
    if view.caption:
        lines += ["", _md(view.caption)]
    lines += [*(["", *view.notes] if view.notes else []), ""]
    sys.stdout.write("\n".join(lines) + "\n")


def _rich(view: View) -> None:
    table = Table(caption=view.caption or None, box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False,
                  collapse_padding=True, caption_justify="left")
    output().print(Text(view.title, style="italic"))  # above the table, wrapped to the console, not to the table
    for j, header in enumerate(view.headers):
        if j in view.wrap:
            table.add_column(header, overflow="fold")
        else:  # as wide as its widest line: a number is never broken
            width = max((len(line) for row in view.rows for line in row[j].split("\n")), default=1)
            table.add_column(header, overflow="fold", no_wrap=True, min_width=width)
    for i, row in enumerate(view.rows):
        marks = view.warn[i] if i < len(view.warn) else [False] * len(row)
        table.add_row(*(Text(c, style="bold red" if m else "") for c, m in zip(row, marks, strict=True)))
    output().print(table)
    for note in view.notes:
        output().print(note, markup=False, highlight=False)


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or math.isnan(x) else format(x, spec)


def _detectors(name: str) -> str:
    """A detector configuration for people: its one detector, or :data:`JOINT`."""
    return run_label(name)


def _rate(rate: Any) -> str:
    """A rate over its 95% interval, on two lines."""
    return f"{_fmt(rate.rate, '.3f')}\n[{rate.low:.3f}, {rate.high:.3f}]"


def _counted(rate: Any) -> str:
    """A rate over its counts, on two lines."""
    return f"{_fmt(rate.rate, '.3f')}\n({rate.k}/{rate.n})"


def _joint_caption(names: Sequence[str]) -> str:
    joint = [n for n in names if "+" in n]
    return f"; {JOINT}: {', '.join(joint[0].split('+'))} together" if joint else ""


def calibration_view(cal: Any, main: bool = True) -> View:
    """The thresholds of a calibration, and the spread of its realized false-alarm rate."""
    far = cal.false_alarm
    thresholds = cal.thresholds_for(list(cal.detectors))
    return View(
        title=f"calibration of {cal.scenario} at alpha={cal.alpha} ({cal.n_fit} fit, {cal.n_cal} held out)",
        headers=("detector", "threshold"),
        rows=[(name, f"{t:.3g}") for name, t in thresholds.items()],
        records=[flat({"detector": name, "threshold": t, "alpha": cal.alpha, "n_fit": cal.n_fit, "n_cal": cal.n_cal})
                 for name, t in thresholds.items()],
        notes=(f"realized false-alarm rate ~ Beta({far['beta_a']:.0f}, {far['beta_b']:.0f}): mean {far['mean']:.3f}, "
               f"90% within [{far['q05']:.3f}, {far['q95']:.3f}]",),
        main=main,
    )


def deploy_view(scenario: str, rows: list[Any]) -> View:
    """A scenario's guard at work (``mesaguard deploy``, ``demo``): :class:`~mesaguard.experiment.Row` s."""

    def monitor(r: Any) -> str:
        hit = r.deployment_alarm
        deploy = "none" if hit is None else f"episode {hit.episode}\n{hit.steps} steps"
        return f"{'alarm' if r.deployment_false_alarm else 'none'}\n{deploy}"

    return View(
        title=f"{scenario}: guard at work ({rows[0].episodes} episodes per variant, Stop protocol)",
        headers=("detectors", "FA [95% CI]", "detected", "delay", "score G/F\nref.\ndeploy", "catastr.\nG/F",
                 "monitor\nref.\ndeploy"),
        rows=[(_detectors(r.detectors), _rate(r.false_alarms), _counted(r.detection.rate),
               _fmt(r.detection.mean_delay, ".1f"),
               f"{_fmt(r.score_train_guarded)}/{_fmt(r.score_train_free)}\n"
               f"{_fmt(r.score_deploy_guarded)}/{_fmt(r.score_deploy_free)}",
               f"{r.catastrophes_guarded}/{r.catastrophes_free}", monitor(r)) for r in rows],
        records=[flat(r.as_dict()) for r in rows],
        caption="FA: false alarms on reference runs [95% CI]; detected (k/n): of the n deploy runs that misbehaved; "
        "delay: mean steps from the first harm; G/F: guarded / free (no guard), mean base objective and "
        "catastrophes; monitor: the runs in seed order as one deployment under the anytime monitor (reference: "
        "any alarm; deploy: the episode and total steps at the alarm)" + _joint_caption([r.detectors for r in rows]),
    )


def user_deploy_view(env: str, shift: str, rows: list[Any]) -> View:
    """A user's env with its guard at work (``mesaguard deploy --env``): :class:`~mesaguard.userenv.UserRow` s."""
    catastrophes = rows[0].catastrophes_free is not None
    headers = ["detectors", "FA [95% CI]", "shifted\nalarms", "detected", "delay", "shifted\nG/F"]
    cells = []
    for r in rows:
        row = [_detectors(r.detectors), _rate(r.false_alarms), _rate(r.shifted_alarms), _counted(r.detection.rate),
               _fmt(r.detection.mean_delay, ".1f"), f"{_fmt(r.score_shifted_guarded)}/{_fmt(r.score_shifted_free)}"]
        if catastrophes:
            row.append(f"{r.catastrophes_guarded}/{r.catastrophes_free}")
        cells.append(row)
    return View(
        title=f"{env}: guard at work ({rows[0].episodes} episodes per env, Stop protocol; {shift})",
        headers=headers + (["catastr.\nG/F"] if catastrophes else []),
        rows=cells,
        records=[flat(r.as_dict()) for r in rows],
        caption="FA: in-distribution runs with an alarm [95% CI]; shifted alarms: shifted runs with an alarm; "
        "detected (k/n): of the n shifted runs that misbehaved (a negative increment"
        + (", a catastrophe" if catastrophes else "")
        + " or a score below the in-distribution alpha-quantile); delay: mean steps from the first harm; "
        "shifted G/F: mean base objective guarded / free (no guard)" + _joint_caption([r.detectors for r in rows]),
    )


def _task(r: Any) -> str:
    """A scenario (or a user's env) over its variant, on two lines."""
    return f"{r.scenario}\n{r.variant}"


def _result(header: str) -> Any:
    """The column ``header`` of :data:`~mesaguard.bench.RESULT_COLUMNS`: its values are formatted there once, for
    this table and the HTML report's."""
    from mesaguard.bench.results import RESULT_COLUMNS

    (column,) = [c for c in RESULT_COLUMNS if c.header == header]
    return column


def _bench_columns() -> tuple[tuple[str, Callable[[Any], str]], ...]:
    """The results table's columns for 80 columns: a subset of the report's, a cell's parts on lines of their own
    (alpha is in the title, the misbehaving runs' count under detected; the objective lost and the share of
    catastrophes prevented are in csv and json, and in the report)."""
    fa, detected = _result("FA [95% CI]"), _result("detected")
    return (
        ("scenario\nvariant", _task),
        ("detectors", lambda r: _detectors(r.detectors)),
        ("FA [95% CI]", lambda r: fa.cell(r).replace(" [", "\n[")),
        ("detected", lambda r: f"{detected.cell(r)}\n{detected.counts(r)}"),
        ("delay\nmean/med", _result("delay mean/med").cell),
        ("catastr.\nG/F", _result("catastr. G/F").cell),
        ("score\nkept", _result("score kept").cell),
    )


def bench_views(rows: list[Any], deployments: list[Any], title: str) -> list[View]:
    """A bench run's results (:class:`~mesaguard.bench.BenchRow`, the main table) and its deployment monitor's
    view (:class:`~mesaguard.bench.DeploymentRow`)."""
    alpha = f" at alpha={rows[0].alpha:g}" if rows else ""
    names = [r.detectors for r in rows]
    columns = _bench_columns()
    warn = _result("FA [95% CI]").warn
    results = View(
        title=f"{title}{alpha}",
        headers=[h for h, _ in columns],
        rows=[[cell(r) for _, cell in columns] for r in rows],
        records=[r.flat() for r in rows],
        caption="FA: false alarms on in-distribution runs [95% CI] (red: wholly above alpha); detected (k/n): of "
        "the n deploy runs where the agent misbehaved; delay: steps from the first harm; G/F: guarded / free; "
        "score kept: in-distribution base objective guarded / free"
        + _joint_caption(names),
        warn=[[h.startswith("FA") and bool(warn(r)) for h, _ in columns] for r in rows],
    )
    monitor = View(
        title="deployment monitor (anytime; each seed's evaluation episodes in order are one deployment)",
        headers=("scenario\nvariant", "detectors", "detected", "episodes", "steps", "deployment FA\n[95% CI]"),
        rows=[(_task(r), _detectors(r.detectors), f"{r.detected}/{r.seeds}", _fmt(r.episodes_to_detection, ".1f"),
               _fmt(r.steps_to_detection, ".0f"), "" if r.false_alarm.n == 0 else _rate(r.false_alarm))
              for r in deployments],
        records=[flat(r.as_dict()) for r in deployments],
        caption="detected: deployments with a deployment alarm / seeds; episodes, steps: mean until it fired; "
        "deployment FA: reference-variant deployments in random orders with any alarm [95% CI]"
        + _joint_caption([r.detectors for r in deployments]),
        main=False,
    )
    return [results, monitor]


def scenarios_view(scenarios: Sequence[Any]) -> View:
    """The registered scenarios."""
    return View(
        title="scenarios",
        headers=("name", "failure mode; shift; base objective; variants"),
        rows=[(s.name, f"{s.failure_mode};\nshift: {s.shift};\nbase objective: {s.base_objective};\n"
                       f"variants: {', '.join(s.variants)}") for s in scenarios],
        wrap=(1,),
        records=[flat({"name": s.name, "failure_mode": s.failure_mode, "shift": s.shift,
                       "base_objective": s.base_objective, "variants": list(s.variants)}) for s in scenarios],
    )
