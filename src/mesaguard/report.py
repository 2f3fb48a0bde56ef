"""One self-contained HTML report of a bench run: the table, and plots to look at instead of logs.

The file embeds plotly.js once (about 4.8 MB) and needs no network to open. It
holds, for a run of ``mesaguard bench``:

* the results table (the same numbers as ``mesaguard bench`` prints, from the store);
* for each scenario, the score so far ``S_t`` of a few in-distribution and deploy
  episodes of its first seed against the calibrated envelope (the in-distribution
  mean of ``S_t`` and the line under which the envelope detector alarms), with a
  marker where each detector configuration would stop the run;
* for each scenario, detection delay against false-alarm rate for each detector
  configuration as alpha varies (:func:`mesaguard.bench.tradeoff`: the stored runs
  replayed against thresholds at each alpha, no new rollouts).

Everything is recomputed from the store; nothing is rolled out.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mesaguard.bench.config import config_name, detector_configs
from mesaguard.bench.replay import first_alarms
from mesaguard.bench.results import RESULT_COLUMNS, BenchRow, load_run, run_summary, table, tradeoff
from mesaguard.files import write_atomic
from mesaguard.scenarios import get
from mesaguard.store import Store

__all__ = ["ALPHAS", "build_report", "write_report"]

ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)  # the alphas of the trade-off curves (those the calibration allows)
EPISODES_SHOWN = 3  # episodes per variant in the envelope plots
SYMBOLS = ("x", "diamond", "triangle-up", "square", "star", "cross", "circle-open")


def _results_table(rows: list[BenchRow]) -> str:
    """The results as an HTML table: the columns of ``mesaguard bench``, with their long titles and counts."""
    body = []
    for r in rows:
        cells = []
        for col in RESULT_COLUMNS:
            text = html.escape(col.cell(r))
            if col.warn and col.warn(r):  # e.g. a false-alarm interval wholly above alpha: red
                text = f'<span class="over">{text}</span>'
            cells.append(text + (f" {html.escape(col.counts(r))}" if col.counts else ""))
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (
        '<table id="results"><thead><tr>'
        + "".join(f"<th>{html.escape(c.title)}</th>" for c in RESULT_COLUMNS)
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table>"
    )


def _envelope_figure(scenario: str, job: Any, detectors: tuple[str, ...]) -> Any:
    """Score so far of a few episodes against the calibrated envelope, with alarm markers."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    s = get(scenario)
    variants = (s.reference_variant, *s.shifted_variants)
    fig = make_subplots(
        rows=1, cols=len(variants), shared_yaxes=True,
        subplot_titles=[f"{v} ({'reference' if i == 0 else 'shifted'})" for i, v in enumerate(variants)],
    )
    cal = job.calibration
    configs = detector_configs(detectors)
    longest = max((e.length for v in variants for _, e in job.evaluation[v][:EPISODES_SHOWN]), default=1)
    legend: set[tuple[str, ...]] = set()  # configurations already in the legend
    for col, variant in enumerate(variants, start=1):
        first = col == 1
        if "envelope" in cal.detectors:
            params = cal.detectors["envelope"].params
            mean, std = np.asarray(params["mean"]), np.asarray(params["std"])
            steps = np.arange(1, max(longest, mean.size) + 1)
            idx = np.minimum(steps - 1, mean.size - 1)
            threshold = cal.thresholds_for(["envelope"])["envelope"]
            fig.add_trace(go.Scatter(x=steps, y=mean[idx], mode="lines", line={"color": "grey", "dash": "dot"},
                                     name="in-distribution mean", legendgroup="mean", showlegend=first), 1, col)
            fig.add_trace(go.Scatter(x=steps, y=mean[idx] - threshold * std[idx], mode="lines",
                                     line={"color": "firebrick", "dash": "dash"}, name="envelope alarm line",
                                     legendgroup="line", showlegend=first), 1, col)
        shown = job.evaluation[variant][:EPISODES_SHOWN]
        for _, e in shown:
            score = np.cumsum(e.increments)
            fig.add_trace(go.Scatter(x=np.arange(1, e.length + 1), y=score, mode="lines", opacity=0.8,
                                     name=f"{variant} episode seed {e.seed}", showlegend=False), 1, col)
            if e.catastrophes.size:
                fig.add_trace(go.Scatter(x=e.catastrophes, y=score[e.catastrophes - 1], mode="markers",
                                         marker={"symbol": "circle", "size": 11, "color": "black"},
                                         name="catastrophe", legendgroup="catastrophe", showlegend=False), 1, col)
        increments = [e.increments for _, e in shown]
        traces: dict[str, np.ndarray] = {}
        for k, names in enumerate(configs):
            hits = first_alarms(cal, names, increments, traces=traces) if increments else []
            xs = [h[0] for h in hits if h is not None]
            ys = [float(np.sum(inc[: h[0]])) for h, inc in zip(hits, increments) if h is not None]
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"alarm: {config_name(names)}",
                                     marker={"symbol": SYMBOLS[k % len(SYMBOLS)], "size": 12, "line": {"width": 1}},
                                     legendgroup=config_name(names), showlegend=bool(xs) and names not in legend),
                          1, col)
            if xs:
                legend.add(names)
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="score so far S_t", col=1)
    fig.update_layout(height=430, margin={"t": 60}, title=f"{scenario}: score so far against the calibrated envelope")
    return fig


