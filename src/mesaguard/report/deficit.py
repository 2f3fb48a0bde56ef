"""The score's deficit against the in-distribution reference, step by step: the report's first plot.

For an episode with increments ``u_1, ..., u_n`` the deficit at step ``t`` is
``S_t - m_t``: the score so far ``S_t = u_1 + ... + u_t`` minus ``m_t``, the mean
score so far of in-distribution episodes at step ``t``. A run as good as in
calibration hovers around 0 whatever its score does, so a shift shows as a deficit
that grows, even while the score itself rises. ``m_t`` is (:func:`reference`):

* the envelope detector's own per-step mean where the job's calibration has an
  envelope; the envelope then alarms exactly where a deficit falls below
  ``-threshold * std_t``, drawn as its alarm line;
* else the per-step mean over the job's stored calibration episodes
  (:class:`~mesaguard.detectors.reference.StepReference`: a finished run counts
  with its final score).

Past the reference's last step its last value holds, as in the envelope. Every
axis is fitted to the episodes shown: a panel's steps run from 1 to its longest
episode, not to the reference's length. Lines are decimated
(:mod:`mesaguard.report.decimate`); alarms and catastrophes are drawn at their exact
steps.

>>> deficit(np.array([1.0, 1.0, 0.0, 0.0]), np.array([1.0, 2.0, 3.0])).tolist()
[0.0, 0.0, -1.0, -1.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mesaguard.bench.config import config_name, detector_configs
from mesaguard.bench.replay import first_alarms
from mesaguard.bench.results import StoredJob
from mesaguard.detectors.reference import StepReference
from mesaguard.report.decimate import decimate
from mesaguard.report.labels import alpha_label, detectors_label

__all__ = ["EPISODES_SHOWN", "Reference", "deficit", "deficit_figure", "reference"]

EPISODES_SHOWN = 3  # episodes per variant in the deficit plots
SYMBOLS = ("x", "diamond", "triangle-up", "square", "star", "cross", "circle-open")
REFERENCE_COLOR = "#1f77b4"
SHIFTED_COLORS = ("#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass(frozen=True)
class Reference:
    """Per-step in-distribution mean score so far; with the envelope's spread and threshold where it has one."""

    mean: np.ndarray
    std: np.ndarray | None = None
    threshold: float | None = None

    def at(self, steps: np.ndarray) -> np.ndarray:
        """The mean at 1-based ``steps`` (past the last step: the last value)."""
        return self.mean[np.minimum(steps - 1, self.mean.size - 1)]

    def alarm_line(self, steps: np.ndarray) -> np.ndarray | None:
        """The deficit below which the envelope alarms, at 1-based ``steps``; None without an envelope."""
        if self.std is None or self.threshold is None:
            return None
        return -self.threshold * self.std[np.minimum(steps - 1, self.std.size - 1)]


def reference(job: StoredJob, alpha: float) -> Reference:
    """The job's in-distribution mean score so far: the envelope's (with its alarm line at ``alpha``), else its own."""
    cal = job.calibration
    if "envelope" in cal.detectors:
        params = cal.detectors["envelope"].params
        threshold = cal.thresholds_for(["envelope"], alpha)["envelope"]
        return Reference(np.asarray(params["mean"], dtype=np.float64), np.asarray(params["std"], dtype=np.float64),
                         float(threshold))
    return Reference(StepReference.fit(job.calibration_runs, cumulative=True).mean)


