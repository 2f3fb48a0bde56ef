"""Gridworld helpers shared by the scenario tests: set a scene, and an independent shortest path.

:func:`stage` resets a MiniGrid scenario env and puts the agent at a chosen pose, so a
test can step one chosen action from a known place. :func:`shortest_steps` is a
breadth-first search over poses (cell and heading), written apart from the scripted
policies so that a test can check their paths against it.
"""

from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym

__all__ = ["place", "shortest_steps", "stage"]

# MiniGrid's headings: 0 east, 1 south, 2 west, 3 north; a step forward moves by these.
STEP = ((1, 0), (0, 1), (-1, 0), (0, -1))


def place(env: gym.Env, agent: tuple[int, int], direction: int) -> gym.Env:
    """Put the agent of ``env`` (a reset MiniGrid env, wrapped or not) at ``agent`` facing ``direction``."""
    u = env.unwrapped
    u.agent_pos, u.agent_dir = agent, direction
    return env


def stage(
    make_env: Callable[[str], gym.Env], variant: str, agent: tuple[int, int], direction: int, seed: int = 0
) -> gym.Env:
    """A fresh ``make_env(variant)``, reset with ``seed``, the agent at ``agent`` facing ``direction``."""
    env = make_env(variant)
    env.reset(seed=seed)
    return place(env, agent, direction)


def shortest_steps(u: gym.Env, goal: tuple[int, int], free: Callable[[int, int], bool]) -> int:
    """Steps (turns included) of a shortest path from the agent's pose in ``u`` onto ``goal``.

    A step forward may go onto ``goal`` or onto a cell where ``free(x, y)``; a turn
    (left or right) is a step too. Raises ``AssertionError`` when the goal cannot be reached.
    """
    start = (*u.agent_pos, u.agent_dir)
    dist, frontier = {start: 0}, [start]
    while frontier:
        nxt = []
        for x, y, d in frontier:
            dx, dy = STEP[d]
            if (x + dx, y + dy) == tuple(goal):
                return dist[(x, y, d)] + 1
            moves = [(x, y, (d + 1) % 4), (x, y, (d - 1) % 4)]
            if free(x + dx, y + dy):
                moves.append((x + dx, y + dy, d))
            for pose in moves:
                if pose not in dist:
                    dist[pose] = dist[(x, y, d)] + 1
                    nxt.append(pose)
        frontier = nxt
    raise AssertionError("goal unreachable")
