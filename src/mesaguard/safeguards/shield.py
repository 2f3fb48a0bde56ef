"""Lookahead shield: try each action on a world model before the real env takes it.

A score computed after the fact cannot undo an irreversible action. The shield
scores the agent's proposed action on a **model** of the world first, ``horizon``
steps ahead, and keeps it off the real env when the lookahead shows **harm** as
the model sees it: a step whose model ``info[catastrophe]`` is true, or a
base-objective increment strictly below ``bound``. Then it plays the best
harmless alternative (the highest lookahead base objective), else the
``fallback`` policy's action if its lookahead shows no catastrophe, else (fail
closed) it truncates the episode without acting.

The model (:mod:`mesaguard.safeguards.models`) is the user's choice and the
shield is only as good as it: ``model="copy"`` looks ahead on a copy of the
deployed env itself, hidden layout and random state included: the **oracle**,
an upper bound no deployed system reaches; a scenario's designer's simulator
(``get(name).simulator()``: the observed state under the reference variant's
rules, its own randomness) and a learned model (fitted on reference-variant
transitions) are what a deployment can have. A non-oracle model never sees the
deployed env, only the observations and the step count; the real env's
``info`` is never read for a verdict.

What a lookahead judges. The first step of a lookahead is the action itself;
steps 2..H follow a **continuation**: the ``rollout`` policy (for instance the
agent itself), or with ``rollout=None`` the first action repeated. Harm at step 1
is the action's own. Harm at a later step is the action's only if the
continuation is what will be played, and under the shield it is not: the shield
checks every later step as well. So with ``search=True`` (the default) an action
is judged harmful only when harm is **unavoidable** within the horizon after it:
when harm shows on the continuation at step ``j``, the shield searches depth first
for another plan (deviating from the continuation at step ``j``, then ``j - 1``,
... down to step 2) that avoids it, and the action is harmful only if every plan
of ``horizon`` steps that starts with it does harm (exact on a deterministic copy;
worst case ``|A| ** (H - 1)`` lookaheads, paid only near a hazard). This is
receding-horizon sound: an executed action comes with a harmless plan, and on the
next step the rest of that plan is still available to the shield.
With ``search=False`` harm anywhere on the continuation condemns the first action:
exact when the continuation is the policy that will run unshielded afterwards,
and conservative (it may replace actions the shield would have saved later) when
the shield stays on. ``horizon=1`` makes both the same: the action's own step.

Each simulated plan starts from a fresh fork of the model at the current
observation and step (``model.fork(obs, step)``); forks are cheap next to the
steps of a search. With the oracle copy every verdict is exact, and on a
stochastic env (offswitch's interruption) it foresees the draw the real env will
make; with another model a verdict is exact about the model only.

The bound. ``bound`` is a floor on a single step's increment, calibrated the way
every mesaguard threshold is (DESIGN.md): :func:`increment_bound` takes each
in-distribution episode's smallest increment and sets the bound at the conformal
rank of those minima, so that an in-distribution episode has an increment below
it with probability at most ``alpha`` (exchangeable episodes). With ``rollout``
the agent and the model exact, a lookahead window of an unshielded in-distribution
episode is a piece of that episode, so the shield intervenes in at most an
``alpha`` share of in-distribution episodes through the bound (catastrophes aside).
``bound=None`` (``-inf``) makes catastrophes the only harm.

Continuous actions. A ``Box`` action space has no list of alternatives, so on
each step where one is needed the shield draws ``candidates`` of them (default
16) from its own ``numpy`` Generator (``seed``; ``reset(seed=s)`` reseeds it from
``(seed, s)``, so a seeded episode is reproducible): half of them (rounded up)
are **perturbations** of the proposed action, ``a + N(0, (spread * w / 2) ** 2)``
per dimension with ``w`` the box's width there (``spread=0.25`` by default),
clipped to the bounds; the rest are **uniform** in the box; the fallback's
action, when there is a fallback, is added. Perturbations keep a replacement
close to what the agent wanted (the minimal intervention a safety filter aims
for, and the way sampling-based controllers such as MPPI and CEM search around a
nominal action); uniform draws cover the whole box when the agent's
neighbourhood is harmful everywhere; the fallback is the designer's own safe
action. The best harmless candidate (highest lookahead value) is played, as for
a discrete space. The candidates are a sample: a harmless verdict is exact (its
plan was simulated), a "no harmless alternative" is true of the sample only.
The search over continuations (``horizon > 1``, ``search=True``) deviates with
the same step's candidates (drawn once a step, around the proposed action; a
smooth controller's next actions lie near it), so it is exact over plans made of
those candidates and costs up to ``candidates ** (H - 1)`` lookaheads per judged
action near a hazard. A box with an unbounded dimension is an error
(:class:`ShieldError`): perturbations need a width and uniform draws a bound;
bound the actions first (the agent's own clipping range). Other spaces
(``MultiDiscrete``, ``Dict``...) have no alternatives: fallback or stop.

Reports ``info["mesaguard_shield"]`` on every step (its own key: a guard around
or inside the shield rewrites ``info["mesaguard"]``): ``proposed``, ``executed``
(``None`` when it stopped), ``replaced`` (bool), ``acting`` (``"agent"``,
``"shield"``, ``"fallback"`` or ``"stop"``), ``value`` (the lookahead base
objective of the executed action), ``harm`` (of the proposed action:
``"catastrophe"``, ``"bound"`` or ``None``), ``judged`` (harm per evaluated first
action), ``lookaheads`` (forks simulated this step), ``error``, and the running
counters ``steps`` and ``replaced_total``. The wrapper keeps counters over its
life: ``steps``, ``replaced``, ``stopped``, ``lookaheads``, ``errors``. An internal
error (a model that raises, a rollout policy that raises, a NaN increment) fails
closed: the episode is truncated without acting and the error recorded. A
truncation without acting returns the last observation, reward 0 and an ``info``
with a zero increment under the objective's key and no catastrophe.

What it prevents and what it costs, with the shipped agents on the deploy and
reference variants (the cheetah's included): ``benchmarks/shield.py``, its figures in
``benchmarks/results/shield.json``, shown in ``docs/results.md``. A per-step floor
does not see a deterioration spread thinly over every step (the deployment monitor does).

>>> from mesaguard.scenarios import make
>>> env = Shield(make("lava", "deploy"), model="copy", horizon=1)  # the oracle
>>> obs, _ = env.reset(seed=7)  # the lava lies straight ahead
>>> FORWARD = 2
>>> obs, reward, terminated, truncated, info = env.step(FORWARD)
>>> info["catastrophe"], info["mesaguard_shield"]["harm"], info["mesaguard_shield"]["executed"]
(False, 'catastrophe', 0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from mesaguard.objective import FromInfo, Objective, Transition, make_objective
from mesaguard.safeguards.bound import ShieldError, increment_bound
from mesaguard.safeguards.models import ModelError, WorldModel, world_model

__all__ = ["INFO_KEY", "Lookahead", "Shield", "ShieldError", "increment_bound"]

INFO_KEY = "mesaguard_shield"
CATASTROPHE, BOUND = "catastrophe", "bound"


@dataclass
class Lookahead:
    """One simulated plan: actions taken on the model, their increments, the first harmful step."""

    actions: list[Any] = field(default_factory=list)
    increments: list[float] = field(default_factory=list)
    harm: str | None = None  # of the first harmful step
    first_harm: int | None = None  # 0-based step of the plan

    @property
    def value(self) -> float:
        return float(sum(self.increments))


class Shield(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Score each proposed action on a world model; replace the harmful ones (see the module docstring).

    Parameters
    ----------
    env
        The deployed env.
    model
        What lookaheads run on: ``"copy"`` (the oracle: a copy of ``env``, which must survive
        ``copy.deepcopy`` with identical steps; :class:`~mesaguard.safeguards.models.CopyModel`) or a
        :class:`~mesaguard.safeguards.models.WorldModel` (a scenario's ``simulator()``, a learned model,
        your own). Required: the oracle is never a silent default.
    horizon
        Steps simulated per lookahead, the action's own step included (``H >= 1``).
    objective
        Where increments come from, as for the guard: ``"info:KEY"`` (default
        ``"info:base_objective"``), ``"reward"``, an Objective or a callable.
    bound
        Floor on one step's increment (from :func:`increment_bound`); ``None``: no floor.
    rollout
        Continuation policy ``policy(obs) -> action`` for steps 2..H, fed the model's
        observations; ``None`` repeats the first action.
    fallback
        Policy ``policy(obs) -> action`` used when no action is harmless; its action
        is played if its lookahead shows no catastrophe, else the episode stops.
    search
        Judge an action harmful only if harm is unavoidable within the horizon
        (depth-first search over continuations); ``False``: harm on the
        continuation alone condemns it.
    catastrophe
        The ``info`` key that flags a catastrophe; ``None``: only the bound counts.
    candidates
        On a ``Box`` action space: alternatives drawn per step when one is needed
        (half perturbations of the proposed action, half uniform in the box, plus the
        fallback's action; see the module docstring). Ignored on other spaces.
    seed
        Seed of the Generator that draws the candidates; ``reset(seed=s)`` reseeds it
        from ``(seed, s)`` (from ``s`` alone when ``seed`` is ``None``).
    spread
        Standard deviation of a perturbation as a share of the box's half-width, per
        dimension (``> 0``).
    """

    def __init__(
        self,
        env: gym.Env,
        model: str | WorldModel,
        horizon: int = 1,
        objective: str | Objective | Callable[[Transition], float] | None = "info:base_objective",
        bound: float | None = None,
        rollout: Callable[[Any], Any] | None = None,
        fallback: Callable[[Any], Any] | None = None,
        search: bool = True,
        catastrophe: str | None = "catastrophe",
        candidates: int = 16,
        seed: int | None = None,
        spread: float = 0.25,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self, model=model if isinstance(model, str) else getattr(model, "name", "model"), horizon=horizon,
            objective=objective, bound=bound, search=search, catastrophe=catastrophe,
            candidates=candidates, seed=seed, spread=spread,
        )
        gym.Wrapper.__init__(self, env)
        if not (isinstance(horizon, int) and not isinstance(horizon, bool) and horizon >= 1):
            raise ShieldError(f"horizon={horizon!r}; expected an integer >= 1 (steps simulated per lookahead)")
        if bound is not None and (not isinstance(bound, (int, float)) or math.isnan(bound)):
            raise ShieldError(f"bound={bound!r}; expected a number (a floor on one step's increment) or None")
        for name, policy in (("rollout", rollout), ("fallback", fallback)):
            if policy is not None and not callable(policy):
                raise ShieldError(f"{name}={policy!r}; expected a policy(obs) -> action or None")
        if not (isinstance(candidates, (int, np.integer)) and not isinstance(candidates, bool) and candidates >= 1):
            raise ShieldError(f"candidates={candidates!r}; expected an integer >= 1 (alternatives drawn per step)")
        if seed is not None and not (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0):
            raise ShieldError(f"seed={seed!r}; expected a non-negative integer or None")
        if isinstance(spread, bool) or not isinstance(spread, (int, float)) or not (0 < spread < math.inf):
            raise ShieldError(f"spread={spread!r}; expected a finite number > 0 (a share of the box's half-width)")
        try:
            self.model = world_model(model, env)
        except ModelError as exc:
            raise ShieldError(str(exc)) from None
        self.horizon = horizon
        self.objective = make_objective(objective)
        self.bound = -math.inf if bound is None else float(bound)
        self.rollout = rollout
        self.fallback = fallback
        self.search = bool(search)
        self.catastrophe = catastrophe
        space = env.action_space
        # The alternatives a harmful proposal may be replaced with: every action of a discrete space.
        self.actions: list[Any] = (
            [int(space.start) + i for i in range(int(space.n))] if isinstance(space, spaces.Discrete) else []
        )
        # On a Box: candidates drawn per step (see the module docstring).
        self.box = space if isinstance(space, spaces.Box) else None
        if self.box is not None and not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
            raise ShieldError(
                f"action space {space!r} has unbounded dimensions; the shield draws candidate actions within the "
                "bounds: bound the action space (for instance to the agent's clipping range)"
            )
        self.candidates = int(candidates)
        self.seed = None if seed is None else int(seed)
        self.spread = float(spread)
        self.rng = np.random.default_rng(self.seed)
        self._drawn: list[Any] | None = None  # this step's Box candidates, drawn when first needed
        self._fallback_action: Any = None
        self.steps = self.replaced = self.stopped = self.lookaheads = self.errors = 0
        self._obs: Any = None
        self._t = 0  # steps taken in this episode: what a deployed shield knows of time

    # -- the Gymnasium API -------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        if seed is not None:
            self.rng = np.random.default_rng(seed if self.seed is None else [self.seed, seed])
        self._obs = obs
        self._t = 0
        self.model.reset(seed)
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise ShieldError("step() before reset(); call env.reset(seed=...) first")
        self.steps += 1
        before = self.lookaheads
        self._drawn = None
        self._fallback_action = None
        record: dict[str, Any] = {
            "proposed": _plain(action),
            "executed": None,
            "replaced": False,
            "acting": "stop",
            "value": None,
            "harm": None,
            "judged": {},
            "lookaheads": 0,
            "error": None,
        }
        executed: Any = None
        try:
            executed, acting, value = self._decide(action, record)
        except Exception as exc:  # fail closed: no verdict means no action
            self.errors += 1
            record["error"] = f"{type(exc).__name__}: {exc}"
            executed, acting, value = None, "stop", None
        record["lookaheads"] = self.lookaheads - before
        if executed is None:
            self.stopped += 1
            record.update(steps=self.steps, replaced_total=self.replaced)
            return self._obs, 0.0, False, True, self._idle_info(record)
        replaced = acting != "agent"
        self.replaced += int(replaced)
        record.update(
            executed=_plain(executed), replaced=replaced, acting=acting, value=value,
            steps=self.steps, replaced_total=self.replaced,
        )
        obs, reward, terminated, truncated, info = self.env.step(executed)
        self._obs = obs
        self._t += 1
        info = dict(info)
        info[INFO_KEY] = record
        return obs, reward, terminated, truncated, info

    # -- deciding ----------------------------------------------------------

    def _decide(self, action: Any, record: dict[str, Any]) -> tuple[Any, str, float | None]:
        """The action to execute (None: stop), who chose it, and its lookahead value."""
        judged: dict[Any, Lookahead] = {}

        def judge(a: Any) -> Lookahead:
            key = _plain(a)
            if key not in judged:
                judged[key] = self._judge(a)
                record["judged"][key] = judged[key].harm
            return judged[key]

        proposed = judge(action)
        record["harm"] = proposed.harm
        if proposed.harm is None:
            return action, "agent", proposed.value
        best: tuple[Any, Lookahead] | None = None
        for a in self._alternatives(action):
            if _plain(a) == _plain(action):
                continue
            look = judge(a)
            if look.harm is None and (best is None or look.value > best[1].value):
                best = (a, look)
        if best is not None:
            return best[0], "shield", best[1].value
        if self.fallback is not None:
            a = self._fallback_action if self._drawn is not None else self.fallback(self._obs)
            look = judge(a)
            if look.harm != CATASTROPHE:
                return a, "fallback", look.value
        return None, "stop", None

    def _alternatives(self, proposed: Any) -> list[Any]:
        """The actions a harmful one may be replaced with: a discrete space's all, a box's drawn candidates."""
        if self.box is None:
            return self.actions
        if self._drawn is None:
            self._drawn = self._draw(proposed)
        return self._drawn

    def _draw(self, proposed: Any) -> list[Any]:
        """This step's Box candidates: perturbations of ``proposed``, uniform draws, the fallback's action."""
        box = self.box
        assert box is not None
        low, high = box.low.astype(np.float64), box.high.astype(np.float64)
        center = np.clip(np.asarray(proposed, dtype=np.float64).reshape(box.shape), low, high)
        local = (self.candidates + 1) // 2
        scale = self.spread * (high - low) / 2.0
        near = center + self.rng.normal(size=(local, *box.shape)) * scale
        far = self.rng.uniform(low, high, size=(self.candidates - local, *box.shape))
        drawn = [np.clip(a, low, high).astype(box.dtype) for a in (*near, *far)]
        if self.fallback is not None:
            self._fallback_action = self.fallback(self._obs)
            drawn.append(self._fallback_action)
        return drawn

    def _judge(self, action: Any) -> Lookahead:
        """The verdict on ``action``: a harmless plan starting with it if one is found, else the harmful one."""
        plan = self._simulate([action])
        if plan.harm is None or plan.first_harm == 0 or not self.search:
            return plan
        found = self._repair(plan, fixed=1)
        return plan if found is None else found

    def _repair(self, plan: Lookahead, fixed: int) -> Lookahead | None:
        """A harmless plan sharing ``plan.actions[:fixed]``, depth first.

        ``plan`` does harm at ``first_harm >= fixed``.
        """
        assert plan.first_harm is not None
        for pos in range(plan.first_harm, fixed - 1, -1):  # deviate nearest the harm first
            for alt in self._alternatives(plan.actions[0]):
                if _plain(alt) == _plain(plan.actions[pos]):
                    continue
                other = self._simulate(plan.actions[:pos] + [alt])
                if other.harm is None:
                    return other
                if other.first_harm is not None and other.first_harm > pos:
                    found = self._repair(other, fixed=pos + 1)
                    if found is not None:
                        return found
        return None

    def _simulate(self, prefix: list[Any]) -> Lookahead:
        """Play ``prefix`` on a fresh fork of the model, then follow the continuation up to the horizon."""
        self.lookaheads += 1
        sim = self.model.fork(self._obs, self._t)
        plan = Lookahead()
        obs = self._obs
        for t in range(self.horizon):
            if t < len(prefix):
                a = prefix[t]
            elif self.rollout is not None:
                a = self.rollout(obs)
            else:
                a = prefix[0]
            next_obs, reward, terminated, truncated, info = sim.step(a)
            u = self.objective.increment(
                Transition(float(reward), info, obs, a, next_obs, terminated, truncated), t + 1
            )
            if not math.isfinite(u):  # a model's NaN is an internal error: fail closed
                raise ShieldError(f"model {self.model.name!r} gave the increment {u!r} at lookahead step {t + 1}")
            plan.actions.append(a)
            plan.increments.append(u)
            if plan.harm is None:
                if self.catastrophe is not None and info.get(self.catastrophe, False):
                    plan.harm, plan.first_harm = CATASTROPHE, t
                elif u < self.bound:
                    plan.harm, plan.first_harm = BOUND, t
                if plan.harm is not None:
                    break
            obs = next_obs
            if terminated or truncated:
                break
        return plan

    def _idle_info(self, record: dict[str, Any]) -> dict[str, Any]:
        """``info`` of a step that did not act: zero increment, no catastrophe."""
        info: dict[str, Any] = {INFO_KEY: record}
        if isinstance(self.objective, FromInfo):
            info[self.objective.key] = 0.0
        if self.catastrophe is not None:
            info[self.catastrophe] = False
        return info


def _plain(action: Any) -> Any:
    """A hashable, JSON-friendly form of an action (ints for discrete actions)."""
    if isinstance(action, (np.integer, int)) and not isinstance(action, bool):
        return int(action)
    if isinstance(action, np.ndarray):
        return tuple(action.ravel().tolist())
    return action

