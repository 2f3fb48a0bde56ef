"""Gymnasium spaces as plain JSON, for the files mesaguard writes (policies, learned models).

Only what the shipped formats need: ``Box`` (shape, dtype from a short list, bounds with
infinities as strings) and ``Discrete``. Read back with :func:`space_from_json`, which
accepts nothing else.

>>> import gymnasium as gym
>>> box = gym.spaces.Box(-1.0, float("inf"), (2,), np.float32)
>>> space_to_json(box)
{'type': 'Box', 'shape': [2], 'dtype': 'float32', 'low': -1.0, 'high': 'inf'}
>>> space_from_json(space_to_json(box)) == box
True
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mesaguard.artifacts import ArtifactError

__all__ = ["DTYPES", "SpaceError", "space_from_json", "space_to_json"]


class SpaceError(ArtifactError):
    """A space that no mesaguard file can store."""


def _bound_to_json(array: np.ndarray) -> Any:
    """Box bounds as JSON: one number when uniform, else nested lists; infinities as strings."""
    values = [v if math.isfinite(v) else ("inf" if v > 0 else "-inf") for v in array.astype(float).ravel().tolist()]
    return values[0] if len(set(values)) == 1 else np.array(values, dtype=object).reshape(array.shape).tolist()


def _bound_from_json(value: Any, shape: tuple[int, ...]) -> np.ndarray:
    parsed = np.vectorize(float, otypes=[np.float64])(np.asarray(value, dtype=object))
    return np.broadcast_to(parsed, shape)


def space_to_json(space: gym.Space) -> dict[str, Any]:
    """A Box or Discrete space as plain JSON (bounds as numbers, infinities as strings)."""
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound_to_json(space.low),
            "high": _bound_to_json(space.high),
        }
    raise SpaceError(f"cannot store the space {space}; expected Box or Discrete")


DTYPES = {"float32", "float64", "uint8", "int64", "int32"}


def space_from_json(data: dict[str, Any]) -> gym.Space:
    """The space :func:`space_to_json` wrote; anything else is a ``ValueError`` (callers name the file and field)."""
    if data["type"] == "Discrete":
        return spaces.Discrete(int(data["n"]), start=int(data["start"]))
    if data["type"] == "Box":
        if data["dtype"] not in DTYPES:
            raise ValueError(f"Box dtype {data['dtype']!r}; expected one of {sorted(DTYPES)}")
        shape, dtype = tuple(int(n) for n in data["shape"]), np.dtype(data["dtype"])
        low, high = _bound_from_json(data["low"], shape), _bound_from_json(data["high"], shape)
        return spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)
    raise ValueError(f"space type {data['type']!r}; expected 'Box' or 'Discrete'")