def deficit(increments: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``S_t - m_t`` for ``t = 1..n``: the score so far minus the reference mean (its last value past its end)."""
    steps = np.arange(1, increments.size + 1)
    return np.cumsum(increments) - mean[np.minimum(steps - 1, mean.size - 1)]


def _line(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimated (x, y) of a line, compact: int32 steps and float32 values."""
    keep = decimate(values)
    return steps[keep].astype(np.int32), values[keep].astype(np.float32)


def deficit_figure(scenario: str, job: StoredJob, detectors: tuple[str, ...], alpha: float, seed: int) -> Any:
    """Deficit of a few episodes per variant (one panel each), alarm markers, the envelope's alarm line."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    variants = [job.reference, *job.shifted_variants]
    ref = reference(job, alpha)
    fig = make_subplots(
        rows=1, cols=len(variants), shared_yaxes=True, horizontal_spacing=0.04,
        subplot_titles=[f"{v} ({'in-distribution' if i == 0 else 'shifted'})" for i, v in enumerate(variants)],
    )
    legend: set[str] = set()  # legend groups already shown

    def shown(group: str) -> bool:
        first = group not in legend
        legend.add(group)
        return first

    configs = detector_configs(detectors)
    for col, variant in enumerate(variants, start=1):
        episodes = [e for _, e in job.evaluation[variant][:EPISODES_SHOWN]]
        longest = max((e.length for e in episodes), default=1)
        steps = np.arange(1, longest + 1)
        fig.add_trace(go.Scatter(x=[1, longest], y=[0, 0], mode="lines", line={"color": "grey", "dash": "dot"},
                                 name="in-distribution mean (deficit 0)", legendgroup="mean", legendrank=1,
                                 showlegend=shown("mean"), hoverinfo="skip"), 1, col)
        line = ref.alarm_line(steps)
        if line is not None:
            x, y = _line(steps, line)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines", line={"color": "firebrick", "dash": "dash"},
                                     name=f"envelope alarm line ({alpha_label(alpha)})", legendgroup="line",
                                     legendrank=2, showlegend=shown("line")), 1, col)
        color = REFERENCE_COLOR if col == 1 else SHIFTED_COLORS[(col - 2) % len(SHIFTED_COLORS)]
        deficits = [deficit(e.increments, ref.mean) for e in episodes]
        for e, d in zip(episodes, deficits, strict=True):
            x, y = _line(np.arange(1, e.length + 1), d)
            fig.add_trace(go.Scatter(
                x=x, y=y, mode="lines", line={"color": color, "width": 1.5}, opacity=0.8,
                name=f"{variant} episodes ({'in-distribution' if col == 1 else 'shifted'})", legendgroup=variant,
                legendrank=10 + col, showlegend=shown(variant),
                hovertemplate=f"{variant}, episode seed {e.seed}<br>step %{{x}}<br>deficit %{{y:.3g}}<extra></extra>",
            ), 1, col)
            if e.catastrophes.size:
                fig.add_trace(go.Scatter(x=e.catastrophes, y=d[e.catastrophes - 1], mode="markers",
                                         marker={"symbol": "circle", "size": 11, "color": "black"},
                                         name="catastrophe", legendgroup="catastrophe", legendrank=100,
                                         showlegend=shown("catastrophe")), 1, col)
        traces: dict[str, np.ndarray] = {}
        for k, names in enumerate(configs):
            hits = first_alarms(job.calibration, names, [e.increments for e in episodes], traces=traces)
            xs = [h[0] for h in hits if h is not None]
            ys = [float(d[h[0] - 1]) for h, d in zip(hits, deficits, strict=True) if h is not None]
            if not xs:
                continue
            label = detectors_label(config_name(names))
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=f"alarm: {label}",
                                     marker={"symbol": SYMBOLS[k % len(SYMBOLS)], "size": 12, "line": {"width": 1}},
                                     legendgroup=label, legendrank=200 + k, showlegend=shown(label)), 1, col)
        fig.update_xaxes(range=[0.5, longest + 0.5], row=1, col=col)  # fitted to the episodes shown
    fig.update_xaxes(title_text="step")
    fig.update_yaxes(title_text="score so far minus in-distribution mean", col=1)
    fig.update_layout(
        height=460, margin={"t": 70},
        title=f"{scenario}: the score's deficit against in-distribution runs (episodes of seed {seed})",
        legend={"orientation": "h", "yanchor": "top", "y": -0.18},
    )
    return fig
