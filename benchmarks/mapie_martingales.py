"""The deployment monitor's bets against MAPIE's conformal test martingales, on the same p-values.

What it measures
----------------
MAPIE 1.6 (``mapie.exchangeability_testing.OnlineMartingaleTest``) ships two conformal test martingales that
turn a stream of conformal p-values into evidence against exchangeability: the simple **jumper** martingale
(Vovk, Gammerman and Shafer 2005, section 7.1: three betting experts, ``1 + eps (p - 1/2)`` with
``eps`` in {-1, 0, 1}, mixed with jump rate 0.01) and the **plug-in** martingale (Fedorova et al. 2012: the bet is
a reflected kernel density estimate of the past p-values). Both reject at wealth ``1 / alpha`` (Ville), as the
monitor's anytime mode does. Where the three overlap, the p-values, they are fed the same ones here: the
monitor's sequential conformal p-values (:func:`~mesaguard.monitor.sequential_pvalues`) of one-step Gaussian
episodes, N(0, 1) in the 1,000 reference episodes and in distribution, N(delta, 1) in deployment from its first
episode (the clean case of ``benchmarks/late_change.py``). MAPIE's update functions are called directly with
each p-value, in MAPIE's own order (bet, then the p-value joins the history).

1. **Episodes to detection** at delta = 0.5 and 1 sd: median over deployments (the detecting episode counted;
   deployments not detected within ``cap`` episodes counted apart).
2. **False alarms**: P(any alarm within ``null`` in-distribution episodes) over deployments; every method's
   guarantee bounds it by alpha = 0.05.

The monitor's bets are one-sided (a deterioration makes p-values small); the jumper's experts bet both ways
(small or large p-values), so part of its wealth waits on a shift the guard does not look for. MAPIE's plug-in
martingale re-fits a kernel density on the whole history at every episode: it is run on fewer deployments.

Run: ``.venv/bin/python benchmarks/mapie_martingales.py`` (about two minutes on one core; ``--quick``: seconds).
Results: printed and written to ``benchmarks/results/mapie_martingales.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness
import numpy as np
from mapie.exchangeability_testing import OnlineMartingaleTest
from rich.console import Console
from rich.table import Table

from mesaguard.metrics import rate
from mesaguard.monitor import log_wealth_path, sequential_pvalues


@dataclass(frozen=True)
class Config:
    alpha: float = 0.05
    reference: int = 1000  # calibration episodes the p-values rank against
    shifts: tuple[float, ...] = (0.5, 1.0)
    cap: int = 1000  # episodes watched per shifted deployment
    deployments: int = 200  # per shift and per null check (monitor and jumper)
    plugin_deployments: int = 30  # the plug-in re-fits a KDE per episode
    plugin_cap: int = 400
    null: int = 1000  # in-distribution episodes per null deployment


CONFIG = Config()
QUICK = Config(reference=300, cap=300, deployments=20, plugin_deployments=4, plugin_cap=150, null=300)


def pvalues(cfg: Config, shift: float, n: int, seed: int) -> np.ndarray:
    """One deployment's sequential p-values: ``n`` episodes at ``shift`` sd against a fresh reference."""
    rng = np.random.default_rng(seed)
    reference = rng.normal(size=cfg.reference)
    return sequential_pvalues(reference, rng.normal(shift, 1.0, size=n), rng.uniform(size=n))


def first_crossing(path: np.ndarray, threshold: float) -> int | None:
    """1-based index of the first value at or above ``threshold``, or None."""
    over = np.flatnonzero(path >= threshold)
    return int(over[0]) + 1 if over.size else None


def mapie_path(method: str, ps: np.ndarray, alpha: float) -> np.ndarray:
    """MAPIE's martingale after each p-value, updated as ``OnlineMartingaleTest.update`` does."""
    test = OnlineMartingaleTest(task="regression", test_method=method, test_level=alpha, warn=False, random_state=0)
    step = test.update_simple_jumper_martingale if method == "jumper_martingale" else test.update_plugin_martingale
    out = np.empty(len(ps))
    for j, p in enumerate(ps):
        out[j] = step(float(p))
        test.pvalue_history.append(float(p))
    return out


def methods(cfg: Config) -> dict[str, tuple[Any, int, int]]:
    """Each method: (log-evidence path from p-values, deployments, cap)."""
    log_c = math.log(1.0 / cfg.alpha)

    def ours(ps: np.ndarray) -> int | None:
        return first_crossing(log_wealth_path(ps), log_c)

    def jumper(ps: np.ndarray) -> int | None:
        return first_crossing(mapie_path("jumper_martingale", ps, cfg.alpha), 1.0 / cfg.alpha)

    def plugin(ps: np.ndarray) -> int | None:
        return first_crossing(mapie_path("plugin_martingale", ps, cfg.alpha), 1.0 / cfg.alpha)

    return {
        "mesaguard anytime (normal-score bets, mixed)": (ours, cfg.deployments, cfg.cap),
        "MAPIE jumper martingale": (jumper, cfg.deployments, cfg.cap),
        "MAPIE plug-in martingale": (plugin, cfg.plugin_deployments, cfg.plugin_cap),
    }


def main(cfg: Config = CONFIG, out: Path = harness.RESULTS / "mapie_martingales.json") -> None:
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for name, (alarm, deployments, cap) in methods(cfg).items():
        row: dict[str, Any] = {"method": name, "deployments": deployments, "cap": cap, "delays": {}}
        for shift in cfg.shifts:
            hits = [alarm(pvalues(cfg, shift, cap, seed)) for seed in range(deployments)]
            found = [h for h in hits if h is not None]
            row["delays"][str(shift)] = {
                "median": float(np.median(found)) if found else None,
                "missed": len(hits) - len(found),
            }
        null_n = min(cfg.null, cap)
        false = sum(alarm(pvalues(cfg, 0.0, null_n, 10_000 + seed)) is not None for seed in range(deployments))
        fa = rate(false, deployments)
        row["false_alarms"] = {"episodes": null_n, "rate": fa.rate, "low": fa.low, "high": fa.high}
        rows.append(row)
    results = {"config": asdict(cfg), "rows": rows, "seconds": round(time.perf_counter() - start, 1),
               "machine": harness.machine()}
    table = Table(title=f"monitor bets vs MAPIE martingales, alpha {cfg.alpha}: median episodes to detection")
    for col in ("method", *(f"{s} sd" for s in cfg.shifts), "P(false alarm) [95% CI]"):
        table.add_column(col)
    for row in rows:
        fa = row["false_alarms"]
        table.add_row(
            row["method"],
            *(f"{d['median']} ({d['missed']} missed)" for d in row["delays"].values()),
            f"{fa['rate']:.3f} [{fa['low']:.3f}, {fa['high']:.3f}] in {fa['episodes']}",
        )
    console = Console()
    console.print(table)
    console.print(f"wrote {harness.write(out, results)}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("mapie_martingales", args))
