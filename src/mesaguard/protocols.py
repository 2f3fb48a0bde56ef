"""What happens on alarm: ``Stop``, ``Fallback(policy)``, ``Alert(callback)``, composable.

A protocol is told once when an alarm fires (:meth:`Protocol.on_alarm`), may take
over the actions from then on (:meth:`Protocol.act`), and may end the episode
(``stops``). Several protocols compose with ``+`` or :func:`compose`:

>>> seen = []
>>> protocol = Alert(seen.append) + Stop()
>>> protocol.stops, protocol.act(obs=None)
(True, None)
>>> protocol.on_alarm(Alarm(env=0, step=7, detector="cusum", score=-1.0, statistics={"cusum": 9.0}))
>>> seen[0].detector, seen[0].step
('cusum', 7)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Alarm", "Alert", "Fallback", "Protocol", "ProtocolError", "Stop", "compose", "predict_policy"]


class ProtocolError(RuntimeError):
    """A protocol that had to act and could not: the guard stops the episode and executes nothing."""


@dataclass(frozen=True)
class Alarm:
    """One alarm: which env, at which step of its episode, raised by which detector.

    ``detector`` is ``"error"`` when the guard itself failed and ``"deployment"`` for
    a deployment monitor's alarm (in a vector env its ``env`` is then -1: all of them).
    """

    env: int
    step: int
    detector: str
    score: float
    statistics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


class Protocol:
    """Base protocol: does nothing; subclasses override what they change."""

    stops: bool = False

    def on_alarm(self, alarm: Alarm) -> None:
        """Called once per alarm, at the step it fires."""

    def act(self, obs: Any) -> Any | None:
        """The action to take instead of the agent's after the alarm, or None to leave it."""
        return None

    def __add__(self, other: Protocol) -> Protocol:
        return compose(self, other)


class Stop(Protocol):
    """End the episode at the alarm (the guarded env reports ``truncated=True``)."""

    stops = True

    def __repr__(self) -> str:
        return "Stop()"


class Fallback(Protocol):
    """Hand control to ``policy`` (``policy(obs) -> action``) from the alarm to the end of the episode."""

    def __init__(self, policy: Callable[[Any], Any]) -> None:
        if not callable(policy):
            raise TypeError(f"Fallback needs a callable policy(obs) -> action, got {policy!r}")
        self.policy = policy

    def act(self, obs: Any) -> Any:
        action = self.policy(obs)
        if action is None:  # a fallback that gives no action cannot act: the guard fails closed
            raise ProtocolError(f"the fallback policy {self.policy!r} returned None; expected an action")
        return action

    def __repr__(self) -> str:
        return f"Fallback({self.policy!r})"


def predict_policy(model: Any, deterministic: bool = True) -> Callable[[Any], Any]:
    """``obs -> action`` from a model with Stable-Baselines3's ``predict(obs, deterministic=) -> (action, state)``.

    SB3's habit ``Fallback(model.predict)`` would hand the env a tuple; use
    ``Fallback(predict_policy(model))``.

    >>> class Model:
    ...     def predict(self, obs, deterministic=True):
    ...         return 2 * obs, None
    >>> predict_policy(Model())(3)
    6
    """
    predict = getattr(model, "predict", None)
    if not callable(predict):
        raise TypeError(f"predict_policy needs a model with predict(obs, deterministic=...), got {model!r}")

    def policy(obs: Any) -> Any:
        return predict(obs, deterministic=deterministic)[0]

    return policy


class Alert(Protocol):
    """Call ``callback(alarm)`` when an alarm fires (log, page someone, record)."""

    def __init__(self, callback: Callable[[Alarm], Any]) -> None:
        if not callable(callback):
            raise TypeError(f"Alert needs a callable callback(alarm), got {callback!r}")
        self.callback = callback

    def on_alarm(self, alarm: Alarm) -> None:
        self.callback(alarm)

    def __repr__(self) -> str:
        return f"Alert({self.callback!r})"


class _Composite(Protocol):
    def __init__(self, parts: Sequence[Protocol]) -> None:
        self.parts = tuple(parts)
        self.stops = any(p.stops for p in self.parts)

    def on_alarm(self, alarm: Alarm) -> None:
        for p in self.parts:
            p.on_alarm(alarm)

    def act(self, obs: Any) -> Any | None:
        for p in self.parts:
            action = p.act(obs)
            if action is not None:
                return action
        return None

    def __repr__(self) -> str:
        return " + ".join(map(repr, self.parts))


def compose(*protocols: Protocol | Sequence[Protocol]) -> Protocol:
    """One protocol doing all of ``protocols``: every alert, the first override, stop if any stops."""
    flat: list[Protocol] = []
    for p in protocols:
        if isinstance(p, (list, tuple)):
            p = compose(*p)
        if isinstance(p, _Composite):
            flat.extend(p.parts)
        elif isinstance(p, Protocol):
            flat.append(p)
        else:
            raise TypeError(f"expected a Protocol (Stop, Fallback, Alert) or a list of them, got {p!r}")
    if not flat:
        raise TypeError("compose needs at least one protocol (Stop, Fallback, Alert)")
    return flat[0] if len(flat) == 1 else _Composite(flat)
