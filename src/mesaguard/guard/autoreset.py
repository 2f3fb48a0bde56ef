"""A vector env's step, sub-env by sub-env, around Gymnasium's autoreset.

A guard's objective reads one sub-env's transition at a time; a vector env hands
batches. :class:`Items` indexes a batched value per sub-env (unbatched only if an
objective asks); with same-step autoreset a sub-env that ended in this step already
shows its reset's observation and info, so :class:`Swapped` and
:func:`own_step_infos` put that step's own ``final_obs`` and ``final_info`` back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.vector.utils import iterate

__all__ = ["Items", "Swapped", "own_step_infos"]

_FINAL = ("final_obs", "_final_obs", "final_info", "_final_info")


class Items:
    """A batched value of ``space`` indexable per sub-env.

    Unbatched on first use: only a callable objective reads it.
    """

    def __init__(self, space: Any, batch: Any) -> None:
        self.space, self.batch = space, batch
        self._items: list[Any] | None = None

    def __getitem__(self, i: int) -> Any:
        if isinstance(self.batch, np.ndarray):
            return self.batch[i]
        if self._items is None:
            self._items = list(iterate(self.space, self.batch))
        return self._items[i]


class Swapped:
    """``items`` with the ended sub-envs' entries taken from ``final`` (same-step autoreset's ``final_obs``)."""

    def __init__(self, items: Items, final: np.ndarray, ended: np.ndarray) -> None:
        self.items, self.final, self.ended = items, final, ended

    def __getitem__(self, i: int) -> Any:
        return self.final[i] if self.ended[i] else self.items[i]


def own_step_infos(info: dict[str, Any], ended: np.ndarray) -> dict[str, Any]:
    """Same-step autoreset: the vector info of the step itself, the ended sub-envs' ``final_info`` put back.

    Gymnasium returns the *reset*'s info for a sub-env that ended in this step and
    keeps its own step's info under ``final_info``; the objective must read the latter.

    >>> info = {"u": np.array([0.0, 0.0]), "_u": np.array([True, True]),
    ...         "final_info": {"u": np.array([0.0, -3.0]), "_u": np.array([False, True])},
    ...         "_final_info": np.array([False, True])}
    >>> merged = own_step_infos(info, np.array([False, True]))
    >>> merged["u"].tolist(), merged["_u"].tolist()
    ([0.0, -3.0], [True, True])
    """
    final = info.get("final_info")
    if not isinstance(final, dict) or not ended.any():
        return info
    merged: dict[str, Any] = {}
    for key, values in info.items():  # the reset's items of the ended sub-envs are not this step's
        if key in _FINAL or key.startswith("_") or not isinstance(values, np.ndarray):
            if key not in _FINAL and not key.startswith("_"):
                merged[key] = values
            continue
        merged[key] = values
        merged["_" + key] = np.asarray(info.get("_" + key, np.ones(len(ended), dtype=bool))) & ~ended
    for key, values in final.items():
        if key.startswith("_") or not isinstance(values, np.ndarray):
            continue
        mine = np.asarray(final.get("_" + key, np.ones(len(ended), dtype=bool))) & ended
        if key in merged and merged[key].shape == values.shape:
            where = mine.reshape(mine.shape + (1,) * (values.ndim - 1))
            merged[key] = np.where(where, values, merged[key])
            merged["_" + key] = merged["_" + key] | mine
        else:
            merged[key], merged["_" + key] = values, mine
    return merged
