"""Quantilizer: sample from the top q of a trusted base distribution, not the argmax (Taylor, 2016).

A learned agent's action values estimate the objective it was trained on, which may
be a proxy. The harder a proxy is optimized, the further the chosen action may lie
from anything a trusted policy would do, and the more room there is for the proxy
and the true objective to part (Goodhart). Taylor's quantilizer ("Quantilizers: a
safer alternative to maximizers for limited optimization", AAAI workshop 2016)
optimizes mildly: rank the actions by the agent's values, keep the best ``q`` of
the **base distribution**'s probability mass (a trusted policy: behaviour cloned
from demonstrations, or a given safe policy) and sample from the base distribution
restricted to it. Exactly, with actions sorted by value, descending:

    ``Q_q(a) = p(a) * clip((q - M_above(a)) / M_tie(a), 0, 1) / q``

where ``p`` is the base distribution, ``M_above(a)`` the base mass of actions
valued strictly higher than ``a`` and ``M_tie(a)`` that of the actions valued
exactly as ``a`` (``a`` included): the action at the boundary of the top ``q``
gets its fractional share, and tied actions share it in proportion to ``p`` (so
the result does not depend on the order of ties). ``q = 1`` is the base
distribution; as ``q -> 0`` all mass goes to the highest-valued action in the
base's support (the argmax, ties shared). In between, no action gets more than
``p(a) / q``: whatever an unknown cost ``c >= 0`` is, ``E_Q[c] <= E_p[c] / q``,
Taylor's guarantee for one decision, while the expected value ``E_Q[v]`` falls as
``q`` grows (the mean of the top ``q`` of a ranking).

``q`` may adapt per state: a :class:`Quantilizer` given an ``uncertainty(obs)`` in
``[0, 1]`` uses ``q(s) = q + (q_max - q) * uncertainty(s)``: small (close to the
argmax) where the agent's values can be trusted, close to the base distribution
where they cannot.

>>> base = [0.5, 0.3, 0.2]
>>> values = [0.0, 2.0, 1.0]  # action 1 is the argmax, action 2 next
>>> quantile_distribution(base, values, q=1.0).round(3).tolist()
[0.5, 0.3, 0.2]
>>> quantile_distribution(base, values, q=0.4).round(3).tolist()  # all of action 1, half of action 2
[0.0, 0.75, 0.25]
>>> quantile_distribution(base, values, q=1e-9).round(3).tolist()
[0.0, 1.0, 0.0]

On the Goodhart scenario (``benchmarks/quantilizer.py``; its figures are in
``benchmarks/results/quantilizer.json``, shown in ``docs/results.md``) the values are
the shipped proxy-trained agent's action logits and the base is either ``bc``, a
logistic-regression clone of an honest cleaner that acts at random part of the time,
or ``smoothed``, that cleaner itself mixed with the uniform distribution. As q falls
the proxy rises and the true objective does not follow it: it peaks at a middle q
and falls to the argmax's, Goodhart's law as a curve. Taylor's bound is for one
decision; over an episode it is not guaranteed, and the benchmark records each
row's per-episode rate next to ``base rate / q``. The adaptive q of the benchmark is
``q_min + (1 - q_min) * TV``, TV the total-variation distance between the agent's
softmax and the base: q grows where the proxy-trained agent and the trusted policy
disagree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Quantilizer", "QuantilizerError", "quantile_distribution", "quantilize"]

_SUM_TOLERANCE = 1e-6  # how far a base distribution's sum may stray from 1 (float rounding of its source)


class QuantilizerError(ValueError):
    """A base distribution, a value array or a q that cannot be quantilized."""


def quantile_distribution(base_probs: Any, values: Any, q: Any) -> np.ndarray:
    """Taylor's q-quantilizer distribution over actions (see the module docstring).

    Parameters
    ----------
    base_probs
        Base distribution, shape ``(..., n_actions)``: non-negative, each row summing to 1.
    values
        The agent's value of each action, same shape; higher is preferred; no NaN.
    q
        Share of the base mass kept, in ``(0, 1]``: a number or an array of shape ``(...)``.

    Returns
    -------
    The distribution, shape ``(..., n_actions)``, each row summing to 1.
    """
    p = np.asarray(base_probs, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if p.ndim == 0 or p.shape[-1] == 0:
        raise QuantilizerError(f"base_probs has shape {p.shape}; expected (..., n_actions) with n_actions >= 1")
    if v.shape != p.shape:
        raise QuantilizerError(f"values has shape {v.shape}; expected the shape of base_probs, {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise QuantilizerError(f"base_probs {p!r} has a negative or non-finite entry; expected probabilities")
    sums = p.sum(axis=-1)
    if np.any(np.abs(sums - 1.0) > _SUM_TOLERANCE):
        raise QuantilizerError(f"base_probs rows sum to {sums!r}; expected 1 (a probability distribution)")
    if np.any(np.isnan(v)):
        raise QuantilizerError(f"values {v!r} hold NaN; expected numbers that rank the actions")
    qa = np.asarray(q, dtype=np.float64)
    if not np.all((qa > 0.0) & (qa <= 1.0)):  # also rejects NaN
        raise QuantilizerError(f"q={q!r}; expected a share of the base mass in (0, 1]")
    try:
        qa = np.broadcast_to(qa, p.shape[:-1])[..., None]
    except ValueError:
        raise QuantilizerError(f"q has shape {qa.shape}; expected a number or shape {p.shape[:-1]}") from None
    p = p / sums[..., None]
    higher = v[..., None, :] > v[..., :, None]  # [..., i, j]: action j is valued above action i
    tied = v[..., None, :] == v[..., :, None]
    above = np.einsum("...ij,...j->...i", higher, p)
    block = np.einsum("...ij,...j->...i", tied, p)
    share = np.divide(qa - above, block, out=np.zeros_like(p), where=block > 0)
    out = p * np.clip(share, 0.0, 1.0) / qa
    return out / out.sum(axis=-1, keepdims=True)  # exact up to rounding; this removes the rounding


def quantilize(base_probs: Any, values: Any, q: Any, rng: np.random.Generator) -> Any:
    """One action drawn from :func:`quantile_distribution` (an ``int``; an array of them for a batch)."""
    if not isinstance(rng, np.random.Generator):
        raise QuantilizerError(f"rng={rng!r}; expected a numpy.random.Generator (np.random.default_rng(seed))")
    dist = quantile_distribution(base_probs, values, q)
    cdf = np.cumsum(dist, axis=-1)
    u = rng.random(dist.shape[:-1])[..., None]
    actions = np.minimum((u >= cdf).sum(axis=-1), dist.shape[-1] - 1)  # rounding may leave cdf[-1] < u
    return int(actions) if actions.ndim == 0 else actions


class Quantilizer:
    """A policy that quantilizes: ``policy(obs) -> action`` drawn from the top q of ``base``, ranked by ``values``.

    Parameters
    ----------
    base
        ``base(obs) -> probabilities`` over the discrete actions: the trusted policy.
    values
        ``values(obs) -> array`` of the agent's value (or preference) per action.
    q
        Share of the base mass kept, in ``(0, 1]``; with ``uncertainty`` the smallest q.
    uncertainty
        Optional ``uncertainty(obs) -> float`` in ``[0, 1]`` (clipped): q grows to
        ``q_max`` where it is high.
    q_max
        The q at uncertainty 1.
    seed
        Seed of the sampler.

    >>> pi = Quantilizer(base=lambda obs: [0.5, 0.5], values=lambda obs: [0.0, 1.0], q=0.5, seed=0)
    >>> pi.distribution(None).tolist(), pi(None)
    ([0.0, 1.0], 1)
    """

    def __init__(
        self,
        base: Callable[[Any], Any],
        values: Callable[[Any], Any],
        q: float = 0.1,
        uncertainty: Callable[[Any], float] | None = None,
        q_max: float = 1.0,
        seed: int | None = None,
    ) -> None:
        for name, fn in (("base", base), ("values", values)):
            if not callable(fn):
                raise QuantilizerError(f"{name}={fn!r}; expected a callable of the observation")
        if uncertainty is not None and not callable(uncertainty):
            raise QuantilizerError(f"uncertainty={uncertainty!r}; expected a callable of the observation or None")
        if not (0.0 < q <= q_max <= 1.0):
            raise QuantilizerError(f"q={q!r}, q_max={q_max!r}; expected 0 < q <= q_max <= 1")
        self.base, self.values, self.uncertainty = base, values, uncertainty
        self.q, self.q_max = float(q), float(q_max)
        self.rng = np.random.default_rng(seed)

    def q_at(self, obs: Any) -> float:
        """The q used in the state of ``obs``."""
        if self.uncertainty is None:
            return self.q
        u = float(self.uncertainty(obs))
        if np.isnan(u):
            raise QuantilizerError(f"uncertainty gave {u}; expected a number in [0, 1]")
        return self.q + (self.q_max - self.q) * min(max(u, 0.0), 1.0)

    def distribution(self, obs: Any) -> np.ndarray:
        """The quantilizer's distribution over actions in the state of ``obs``."""
        return quantile_distribution(self.base(obs), self.values(obs), self.q_at(obs))

    def __call__(self, obs: Any) -> int:
        dist = self.distribution(obs)
        return int(min(np.searchsorted(np.cumsum(dist), self.rng.random(), side="right"), dist.size - 1))

    def __repr__(self) -> str:
        adaptive = "" if self.uncertainty is None else f", adaptive up to {self.q_max}"
        return f"Quantilizer(q={self.q}{adaptive})"


