"""Impact penalty: a bias toward leaving the world as inaction would have left it.

A reward wrapper for training. After each step it compares the state the agent's
action led to, ``s_{t+1}``, with the **stepwise inaction baseline** ``b_t``: the
state the world would be in had the agent not acted at step ``t``. It returns
``reward - beta * d(s_{t+1}; b_t)`` for a deviation measure ``d`` that is zero when
the two states are equal, and reports ``d`` in ``info["impact"]``. The base
objective the env writes in ``info["base_objective"]`` is left untouched: the
penalty shapes the agent's reward, not the score the guard checks.

Two deviation measures, both computed exactly on the env's state graph:

``"rr"``, relative reachability (Krakovna et al. 2019, "Penalizing side effects
    using stepwise relative reachability"): the share of the states reachable
    from the baseline whose reachability the action reduced,
    ``d = sum_x max(R(b; x) - R(s; x), 0) / |Reach(b)|``, with ``R(s; x) =
    gamma_r ** dist(s, x)`` (``gamma_r = 1``: undiscounted, 1 if ``x`` can be
    reached at all). Only reductions count (the truncated difference), so an
    action that opens new possibilities costs nothing and an action that can be
    undone costs nothing when undiscounted.
``"aup"``, attainable utility preservation (Turner et al. 2020, "Conservative
    agency via attainable utility preservation"): the mean absolute change in
    the optimal value of a set of auxiliary reward functions,
    ``d = mean_i (1 - gamma) |V_i(s) - V_i(b)|``. The auxiliary rewards are
    ``"random"`` (one uniform number in ``[0, 1]`` per state and function,
    Turner et al.'s choice; drawn from a hash of the state, so it does not
    depend on the order in which states were found) or ``"reach"`` (reward 1 on
    reaching one target state, then the episode of the auxiliary task ends:
    ``V = gamma ** dist``; targets are states picked by the same hash). Values
    come from value iteration on the state graph; ``(1 - gamma)`` puts them in
    ``[0, 1]``.

The inaction baseline. The scenarios have no no-op action (side-effects acts with
``Discrete(3)``: left, right, forward), and nothing in them moves unless the agent
moves it. So by default the baseline is the state *before* the action
(``noop_action=None``): what a no-op would have left, since the world stands still
on its own. An env whose world changes by itself needs a real no-op: pass
``noop_action`` and the baseline becomes the successor of ``s_t`` under it (turning
left, for instance, is a no-op for every object but the agent's heading). The
penalty of an action that leaves the state as it was is zero by construction.

The state graph. :class:`StateGraph` names each state by ``state_key(env)`` (by
default :func:`minigrid_key`: the agent's cell and heading and the encoded grid)
and finds successors by stepping deep copies of ``env.unwrapped``, one per action,
breadth first, until the whole part of the graph reachable from a state is known;
it happens once per component and is cached, so later steps cost two dictionary
lookups and a few array reads. The env must be deterministic given the key.
Episode ends are ignored: the impact measure asks what the world still allows,
and the end of an episode is not a change of the world (an absorbing goal state
would make reaching the goal itself look like the largest side effect). In
side-effects ``deploy`` cornering the box from its start makes most of the graph's
states unreachable (``benchmarks/results/impact.json``, ``deviations``).

>>> from mesaguard.scenarios import make
>>> env = ImpactPenalty(make("side-effects", "deploy"), measure="rr", beta=1.0)
>>> _ = env.reset(seed=1)
>>> _, reward, _, _, info = env.step(0)  # turn left: undone by turning right
>>> info["impact"], reward
(0.0, 0.0)
"""

from __future__ import annotations

import copy
import hashlib
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

__all__ = [
    "AttainableUtility",
    "ImpactError",
    "ImpactPenalty",
    "Measure",
    "RelativeReachability",
    "StateGraph",
    "minigrid_key",
]

MEASURES = ("aup", "rr")


class ImpactError(ValueError):
    """Bad parameters, or a state graph the penalty cannot handle (too large, non-discrete actions)."""