def _tradeoff_figure(scenario: str, rows: list[BenchRow]) -> Any:
    """Mean detection delay against false-alarm rate, one line per configuration, one point per alpha."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for variant in sorted({r.variant for r in rows}):
        for config in dict.fromkeys(r.detectors for r in rows):
            pts = [r for r in rows if r.detectors == config and r.variant == variant]
            fig.add_trace(
                go.Scatter(
                    x=[r.false_alarms.rate for r in pts],
                    y=[r.detection.mean_delay for r in pts],
                    mode="lines+markers+text",
                    text=[  # label a point only where it moved: equal points would print over each other
                        f"α={r.alpha:g}" if i == 0 or (r.false_alarms.rate, r.detection.mean_delay)
                        != (pts[i - 1].false_alarms.rate, pts[i - 1].detection.mean_delay) else ""
                        for i, r in enumerate(pts)
                    ],
                    textposition="top center",
                    name=config if len({r.variant for r in rows}) == 1 else f"{config} ({variant})",
                    customdata=[[r.detection.rate.rate, r.detection.median_delay, r.prevented] for r in pts],
                    hovertemplate="false alarms %{x:.3f}<br>mean delay %{y:.2f}<br>detected %{customdata[0]:.3f}"
                    "<br>median delay %{customdata[1]:.1f}<br>catastrophes prevented %{customdata[2]:.2f}",
                )
            )
    fig.update_layout(
        height=430,
        title=f"{scenario}: detection delay against false-alarm rate as alpha varies",
        xaxis_title="false-alarm rate on in-distribution runs",
        yaxis_title="mean delay from the onset of harm (steps)",
    )
    return fig


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.9em; }
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
</dl>
"""


def build_report(store: Store, run_id: str, alphas: tuple[float, ...] = ALPHAS) -> str:
    """The report of ``run_id`` as one HTML string (plotly.js embedded)."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    summary = run_summary(store, run_id)
    config, jobs = load_run(store, run_id)
    rows = table(store, run_id)
    curves = tradeoff(store, run_id, (*alphas, config.alpha))
    sections = []
    for scenario in config.scenarios:
        keys = sorted(k for k in jobs if k[0] == scenario)
        if not keys:
            sections.append(f"<h2>{html.escape(scenario)}</h2><p>No job of this scenario is stored yet.</p>")
            continue
        info = get(scenario)
        envelope = _envelope_figure(scenario, jobs[keys[0]], config.detectors)
        trade = _tradeoff_figure(scenario, [r for r in curves if r.scenario == scenario])
        plots = [
            pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=f"{kind}-{scenario}",
                        config={"displaylogo": False})
            for kind, fig in (("envelope", envelope), ("tradeoff", trade))
        ]
        sections.append(
            f'<section class="scenario" id="scenario-{html.escape(scenario)}"><h2>{html.escape(scenario)}</h2>'
            f"<p>{html.escape(info.failure_mode)}: {html.escape(info.shift)}. Episodes of seed {keys[0][1]}.</p>"
            + "".join(f'<div class="plot">{p}</div>' for p in plots)
            + "</section>"
        )
    c = summary["config"]
    meta = (
        f"run <code>{html.escape(run_id)}</code>: {summary['jobs_done']} of {summary['jobs_total']} jobs, "
        f"scenarios {', '.join(c['scenarios'])}; detectors {', '.join(c['detectors'])}; "
        f"{len(c['seeds'])} seeds; {c['episodes']} evaluation episodes per variant and seed, "
        f"{c['calibration_episodes']} calibration episodes per seed; alpha {c['alpha']:g}; policy {c['policy']}; "
        f"protocol: stop at the alarm. Generated {time.strftime('%Y-%m-%d %H:%M')}."
    )
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>mesaguard bench: {html.escape(run_id)}</title><style>{_STYLE}</style>"
        f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
        f"<h1>mesaguard bench</h1><p>{meta}</p>{_results_table(rows)}{_DEFINITIONS}"
        + "".join(sections)
        + '<script type="application/json" id="run-config">' + json.dumps(c).replace("</", "<\\/") + "</script>"
        + "</body></html>"
    )


def write_report(store: Store, run_id: str, out: str | os.PathLike[str]) -> Path:
    """Write the report of ``run_id`` to ``out`` atomically; return the path."""
    return write_atomic(Path(out), build_report(store, run_id))
