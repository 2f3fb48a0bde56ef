"""The least a Python wrapper can cost doing the guard's per-step work: a timing reference, not mesaguard.

:class:`FusedFloor` does, in one inlined ``step`` with its state in plain attributes, the per-step arithmetic of a
``GuardedEnv`` running the default set (``cusum``, ``meanshift``, ``rank``) with a deployment monitor: the three
detectors' scalar updates (their parameters read from a real :class:`~mesaguard.guard.ScalarGuard`), the joint
threshold check, one finite check, the monitor's per-step part (the joint standardized statistic, its running
maximum, the step count) and a report in ``info`` of GuardedEnv's shape. No detector objects, no monitor object,
no protocol, none of the other checks that make the guard fail closed; and what is not per step is left out (the
monitor's bet when an episode ends, its evidence refresh when the running maximum rises). So it is a lower bound
on any Python wrapper doing this work: ``guard_overhead.py`` times it beside the guard, after checking that its
statistics equal ``GuardedEnv``'s step for step (the arithmetic timed is the guard's own).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from operator import mul
from typing import Any

import gymnasium as gym

from mesaguard.calibration import Calibration
from mesaguard.guard import ScalarGuard

__all__ = ["FusedFloor"]

ORDER = ["cusum", "meanshift", "rank"]  # the default set, in the order its statistics are read here


class FusedFloor(gym.Wrapper):
    """The default set and a monitor's per-step part, inlined (see the module docstring)."""

    def __init__(self, env: gym.Env, calibration: Calibration) -> None:
        super().__init__(env)
        guard = ScalarGuard(calibration, ORDER)
        forms: list[Any] = list(guard.detectors)  # the scalar forms' private lists: read, never written
        cusum, ms, rank = forms
        self.c_mean, self.c_std, self.c_last = cusum.mean, cusum.std, cusum.last
        self.c_slack, self.c_rho, self.c_gain = cusum.slack, cusum.rho, cusum.gain
        if ms.T > ms.LISTED:
            raise ValueError("the floor inlines listed forward-substitution rows only")
        self.m_block, self.m_T, self.m_mu, self.m_y = ms.block, ms.T, ms.mu, ms.y
        self.m_norm, self.m_diag, self.m_rows, self.m_e = ms.norm, ms.diag, ms.rows, [0.0] * ms.T
        self.r_q, self.r_log, self.r_spread, self.r_last = rank.quantiles, rank.log, rank.spread, rank.last
        self.thresholds = guard.thresholds
        self.standard = [(calibration.detectors[n].location, calibration.detectors[n].scale) for n in ORDER]
        self.mon_steps = 0
        self._restart()

    def _restart(self) -> None:
        self.t, self.score, self.alarm, self.alarm_step, self.best = 0, 0.0, False, -1, -math.inf
        self.c_sum = self.c_prev = 0.0
        self.m_acc, self.m_k, self.m_t, self.m_num, self.m_stat = 0.0, 0, 0, 0.0, 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._restart()
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        u = float(reward)
        t = self.t
        self.t = t + 1
        self.score = score = self.score + u
        # cusum on the innovation of the time-indexed standardized increment
        i = t if t < self.c_last else self.c_last
        z = (u - self.c_mean[i]) / self.c_std[i]
        e = (z - self.c_rho * self.c_prev) * self.c_gain
        self.c_prev = z
        s = self.c_sum - e - self.c_slack
        self.c_sum = c = s if s > 0.0 else 0.0
        # meanshift: one forward-substitution row at each complete block
        self.m_acc += u
        self.m_k += 1
        if self.m_k >= self.m_block:
            b = self.m_t
            if b < self.m_T:
                eb = (self.m_mu[b] - self.m_acc - sum(map(mul, self.m_rows[b], self.m_e))) / self.m_diag[b]
                self.m_e[b] = eb
                self.m_num += self.m_y[b] * eb
                self.m_stat = self.m_num / self.m_norm[b]
                self.m_t = b + 1
            self.m_acc, self.m_k = 0.0, 0
        m = self.m_stat
        # rank of the score among the reference scores at this step
        i = t if t < self.r_last else self.r_last
        q = self.r_q[i]
        below = bisect_left(q, score)
        r = self.r_log[below] + (0.0 if below else (q[0] - score) / self.r_spread[i])
        if not math.isfinite(score + c + m + r):
            raise ValueError("not finite")
        th = self.thresholds
        if not self.alarm and (c > th[0] or m > th[1] or r > th[2]):
            self.alarm, self.alarm_step = True, self.t
        (l0, s0), (l1, s1), (l2, s2) = self.standard
        x = max((c - l0) / s0, (m - l1) / s1, (r - l2) / s2)
        self.mon_steps += 1
        if x > self.best:
            self.best = x
        info = dict(info)
        info["mesaguard"] = {
            "score": score,
            "increment": u,
            "step": self.t,
            "statistics": {"cusum": c, "meanshift": m, "rank": r},
            "alarm": self.alarm,
            "detector": None,
            "alarm_step": self.alarm_step if self.alarm else None,
            "acting": "agent",
            "error": None,
            "refused": False,
            "deployment": {"evidence": 1.0, "threshold": 20.0, "alarm": False, "episodes": 0,
                           "steps": self.mon_steps, "mode": "anytime"},
        }
        return obs, reward, terminated, truncated, info