def minigrid_key(env: gym.Env) -> Hashable:
    """The state of a MiniGrid env: agent cell, heading, what it carries, the encoded grid.

    Everything MiniGrid's dynamics read, for envs whose objects live in the grid.
    """
    u = env.unwrapped
    carrying = None if getattr(u, "carrying", None) is None else u.carrying.encode()
    return (int(u.agent_pos[0]), int(u.agent_pos[1]), int(u.agent_dir), carrying, u.grid.encode().tobytes())


def _uniform(seed: int, stream: int, key: Hashable) -> float:
    """A number in ``[0, 1)`` fixed by ``(seed, stream, key)``: the same in every process and order."""
    digest = hashlib.blake2b(repr((seed, stream, key)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


class StateGraph:
    """The deterministic transition graph of an env, found by stepping deep copies.

    Parameters
    ----------
    n_actions
        Size of the ``Discrete`` action space.
    state_key
        ``state_key(env) -> hashable``: a name for the env's state that fixes its
        dynamics (default :func:`minigrid_key`).
    max_states
        Stop with :class:`ImpactError` beyond this many states (a guard against an
        env too large to enumerate).

    States are numbered in the order found; ``successors[i][a]`` is the state that
    action ``a`` leads to from state ``i``. :meth:`index` adds the whole part of the
    graph reachable from a state the first time it sees that state, so every
    state's successors are known and a component never grows later.
    """

    def __init__(
        self, n_actions: int, state_key: Callable[[gym.Env], Hashable] = minigrid_key, max_states: int = 100_000
    ) -> None:
        if int(n_actions) < 1:
            raise ImpactError(f"n_actions={n_actions}; expected a positive number of discrete actions")
        self.n_actions = int(n_actions)
        self.state_key = state_key
        self.max_states = int(max_states)
        self.keys: list[Hashable] = []
        self.ids: dict[Hashable, int] = {}
        self.successors: list[list[int]] = []
        self.version = 0  # bumped whenever states are added: measures recompute what they cached

    def __len__(self) -> int:
        return len(self.keys)

    def index(self, env: gym.Env) -> int:
        """The number of ``env``'s current state, exploring its component if it is new."""
        key = self.state_key(env)
        found = self.ids.get(key)
        return found if found is not None else self._explore(env.unwrapped, key)

    def _add(self, key: Hashable) -> int:
        if len(self.keys) >= self.max_states:
            raise ImpactError(
                f"the state graph passed max_states={self.max_states}; the env is too large for an exact impact "
                "measure, or state_key names states the dynamics do not fix (a step counter, say)"
            )
        self.ids[key] = len(self.keys)
        self.keys.append(key)
        self.successors.append([])
        return self.ids[key]

    def _explore(self, env: gym.Env, key: Hashable) -> int:
        root = self._add(key)
        queue = deque([(root, copy.deepcopy(env))])
        while queue:
            i, snapshot = queue.popleft()
            row = []
            for action in range(self.n_actions):
                child = copy.deepcopy(snapshot) if action < self.n_actions - 1 else snapshot
                child.step(action)  # episode ends are ignored: the world goes on (see the module docstring)
                child_key = self.state_key(child)
                j = self.ids.get(child_key)
                if j is None:
                    j = self._add(child_key)
                    queue.append((j, child))
                row.append(j)
            self.successors[i] = row
        self.version += 1
        return root

    def successor_array(self) -> np.ndarray:
        """``(n_states, n_actions)`` int array of successors."""
        return np.array(self.successors, dtype=np.int64).reshape(len(self), self.n_actions)

    def distances(self, source: int) -> np.ndarray:
        """Fewest steps from ``source`` to every known state (``inf`` where unreachable)."""
        dist = np.full(len(self), np.inf)
        dist[source] = 0
        queue = deque([source])
        succ = self.successors
        while queue:
            i = queue.popleft()
            d = dist[i] + 1
            for j in succ[i]:
                if dist[j] == np.inf:
                    dist[j] = d
                    queue.append(j)
        return dist


class Measure:
    """A deviation ``d(actual; baseline) >= 0`` between two states of a :class:`StateGraph`, 0 when equal."""

    name = ""

    def __init__(self, graph: StateGraph) -> None:
        self.graph = graph

    def deviation(self, actual: int, baseline: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "graph" and not k.startswith("_"))
        return f"{type(self).__name__}({options})"


class RelativeReachability(Measure):
    """Relative reachability (Krakovna et al. 2019), truncated difference, normalized by ``|Reach(baseline)|``.

    Parameters
    ----------
    graph
        The state graph.
    discount
        ``gamma_r`` in ``R(s; x) = gamma_r ** dist(s, x)``; 1 (default) is
        undiscounted reachability: only what can never be undone costs.
    """

    name = "rr"

    def __init__(self, graph: StateGraph, discount: float = 1.0) -> None:
        super().__init__(graph)
        if not 0.0 < discount <= 1.0:
            raise ImpactError(f"discount={discount}; expected a number in (0, 1]")
        self.discount = float(discount)
        self._rows: dict[int, np.ndarray] = {}

    def reachability(self, state: int) -> np.ndarray:
        """``R(state; x)`` for every known state ``x`` (cached per state)."""
        row = self._rows.get(state)
        n = len(self.graph)
        if row is None:
            dist = self.graph.distances(state)
            row = (np.isfinite(dist) if self.discount == 1.0 else self.discount**dist).astype(np.float64)
            self._rows[state] = row
        elif row.size < n:  # states found later lie in other components: unreachable from here
            row = self._rows[state] = np.concatenate([row, np.zeros(n - row.size)])
        return row

    def deviation(self, actual: int, baseline: int) -> float:
        if actual == baseline:
            return 0.0
        base, act = self.reachability(baseline), self.reachability(actual)
        return float(np.maximum(base - act, 0.0).sum() / np.count_nonzero(base))


class AttainableUtility(Measure):
    """Attainable utility preservation (Turner et al. 2020): mean ``(1 - gamma) |V_i(actual) - V_i(baseline)|``.

    Parameters
    ----------
    graph
        The state graph.
    n_aux
        Number of auxiliary reward functions.
    discount
        ``gamma`` of the auxiliary tasks.
    aux
        ``"random"``: a uniform reward in ``[0, 1]`` per state, collected every
        step; ``"reach"``: reward 1 on reaching a target state (the auxiliary task
        ends there), so ``(1 - gamma) V`` is read as ``gamma ** dist``.
    seed
        Fixes the auxiliary rewards (through a hash of each state's key).
    """

    name = "aup"

    def __init__(
        self, graph: StateGraph, n_aux: int = 10, discount: float = 0.95, aux: str = "random", seed: int = 0
    ) -> None:
        super().__init__(graph)
        if int(n_aux) < 1:
            raise ImpactError(f"n_aux={n_aux}; expected at least one auxiliary reward function")
        if not 0.0 < discount < 1.0:
            raise ImpactError(f"discount={discount}; expected a number in (0, 1)")
        if aux not in ("random", "reach"):
            raise ImpactError(f"aux={aux!r}; expected 'random' or 'reach'")
        self.n_aux, self.discount, self.aux, self.seed = int(n_aux), float(discount), aux, int(seed)
        self._values = np.zeros((self.n_aux, 0))
        self._version = -1

    def values(self) -> np.ndarray:
        """``(n_aux, n_states)``: each auxiliary task's optimal value times ``(1 - gamma)``, in ``[0, 1]``."""
        if self._version != self.graph.version:
            self._values = self._random() if self.aux == "random" else self._reach()
            self._version = self.graph.version
        return self._values

    def _random(self) -> np.ndarray:
        keys = self.graph.keys
        rewards = np.array([[_uniform(self.seed, i, k) for k in keys] for i in range(self.n_aux)])
        rewards *= 1.0 - self.discount  # so that values lie in [0, 1]
        succ = self.graph.successor_array()
        values = rewards / (1.0 - self.discount)  # an upper bound: value iteration falls monotonically to V*
        tol = 1e-12
        while True:
            new = rewards + self.discount * values[:, succ].max(axis=2)
            if np.max(np.abs(new - values)) <= tol * (1.0 - self.discount):
                return new
            values = new

    def _reach(self) -> np.ndarray:
        keys = self.graph.keys
        # target i: the state with the smallest hash-uniform number of stream i (any order of discovery)
        targets = [min(range(len(keys)), key=lambda j, i=i: _uniform(self.seed, i, keys[j])) for i in range(self.n_aux)]
        # distances *to* each target: breadth first on the reversed graph
        reverse: list[list[int]] = [[] for _ in keys]
        for i, row in enumerate(self.graph.successors):
            for j in set(row):
                reverse[j].append(i)
        values = np.zeros((self.n_aux, len(keys)))
        for a, target in enumerate(targets):
            dist = np.full(len(keys), np.inf)
            dist[target] = 0
            queue = deque([target])
            while queue:
                j = queue.popleft()
                for i in reverse[j]:
                    if dist[i] == np.inf:
                        dist[i] = dist[j] + 1
                        queue.append(i)
            values[a] = self.discount**dist
        return values

    def deviation(self, actual: int, baseline: int) -> float:
        if actual == baseline:
            return 0.0
        v = self.values()
        return float(np.abs(v[:, actual] - v[:, baseline]).mean())


def make_measure(name: str, graph: StateGraph, **options: Any) -> Measure:
    """``"rr"`` or ``"aup"`` on ``graph``, with the measure's keyword options."""
    if name == "rr":
        return RelativeReachability(graph, **options)
    if name == "aup":
        return AttainableUtility(graph, **options)
    raise ImpactError(f"unknown impact measure {name!r}; expected one of {', '.join(MEASURES)}")


class ImpactPenalty(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Reward minus ``beta`` times the deviation from the stepwise inaction baseline.

    Parameters
    ----------
    env
        A deterministic env with a ``Discrete`` action space.
    measure
        ``"aup"`` or ``"rr"`` (see the module docstring), or a :class:`Measure`
        built on a :class:`StateGraph`: pass one instance to many envs (a vector
        env's copies) so the graph is explored once.
    beta
        Weight of the penalty, ``>= 0``.
    noop_action
        ``None`` (default): the baseline is the state before the action (a world
        that stands still on its own); else the action whose successor is the
        baseline.
    state_key
        Names a state (default :func:`minigrid_key`); used when ``measure`` is a name.
    options
        Keyword options of the measure (``discount``, ``n_aux``, ``aux``, ``seed``).

    Adds ``info["impact"]`` (the deviation, before ``beta``) on every step.
    """

    def __init__(
        self,
        env: gym.Env,
        measure: str | Measure = "aup",
        beta: float = 0.1,
        noop_action: int | None = None,
        state_key: Callable[[gym.Env], Hashable] = minigrid_key,
        **options: Any,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, measure=measure, beta=beta, noop_action=noop_action, state_key=state_key, **options
        )
        gym.Wrapper.__init__(self, env)
        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ImpactError(f"action space {env.action_space}; the impact penalty needs a Discrete action space")
        if not (np.isfinite(beta) and beta >= 0):
            raise ImpactError(f"beta={beta}; expected a finite number >= 0")
        n = int(env.action_space.n)
        if noop_action is not None and not 0 <= int(noop_action) < n:
            raise ImpactError(f"noop_action={noop_action}; expected an action in 0..{n - 1} or None")
        if isinstance(measure, Measure):
            if options:
                raise ImpactError(f"options {sorted(options)} given with a built measure; set them on the measure")
            if measure.graph.n_actions != n:
                raise ImpactError(f"the measure's graph has {measure.graph.n_actions} actions; this env has {n}")
            self.measure = measure
        else:
            self.measure = make_measure(measure, StateGraph(n, state_key), **options)
        self.graph = self.measure.graph
        self.beta = float(beta)
        self.noop_action = None if noop_action is None else int(noop_action)
        self._state = -1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        self._state = self.graph.index(self.env)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        before = self._state
        if before < 0:
            raise ImpactError("step() before reset(): the impact penalty needs the first state")
        obs, reward, terminated, truncated, info = self.env.step(action)
        after = self._state = self.graph.index(self.env)
        baseline = before if self.noop_action is None else self.graph.successors[before][self.noop_action]
        impact = self.measure.deviation(after, baseline)
        info = dict(info)
        info["impact"] = impact
        return obs, float(reward) - self.beta * impact, terminated, truncated, info
