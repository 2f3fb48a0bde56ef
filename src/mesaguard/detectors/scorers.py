"""What a scope measures a state by: its nonconformity to the reference states (scikit-learn).

``method="knn"``: the Euclidean distance to the k-th nearest *distinct* fit state
(gridworld states repeat a lot, so they are deduplicated and a state seen in the fit
fold scores 0 at ``k=1``): SciPy's ``cKDTree`` up to :data:`KD_TREE_DIMS` dimensions
(a classic-control state), scikit-learn's brute-force ``NearestNeighbors`` above (a
k-d tree degrades to a scan there). ``method="mahalanobis"``: the squared Mahalanobis
distance ``(x - m)' P (x - m)`` under ``LedoitWolf``'s covariance (the shrinkage keeps
it defined when features are constant in training: such features, say where the lava
lies, are exactly what a shift moves, and they get the largest weight), computed with
one ``einsum`` from the stored location and precision.

The Mahalanobis and k-d tree queries skip scikit-learn's input validation: the scope has
already checked the states (finite, of the fitted shape), and on a single low-dimensional
state that validation costs far more than the distance itself.

A scorer is built from its stored arrays only, the same way at fit time and at load
time, so a loaded scope scores every state exactly as the fitted one did.

>>> unique = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
>>> scorer = StateScorer("knn", 1, StateScorer.arrays("knn", unique, np.ones(3, dtype=int)))
>>> scorer(np.array([[0.0, 0.0], [3.0, 4.0]])).tolist()
[0.0, 4.242640687119285]
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy.spatial import cKDTree
from sklearn.covariance import LedoitWolf
from sklearn.neighbors import NearestNeighbors

from mesaguard.detectors.base import DetectorError

__all__ = ["KD_TREE_DIMS", "METHODS", "StateScorer", "check_k", "score_scale"]

METHODS = ("knn", "mahalanobis")
KD_TREE_DIMS = 16  # at most this many state dimensions: a k-d tree; more: a brute-force scan


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DetectorError(f"k={k!r}; expected a positive integer (which nearest neighbour)")
    return int(k)


class StateScorer:
    """Nonconformity of states against the fit fold; built from its stored arrays only.

    Built the same way at fit time and at load time, so a loaded scope scores every
    state exactly as the fitted one did.
    """

    def __init__(self, method: str, k: int, arrays: Mapping[str, np.ndarray]) -> None:
        self.method, self.k = method, k
        if method == "knn":
            states = arrays["states"]
            if not 1 <= k <= states.shape[0]:
                raise DetectorError(f"k={k}; expected 1 <= k <= {states.shape[0]}, the number of distinct fit states")
            small = states.shape[1] <= KD_TREE_DIMS
            self.tree: Any = cKDTree(states) if small else None
            self.brute: Any = None if small else NearestNeighbors(n_neighbors=k, algorithm="brute").fit(states)
        else:
            self.location = np.asarray(arrays["location"], dtype=np.float64)
            self.precision = np.asarray(arrays["precision"], dtype=np.float64)

    @staticmethod
    def arrays(method: str, unique: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
        if method == "knn":
            return {"states": unique}
        lw = LedoitWolf().fit(np.repeat(unique, counts, axis=0))  # every state, as often as it was visited
        return {"location": lw.location_, "precision": lw.get_precision()}

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Each row's nonconformity (larger = further from the fit states); ``x`` is ``(n, d)``, finite."""
        if self.method == "mahalanobis":
            d = x - self.location
            scores: np.ndarray = np.einsum("ij,jk,ik->i", d, self.precision, d)
        elif self.tree is not None:
            dist = self.tree.query(x, k=[self.k])[0]
            scores = dist[:, 0]
        else:
            scores = self.brute.kneighbors(x)[0][:, self.k - 1]
        return scores


def score_scale(reference: np.ndarray) -> float:
    """Mean excess of the top ``ceil(sqrt(n))`` reference scores over the next one; else their range, else 1.

    The scale of an exponential tail fitted to the largest scores (its maximum-likelihood
    estimate), which sets how fast evidence grows beyond the largest reference score.
    """
    n = reference.size
    m = min(n - 1, math.ceil(math.sqrt(n)))
    excess = float(np.mean(reference[n - m :] - reference[n - m - 1])) if m >= 1 else 0.0
    if excess > 0:
        return excess
    spread = float(reference[-1] - reference[0])
    return spread if spread > 0 else 1.0
