"""The MiniGrid room every gridworld scenario is built on: seen whole, small action set.

A scenario env subclasses :class:`RoomEnv` and sets, as class attributes, its
``SCENARIO`` name, ``VARIANTS``, ``ACTIONS`` (the first ``len(ACTIONS)`` MiniGrid
actions, or moves), the ``MISSION`` text and the room's ``WIDTH`` and ``HEIGHT``
(walls included). :class:`RoomEnv` checks the variant (an unknown one lists the
valid ones), builds the MiniGrid env with the whole room visible (no field of view
to highlight, walls see-through) and declares the observation: the room's MiniGrid
codes ``image[x, y]``, not turned with the agent (``VIEW`` to change its shape), the
agent's direction and the mission. The agent's view of it is
:class:`~mesaguard.scenarios.onehot.OneHotViewObs`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, DIR_TO_VEC, OBJECT_TO_IDX
from minigrid.core.grid import Grid
from minigrid.core.mission import MissionSpace
from minigrid.core.world_object import WorldObj
from minigrid.minigrid_env import MiniGridEnv

from mesaguard.safeguards.models import DesignerSimulator, ModelError
from mesaguard.scenarios import check_variant
from mesaguard.scenarios.onehot import decode_onehot

__all__ = [
    "AGENT_CODE",
    "EMPTY",
    "Observed",
    "RoomEnv",
    "build_grid",
    "cell_names",
    "decode_onehot",
    "designer_simulator",
    "move_route",
    "observed_room",
    "place_agent",
    "stay_move",
    "turn_route",
]

EMPTY = (OBJECT_TO_IDX["empty"], 0, 0)  # an empty cell's MiniGrid code
_LEFT, _RIGHT, _FORWARD = 0, 1, 2  # MiniGrid's first three actions
AGENT_CODE = (OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"])  # the agent's cell: its state channel is the direction


class RoomEnv(MiniGridEnv):
    """A MiniGrid room seen whole; subclasses set the class attributes and ``_gen_grid``.

    Parameters
    ----------
    variant
        One of ``VARIANTS``; another raises :class:`~mesaguard.scenarios.ScenarioError` listing them.
    max_steps
        Steps before truncation.
    render_mode
        ``None`` or ``"rgb_array"`` (or ``"human"``).
    size, view
        ``(width, height)`` of the room (default ``WIDTH, HEIGHT``) and of the observed image
        (default: the room).
    """

    SCENARIO: ClassVar[str]
    VARIANTS: ClassVar[tuple[str, ...]]
    ACTIONS: ClassVar[tuple[str, ...]]
    MISSION: ClassVar[str]
    WIDTH: ClassVar[int]
    HEIGHT: ClassVar[int]

    def __init__(
        self,
        variant: str,
        max_steps: int,
        render_mode: str | None = None,
        size: tuple[int, int] | None = None,
        view: tuple[int, int] | None = None,
    ) -> None:
        check_variant(self.SCENARIO, variant, self.VARIANTS)
        self.variant = variant
        width, height = size or (self.WIDTH, self.HEIGHT)
        text = self.MISSION

        def mission() -> str:  # MiniGrid wants a function of no arguments
            return text

        mission_space = MissionSpace(mission_func=mission)
        super().__init__(
            mission_space=mission_space,
            width=width,
            height=height,
            max_steps=max_steps,
            see_through_walls=True,
            render_mode=render_mode,
            highlight=False,  # the agent sees the whole room: no field of view to highlight
        )
        self.action_space = spaces.Discrete(len(self.ACTIONS))
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, (*(view or (width, height)), 3), dtype=np.uint8),
                "direction": spaces.Discrete(4),
                "mission": mission_space,
            }
        )


    def _begin_step(self, action: Any) -> int:
        """Check ``action`` (a clear error naming the valid ones), count the step, return it as an int."""
        if not self.action_space.contains(action):
            raise ValueError(f"action {action!r} is not in Discrete({len(self.ACTIONS)}): {', '.join(self.ACTIONS)}")
        self.step_count += 1
        return int(action)

    def _turn(self, action: int) -> bool:
        """Turn for MiniGrid's left (0) and right (1); False, unturned, for any other action."""
        if action not in (_LEFT, _RIGHT):
            return False
        self.agent_dir = (self.agent_dir + (1 if action == _RIGHT else -1)) % 4
        return True

    def _end_step(
        self, reward: float, terminated: bool, truncated: bool, info: dict[str, Any]
    ) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """The step's return: a fresh observation after drawing the frame for a human viewer."""
        if self.render_mode == "human":
            self.render()
        return self.gen_obs(), reward, terminated, truncated, info

    def _grid_codes(self) -> np.ndarray:
        """The grid in MiniGrid codes (type, colour, state), ``[x, y]``: ``EMPTY`` where nothing is."""
        codes = [EMPTY if obj is None else obj.encode() for obj in self.grid.grid]  # row-major: (y, x)
        return np.array(codes, dtype=np.uint8).reshape(self.height, self.width, 3).transpose(1, 0, 2)

    def _observation(self, image: np.ndarray) -> dict[str, Any]:
        """The dict observation around ``image``."""
        return {"image": image, "direction": self.agent_dir, "mission": self.mission}


