"""The scope detector: is the state the agent is about to act in inside the scope where it was checked?

The agent's alignment was checked on a distribution of states (its reference
variant). A score watched after the fact cannot undo a catastrophic action; this
detector looks at the observation *before* the agent acts on it. A state's
nonconformity score (:mod:`mesaguard.detectors.scorers`) is turned into a conformal
p-value against the reference fold's scores, ``p = (1 + #{reference >= s}) / (n + 1)``
(for a state exchangeable with the reference states ``P(p <= u) <= u``; states within
an episode are dependent, so per-state p-values are a scale, not the guarantee).

The statistic aggregates over time so that a run drifting slowly out of scope is
caught too. With ``e_t = -log p_t`` (under the null ``-log p`` is stochastically
at most Exp(1)), CUSUM ``C_t = max(0, C_{t-1} + e_t - slack)`` (Page, 1954) and the
statistic ``max(e_t, C_t)``: one far-out state fires at once, a run of moderately
unusual states (each too common to fire alone) adds up. ``slack=None`` keeps the
per-state part alone. In the statistic, ``p_t`` is the conformal p-value made
continuous and unbounded beyond the largest reference score
(:meth:`StateEvidence.evidence_of_scores`): with the plain step function, evidence
stops at ``log(n + 1)`` however far out a state is, and ties between episodes'
maxima leave the threshold at that ceiling, where only the CUSUM can pass it.

Within an env, states repeat (gridworlds above all): the evidence remembers the score
of each distinct state it has seen (:data:`CACHE_SIZE` of them), so a repeated state
costs a dict lookup, not a distance query. Observations are compared as given;
to watch the policy's features instead, map observations to features before
fitting and before each update.

Like every detector it knows nothing of thresholds, Gymnasium or files: the
conformal threshold, the folds and the file are :class:`mesaguard.scope.Scope`'s. It
reads observations, not increments, so it stays out of
:data:`mesaguard.detectors.DETECTORS`.

>>> rng = np.random.default_rng(0)
>>> det = ScopeDetector.fit([rng.normal(size=(20, 2)) for _ in range(40)], method="knn", k=5, n_envs=2)
>>> stat = det.update(np.array([[0.1, -0.2], [6.0, 6.0]]))  # before the agent acts
>>> bool(stat[1] > 10 * stat[0])
True
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any, Self

import numpy as np

from mesaguard.detectors.base import Detector, DetectorError, ScalarDetector
from mesaguard.detectors.scorers import StateScorer, score_scale

__all__ = ["CACHE_SIZE", "ScalarScopeDetector", "ScopeDetector", "StateEvidence", "check_states"]

CACHE_SIZE = 1 << 16  # distinct states whose scores a scope remembers (gridworld states repeat)


def check_states(states: Any, obs_shape: tuple[int, ...], what: str) -> np.ndarray:
    """``states`` as a finite float64 array of shape ``(n, d)``, ``d = prod(obs_shape)``."""
    x = np.asarray(states, dtype=np.float64)
    if x.ndim < 1 or x.shape[1:] != obs_shape:
        dims = ", ".join(map(str, obs_shape))
        raise DetectorError(f"{what} have shape {x.shape}; expected (n, {dims}), one observation a row")
    x = x.reshape(x.shape[0], -1)
    if not np.isfinite(x).all():
        row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(x)))
        raise DetectorError(
            f"{what}: observation {row} has value {x[row, col]} at flat index {col}; expected finite numbers"
        )
    return x


class StateEvidence:
    """A state's score, conformal p-value and evidence ``-log p~`` against the reference fold, through a cache.

    ``scorer`` measures a state's nonconformity (:mod:`mesaguard.detectors.scorers`);
    ``reference`` holds the reference fold's scores, sorted. Every form of the
    detector reads the same cached floats, so the vector and scalar forms agree to the
    bit, ties with the threshold included.
    """

    def __init__(self, scorer: StateScorer, reference: np.ndarray) -> None:
        self.scorer, self.reference = scorer, np.asarray(reference, dtype=np.float64)
        self.tail = score_scale(self.reference)
        self._sorted: list[float] = self.reference.tolist()
        self.cache: dict[bytes, tuple[float, float, float]] = {}

    @classmethod
    def fit(
        cls, fit_states: Sequence[np.ndarray], reference_states: Sequence[np.ndarray], method: str, k: int
    ) -> tuple[StateEvidence, dict[str, np.ndarray]]:
        """Fit the scorer on the fit fold and score the reference fold; also the arrays that rebuild it."""
        unique, counts = np.unique(np.concatenate(fit_states), axis=0, return_counts=True)
        if method == "knn" and not 1 <= k <= unique.shape[0]:
            raise DetectorError(
                f"k={k}; expected 1 <= k <= {unique.shape[0]}, the number of distinct states in the fit fold"
            )
        arrays = StateScorer.arrays(method, unique, counts)
        scorer = StateScorer(method, k, arrays)
        arrays["reference_scores"] = np.sort(scorer(np.concatenate(reference_states)))
        return cls(scorer, arrays["reference_scores"]), arrays

    def p_values_of_scores(self, scores: Any) -> np.ndarray:
        """Conformal p-values ``(1 + #{reference >= s}) / (n + 1)`` of nonconformity scores."""
        ref = self.reference
        above = ref.size - np.searchsorted(ref, np.asarray(scores, dtype=np.float64), side="left")
        return (1.0 + above) / (ref.size + 1.0)

    def evidence_of_scores(self, scores: Any) -> np.ndarray:
        """``-log p~(s)``: the conformal p-value made continuous and unbounded, for the statistic.

        The conformal p-value is a step function with ``n + 1`` levels: at most
        ``log(n + 1)`` of evidence, however far out a state lies, and ties between
        episodes' maxima that make the threshold conservative. ``p~`` is the same
        at every reference score, linear in between (so ``p~ >= p``: never more
        alarming than the conformal p-value inside the reference range), and beyond
        the largest reference score decays as ``exp(-(s - max) / tail) / (n + 1)``,
        ``tail`` the mean excess of the top reference scores. Monotone in ``s``. The
        episode threshold is calibrated on this statistic, so the guarantee is exact
        whatever the tail's shape.
        """
        s = np.asarray(scores, dtype=np.float64)
        return np.array([self.row(float(v))[2] for v in s.ravel()]).reshape(s.shape)

    def row(self, score: float) -> tuple[float, float, float]:
        """``(score, p, -log p~)`` of one score in plain floats: every form of the detector computes them here,
        so they agree to the bit (:meth:`p_values_of_scores`, :meth:`evidence_of_scores`)."""
        ref = self._sorted
        n = len(ref)
        below = bisect.bisect_left(ref, score)  # reference scores < score
        p = (1.0 + (n - below)) / (n + 1.0)
        if below == 0:
            return score, p, 0.0
        if below == n:  # in log space: no underflow to p = 0
            return score, p, math.log(n + 1.0) + (score - ref[-1]) / self.tail
        lo, hi = ref[below - 1], ref[below]
        gap = hi - lo
        frac = (score - lo) / gap if gap > 0 else 1.0  # position between neighbours, (0, 1]
        return score, p, -math.log((n + 2.0 - below - frac) / (n + 1.0))

    def lookup(self, x: np.ndarray) -> np.ndarray:
        """``(n, 3)``: score, conformal p-value and evidence of each row of ``x``, through the cache.

        Every form of the detector reads these same floats, so the vector and scalar
        forms agree to the bit, ties with the threshold included.
        """
        cache = self.cache
        keys = [row.tobytes() for row in x]
        out = np.empty((len(keys), 3))
        missing = []
        for i, key in enumerate(keys):
            hit = cache.get(key)
            if hit is None:
                missing.append(i)
            else:
                out[i] = hit
        if missing:
            fresh = [self.row(s) for s in self.scorer(x[missing]).tolist()]
            out[missing] = fresh
            if len(cache) + len(missing) > CACHE_SIZE:
                cache.clear()
            cache.update(zip((keys[i] for i in missing), fresh))
        return out

    def one(self, x: np.ndarray, key: bytes) -> tuple[float, float, float]:
        """:meth:`lookup` of one checked state ``x`` of shape ``(1, d)`` whose bytes are ``key``."""
        hit = self.cache.get(key)
        if hit is None:
            hit = self.row(float(self.scorer(x)[0]))
            if len(self.cache) >= CACHE_SIZE:
                self.cache.clear()
            self.cache[key] = hit
        return hit


class ScopeDetector(Detector):
    """The scope statistic, streaming over ``n_envs`` envs; call :meth:`update` before each action.

    A detector like the others, on observations instead of increments: after
    ``reset(mask)`` at the start of episodes, feed ``update(obs)`` with the
    observations the agents are about to act on, ``(n_envs, *obs_shape)``; it returns
    the statistic ``max(e_t, C_t)`` per env (see the module docstring). The last
    step's ``score`` (nonconformity), ``p_value`` and ``cusum`` per env stay readable.
    Like every detector it knows no threshold: the fitted
    :class:`~mesaguard.scope.Scope` holds the conformal one (the alarm is
    ``statistic > scope.threshold``).

    >>> from mesaguard.scope import Scope
    >>> rng = np.random.default_rng(1)
    >>> scope = Scope.fit([rng.normal(size=(30, 1)) for _ in range(80)], method="knn", k=5, alpha=0.1)
    >>> det = scope.detector()
    >>> drift = [det.update_scalar(np.array([0.15 * t])) for t in range(30)]  # a slow walk out
    >>> alarm = next(t for t, s in enumerate(drift) if s > scope.threshold)
    >>> 10 < alarm < 30
    True
    """

    name = "scope"

    def __init__(self, evidence: StateEvidence, slack: float | None, obs_shape: tuple[int, ...], n_envs: int = 1):
        if isinstance(n_envs, bool):
            raise DetectorError(f"n_envs={n_envs!r}; expected a positive integer")
        super().__init__(n_envs)
        self.evidence, self.slack, self.obs_shape = evidence, slack, tuple(obs_shape)
        self.score = np.zeros(self.n_envs)
        self.p_value = np.ones(self.n_envs)
        self.cusum = np.zeros(self.n_envs)
        self.statistic = np.zeros(self.n_envs)

    @classmethod
    def fit(cls, episodes: Sequence[np.ndarray], **options: Any) -> Self:
        """Fit on whole episodes of states: the first half is the fit fold, the second the reference fold.

        ``options``: ``method`` (default ``"mahalanobis"``), ``k`` (1), ``slack`` (2.0). The
        conformal threshold on this statistic is :meth:`mesaguard.scope.Scope.fit`'s work.
        """
        method, k, slack = options.pop("method", "mahalanobis"), options.pop("k", 1), options.pop("slack", 2.0)
        states = [np.asarray(e, dtype=np.float64).reshape(len(e), -1) for e in episodes]
        if len(states) < 2:
            raise DetectorError(f"got {len(states)} episodes; a scope needs at least 2 (fit and reference folds)")
        n_fit = len(states) // 2
        evidence, _ = StateEvidence.fit(states[:n_fit], states[n_fit:], method, k)
        return cls(evidence, slack, np.asarray(episodes[0]).shape[1:], **options)

    def params(self) -> dict[str, Any]:
        """The scope's settings (its arrays are :attr:`StateEvidence.arrays`, saved by the scope file)."""
        return {"method": self.evidence.scorer.method, "k": self.evidence.scorer.k, "slack": self.slack}

    def with_envs(self, n_envs: int) -> Self:
        return type(self)(self.evidence, self.slack, self.obs_shape, n_envs)

    def reset(self, mask: np.ndarray | None = None) -> None:
        """Start new episodes in the envs where ``mask`` is true (all if None)."""
        m = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        self.score[m], self.p_value[m], self.cusum[m], self.statistic[m] = 0.0, 1.0, 0.0, 0.0

    def update(self, obs: Any, mask: np.ndarray | None = None) -> np.ndarray:
        """Feed the observation each env is about to act on; return the statistic per env.

        With ``mask``, only those envs take a step (the others' state and statistic stay).
        """
        x = check_states(obs, self.obs_shape, "observations")
        if x.shape[0] != self.n_envs:
            raise DetectorError(f"observations have {x.shape[0]} rows; expected {self.n_envs}, one per env")
        return self._update(x, mask)

    def _update(self, x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        m = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        looked = self.evidence.lookup(x[m])
        self.score[m], self.p_value[m], e = looked[:, 0], looked[:, 1], looked[:, 2]
        if self.slack is None:
            self.statistic[m] = e
        else:
            cusum = np.maximum(0.0, self.cusum[m] + e - self.slack)
            self.cusum[m] = cusum
            self.statistic[m] = np.maximum(e, cusum)
        return self.statistic.copy()

    def traces(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """Offline, the streaming statistic after every row of whole episodes at once: ``(n, T_max)``, NaN after
        each end. ``rows``: per episode, its checked ``(T_i, d)`` rows; this detector must watch ``len(rows)``
        envs, fresh. An ended episode's last row is repeated (a cache hit) and masked out."""
        if not rows:
            return np.empty((0, 0))
        lengths = np.array([r.shape[0] for r in rows])
        T = int(lengths.max())
        padded = np.zeros((len(rows), T, rows[0].shape[1]))
        for i, r in enumerate(rows):
            padded[i, : r.shape[0]] = r
            padded[i, r.shape[0] :] = r[-1]
        out = np.empty((len(rows), T))
        for t in range(T):
            out[:, t] = self._update(padded[:, t])
        out[np.arange(T)[None, :] >= lengths[:, None]] = np.nan
        return out

    def update_scalar(self, obs: Any) -> float:
        """One env: one observation of ``obs_shape`` in, the statistic out."""
        return float(self.update(np.asarray(obs)[None])[0])

    def scalar(self) -> ScalarScopeDetector:
        """The one-env form in plain Python floats (tests hold it equal to this one)."""
        return ScalarScopeDetector(self.evidence, self.slack, self.obs_shape)


class ScalarScopeDetector(ScalarDetector):
    """:class:`ScopeDetector` for one env, in plain Python floats: the hot path of a one-env guard.

    A state already scored costs one dict lookup and a bisection; NumPy's per-call
    cost (about a microsecond each) would otherwise dominate.
    """

    def __init__(self, evidence: StateEvidence, slack: float | None, obs_shape: tuple[int, ...]) -> None:
        self.evidence, self.obs_shape = evidence, tuple(obs_shape)
        self._slack = slack
        self.reset()

    def reset(self) -> None:
        self.score, self.p_value, self.cusum, self.statistic = 0.0, 1.0, 0.0, 0.0

    def update(self, obs: Any) -> float:
        """Feed the one observation the agent is about to act on; return the statistic."""
        x = np.asarray(obs, dtype=np.float64)
        if x.shape != self.obs_shape:
            raise DetectorError(f"observation has shape {x.shape}; expected {self.obs_shape}")
        key = x.tobytes()
        hit = self.evidence.cache.get(key)  # only finite states are ever cached
        if hit is None:
            hit = self.evidence.one(check_states(x[None], self.obs_shape, "observation"), key)
        score, p, e = hit
        if self._slack is None:
            stat = e
        else:
            c = self.cusum + e - self._slack
            self.cusum = c if c > 0.0 else 0.0
            stat = e if e > self.cusum else self.cusum
        self.score, self.p_value, self.statistic = score, p, stat
        return stat
