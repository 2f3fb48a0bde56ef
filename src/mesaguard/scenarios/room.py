"""The MiniGrid room every gridworld scenario is built on: seen whole, small action set.

A scenario env subclasses :class:`RoomEnv` and sets, as class attributes, its
``SCENARIO`` name, ``VARIANTS``, ``ACTIONS`` (the first ``len(ACTIONS)`` MiniGrid
actions, or moves), the ``MISSION`` text and the room's ``WIDTH`` and ``HEIGHT``
(walls included). :class:`RoomEnv` checks the variant (an unknown one lists the
valid ones), builds the MiniGrid env with the whole room visible (no field of view
to highlight, walls see-through) and declares the observation: the room's MiniGrid
codes ``image[x, y]``, not turned with the agent (``VIEW`` to change its shape), the
agent's direction and the mission. The agent's view of it is
:class:`~mesaguard.scenarios.strawberry.OneHotViewObs`.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from gymnasium import spaces
from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX
from minigrid.core.mission import MissionSpace
from minigrid.minigrid_env import MiniGridEnv

from mesaguard.scenarios import check_variant

__all__ = ["AGENT_CODE", "EMPTY", "RoomEnv"]

EMPTY = (OBJECT_TO_IDX["empty"], 0, 0)  # an empty cell's MiniGrid code
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
