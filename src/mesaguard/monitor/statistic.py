"""The statistic the monitor ranks, step by step: the joint standardized statistic and the per-episode alarm.

Per step and env, :class:`StepStatistic` gives the largest standardized statistic of
the monitored detectors (what the running maximum of an episode is taken of: the
same standardization as :meth:`~mesaguard.calibration.Calibration.joint_maxima`)
and, under a per-episode alarm rule ``stops`` (:mod:`~mesaguard.monitor.stops`),
whether that alarm fires at this step. Vector form on arrays (:meth:`StepStatistic.step`),
one-env form in plain floats (:meth:`StepStatistic.step_scalar`), which can read the
statistics a guard has already computed (:meth:`StepStatistic.reads_from`).
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import gt, sub, truediv

import numpy as np

from mesaguard.calibration import Calibration
from mesaguard.monitor.errors import MonitorError

__all__ = ["StepStatistic"]


class StepStatistic:
    """The detectors ``names`` (then the rule's own, if ``stops`` names others), standardized, over ``n_envs``."""

    def __init__(self, calibration: Calibration, names: Sequence[str], stops: dict[str, float], n_envs: int) -> None:
        self.calibration = calibration
        names = list(names)
        k = len(names)
        extra = [n for n in stops if n not in names]
        self.names = names + extra  # the statistic's rows first, then the rule's own
        cals = [calibration.detectors[n] for n in self.names]
        self.detectors = [c.build(n_envs) for c in cals]
        self.scalar = [c.build(1).scalar() for c in cals] if n_envs == 1 else []  # the hot path of GuardedEnv
        self._locations = [c.location for c in cals[:k]]  # plain floats for one env, columns for many
        self._scales = [c.scale for c in cals[:k]]
        self._location = np.array(self._locations)[:, None]
        self._scale = np.array(self._scales)[:, None]
        self._k = k
        rows = [self.names.index(n) for n in stops]
        self._stop_rows = rows
        self._stop_values = [stops[n] for n in stops]
        self._stop_thresholds = np.array(self._stop_values)[:, None]
        self.n_envs = n_envs
        self.shared: list[int] | None = None  # where a guard's statistics hold the scalar detectors' (reads_from)
        self._whole = False

    def reads_from(self, names: Sequence[str], calibration: Calibration) -> bool:
        """One env: where a guard runs every detector needed here, fitted the same (equal in ``calibration``),
        :meth:`step_scalar` takes the guard's statistics (in the order of ``names``) and the detectors here stay
        idle. Returns whether it does."""
        names = list(names)
        same = self.n_envs == 1 and all(
            n in names and n in calibration.detectors and calibration.detectors[n] == self.calibration.detectors[n]
            for n in self.names
        )
        self.shared = [names.index(n) for n in self.names] if same else None
        self._whole = self.shared == list(range(len(names)))  # the guard's statistics are these, in this order
        return same

    def reset(self, mask: np.ndarray | None = None) -> None:
        """New episodes in the envs of ``mask`` (all if None); nothing to do while reading a guard's statistics."""
        if self.shared is not None:
            return
        for det in self.detectors:
            det.reset(mask)
        for scalar in self.scalar:
            scalar.reset()

    def step(self, u: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Checked increments, one per env: the joint statistic per env, and per env whether the rule's alarm fires
        (None without a rule)."""
        if self.shared is not None:
            raise MonitorError(
                "update() on a monitor that reads the statistics of the guard it sits in (reads_from): the guard "
                "feeds it; a monitor fed by hand is made outside a guard"
            )
        stats = np.array([det._update(u) for det in self.detectors])
        x = ((stats[: self._k] - self._location) / self._scale).max(axis=0)
        crossed: np.ndarray | None = None
        if self._stop_rows:
            crossed = np.asarray((stats[self._stop_rows] > self._stop_thresholds).any(axis=0))
        return x, crossed

    def step_scalar(self, u: float, statistics: Sequence[float] | None = None) -> tuple[float, bool]:
        """One env, one increment in plain floats (:meth:`step` for one env; tests hold them equal): the joint
        statistic and whether the rule's alarm fires. ``statistics``: a guard's, read where :meth:`reads_from`
        accepted them."""
        if self.shared is not None:
            if statistics is None:
                raise MonitorError(
                    "update_scalar() without statistics on a monitor that reads a guard's (reads_from): the guard "
                    "feeds it; a monitor fed by hand is made outside a guard"
                )
            values = statistics if self._whole else [statistics[i] for i in self.shared]
        else:
            values = [det.update(u) for det in self.scalar]
        # (v - location) / scale per detector, then the largest; map over C functions, no Python frame per value
        x = max(map(truediv, map(sub, values, self._locations), self._scales))
        cross = bool(self._stop_rows) and any(map(gt, map(values.__getitem__, self._stop_rows), self._stop_values))
        return x, cross
