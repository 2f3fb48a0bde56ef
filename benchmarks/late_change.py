"""Late changes: episodes to detection after a change at episode 0, 100, 500 or 2,000 of a deployment, per monitor mode.

What it measures
----------------
The deployment monitor (:class:`~mesaguard.monitor.DeploymentMonitor`) on the clean synthetic case of
``benchmarks/deployment.py`` (its ``gaussian`` part): one-step episodes whose statistic is N(0, 1) in
calibration and in distribution, and N(delta, 1) from the change on (delta = 0.5 and 1 sd), ranked against a
reference of 1,000 calibration episodes drawn afresh for each simulated deployment.

1. **Episodes to detection after a change at episode k** (k = 0, 100, 500, 2,000 in-distribution episodes
   first): the alarm's episode number minus k (the detecting episode counted), median and mean over the
   deployments whose alarm came after the change; deployments whose alarm came before it (a false alarm) and
   those not detected within ``cap`` episodes after it are counted apart. Rows, at matched false-alarm
   guarantees:

   * ``anytime`` at alpha = 0.05: P(any false alarm, ever) <= 0.05;
   * ``fixed`` h = 4,000 at alpha = 0.05: P(a false alarm in 4,000 episodes) <= 0.05;
   * ``change`` ARL = 20,000: P(a false alarm within 1,000 episodes) <= 1,000 / 20,000 = 0.05, the anytime
     mode's guarantee over the first 1,000 episodes, and an average run length >= 20,000;
   * ``change`` ARL = 1,000: at most one false alarm per 1,000 episodes on average;

   and two variants that are not modes of the monitor, for reference: the e-CUSUM on the same bets
   (``log M_k(d) = max(log M_{k-1}(d), 0) + log e_k(d)``, mixed over the shifts; it never exceeds the
   Shiryaev-Roberts statistic, so it keeps the ARL bound and alarms later), and the change mode ranking each
   episode against the *fixed* calibration reference instead of the growing bag (no unconditional guarantee).
2. **False alarms in distribution**, which the guarantees bound: P(any alarm within 1,000 in-distribution
   episodes) over 2,000 deployments, and false alarms per 1,000 episodes in 100 deployments of 10,000
   in-distribution episodes where each alarm is cleared (evidence reset, bag kept) and the deployment carries
   on; with the fixed reference at 100 and at 1,000 reference episodes as well.

How: each deployment's p-values are computed once with :func:`~mesaguard.monitor.sequential_pvalues` (the
monitor's offline twin), every mode's evidence from them with :func:`~mesaguard.monitor.log_wealth_path`;
one deployment per mode is also run through the online monitor and must name the same alarm episode.
The Pendulum streams of ``benchmarks/deployment.py`` are not repeated here: their per-episode statistic
enters the monitor only through its rank, so the Gaussian stream is the same test at a known shift.

Run: ``.venv/bin/python benchmarks/late_change.py`` (a few minutes on one core).
Results: printed and written to ``benchmarks/results/late_change.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import harness
import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.special import ndtri

from mesaguard.calibration import Calibration
from mesaguard.metrics import rate
from mesaguard.monitor import SHIFTS, DeploymentMonitor, horizon_threshold, log_wealth_path, sequential_pvalues


@dataclass(frozen=True)
class Config:
    reference: int = 1_000  # calibration episodes in the reference bag
    changes: tuple[int, ...] = (0, 100, 500, 2_000)  # in-distribution episodes before the change
    deltas: tuple[float, ...] = (0.5, 1.0)  # the change, in sd of the episode statistic
    deployments: int = 200  # per (change, delta)
    cap: int = 2_000  # episodes after the change before a deployment counts as undetected
    alpha: float = 0.05
    horizon: int = 4_000  # fixed mode: covers the latest change plus the cap
    arls: tuple[float, ...] = (20_000.0, 1_000.0)
    window: int = 1_000  # P(any false alarm within this many in-distribution episodes)
    window_deployments: int = 2_000
    long_null: int = 10_000  # in-distribution episodes per deployment, alarms cleared
    long_deployments: int = 100
    small_reference: int = 100  # the fixed reference's guarantee is worse with fewer reference episodes
    seed: int = 0


CONFIG = Config()
QUICK = Config(reference=200, changes=(0, 100), deployments=20, cap=500, horizon=700, window_deployments=100,
               long_null=1_000, long_deployments=10, small_reference=50)


# -- the rows: (name, recursion, log-threshold, reference, horizon) ------------------------------------------


def rows(cfg: Config) -> list[dict[str, Any]]:
    """Every monitor mode at matched guarantees, then the two reference variants."""
    out = [
        {"name": f"anytime a={cfg.alpha}", "kind": "anytime", "log_c": math.log(1 / cfg.alpha)},
        {"name": f"fixed h={cfg.horizon} a={cfg.alpha}", "kind": "anytime", "horizon": cfg.horizon,
         "log_c": horizon_threshold(cfg.horizon, cfg.alpha)},
    ]
    out += [{"name": f"change ARL={arl:,.0f}", "kind": "change", "log_c": math.log(arl)} for arl in cfg.arls]
    top = max(cfg.arls)
    out += [
        {"name": f"e-CUSUM ARL>={top:,.0f} (reference)", "kind": "cusum", "log_c": math.log(top)},
        {"name": f"change ARL={top:,.0f}, fixed reference (reference)", "kind": "change", "log_c": math.log(top),
         "fixed_reference": True},
    ]
    return out


def pvalues(reference: np.ndarray, stream: np.ndarray, u: np.ndarray, fixed: bool) -> np.ndarray:
    """Conformal p-values against the growing bag (the monitor's) or against the fixed reference only."""
    if not fixed:
        return sequential_pvalues(reference, stream, u)
    bag = np.sort(reference)
    right, left = np.searchsorted(bag, stream, side="right"), np.searchsorted(bag, stream, side="left")
    return np.maximum((bag.size - right + u * (right - left + 1)) / (bag.size + 1), 1e-300)


def cusum_path(p: np.ndarray, shifts: tuple[float, ...] = SHIFTS) -> np.ndarray:
    """Log of the mixture e-CUSUM after each episode (last axis): per shift ``max(log M, 0) + log e``."""
    d = np.asarray(shifts).reshape((-1,) + (1,) * (p.ndim - 1))
    bets = d[..., None] * -ndtri(p) - (d**2 / 2)[..., None]
    state, out = np.full(bets.shape[:-1], -np.inf), np.empty(p.shape)
    for k in range(p.shape[-1]):
        state = np.maximum(state, 0.0) + bets[..., k]
        top = state.max(axis=0)
        out[..., k] = top + np.log(np.exp(state - top).mean(axis=0))
    return out


def paths(p: np.ndarray, kind: str) -> np.ndarray:
    return cusum_path(p) if kind == "cusum" else log_wealth_path(p, mode="change" if kind == "change" else "anytime")


def first_alarms(path: np.ndarray, log_c: float, horizon: int | None) -> np.ndarray:
    """Per deployment (rows), the 1-based episode of the first alarm, 0 if none."""
    if horizon is not None:
        path = path[:, :horizon]
    hit = path >= log_c
    return np.where(hit.any(axis=1), hit.argmax(axis=1) + 1, 0)


# -- 1. delays ----------------------------------------------------------------------------------------------


def delays(cfg: Config, rng: np.random.Generator) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for delta in cfg.deltas:
        for k in cfg.changes:
            n = k + cfg.cap
            refs = rng.standard_normal((cfg.deployments, cfg.reference))
            streams = rng.standard_normal((cfg.deployments, n)) + np.where(np.arange(n) >= k, delta, 0.0)
            u = rng.random((cfg.deployments, n))
            p = {fixed: np.array([pvalues(r, s, v, fixed) for r, s, v in zip(refs, streams, u)])
                 for fixed in (False, True)}
            for row in rows(cfg):
                at = first_alarms(paths(p[row.get("fixed_reference", False)], row["kind"]), row["log_c"],
                                  row.get("horizon"))
                after = at[at > k] - k
                out.setdefault(row["name"], {}).setdefault(str(delta), {})[str(k)] = {
                    "detected": int(after.size),
                    "false_alarm_before_change": int(((at > 0) & (at <= k)).sum()),
                    "undetected": int((at == 0).sum()),
                    "deployments": cfg.deployments,
                    "median_episodes": float(np.median(after)) if after.size else None,
                    "mean_episodes": float(after.mean()) if after.size else None,
                }
    for by_delta in out.values():
        for by_k in by_delta.values():
            first, last = by_k[str(cfg.changes[0])]["median_episodes"], by_k[str(cfg.changes[-1])]["median_episodes"]
            by_k["late_over_early_median"] = None if not first or last is None else last / first
    return out


# -- 2. false alarms in distribution --------------------------------------------------------------------------


def window_rates(cfg: Config, rng: np.random.Generator) -> dict[str, Any]:
    """P(any alarm within ``window`` in-distribution episodes), growing bag and fixed references."""
    n, m = cfg.window_deployments, cfg.window
    streams, u = rng.standard_normal((n, m)), rng.random((n, m))
    out: dict[str, Any] = {}
    for size in (cfg.reference, cfg.small_reference):
        refs = rng.standard_normal((n, size))
        for fixed in (False, True):
            if not fixed and size != cfg.reference:
                continue  # the growing bag is exact at any size
            p = np.array([pvalues(r, s, v, fixed) for r, s, v in zip(refs, streams, u)])
            for name, kind, log_c, bound in (
                (f"anytime a={cfg.alpha}", "anytime", math.log(1 / cfg.alpha), cfg.alpha),
                (f"change ARL={max(cfg.arls):,.0f}", "change", math.log(max(cfg.arls)), m / max(cfg.arls)),
            ):
                k = int((paths(p, kind).max(axis=1) >= log_c).sum())
                key = f"{name}, {'fixed' if fixed else 'growing'} reference of {size}"
                out[key] = {**asdict(rate(k, n)), "alarms": k, "deployments": n, "bound": bound}
    return out


def restart_rates(cfg: Config, rng: np.random.Generator) -> dict[str, Any]:
    """False alarms per 1,000 in-distribution episodes, each alarm cleared (SR reset to 0, bag kept)."""
    d = np.asarray(SHIFTS)[:, None]
    n, m = cfg.long_deployments, cfg.long_null
    streams, u = rng.standard_normal((n, m)), rng.random((n, m))
    out: dict[str, Any] = {}
    for arl in cfg.arls:
        log_c = math.log(arl)
        for size, fixed in ((cfg.reference, False), (cfg.reference, True), (cfg.small_reference, True)):
            refs = rng.standard_normal((n, size))
            bets = d[..., None] * -ndtri(np.array([pvalues(r, s, v, fixed) for r, s, v in zip(refs, streams, u)]))
            bets -= (d**2 / 2)[..., None]
            state, alarms = np.full((d.size, n), -np.inf), 0
            for k in range(m):
                state = np.logaddexp(0.0, state) + bets[..., k]
                top = state.max(axis=0)
                fired = top + np.log(np.exp(state - top).mean(axis=0)) >= log_c
                alarms += int(fired.sum())
                state[:, fired] = -np.inf
            out[f"change ARL={arl:,.0f}, {'fixed' if fixed else 'growing'} reference of {size}"] = {
                "alarms": alarms,
                "episodes": n * m,
                "per_1000_episodes": 1000 * alarms / (n * m),
                "bound_per_1000_episodes": 1000 / arl,
            }
    return out


def online_check(cfg: Config) -> dict[str, Any]:
    """One deployment with a change at episode 500 through the online monitor, per mode: the offline alarm."""
    rng = np.random.default_rng(cfg.seed + 1)
    episodes = [rng.normal(0.0, 1.0, 1) for _ in range(2 * cfg.reference)]
    cal = Calibration.fit(episodes, alpha=0.1, detectors=["threshold"])
    det = cal.detectors["threshold"]
    reference = cal.joint_maxima(["threshold"])
    stream = (np.where(np.arange(1_500) >= 500, 1.0, 0.0) + rng.standard_normal(1_500)) * det.scale + det.location
    out = {}
    for mode, kw, log_c in (("anytime", {}, math.log(20)), ("change", {"arl": 1000.0}, math.log(1000))):
        monitor = DeploymentMonitor(cal, alpha=0.05, seed=7, mode=mode, **kw)
        for x in stream:
            monitor.start()
            monitor.observe(np.array([(x - det.location) / det.scale]))
            monitor.finish()
            if monitor.alarm:
                break
        u = np.random.default_rng(7).random(stream.size)
        path = log_wealth_path(sequential_pvalues(reference, (stream - det.location) / det.scale, u), mode=mode)
        offline = int(np.argmax(path >= log_c)) + 1 if (path >= log_c).any() else None
        out[mode] = {"online": monitor.alarm_episode, "offline": offline}
        if monitor.alarm_episode != offline:
            raise SystemExit(f"online and offline monitors disagree in {mode} mode: {out[mode]}")
    return out


def main(cfg: Config = CONFIG, out: Path = harness.RESULTS / "late_change.json") -> None:
    console = Console()
    started = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    results: dict[str, Any] = {"config": asdict(cfg), "online_check": online_check(cfg)}
    results["delays"] = delays(cfg, rng)
    results["window_false_alarms"] = window_rates(cfg, rng)
    results["restart_false_alarms"] = restart_rates(cfg, rng)
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["machine"] = harness.machine()
    written = harness.write(out, results)

    for delta in cfg.deltas:
        table = Table(title=f"Episodes to detection after a change of {delta} sd at episode k: median (mean)")
        table.add_column("monitor")
        for k in cfg.changes:
            table.add_column(f"k={k}", justify="right")
        table.add_column("k=2000 / k=0", justify="right")
        for name, by_delta in results["delays"].items():
            r = by_delta[str(delta)]
            cells = []
            for k in cfg.changes:
                c = r[str(k)]
                cell = "-" if c["median_episodes"] is None else f"{c['median_episodes']:.0f} ({c['mean_episodes']:.0f})"
                extra = [f"{c['false_alarm_before_change']} FA"] if c["false_alarm_before_change"] else []
                extra += [f"{c['undetected']} missed"] if c["undetected"] else []
                cells.append(cell + (f" [{', '.join(extra)}]" if extra else ""))
            ratio = r["late_over_early_median"]
            table.add_row(name, *cells, "-" if ratio is None else f"{ratio:.2f}")
        console.print(table)
    table = Table(title=f"Any false alarm within {cfg.window} in-distribution episodes ({cfg.window_deployments} runs)")
    for col in ("monitor, reference", "rate [95% CI]", "guaranteed <="):
        table.add_column(col)
    for name, r in results["window_false_alarms"].items():
        table.add_row(name, f"{r['rate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]", f"{r['bound']:.3f}")
    console.print(table)
    table = Table(title="False alarms per 1,000 in-distribution episodes, each alarm cleared")
    for col in ("monitor, reference", "per 1,000", "guaranteed <="):
        table.add_column(col)
    for name, r in results["restart_false_alarms"].items():
        table.add_row(name, f"{r['per_1000_episodes']:.3f}", f"{r['bound_per_1000_episodes']:.3f}")
    console.print(table)
    console.print(f"{results['seconds']:.0f} s; written to {written}")


if __name__ == "__main__":
    args = harness.parser(__doc__).parse_args()
    main(QUICK if args.quick else CONFIG, harness.out_path("late_change", args))