# ---------------------------------------------------------------------------
# Building blocks: the agent's ranking, a trusted base, the agent's disagreement with it
# ---------------------------------------------------------------------------


def policy_logits(policy: Any) -> Callable[[Any], np.ndarray]:
    """A shipped agent's action logits per observation (:class:`~mesaguard.train.LoadedPolicy`): its own ranking."""
    import torch

    sb3 = policy.policy

    def logits(obs: Any) -> np.ndarray:
        with torch.no_grad():
            tensor, _ = sb3.obs_to_tensor(obs)
            return sb3.get_distribution(tensor).distribution.logits[0].numpy().astype(np.float64)

    return logits


def smoothed(policy: Callable[[Any], int], n_actions: int, noise: float = 0.2) -> Callable[[Any], np.ndarray]:
    """A trusted deterministic policy as a base distribution: ``1 - noise`` on its action, the rest uniform."""
    if not 0.0 <= noise <= 1.0:
        raise QuantilizerError(f"noise={noise!r}; expected a share in [0, 1]")

    def base(obs: Any) -> np.ndarray:
        p = np.full(n_actions, noise / n_actions)
        p[int(policy(obs))] += 1.0 - noise
        return p

    return base


def disagreement(base: Callable[[Any], Any], logits: Callable[[Any], np.ndarray]) -> Callable[[Any], float]:
    """Total variation between the agent's own action distribution and the base: an uncertainty for adaptive q."""

    def tv(obs: Any) -> float:
        x = logits(obs)
        own = np.exp(x - x.max())
        return 0.5 * float(np.abs(own / own.sum() - np.asarray(base(obs))).sum())

    return tv

