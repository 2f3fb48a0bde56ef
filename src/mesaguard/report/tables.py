"""The report's HTML tables: the bench results (detectors, then safeguards) and the deployment monitor's rows.

The results tables use :data:`mesaguard.bench.RESULT_COLUMNS`, the columns the
terminal table of ``mesaguard bench`` uses (one definition for both); the deployment
table shows the rows of :func:`mesaguard.bench.deployment_table` with the columns
``mesaguard bench`` prints for it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from mesaguard.bench.results import RESULT_COLUMNS, BenchRow, fmt
from mesaguard.report.labels import detectors_label

__all__ = ["deployment_table_html", "results_table"]


def _table(table_id: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An HTML table; ``headers`` are escaped here, cells must already be HTML."""
    return (
        f'<table id="{html.escape(table_id)}"><thead><tr>'
        + "".join(f"<th>{html.escape(h)}</th>" for h in headers)
        + "</tr></thead><tbody>"
        + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" for cells in rows)
        + "</tbody></table>"
    )


def results_table(rows: list[BenchRow], table_id: str = "results") -> str:
    """The results as an HTML table: the columns of ``mesaguard bench``, with their long titles and counts."""
    body = []
    for r in rows:
        cells = []
        for col in RESULT_COLUMNS:
            text = html.escape(col.cell(r))
            if col.warn and col.warn(r):  # e.g. a false-alarm interval wholly above alpha: red
                text = f'<span class="over">{text}</span>'
            cells.append(text + (f" {html.escape(col.counts(r))}" if col.counts else ""))
        body.append(cells)
    return _table(table_id, [c.title for c in RESULT_COLUMNS], body)


DEPLOYMENT_HEADERS = ("scenario", "variant", "detectors", "alpha", "deployments alarmed / seeds",
                      "episodes to the alarm (mean)", "steps to the alarm (mean)",
                      "deployment false alarms in random orders [95% CI]")


def deployment_table_html(rows: list[Any], table_id: str = "deployment") -> str:
    """The deployment monitor's rows (:class:`mesaguard.bench.DeploymentRow`) as an HTML table."""
    body = []
    for r in rows:
        fa = r.false_alarm
        body.append([html.escape(c) for c in (
            r.scenario, r.variant, detectors_label(r.detectors), f"{r.alpha:g}", f"{r.detected}/{r.seeds}",
            fmt(r.episodes_to_detection, ".1f"), fmt(r.steps_to_detection, ".0f"),
            "" if fa.n == 0 else f"{fa.rate:.3f} [{fa.low:.3f}, {fa.high:.3f}] ({fa.k}/{fa.n})",
        )])
    return _table(table_id, DEPLOYMENT_HEADERS, body)