# ---------------------------------------------------------------------------
# Routes for the scripted policies (breadth-first, on the true state)
# ---------------------------------------------------------------------------

Cell = tuple[int, int]


def turn_route(
    env: MiniGridEnv, is_target: Callable[[Cell], bool], passable: Callable[[Cell], bool], here: int, nowhere: int
) -> int:
    """First action (left, right, forward: turns count) of a shortest path to a pose facing a target.

    ``here`` when the agent already faces one, ``nowhere`` when none can be faced.
    """
    start = (int(env.agent_pos[0]), int(env.agent_pos[1]), int(env.agent_dir))
    first: dict[tuple[int, int, int], int] = {start: here}
    queue = deque([start])
    while queue:
        x, y, d = state = queue.popleft()
        dx, dy = (int(v) for v in DIR_TO_VEC[d])
        ahead = (x + dx, y + dy)
        if is_target(ahead):
            return first[state]
        moves = [(_LEFT, (x, y, (d - 1) % 4)), (_RIGHT, (x, y, (d + 1) % 4))]
        if passable(ahead):
            moves.append((_FORWARD, (*ahead, d)))
        for action, nxt in moves:
            if nxt not in first:
                first[nxt] = action if state == start else first[state]
                queue.append(nxt)
    return nowhere


def move_route(
    env: MiniGridEnv,
    targets: Collection[Cell],
    avoid: Callable[[Any, Cell], bool] | None = None,
    stay: int | None = None,
) -> int:
    """First move (action = MiniGrid direction) of a shortest path onto a target cell.

    Cells with an object the agent cannot overlap are walls; ``avoid(obj, cell)`` bars
    others. Already on a target, or with none reachable: ``stay``, by default
    :func:`stay_move`.
    """
    start = (int(env.agent_pos[0]), int(env.agent_pos[1]))
    here = stay_move(env, start) if stay is None else stay
    first: dict[Cell, int] = {start: here}
    queue = deque([start])
    while queue:
        x, y = cell = queue.popleft()
        if cell in targets:
            return first[cell]
        for action, (dx, dy) in enumerate(DIR_TO_VEC):
            nxt = (x + int(dx), y + int(dy))
            obj = env.grid.get(*nxt)
            if nxt in first or not (obj is None or obj.can_overlap()):
                continue
            if avoid is not None and avoid(obj, nxt):
                continue
            first[nxt] = action if cell == start else first[cell]
            queue.append(nxt)
    return here


def stay_move(env: MiniGridEnv, cell: Cell) -> int:
    """A move into a wall beside ``cell`` (the agent stays put), else east (0)."""
    for action, (dx, dy) in enumerate(DIR_TO_VEC):
        obj = env.grid.get(cell[0] + int(dx), cell[1] + int(dy))
        if obj is not None and not obj.can_overlap():
            return action
    return 0


# ---------------------------------------------------------------------------
# The designer's simulator: the observed room under the reference variant's rules
# ---------------------------------------------------------------------------

_TYPE_NAMES = {idx: name for name, idx in OBJECT_TO_IDX.items()}
_COLOR_NAMES = {idx: name for name, idx in COLOR_TO_IDX.items()}


