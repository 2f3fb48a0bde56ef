"""mesaguard: recompute the base objective at run time, calibrate, detect, take over.

The public names load on first use, so ``import mesaguard`` (and ``mesaguard --help``)
stays cheap.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Calibration": "mesaguard.calibration",
    "CalibrationError": "mesaguard.calibration",
    "Guard": "mesaguard.guard",
    "GuardedEnv": "mesaguard.guard",
    "GuardedVectorEnv": "mesaguard.guard",
    "DeploymentMonitor": "mesaguard.monitor",
    "Stop": "mesaguard.protocols",
    "Fallback": "mesaguard.protocols",
    "Alert": "mesaguard.protocols",
    "Alarm": "mesaguard.protocols",
    "predict_policy": "mesaguard.protocols",
    "Scope": "mesaguard.scope",
    "TransitionScope": "mesaguard.transition_scope",
    "FromInfo": "mesaguard.objective",
    "FromReward": "mesaguard.objective",
    "FromCallable": "mesaguard.objective",
    "calibrate": "mesaguard.evaluation",
    "evaluate": "mesaguard.evaluation",
    "Evaluation": "mesaguard.evaluation",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'mesaguard' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public names (loaded on first use) and the submodules already imported, not this module's own
    imports."""
    loaded = {name for name, value in globals().items()
              if isinstance(value, ModuleType) and value.__name__ == f"{__name__}.{name}"}
    return sorted({*__all__, *loaded})

