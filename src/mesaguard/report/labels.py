"""How the report names things: alphas as people write them, detector configurations as the tables do.

>>> alpha_label(0.05), alpha_label(0.1 + 0.2)
('α = 0.05', 'α = 0.3')
>>> detectors_label("cusum"), detectors_label("cusum+envelope")
('cusum', 'joint')
"""

from __future__ import annotations

from mesaguard.bench.config import run_label

__all__ = ["alpha_label", "detectors_label"]


def alpha_label(alpha: float) -> str:
    """``α = 0.05``: an alpha with at most four significant digits, never a float's raw digits."""
    return f"α = {alpha:.4g}"


def detectors_label(config: str) -> str:
    """A stored detector configuration's name as the results tables show it (a joint set: ``joint``)."""
    return run_label(config)
