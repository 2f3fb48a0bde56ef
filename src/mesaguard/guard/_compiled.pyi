# Types of the compiled core (_compiled.pyx): the interface of mesaguard.guard.core.ScalarGuard.

import numpy as np

from mesaguard.protocols import Alarm

class _Form: ...

class _Cusum(_Form):
    def __init__(
        self, mean: np.ndarray, std: np.ndarray, slack: float, rho: float, gain: float, block: int
    ) -> None: ...

class _MeanShift(_Form):
    def __init__(
        self,
        chol: np.ndarray,
        mu: np.ndarray,
        y: np.ndarray,
        norm: np.ndarray,
        diag: np.ndarray,
        e: np.ndarray,
        block: int,
    ) -> None: ...

class Core:
    names: list[str]
    thresholds: list[float]
    statistics: list[float]
    score: float
    steps: int
    alarm_step: int
    alarm: bool
    detector: str
    def __init__(
        self, forms: list[_Form], names: list[str], thresholds: list[float], longest: float, warning: str
    ) -> None: ...
    def reset(self) -> None: ...
    def update(self, u: float) -> bool: ...
    def fail(self, detector: str = "error") -> None: ...
    def alarm_record(self, error: str | None = None) -> Alarm: ...
