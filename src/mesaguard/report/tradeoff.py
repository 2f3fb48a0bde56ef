"""Detection delay against false-alarm rate as alpha varies: one line per detector configuration.

Each point is the bench table again at one alpha (:func:`mesaguard.bench.tradeoff`:
the stored runs replayed against that alpha's thresholds, no new rollouts). Every
point names its alpha (``α = 0.05``) on hover; to keep the plot legible only the
last configuration's line (the detectors jointly, where there are several) carries
the labels on the page, each where it moved from the previous alpha (equal points
would print their labels over each other), and the run's own alpha is a larger point
on every line.
"""

from __future__ import annotations

from typing import Any

from mesaguard.bench.results import BenchRow
from mesaguard.report.labels import alpha_label, detectors_label

__all__ = ["tradeoff_figure"]


def tradeoff_figure(scenario: str, rows: list[BenchRow], alpha: float) -> Any:
    """Mean detection delay against false-alarm rate, one line per configuration and variant, a point per alpha.

    ``alpha`` is the run's own (drawn larger).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    variants = sorted({r.variant for r in rows})
    configs = list(dict.fromkeys(r.detectors for r in rows))
    for variant in variants:
        for config in configs:
            pts = [r for r in rows if r.detectors == config and r.variant == variant]
            labels = [
                alpha_label(r.alpha) if config == configs[-1] and (i == 0 or (r.false_alarms.rate,
                    r.detection.mean_delay) != (pts[i - 1].false_alarms.rate, pts[i - 1].detection.mean_delay))
                else ""
                for i, r in enumerate(pts)
            ]
            name = detectors_label(config)
            fig.add_trace(
                go.Scatter(
                    x=[r.false_alarms.rate for r in pts],
                    y=[r.detection.mean_delay for r in pts],
                    mode="lines+markers+text",
                    text=labels,
                    textposition="top right",
                    textfont={"size": 10},
                    marker={"size": [11 if r.alpha == alpha else 6 for r in pts]},
                    name=name if len(variants) == 1 else f"{name} ({variant})",
                    customdata=[[alpha_label(r.alpha), r.detection.rate.rate, r.detection.median_delay, r.prevented]
                                for r in pts],
                    hovertemplate="%{customdata[0]}<br>false alarms %{x:.3f}<br>mean delay %{y:.2f}"
                    "<br>detected %{customdata[1]:.3f}<br>median delay %{customdata[2]:.1f}"
                    "<br>catastrophes prevented %{customdata[3]:.2f}<extra>%{fullData.name}</extra>",
                )
            )
    fig.update_layout(
        height=430,
        title=f"{scenario}: detection delay against false-alarm rate as alpha varies",
        xaxis_title=f"false-alarm rate on in-distribution runs (large points: the run's {alpha_label(alpha)})",
        yaxis_title="mean delay from the onset of harm (steps)",
    )
    return fig
