"""The driving scenario's designer's simulator: the observed cars on the reference road, for a shield to look
ahead on without the deployed env (:class:`~mesaguard.safeguards.models.DesignerSimulator`)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from highway_env import utils as highway_utils

from mesaguard.safeguards.models import DesignerSimulator, ModelError
from mesaguard.scenarios import get
from mesaguard.scenarios.driving import FEATURES, OBSERVED_VEHICLES, DrivingEnv, FastKinematics, make_env

__all__ = ["simulator"]


class _ReferenceTraffic:
    """``build(obs, step, rng)`` of the driving designer's simulator: the observed cars on the reference road.

    One :class:`DrivingEnv` of the reference variant, flattened as in the real chain, is built on
    the first fork and reused: each fork gives it a new road of the reference's lanes and puts on it

    * the ego car (the action type's ``MDPVehicle``) at the observed position, heading and speed
      (the heading from ``vx, vy``), its cruise set-point the one nearest the observed speed, no lane
      change under way;
    * each observed car (presence 1) as the reference traffic's class (``IDMVehicle``, highway-env's
      IDM/MOBIL parameters) at its observed position and velocity, keeping its observed speed as the
      training cars keep theirs, its behaviour randomized (``randomize_behavior``) from ``rng``, and,
      as in ``highway-fast-v0``, no collision checks of its own (only the ego's);
    * **no unobserved car**: the observation shows the four nearest cars ahead (or abreast) within
      200 m and nothing behind, so the model has no car behind the ego, none beyond the fourth.

    The observation is de-normalized with the reference env's own Kinematics ranges (what the
    designer's sensor model is), the episode clock set from ``step`` (truncation after 20 decisions
    as in the real chain), and ``info["catastrophe"]`` is the reference rule: the ego crashed.
    The road is straight and 10 km long, so the ego's absolute x, clipped in the observation beyond
    200 m, is placed at the clipped value: only distances between cars matter. A fork lives until the
    next one (the shield plays one at a time).

    The model's errors, by design those of a design-time model: set-points and lane changes under
    way are guessed, the other cars' behaviour is the reference's (in ``deploy`` the real ones
    tailgate and cut in), no car behind, and on ``deploy``'s 4 lanes the observation, normalized over
    a wider lateral range, is read through the reference's 3-lane range: lateral offsets shrink by
    a quarter and the leftmost of 4 lanes reads as the edge of a 3-lane road. ``lanes`` (the
    ``simulator`` argument) is the one fact a deployer may add without the deployed env: the lane
    count of the road it drives on (a map); the road and the ranges then follow it, the traffic
    stays the reference's.
    """

    def __init__(self, variant: str, lanes: int | None = None) -> None:
        self.variant = variant
        self.lanes = lanes
        self.env: gym.Env | None = None

    def __call__(self, obs: Any, step: int, rng: np.random.Generator) -> gym.Env:
        rows = np.asarray(obs, dtype=np.float64).reshape(-1)
        if rows.shape != (OBSERVED_VEHICLES * len(FEATURES),) or not np.all(np.isfinite(rows)):
            raise ModelError(f"driving simulator: observation {obs!r}; expected {OBSERVED_VEHICLES * len(FEATURES)} "
                             f"finite numbers (the flattened Kinematics rows {', '.join(FEATURES)})")
        if self.env is None:
            self.env = make_env(self.variant)
            if self.lanes is not None:  # before the first reset: the road and the Kinematics ranges follow it
                self.env.unwrapped.config["lanes_count"] = self.lanes  # type: ignore[attr-defined]
            self.env.reset(seed=int(rng.integers(2**31)))
        env: DrivingEnv = self.env.unwrapped  # type: ignore[assignment]
        kinematics: FastKinematics = env.observation_type  # type: ignore[assignment]
        kinematics.normalize_ranges()
        table = rows.reshape(OBSERVED_VEHICLES, len(FEATURES)).copy()
        for column, feature in enumerate(FEATURES[1:], start=1):  # [-1, 1] -> metres, m/s
            low, high = kinematics.features_range[feature]
            table[:, column] = low + (table[:, column] + 1.0) * (high - low) / 2.0
        table[1:, 1:] += table[0, 1:]  # the others' rows are relative to the ego's
        env._create_road()
        road = env.road
        road.np_random = rng
        ego = env.action_type.vehicle_class(road, *_placement(table[0]))
        ego.target_speed = float(ego.target_speeds[ego.speed_to_index(ego.speed)])
        ego.speed_index = ego.speed_to_index(ego.target_speed)
        env.controlled_vehicles = [ego]
        road.vehicles.append(ego)
        traffic = highway_utils.class_from_path(env.config["other_vehicles_type"])
        for row in table[1:]:
            if row[0] < 0.5:  # presence 0: an empty row
                continue
            car = traffic(road, *_placement(row))
            car.randomize_behavior()
            car.check_collisions = False  # highway-fast-v0: only the ego checks collisions
            road.vehicles.append(car)
        env.time = float(step)
        env.steps = int(step) * env.config["simulation_frequency"] // env.config["policy_frequency"]
        env.done = False
        return self.env


def _placement(row: np.ndarray) -> tuple[np.ndarray, float, float]:
    """A vehicle's position, heading and speed from its de-normalized ``presence, x, y, vx, vy`` row."""
    vx, vy = float(row[3]), float(row[4])
    return np.array(row[1:3], dtype=np.float64), float(np.arctan2(vy, vx)), float(np.hypot(vx, vy))


def simulator(seed: int | None = None, lanes: int | None = None) -> DesignerSimulator:
    """The designer's simulator: the observed cars on the reference road (see :class:`_ReferenceTraffic`).

    ``lanes``: the road's lane count when the deployer knows it (``None``: the reference's).

    >>> from mesaguard.scenarios.driving import IDLE
    >>> model = simulator(seed=0)
    >>> model.reset(seed=1)
    >>> env = make_env("train")
    >>> obs, _ = env.reset(seed=1)
    >>> sim = model.fork(obs, step=0)
    >>> next_obs, reward, terminated, truncated, info = sim.step(IDLE)
    >>> next_obs.shape, info["catastrophe"]
    ((25,), False)
    """
    if lanes is not None and not (isinstance(lanes, int) and not isinstance(lanes, bool) and lanes >= 1):
        raise ModelError(f"driving simulator: lanes={lanes!r}; expected an integer >= 1 (the road's lane count) "
                         "or None (the reference's)")
    name = "driving-simulator" if lanes is None else f"driving-simulator-{lanes}-lanes"
    return DesignerSimulator(_ReferenceTraffic(get("driving").reference_variant, lanes), name=name, seed=seed)
