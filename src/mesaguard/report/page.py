"""The report's page: one self-contained HTML file of a bench run, read from the store only.

Layout: the run's configuration; the results tables (each detector configuration,
then each preventive safeguard, as ``mesaguard bench`` prints them) and what their
columns mean; the deployment monitor's table; then, per scenario, the score's
deficit against in-distribution runs (:mod:`~mesaguard.report.deficit`), the
deployment monitor's evidence over episodes (:mod:`~mesaguard.report.evidence`) and
the delay/false-alarm trade-off as alpha varies (:mod:`~mesaguard.report.tradeoff`).

One ``<script>`` element holds plotly.js (:mod:`~mesaguard.report.plotlyjs`) for the
whole page; each figure is a few kilobytes of JSON (decimated traces, compact
arrays). Nothing is fetched when the file opens. The scenario registry is consulted
only for a scenario's one-line description: a run whose scenario is not registered
where the report is made (a user's own task) is reported all the same.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any

from mesaguard.bench.results import load_run, run_summary, stored_scenarios, table, tradeoff
from mesaguard.files import write_atomic
from mesaguard.report import plotlyjs
from mesaguard.report.deficit import deficit_figure
from mesaguard.report.evidence import evidence_figure
from mesaguard.report.labels import alpha_label
from mesaguard.report.tables import deployment_table_html, results_table
from mesaguard.report.tradeoff import tradeoff_figure
from mesaguard.store import Store

__all__ = ["ALPHAS", "build_report", "write_report"]

ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)  # the alphas of the trade-off curves (those the calibration allows)

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; margin-bottom: 1em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td:nth-child(-n+3) { text-align: left; }
.over { color: #b00; font-weight: bold; }
.plot { margin: 1.5em 0; }
dt { font-weight: bold; } dd { margin: 0 0 0.5em 1em; }
"""

_DEFINITIONS = """
<dl>
<dt>false alarms</dt><dd>share of in-distribution evaluation runs on which the guard raised an alarm, with its exact
(Clopper-Pearson) 95% interval; calibrated to be at most alpha. Red: the interval lies above alpha.</dd>
<dt>misbehaving runs</dt><dd>unguarded deploy runs with a harmful (negative) increment or a catastrophe, or a final
score below the alpha-quantile of the calibration episodes' final scores.</dd>
<dt>detected, delay</dt><dd>share of misbehaving runs with an alarm; steps from the first harmful step (step 1 if the
run only scored low) to the alarm, negative when the guard fired before harm was done.</dd>
<dt>objective lost, catastrophes</dt><dd>per deploy run, the base objective lost to harmful steps, and catastrophes,
with the guard stopping the run at the alarm and without a guard; prevented: the share of catastrophes the stop
avoided.</dd>
<dt>score kept</dt><dd>in-distribution base objective with the guard, as a share of without it.</dd>
<dt>deficit</dt><dd>the score so far minus the mean score so far of in-distribution runs at the same step: about 0
for a run like those of calibration, falling when the run lags behind them, even while its score rises.</dd>
<dt>deployment monitor</dt><dd>each seed's evaluation episodes of a variant, in order, are one deployment; the
anytime monitor adds their evidence up and alarms when it reaches log(1/alpha), with a false-alarm probability of at
most alpha over the whole deployment, however long.</dd>
</dl>
"""


def _description(scenario: str) -> str:
    """The registered scenario's failure mode and shift; a plain note where it is not registered here."""
    from mesaguard.scenarios import SCENARIOS

    info = SCENARIOS.get(scenario)
    if info is None:
        return "A scenario not registered here: the report shows what the store holds."
    return f"{info.failure_mode}: {info.shift}."


def _plot(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    return '<div class="plot">' + pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id,
                                              config={"displaylogo": False}) + "</div>"


def build_report(store: Store, run_id: str, alphas: tuple[float, ...] = ALPHAS) -> str:
    """The report of ``run_id`` as one HTML string (plotly.js embedded once)."""
    from mesaguard.bench.deployment import deployment_table  # loads the monitor: on first use only

    summary = run_summary(store, run_id)
    config, jobs = load_run(store, run_id)
    rows = table(store, run_id)
    curves = tradeoff(store, run_id, (*alphas, config.alpha))
    sections = []
    for scenario, keys in stored_scenarios(config, jobs):
        key = min(keys)
        job, seed, name = jobs[key], key[1], html.escape(scenario)
        curve = [r for r in curves if r.scenario == scenario]
        sections.append(
            f'<section class="scenario" id="scenario-{name}"><h2>{name}</h2>'
            f"<p>{html.escape(_description(scenario))} Plots of the episodes of seed {seed}.</p>"
            + _plot(deficit_figure(scenario, job, config.detectors, config.alpha, seed), f"deficit-{scenario}")
            + _plot(evidence_figure(scenario, job, config.detectors, config.alpha, seed), f"evidence-{scenario}")
            + _plot(tradeoff_figure(scenario, curve, config.alpha), f"tradeoff-{scenario}")
            + "</section>"
        )
    for scenario in config.scenarios:
        if scenario not in {k[0] for k in jobs}:
            sections.append(f"<h2>{html.escape(scenario)}</h2><p>No job of this scenario is stored yet.</p>")
    detector_rows = [r for r in rows if r.detectors not in config.safeguards]
    safeguard_rows = [r for r in rows if r.detectors in config.safeguards]
    safeguards = (
        "<h2>Safeguards</h2><p>Each preventive safeguard run for real on the same seeds, next to the unguarded runs."
        "</p>" + results_table(safeguard_rows, "safeguards") if safeguard_rows else ""
    )
    c = summary["config"]
    meta = (
        f"run <code>{html.escape(run_id)}</code>: {summary['jobs_done']} of {summary['jobs_total']} jobs, "
        f"scenarios {html.escape(', '.join(c['scenarios']))}; detectors {', '.join(c['detectors'])}; "
        f"{len(c['seeds'])} seeds; {c['episodes']} evaluation episodes per variant and seed, "
        f"{c['calibration_episodes']} calibration episodes per seed; {alpha_label(c['alpha'])}; "
        f"policy {html.escape(c['policy'])}; protocol: stop at the alarm. Generated {time.strftime('%Y-%m-%d %H:%M')}."
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>mesaguard bench: {html.escape(run_id)}</title><style>{_STYLE}</style>"
        f"<script type=\"text/javascript\">{plotlyjs.script()}</script></head><body>"
        f"<h1>mesaguard bench</h1><p>{meta}</p><h2>Detectors</h2>{results_table(detector_rows)}{safeguards}"
        f"{_DEFINITIONS}<h2>Deployment monitor</h2>"
        "<p>Each seed's evaluation episodes of a variant, in order, as one deployment under the anytime monitor.</p>"
        + deployment_table_html(deployment_table(store, run_id))
        + "".join(sections)
        + '<script type="application/json" id="run-config">' + json.dumps(c).replace("</", "<\\/") + "</script>"
        + "</body></html>"
    )


def write_report(store: Store, run_id: str, out: str | os.PathLike[str]) -> Path:
    """Write the report of ``run_id`` to ``out`` atomically; return the path."""
    return write_atomic(Path(out), build_report(store, run_id))
