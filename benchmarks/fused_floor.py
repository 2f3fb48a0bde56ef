"""The least a Python wrapper can cost doing the guard's per-step work: a timing reference, not mesaguard.

:class:`FusedFloor` does, in one inlined ``step`` with its state in plain attributes, the per-step arithmetic of a
``GuardedEnv`` running the default set (``cusum``, ``meanshift``) with a deployment monitor: the two
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
from operator import mul
from typing import Any

import gymnasium as gym

from mesaguard.calibration import Calibration
from mesaguard.guard import ScalarGuard

__all__ = ["FusedFloor", "ReportOnly", "parameters"]

ORDER = ["cusum", "meanshift"]  # the default set, in the order its statistics are read here


def parameters(calibration: Calibration) -> dict[str, Any]:
    """The default set's scalar parameters, read from a real :class:`~mesaguard.guard.ScalarGuard`, by the names
    :class:`FusedFloor` keeps them under (the scalar forms' private lists: read, never written); ``m_chol``: the
    mean-shift test's whole factor."""
    guard = ScalarGuard(calibration, ORDER)
    forms: list[Any] = list(guard.detectors)
    cusum, ms = forms
    if ms.T > ms.LISTED:
        raise ValueError("the floor inlines listed forward-substitution rows only")
    return {
        "c_mean": cusum.mean, "c_std": cusum.std, "c_last": cusum.last,
        "c_slack": cusum.slack, "c_rho": cusum.rho, "c_gain": cusum.gain, "c_block": cusum.block,
        "m_block": ms.block, "m_T": ms.T, "m_mu": ms.mu, "m_y": ms.y, "m_norm": ms.norm, "m_diag": ms.diag,
        "m_rows": ms.rows, "m_chol": ms.chol,
        "thresholds": guard.thresholds,
        "standard": [(calibration.detectors[n].location, calibration.detectors[n].scale) for n in ORDER],
    }


class FusedFloor(gym.Wrapper):
    """The default set and a monitor's per-step part, inlined (see the module docstring)."""

    def __init__(self, env: gym.Env, calibration: Calibration) -> None:
        super().__init__(env)
        vars(self).update(parameters(calibration))
        self.m_e = [0.0] * self.m_T
        self.mon_steps = 0
        self._restart()

    def _restart(self) -> None:
        self.t, self.score, self.alarm, self.alarm_step, self.best = 0, 0.0, False, -1, -math.inf
        self.c_sum = self.c_prev = self.c_acc = 0.0
        self.c_k = self.c_t = 0
        self.m_acc, self.m_k, self.m_t, self.m_num, self.m_stat = 0.0, 0, 0, 0.0, 0.0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._restart()
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        u = float(reward)
        self.t += 1
        self.score = score = self.score + u
        # cusum on the innovation of each complete block's time-indexed standardized sum
        self.c_acc += u
        self.c_k += 1
        if self.c_k >= self.c_block:
            b = self.c_t
            self.c_t = b + 1
            i = b if b < self.c_last else self.c_last
            z = (self.c_acc - self.c_mean[i]) / self.c_std[i]
            e = (z - self.c_rho * self.c_prev) * self.c_gain
            self.c_prev = z
            s = self.c_sum - e - self.c_slack
            self.c_sum = s if s > 0.0 else 0.0
            self.c_acc, self.c_k = 0.0, 0
        c = self.c_sum
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
        if not math.isfinite(score + c + m):
            raise ValueError("not finite")
        th = self.thresholds
        if not self.alarm and (c > th[0] or m > th[1]):
            self.alarm, self.alarm_step = True, self.t
        (l0, s0), (l1, s1) = self.standard
        x = max((c - l0) / s0, (m - l1) / s1)
        self.mon_steps += 1
        if x > self.best:
            self.best = x
        info = dict(info)
        info["mesaguard"] = {
            "score": score,
            "increment": u,
            "step": self.t,
            "statistics": {"cusum": c, "meanshift": m},
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


class ReportOnly(gym.Wrapper):
    """A wrapper that computes nothing and writes a report of ``GuardedEnv``'s shape in ``info`` (the score kept, the
    statistics constants): the least any wrapper costs that reports on every step, as the guard does."""

    def __init__(self, env: gym.Env, calibration: Calibration) -> None:
        super().__init__(env)
        self.score, self.t = 0.0, 0

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self.score, self.t = 0.0, 0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        u = float(reward)
        self.score = score = self.score + u
        self.t = t = self.t + 1
        info = dict(info)
        info["mesaguard"] = {
            "score": score,
            "increment": u,
            "step": t,
            "statistics": {"cusum": 0.0, "meanshift": 0.0},
            "alarm": False,
            "detector": None,
            "alarm_step": None,
            "acting": "agent",
            "error": None,
            "refused": False,
            "deployment": {"evidence": 1.0, "threshold": 20.0, "alarm": False, "episodes": 0, "steps": t,
                           "mode": "anytime"},
        }
        return obs, reward, terminated, truncated, info
