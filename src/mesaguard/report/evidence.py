"""The deployment monitor's view: its evidence over the episodes of a deployment, against its threshold.

Each variant's evaluation episodes of one job seed, in seed order, are one
deployment (as in :mod:`mesaguard.bench.deployment`), watched by an anytime
:class:`~mesaguard.monitor.DeploymentMonitor` at the run's alpha with every detector
of the run jointly. The plot shows the log-evidence after each episode
(:func:`~mesaguard.monitor.log_wealth_path` of the sequential conformal p-values of the
episodes' joint statistics, drawn with the job seed, as the deployment table draws
them) and the alarm threshold ``log(1/alpha)``: the monitor alarms in the first episode
whose evidence reaches it (the deployment table's episode: tests hold them equal),
and the guarantee is that an in-distribution deployment ever reaches it with
probability at most alpha. The monitor is imported on first use, so importing the
report does not load it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mesaguard.bench.results import StoredJob
from mesaguard.report.decimate import decimate
from mesaguard.report.deficit import REFERENCE_COLOR, SHIFTED_COLORS
from mesaguard.report.labels import alpha_label

__all__ = ["evidence_figure", "evidence_paths"]


def evidence_paths(job: StoredJob, detectors: tuple[str, ...], seed: int) -> dict[str, np.ndarray]:
    """Per evaluation variant, the anytime monitor's log-evidence after each of its episodes, in seed order."""
    from mesaguard.monitor import episode_statistics, log_wealth_path, sequential_pvalues

    names = list(detectors)
    bag = job.calibration.joint_maxima(names)
    paths = {}
    for variant in job.variants:
        episodes = [e.increments for _, e in job.evaluation[variant]]
        maxima = [float(np.max(s)) for s in episode_statistics(job.calibration, names, episodes)]
        u = np.random.default_rng(seed).random(len(maxima))  # the draws of monitor.replay(seed=seed)
        paths[variant] = log_wealth_path(sequential_pvalues(bag, maxima, u))
    return paths


def evidence_figure(scenario: str, job: StoredJob, detectors: tuple[str, ...], alpha: float, seed: int) -> Any:
    """Log-evidence over episodes, one line per variant, the threshold, and where each deployment alarmed."""
    import plotly.graph_objects as go

    paths = evidence_paths(job, detectors, seed)
    threshold = math.log(1 / alpha)  # the anytime mode's (mesaguard.monitor.log_threshold)
    longest = max((p.size for p in paths.values()), default=1)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[1, longest], y=[threshold, threshold], mode="lines",
                             line={"color": "firebrick", "dash": "dash"}, hoverinfo="skip",
                             name=f"alarm threshold log(1/α), {alpha_label(alpha)}"))
    for i, (variant, path) in enumerate(paths.items()):
        color = REFERENCE_COLOR if variant == job.reference else SHIFTED_COLORS[(i - 1) % len(SHIFTED_COLORS)]
        role = "in-distribution" if variant == job.reference else "shifted"
        keep = decimate(path)
        fig.add_trace(go.Scatter(
            x=(keep + 1).astype(np.int32), y=path[keep].astype(np.float32), mode="lines",
            line={"color": color}, name=f"{variant} ({role})", legendgroup=variant,
            hovertemplate=f"{variant}<br>episode %{{x}}<br>log evidence %{{y:.2f}}<extra></extra>",
        ))
        hits = np.flatnonzero(path >= threshold)
        if hits.size:
            j = int(hits[0])
            fig.add_trace(go.Scatter(x=[j + 1], y=[float(path[j])], mode="markers", legendgroup=variant,
                                     marker={"symbol": "x", "size": 13, "color": color, "line": {"width": 1}},
                                     name=f"{variant}: deployment alarm, episode {j + 1}"))
    fig.update_layout(
        height=400,
        title=f"{scenario}: the deployment monitor's evidence over episodes (anytime, all detectors jointly, "
        f"seed {seed})",
        xaxis={"title": "episode of the deployment", "range": [0.5, longest + 0.5]},
        yaxis_title="log evidence (log wealth)",
    )
    return fig
