"""What every benchmark shares: the machine record, the result file, the common arguments, interleaved timing.

- :func:`machine`: what a result was measured on, in one shape for every benchmark
  (Python, platform, CPU count, the versions of the packages that set the figures, the
  date in UTC, the load average when the record is made: the dev machine is shared).
- :func:`write`: a result as JSON, written atomically through
  :func:`mesaguard.files.write_atomic` (a reader, or a run that dies half-way, leaves the
  old file or the new one, never half of one). Strict JSON: a NaN or infinity is an error
  (a benchmark writes ``None`` for a figure it has not got); NumPy scalars and arrays are
  written as the plain numbers and lists they hold.
- :func:`parser`, :func:`out_path` and :func:`configured`: the arguments every benchmark takes. ``--quick`` runs
  the smallest settings that still go through every part of the script (to check that it
  runs; its figures mean nothing), ``--out`` names the result file. A quick run without
  ``--out`` writes under the temporary folder, never over ``benchmarks/results``. A script's own
  options (``--episodes N``) default to None and override its configuration where given.
- :func:`interleaved` and :func:`ratios`: timing against a baseline run in the same
  process. The variants take turns round by round, so machine noise hits all alike, and
  each is reported as a share of the baseline's figure.

A benchmark script runs as ``python benchmarks/NAME.py``, which puts this folder first on
``sys.path``: ``import harness`` finds this module.

>>> calls = []
>>> times = interleaved({"bare": lambda: calls.append("bare") or 2.0, "guarded": lambda: calls.append("g") or 3.0}, 2)
>>> times, calls
({'bare': [2.0, 2.0], 'guarded': [3.0, 3.0]}, ['bare', 'g', 'bare', 'g'])
>>> ratios({"bare": 2.0, "guarded": 3.0}, baseline="bare")
{'bare': 1.0, 'guarded': 1.5}
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from mesaguard.files import write_atomic

__all__ = ["PACKAGES", "RESULTS", "configured", "interleaved", "machine", "out_path", "parser", "ratios", "write"]

RESULTS = Path(__file__).parent / "results"
# The packages whose versions can move the figures: the numerics, the simulators, the learners.
PACKAGES = (
    "mesaguard",
    "numpy",
    "scipy",
    "scikit-learn",
    "torch",
    "stable-baselines3",
    "gymnasium",
    "minigrid",
    "highway-env",
    "mujoco",
)
MACHINE_FIELDS = ("python", "platform", "cpus", "packages", "date", "load_average_at_end")

T = TypeVar("T")
C = TypeVar("C")


def machine() -> dict[str, Any]:
    """What the results are measured on: one record, the same fields for every benchmark.

    ``packages`` maps each name in :data:`PACKAGES` that is installed to its version; ``date``
    is now in UTC (ISO 8601, to the second); the load average (1, 5, 15 minutes) is read when
    the record is made, at the end of a run. (A record converted from an older shape has None
    where the old one did not say, and only the packages it named.)
    """
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "packages": {name: version for name in PACKAGES if (version := _version(name)) is not None},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "load_average_at_end": list(os.getloadavg()),
    }


def write(path: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """Write ``results`` as strict JSON (indent 1, a final newline) to ``path``, atomically; returns the path.

    Raises ``ValueError`` on a NaN or infinite float and ``TypeError`` on a value JSON has no
    form for, before anything is written: the file at ``path`` is then as it was.
    """
    text = json.dumps(results, indent=1, allow_nan=False, default=_plain) + "\n"
    return write_atomic(path, text)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of ``doc``, with ``--quick`` and ``--out``.

    A script adds its own arguments to it.
    """
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0] if doc else None)
    p.add_argument(
        "--quick",
        action="store_true",
        help="the smallest settings that run every part (to check the script runs; the figures mean nothing)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result file (default: benchmarks/results/NAME.json; with --quick, one under the temporary folder)",
    )
    return p


def out_path(name: str, args: argparse.Namespace) -> Path:
    """Where a run of benchmark ``name`` writes: ``--out``, else ``benchmarks/results/NAME.json``.

    A ``--quick`` run without ``--out`` writes to ``TMPDIR/mesaguard-benchmarks/NAME.json``,
    so that a check of the script never replaces measured results.
    """
    if args.out is not None:
        return Path(args.out)
    if args.quick:
        return Path(tempfile.gettempdir()) / "mesaguard-benchmarks" / f"{name}.json"
    return RESULTS / f"{name}.json"


def configured(base: C, **options: Any) -> C:
    """The dataclass ``base`` with each field named in ``options`` replaced, where its value is not None.

    >>> @dataclasses.dataclass(frozen=True)
    ... class Config:
    ...     episodes: int = 100
    ...     seed: int = 0
    >>> configured(Config(), episodes=None, seed=3)
    Config(episodes=100, seed=3)
    """
    return dataclasses.replace(base, **{name: value for name, value in options.items() if value is not None})


def interleaved(
    variants: Mapping[str, Callable[[], T]], rounds: int, rng: np.random.Generator | None = None
) -> dict[str, list[T]]:
    """Each variant's measurement once per round, the variants taking turns within each round.

    The order within a round is the mapping's, or a fresh ``rng.permutation`` per round when
    ``rng`` is given. Returns, per variant, its measurements in round order.
    """
    out: dict[str, list[T]] = {name: [] for name in variants}
    for _ in range(rounds):
        order = list(variants) if rng is None else [str(v) for v in rng.permutation(list(variants))]
        for name in order:
            out[name].append(variants[name]())
    return out


def ratios(figures: Mapping[str, float], baseline: str) -> dict[str, float]:
    """Each figure over the baseline's (the baseline's own ratio is 1.0)."""
    base = figures[baseline]
    return {name: value / base for name, value in figures.items()}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _plain(value: object) -> object:
    """JSON's form of a NumPy scalar or array (``json.dumps``'s ``default``)."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"a result holds {type(value).__name__} {value!r}, which JSON has no form for")