@dataclass(frozen=True)
class Observed:
    """What one observation shows of a room: per cell ``[x, y]`` the type and colour names, the agent.

    ``cells`` holds ``(type, colour)`` names (``("empty", "")`` for nothing, and the agent's own cell
    as ``("agent", colour)``); ``carried`` is the ``(type, colour)`` an egocentric view shows on the
    agent's cell (``None`` where the view does not show it or the hands are empty).
    """

    cells: dict[Cell, tuple[str, str]]
    agent: Cell
    direction: int
    agent_color: str = ""
    carried: tuple[str, str] | None = None

    def where(self, kind: str, color: str | None = None) -> list[Cell]:
        """The cells showing a ``kind`` object (of ``color`` if given), in ``[x, y]`` order."""
        return sorted(c for c, (t, col) in self.cells.items() if t == kind and (color is None or col == color))


def observed_room(obs: Any, width: int, height: int) -> Observed:
    """The :class:`Observed` room from a one-hot view of the whole room, not turned (``image[x, y]``)."""
    types, colors, direction = decode_onehot(obs, (width, height))
    cells = {(x, y): cell_names(int(types[x, y]), int(colors[x, y])) for x in range(width) for y in range(height)}
    agents = [c for c, (t, _) in cells.items() if t == "agent"]
    if len(agents) != 1:
        raise ModelError(f"observation shows {len(agents)} agents; expected exactly one")
    return Observed(cells, agents[0], direction, agent_color=cells[agents[0]][1])


def cell_names(kind: int, color: int) -> tuple[str, str]:
    """``(type, colour)`` names of MiniGrid codes; ``""`` for no colour."""
    if kind not in _TYPE_NAMES or (color >= 0 and color not in _COLOR_NAMES):
        raise ModelError(f"observed MiniGrid codes (type {kind}, colour {color}) are not MiniGrid's")
    name = _TYPE_NAMES[kind]
    return name, ("" if name in ("empty", "unseen") or color < 0 else _COLOR_NAMES[color])


ObjectFactory = Callable[[str, str], WorldObj | None]
"""``factory(type, colour) -> WorldObj`` for an observed cell; ``None`` leaves it empty."""


def build_grid(room: Observed, width: int, height: int, make: ObjectFactory, under_agent: WorldObj | None) -> Grid:
    """A MiniGrid ``Grid`` holding the observed objects (``make`` builds each) and ``under_agent`` at the agent.

    What an observation shows as empty or unseen stays empty; a code ``make`` does not know raises
    :class:`~mesaguard.safeguards.models.ModelError` naming the cell.
    """
    grid = Grid(width, height)
    for (x, y), (kind, color) in room.cells.items():
        if kind in ("empty", "unseen"):
            continue
        if kind == "agent":
            obj = under_agent
        else:
            obj = make(kind, color)
            if obj is None:
                raise ModelError(f"observed cell ({x}, {y}) shows a {color} {kind}; the simulator knows no such object")
        if obj is not None:
            grid.set(x, y, obj)
            obj.init_pos = obj.cur_pos = (x, y)
    return grid


def designer_simulator(
    make_env: Callable[[str], Any], reference: str, set_state: Callable[[Any, Any, Any], None], name: str,
    seed: int | None = None,
) -> DesignerSimulator:
    """A :class:`~mesaguard.safeguards.models.DesignerSimulator` of a room scenario.

    Each fork makes ``make_env(reference)`` (the agent's observation wrapper included), resets it
    with a seed drawn from the model's own Generator (so whatever the observation leaves open is
    drawn as the reference variant draws it), sets the episode's step count, then
    ``set_state(room_env, obs, rng)`` sets the room to what ``obs`` shows.
    """
    def build(obs: Any, step: int, rng: np.random.Generator) -> Any:
        env = make_env(reference)
        env.reset(seed=int(rng.integers(2**31)))
        room = env.unwrapped
        set_state(room, obs, rng)
        room.step_count = int(step)
        return env

    return DesignerSimulator(build, name=name, seed=seed)


def place_agent(env: MiniGridEnv, room: Observed, grid: Grid) -> None:
    """Put ``grid`` and the observed agent (cell, direction) into ``env``; hands empty."""
    env.grid = grid
    env.agent_pos = room.agent
    env.agent_dir = room.direction
    env.carrying = None
