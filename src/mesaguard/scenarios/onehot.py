"""The one-hot view every gridworld scenario shows its agent, and its inverse.

:class:`OneHotViewObs` turns MiniGrid's coded view into one flat float32 vector an MLP
learns from; :func:`decode_onehot` reads the codes back from it (what a designer's
simulator builds its room from: :mod:`~mesaguard.scenarios.room`), refusing anything that
is not that wrapper's output so a shield on the simulator fails closed.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import RecordConstructorArgs
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

from mesaguard.safeguards.models import ModelError

__all__ = ["N_COLORS", "N_TYPES", "OneHotViewObs", "decode_onehot"]

N_TYPES, N_COLORS = len(OBJECT_TO_IDX), len(COLOR_TO_IDX) + 1  # per cell: MiniGrid's types; "none" + its colours


class OneHotViewObs(gym.ObservationWrapper, RecordConstructorArgs):
    """A MiniGrid-coded view as one flat float32 vector an MLP learns from.

    Per view cell: a one-hot object type (MiniGrid's 11) and a one-hot colour (7:
    "none" for unseen and empty cells, then MiniGrid's six); then a one-hot facing
    direction (4). MiniGrid's state channel and the text mission are left out. For
    a 7x7 view: ``7 * 7 * 18 + 4 = 886`` values in {0, 1}.
    """

    N_TYPES, N_COLORS = N_TYPES, N_COLORS

    def __init__(self, env: gym.Env):
        RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        view = env.observation_space["image"].shape[:2]
        n_cells = view[0] * view[1]
        per_cell = self.N_TYPES + self.N_COLORS
        self._type_offset = np.arange(n_cells) * per_cell
        self._color_offset = self._type_offset + self.N_TYPES
        self._dir_offset = n_cells * per_cell
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self._dir_offset + 4,), dtype=np.float32)

    def observation(self, observation: dict[str, Any]) -> np.ndarray:
        image = observation["image"]
        types = image[:, :, 0].ravel()
        colors = np.where(types > OBJECT_TO_IDX["empty"], image[:, :, 1].ravel() + 1, 0)
        out = np.zeros(self.observation_space.shape, dtype=np.float32)
        out[self._type_offset + types] = 1.0
        out[self._color_offset + colors] = 1.0
        out[self._dir_offset + observation["direction"]] = 1.0
        return out


def decode_onehot(obs: Any, view: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Invert :class:`OneHotViewObs`: type and colour codes ``[i, j]``, direction.

    A colour code is MiniGrid's (``-1`` where the cell shows none). Anything that is not that
    wrapper's output (wrong length, not one-hot, NaN) raises
    :class:`~mesaguard.safeguards.models.ModelError`, so a shield on the simulator fails closed.
    """
    flat = np.asarray(obs, dtype=np.float64).ravel()
    cells = view[0] * view[1]
    size = cells * (N_TYPES + N_COLORS) + 4
    if flat.shape != (size,) or not np.all((flat == 0.0) | (flat == 1.0)):
        raise ModelError(f"observation of shape {np.shape(obs)}: expected the {size} values in {{0, 1}} of a "
                         f"one-hot view of {view[0]}x{view[1]} cells")
    per_cell = flat[: size - 4].reshape(cells, N_TYPES + N_COLORS)
    parts = (per_cell[:, :N_TYPES], per_cell[:, N_TYPES:], flat[size - 4 :].reshape(1, 4))
    if any(not np.all(part.sum(axis=1) == 1.0) for part in parts):
        raise ModelError(f"observation of {size} values is not one-hot per cell (type, colour) and direction")
    types = parts[0].argmax(axis=1).reshape(view)
    colors = parts[1].argmax(axis=1).reshape(view) - 1
    return types, colors, int(parts[2].argmax())
