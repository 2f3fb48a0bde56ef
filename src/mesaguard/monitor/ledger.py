"""The monitor's ledger: the reference bag, the bets placed on finished episodes, the evidence they prove.

Episodes are bet on in the order they start. An episode is *committed* once it and
every episode started before it have finished: its sequential conformal p-value
against the bag (:mod:`~mesaguard.monitor.pvalues`), one bet per shift
(:mod:`~mesaguard.monitor.evidence`), then its key joins the bag. While episodes still
run, :meth:`Ledger.level` bounds the evidence from below, which lets the monitor alarm
mid-episode with its guarantee unchanged:

1. **Mid-episode evidence.** While episode ``j`` runs, its running maximum is a
   lower bound on ``x_j``, so the p-value computed from it is an upper bound on
   ``p_j``, and since every mode's evidence grows with each bet, the evidence
   computed from it is a lower bound on the evidence at ``j``'s end: an alarm on it
   implies the alarm at the episode's end, and the guarantee is unchanged.
2. **Vector envs.** Episodes are bet on in the order they *start*, an order that does
   not depend on their outcomes. Episodes still running when a later one ends enter
   the later one's bag as ``+inf`` (an upper bound on its p-value), so evidence is
   available at every step, never an overstatement. The chain of lower bounds stops at
   an episode that has not stepped yet: it may be replaced and never bet on.

The ledger knows nothing of envs or steps; :class:`~mesaguard.monitor.DeploymentMonitor`
feeds it and keeps the alarm.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import numpy as np
from scipy.special import ndtr

from mesaguard.monitor.episodes import Episode
from mesaguard.monitor.evidence import _scores, _start
from mesaguard.monitor.pvalues import _counts, _pvalue

__all__ = ["Ledger", "losing_pvalues"]


def _log_mean(values: list[float]) -> float:
    """``log(mean(exp(values)))`` in plain floats, without overflow; ``-inf`` if every value is."""
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum([math.exp(v - top) for v in values]) / len(values))


def losing_pvalues(shifts: Sequence[float], change: bool) -> tuple[float, float]:
    """The p-values at which a bet loses on every shift, ``(low, high)``; ``(inf, -inf)`` (none) in change mode.

    A bet of normal score ``z`` multiplies shift ``d``'s wealth by ``exp(d z - d^2 / 2)``, at most 1 wherever
    ``d z <= d^2 / 2`` (``z <= d / 2`` for ``d > 0``, ``z >= d / 2`` for ``d < 0``). Where that holds for every
    shift, an episode bet on now cannot lift the evidence, so its mid-episode lower bound is the evidence
    already proven and need not be computed (:meth:`Ledger._one`). Taken a hair inside, so that rounding in the
    normal scores never puts a winning bet in. In change mode ``log(1 + R)`` replaces ``log W`` and the bound
    does not hold."""
    if change:
        return math.inf, -math.inf
    high = min([d / 2 for d in shifts if d > 0], default=math.inf)  # z <= high
    low = max([d / 2 for d in shifts if d < 0], default=-math.inf)  # z >= low (and low <= 0 < high)
    p_low, p_high = (float(x) for x in ndtr([-high, -low]))  # z = Phi^-1(1 - p) falls as p rises
    return p_low + 1e-9, p_high - 1e-9


class Ledger:
    """The bag, the per-shift log-wealth of the bets made in the current test, and the evidence they prove.

    ``mode`` and ``log_threshold`` as the monitor's (:mod:`~mesaguard.monitor.modes`);
    ``horizon``: fixed mode bets on the first ``horizon`` episodes of a test only.
    """

    def __init__(
        self, mode: str, shifts: np.ndarray, log_threshold: float, horizon: int | None, reference: Sequence[float]
    ) -> None:
        self.mode, self.shifts, self.log_threshold, self.horizon = mode, shifts, log_threshold, horizon
        self._shifts = [float(d) for d in shifts.tolist()]
        self._half_sq = [d * d / 2 for d in self._shifts]
        self._change = mode == "change"
        self._losing = losing_pvalues(self._shifts, self._change)
        self.bag = sorted(float(r) for r in reference)
        self.new_test(0)

    def new_test(self, first: int) -> None:
        """Start a test whose first episode has id ``first``: wealth reset, the bag kept."""
        self.first = first
        self.log_wealth = _start(self.mode, (len(self._shifts),)).tolist()  # per shift: log-evidence of the bets
        self.last_bet: int | None = None  # id of the last episode bet on in this test
        self.episodes = 0  # episodes bet on in this test
        self.log_evidence = _log_mean(self.log_wealth)  # of the bets made (a level adds the pending ones)
        self._seen: tuple[int, int, int] | None = None  # one pending episode: its id and counts at the last level
        self._base = self._bases(self.log_wealth)

    def bets_on(self, episode: Episode) -> bool:
        """Whether ``episode`` is bet on in this test (not running at a clear, within a fixed horizon)."""
        return episode.counts and (self.horizon is None or episode.id - self.first < self.horizon)

    def _bases(self, log_wealth: list[float]) -> list[float]:
        """Per shift ``d``, what the log-evidence becomes after a bet of normal score ``z``, less ``d z``: the
        wealth's ``log W - d^2/2``, or in change mode ``log(1 + R) - d^2/2`` (:mod:`~mesaguard.monitor.evidence`).
        Plain floats: ten shifts cost less than one NumPy call."""
        if self._change:
            log_wealth = [(w + math.log1p(math.exp(-w))) if w > 0 else math.log1p(math.exp(w)) for w in log_wealth]
        return [w - h for w, h in zip(log_wealth, self._half_sq)]

    def _after(self, base: list[float], p: float) -> list[float]:
        """Per shift, the log-evidence after betting on the p-value ``p`` from ``base`` (:meth:`_bases`)."""
        z = float(_scores(p))
        return [b + d * z for b, d in zip(base, self._shifts)]

    def commit(self, episode: Episode) -> int | None:
        """Bet on a finished episode whose predecessors are all committed, then bag its key.

        Returns the episode's number if this bet takes the evidence to the threshold, else None.
        """
        crossing = None
        if self.bets_on(episode):
            greater, equal = _counts(self.bag, episode.value)
            p = _pvalue(greater, equal, len(self.bag), episode.u)
            self.log_wealth = self._after(self._base, p)
            self._base = self._bases(self.log_wealth)
            self.last_bet = episode.id
            self.episodes += 1
            self.log_evidence = _log_mean(self.log_wealth)
            if self.log_evidence >= self.log_threshold:
                crossing = episode.id + 1
        bisect.insort(self.bag, episode.in_bag)
        self._seen = None
        return crossing

    def level(self, pending: Sequence[Episode], next_id: int) -> tuple[float, int | None]:
        """The largest evidence provable now, and the number of the first episode at which it reaches the
        threshold (None if it does not).

        ``pending``: the started episodes not yet committed, in start order (their running
        maxima as lower bounds); ``next_id``: the id the next episode to start will get.
        With one pending episode whose p-value has not moved since the last call (one
        env: its running maximum rose without passing a bag value), nothing has changed
        and nothing is recomputed.
        """
        if len(pending) == 1 and pending[0].steps and self.bets_on(pending[0]):
            episode = pending[0]
            greater, equal = _counts(self.bag, episode.value)
            seen = (episode.id, greater, equal)
            if seen != self._seen:
                self._seen, self._last = seen, self._one(episode, greater, equal, next_id)
            return self._last
        return self._level(pending, next_id)

    def _one(self, episode: Episode, greater: int, equal: int, next_id: int) -> tuple[float, int | None]:
        """:meth:`_level` of one pending episode whose counts in the bag are known (one env's hot path; a test
        holds them equal)."""
        best = self.log_evidence
        crossing = None
        if best >= self.log_threshold:
            crossing = next_id if self.last_bet is None else self.last_bet + 1
        p = _pvalue(greater, equal, len(self.bag), episode.u)
        low, high = self._losing
        if low <= p <= high:  # a bet on it now loses on every shift: the level is the evidence already proven
            return best, crossing
        level = _log_mean(self._after(self._base, p))
        if crossing is None and level >= self.log_threshold:
            crossing = episode.id + 1
        return max(best, level), crossing

    def _level(self, pending: Sequence[Episode], next_id: int) -> tuple[float, int | None]:
        base = self._base
        best = self.log_evidence
        crossing = None
        if best >= self.log_threshold:  # only if the threshold is below a new test's evidence
            crossing = next_id if self.last_bet is None else self.last_bet + 1
        bagged: list[float] = []  # sorted: what the earlier pending episodes add to a later one's bag
        for episode in pending:
            if self.bets_on(episode):
                if episode.steps == 0:  # no step yet: it may be replaced and never bet on, so neither may later ones
                    break
                greater, equal = _counts(self.bag, episode.value)
                more, tied = _counts(bagged, episode.value)
                p = _pvalue(greater + more, equal + tied, len(self.bag) + len(bagged), episode.u)
                log_wealth = self._after(base, p)
                base = self._bases(log_wealth)
                level = _log_mean(log_wealth)
                if crossing is None and level >= self.log_threshold:
                    crossing = episode.id + 1
                best = max(best, level)
            bisect.insort(bagged, episode.in_bag)
        return best, crossing
