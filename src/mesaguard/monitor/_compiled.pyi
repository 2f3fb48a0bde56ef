# Stub of the compiled extension mesaguard.monitor._compiled (_compiled.pyx): the monitor's episodes and ledger.
from collections.abc import Sequence

import numpy as np

class Episode:
    id: int
    u: float
    value: float
    steps: int
    done: bool
    censored: bool
    counts: bool
    def __init__(self, id: int, u: float = ..., value: float = ..., steps: int = ..., done: bool = ...,
                 censored: bool = ..., counts: bool = ...) -> None: ...
    @property
    def in_bag(self) -> float: ...

class Ledger:
    mode: str
    shifts: np.ndarray
    log_threshold: float
    horizon: int | None
    first: int
    episodes: int
    last_bet: int | None
    log_evidence: float
    def __init__(self, mode: str, shifts: np.ndarray, log_threshold: float, horizon: int | None,
                 reference: Sequence[float]) -> None: ...
    @property
    def bag(self) -> list[float]: ...
    @property
    def log_wealth(self) -> list[float]: ...
    def new_test(self, first: int) -> None: ...
    def bets_on(self, episode: Episode) -> bool: ...
    def commit(self, episode: Episode) -> int | None: ...
    def level(self, pending: list[Episode], next_id: int) -> tuple[float, int | None]: ...

class Tally:
    steps: int
    finished: int
    crossings: int
    alarm: bool
    log_evidence: float

class Uniforms:
    def __init__(self, generator: np.random.Generator) -> None: ...
    def random(self) -> float: ...
