"""The deployment's episodes as the monitor tracks them: which runs in which env, which await their bet.

Episodes are numbered in the order they start (a vector env's started together in env
order): the order in which the ledger (:mod:`~mesaguard.monitor.ledger`) bets on them,
one that does not depend on their outcomes. :class:`Episodes` keeps, per env, the
episode running there, and the started episodes not yet bet on, in start order; an
episode replaced before its first step has no outcome and leaves without a bet.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from mesaguard.monitor.stops import CROSSED

__all__ = ["Episode", "Episodes"]


@dataclass
class Episode:
    """One deployment episode, numbered in start order (``id`` 0-based; its number is ``id + 1``)."""

    id: int
    u: float = 0.0  # smoothing uniform, drawn at the episode's first step (episodes replaced before it draw none)
    value: float = -math.inf  # running maximum of the episode statistic; CROSSED once the per-episode alarm fired
    steps: int = 0
    done: bool = False
    censored: bool = False  # cut short or taken over: its true statistic is only known to be >= value
    counts: bool = True  # False for episodes already running when the alarm was cleared

    @property
    def in_bag(self) -> float:
        """What later episodes are ranked against: the key, or +inf while unknown."""
        known = self.done and (not self.censored or self.value == CROSSED)  # a crossed key is exact, stopped or not
        return self.value if known else math.inf


class Episodes:
    """Per env the running episode (``running``), the started episodes not yet bet on (``open``, ascending ids),
    the id the next one gets (``next_id``) and how many envs run one (``live``); each an ``episode`` (this module's
    :class:`Episode` or its compiled twin, :mod:`~mesaguard.monitor.compiled`)."""

    def __init__(self, n_envs: int, episode: type[Episode] = Episode) -> None:
        self._episode = episode
        self.running: list[Episode | None] = [None] * n_envs
        self.open: list[Episode] = []
        self.next_id = 0
        self.live = 0

    def start(self, envs: list[int]) -> None:
        """A new episode in each of ``envs`` (ascending), numbered in that order; each must have none running."""
        for i in envs:
            episode = self._episode(self.next_id)
            self.next_id += 1
            self.running[i] = episode
            self.open.append(episode)
        self.live += len(envs)

    def end(self, i: int, censored: bool) -> bool:
        """End env ``i``'s running episode (``censored``: cut short); False if none ran or it had no step."""
        episode = self.running[i]
        if episode is None:
            return False
        self.running[i] = None
        self.live -= 1
        if episode.steps == 0:  # replaced before its first step: no outcome, so neither bet nor bag
            self.open.remove(episode)
            return False
        episode.done = True
        episode.censored |= censored
        return True

    def ready(self) -> Iterator[Episode]:
        """The finished episodes every earlier one of which is finished too, in start order: each leaves ``open``."""
        while self.open and self.open[0].done:
            yield self.open.pop(0)
