"""The monitor offline: its evidence and its alarm over recorded episodes, in order.

The twins of what a one-env :class:`~mesaguard.monitor.DeploymentMonitor` computes
online, for benchmarks and for ``mesaguard deploy`` / the bench's deployment view:
:func:`log_wealth_path` gives the log-evidence after each episode from p-values in bet
order (:func:`~mesaguard.monitor.sequential_pvalues`), :func:`first_deployment_alarm`
the episode and step where the alarm first fires, from per-step joint statistics
(:func:`episode_statistics`), and :func:`replay` runs the whole chain from a
calibration and episodes of increments.

Guarantee: the same numbers as the online monitor fed the same episodes to their end
with the same seed (tests hold them equal), at the cost of one p-value per episode
instead of one per step; episode and step numbers follow the package's convention
(1-based, the detecting episode counted).

>>> rng = np.random.default_rng(0)
>>> cal = Calibration.fit([rng.normal(1.0, 0.5, 20) for _ in range(400)], alpha=0.05, detectors=["cusum"])
>>> alarm = replay(cal, [rng.normal(0.9, 0.5, 20) for _ in range(200)])  # the objective drops by 0.1 per step
>>> alarm is not None and alarm.episode < 100 and 1 <= alarm.step <= 20
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mesaguard.calibration import Calibration, statistic_traces
from mesaguard.monitor.errors import MonitorError
from mesaguard.monitor.evidence import SHIFTS, _advance, _components, _log_mean, _scores, _start
from mesaguard.monitor.modes import check_mode, log_threshold
from mesaguard.monitor.pvalues import sequential_pvalues
from mesaguard.monitor.stops import key_traces, reference_keys

__all__ = ["DeploymentAlarm", "episode_statistics", "first_deployment_alarm", "log_wealth_path", "replay"]


def log_wealth_path(pvalues: np.ndarray, shifts: Sequence[float] = SHIFTS, mode: str = "anytime") -> np.ndarray:
    """Log-evidence after each episode, from p-values in bet order (last axis; leading axes: independent runs).

    The mixture's log-wealth in anytime and fixed mode, the log of the mixture
    Shiryaev-Roberts statistic in change mode: the offline twin of the monitor's
    end-of-episode evidence (tests hold them equal).

    >>> log_wealth_path(np.array([0.5, 0.01])).round(3).tolist()
    [-0.271, 0.789]
    >>> log_wealth_path(np.array([0.5, 0.01]), mode="change").round(3).tolist()
    [-0.271, 1.909]
    """
    check_mode(mode, 1 if mode == "fixed" else None, 2.0 if mode == "change" else None)
    return _log_mean(_components(pvalues, shifts, mode))


def first_deployment_alarm(
    reference: Sequence[float] | np.ndarray,
    statistics: Sequence[np.ndarray],
    log_threshold: float,
    seed: int = 0,
    shifts: Sequence[float] = SHIFTS,
    mode: str = "anytime",
) -> tuple[int, int] | None:
    """Offline: where a one-env monitor fed these episodes in order first raises its alarm.

    ``statistics`` holds each episode's per-step joint standardized statistic (as
    :meth:`DeploymentMonitor.observe` receives it); ``reference`` the calibration's
    :meth:`~mesaguard.calibration.Calibration.joint_maxima`; ``log_threshold`` and
    ``mode`` those of the monitor (:func:`log_threshold`). Returns ``(episode, step)``,
    both 1-based (the package's convention: the detecting episode counted), or None; the
    same answer as the online monitor with the same ``seed`` (tests hold them equal), at
    the cost of one p-value per episode.

    >>> first_deployment_alarm([0.0] * 99, [np.array([0.5, 3.0])] * 5, np.log(20))
    (2, 1)
    """
    check_mode(mode, 1 if mode == "fixed" else None, 2.0 if mode == "change" else None)
    if len(statistics) == 0:
        return None
    u = np.random.default_rng(seed).random(len(statistics))  # the monitor draws one per episode, in order
    p = sequential_pvalues(reference, [float(np.max(x)) for x in statistics], u)
    components = _components(p, shifts, mode)
    path = _log_mean(components)
    hits = np.flatnonzero(path >= log_threshold)
    if hits.size == 0:
        return None
    j = int(hits[0])
    d = np.asarray(shifts, dtype=np.float64)[:, None]
    before = components[:, j - 1] if j else _start(mode, (d.size,))  # per shift, the evidence before episode j
    bag = np.sort(np.concatenate([np.asarray(reference, dtype=np.float64), [np.max(x) for x in statistics[:j]]]))
    running = np.maximum.accumulate(np.asarray(statistics[j], dtype=np.float64))
    right, left = np.searchsorted(bag, running, side="right"), np.searchsorted(bag, running, side="left")
    p_t = np.maximum((bag.size - right + u[j] * (right - left + 1)) / (bag.size + 1), 1e-300)
    interim = _log_mean(_advance(mode, before[:, None], d * _scores(p_t) - d**2 / 2))
    crossed = np.flatnonzero(interim >= log_threshold - 1e-9)  # at the last step interim is path[j]
    return j + 1, int(crossed[0]) + 1 if crossed.size else running.size


@dataclass(frozen=True)
class DeploymentAlarm:
    """Where a deployment alarm fired: the episode (1-based, start order), its step (1-based), and all steps so far."""

    episode: int
    step: int
    steps: int


def episode_statistics(
    calibration: Calibration, names: Sequence[str], episodes: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Per episode of increments, the per-step joint standardized statistic of detectors ``names``.

    What :meth:`DeploymentMonitor.update` computes online and passes to
    :meth:`~DeploymentMonitor.observe`; its maximum is comparable with
    ``calibration.joint_maxima(names)``.
    """
    joint: np.ndarray | None = None
    for n in names:
        d = calibration.detectors[n]
        z = (statistic_traces(d.build(), episodes) - d.location) / d.scale
        joint = z if joint is None else np.fmax(joint, z)
    if joint is None:
        raise MonitorError("no detectors: the joint statistic needs at least one")
    return [row[: len(e)] for row, e in zip(joint, episodes)]


def replay(
    calibration: Calibration,
    episodes: Sequence[np.ndarray],
    detectors: Sequence[str] | None = None,
    alpha: float = 0.05,
    horizon: int | None = None,
    seed: int = 0,
    mode: str | None = None,
    arl: float | None = None,
    stops: dict[str, float] | None = None,
) -> DeploymentAlarm | None:
    """Run a one-env monitor offline over recorded episodes of increments, in order.

    The deployment-level view of the bench and of ``mesaguard deploy``: the monitor
    watches every recorded episode as it was recorded; with ``stops`` (the per-episode
    alarm rule) an episode is ranked by its key, as online
    (:mod:`~mesaguard.monitor.stops`). Arguments as :class:`DeploymentMonitor`'s; the
    alarm's episode and step are 1-based.
    """
    mode = check_mode(mode, horizon, arl)
    log_c = log_threshold(mode, alpha, horizon, arl)
    names = list(calibration.detectors) if detectors is None else list(detectors)
    reference = reference_keys(calibration, names, stops)
    if len(episodes) == 0:
        return None
    lengths = [len(e) for e in episodes]
    statistics = key_traces(calibration, stops, episodes, episode_statistics(calibration, names, episodes))
    if horizon is not None:
        statistics = statistics[:horizon]
    hit = first_deployment_alarm(reference, statistics, log_c, seed=seed, mode=mode)
    if hit is None:
        return None
    j, t = hit
    return DeploymentAlarm(j, t, int(sum(lengths[: j - 1])) + t)
