"""Runs, jobs, episodes and alarms of the bench in SQLite; export to CSV or Parquet.

One file holds any number of runs. A *run* is one ``mesaguard bench`` grid, its
configuration kept as JSON. A *job* (scenario, seed) is written with everything
it produced, its calibration, its episodes and its alarms, in **one transaction**:
a run killed at any moment (SIGKILL included) keeps every job committed before,
loses only the jobs in flight, and resumes by running the jobs the store lacks.
The database is in WAL mode with ``synchronous=FULL``; only the parent process
writes (one writer), workers return results to it.

What is stored is enough to recompute the table and the report without a rollout:
per episode its increments (float64 bytes, ``numpy.ndarray.tobytes``, never a
pickle), catastrophe steps, seed, variant and length; per job the calibration
(the JSON of :meth:`Calibration.to_dict`); per (job, detector configuration,
episode) the alarm step and the detector that fired.

>>> import numpy as np
>>> store = Store(":memory:")
>>> store.create_run("demo", {"alpha": 0.1})
True
>>> job = JobRecord("strawberry", 0, {"format": "x"}, 1.0, 0.5,
...                 [EpisodeRecord("evaluation", "deploy", 7, np.array([1.0, -2.0]), np.array([2]))],
...                 [AlarmRecord("cusum", 0, 2, "cusum")])
>>> store.write_job("demo", job)
>>> store.done_jobs("demo")
{('strawberry', 0)}
>>> [e.increments.tolist() for e in store.episodes("demo")], store.alarms("demo")[0].step
([[1.0, -2.0]], 2)
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["AlarmRecord", "EpisodeRecord", "JobRecord", "Store", "StoreError", "export"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    config TEXT NOT NULL                   -- JSON
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    scenario TEXT NOT NULL,
    seed INTEGER NOT NULL,
    calibration TEXT NOT NULL,             -- JSON of Calibration.to_dict()
    score_floor REAL NOT NULL,             -- alpha-quantile of calibration scores (misbehaviour)
    wall_s REAL NOT NULL,
    finished REAL NOT NULL,
    UNIQUE (run_id, scenario, seed)
);
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,                  -- position in the job, referred to by alarms
    role TEXT NOT NULL,                    -- 'calibration' or 'evaluation'
    variant TEXT NOT NULL,
    seed INTEGER NOT NULL,
    length INTEGER NOT NULL,
    score REAL NOT NULL,
    increments BLOB NOT NULL,              -- float64, little-endian, ndarray.tobytes()
    catastrophes TEXT NOT NULL,            -- JSON list of 1-based steps
    UNIQUE (job_id, idx)
);
CREATE TABLE IF NOT EXISTS alarms (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    config TEXT NOT NULL,                  -- detector configuration, e.g. 'cusum' or 'cusum+envelope'
    episode_idx INTEGER NOT NULL,
    step INTEGER NOT NULL,                 -- 1-based step of the alarm
    detector TEXT NOT NULL,                -- which detector fired first
    PRIMARY KEY (job_id, config, episode_idx)
);
"""


class StoreError(ValueError):
    """A missing run, a run configured differently, or a file that is not a mesaguard store."""


@dataclass
class EpisodeRecord:
    """One unguarded episode of a job."""

    role: str
    variant: str
    seed: int
    increments: np.ndarray
    catastrophes: np.ndarray
    job: tuple[str, int] | None = None  # (scenario, seed) when read back from the store

    @property
    def length(self) -> int:
        return int(self.increments.size)


@dataclass
class AlarmRecord:
    """The alarm a detector configuration raised on episode ``episode`` (its index in the job)."""

    config: str
    episode: int
    step: int
    detector: str
    job: tuple[str, int] | None = None


@dataclass
class JobRecord:
    """Everything one (scenario, seed) job produced."""

    scenario: str
    seed: int
    calibration: dict[str, Any]
    score_floor: float
    wall_s: float
    episodes: list[EpisodeRecord]
    alarms: list[AlarmRecord] = field(default_factory=list)


def _blob(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype="<f8").tobytes()


def _unblob(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f8").copy()


class Store:
    """The bench's SQLite file. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)  # explicit transactions
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(_SCHEMA)
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            version = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path} is not a mesaguard store (SQLite says: {exc})") from None
        if version != str(SCHEMA_VERSION):
            raise StoreError(f"{self.path} has store schema version {version}; this mesaguard reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------

    def create_run(self, run_id: str, config: Mapping[str, Any]) -> bool:
        """Record a new run; True if created, False if it exists with the same config (a resume).

        A run of that name with another config is an error: results of two grids never mix.
        """
        text = json.dumps(config, sort_keys=True)
        existing = self.db.execute("SELECT config FROM runs WHERE id=?", (run_id,)).fetchone()
        if existing is not None:
            if json.loads(existing[0]) != json.loads(text):
                raise StoreError(
                    f"run {run_id!r} in {self.path} was started with another configuration "
                    f"({existing[0]}); pick another --run name or the same options to resume it"
                )
            return False
        with self._transaction():
            self.db.execute("INSERT INTO runs VALUES (?, ?, ?)", (run_id, time.time(), text))
        return True

    def run_config(self, run_id: str) -> dict[str, Any]:
        row = self.db.execute("SELECT config FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            runs = [r[0] for r in self.db.execute("SELECT id FROM runs ORDER BY created")]
            raise StoreError(f"no run {run_id!r} in {self.path}; runs there: {', '.join(runs) or 'none'}")
        return json.loads(row[0])

    def runs(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT id FROM runs ORDER BY created")]

    # -- jobs ---------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def write_job(self, run_id: str, job: JobRecord) -> None:
        """Write a job with its episodes and alarms in one transaction (all or nothing)."""
        with self._transaction():
            cur = self.db.execute(
                "INSERT INTO jobs (run_id, scenario, seed, calibration, score_floor, wall_s, finished) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (run_id, job.scenario, int(job.seed), json.dumps(job.calibration), float(job.score_floor),
                 float(job.wall_s), time.time()),
            )
            job_id = cur.lastrowid
            self.db.executemany(
                "INSERT INTO episodes (job_id, idx, role, variant, seed, length, score, increments, catastrophes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (job_id, i, e.role, e.variant, int(e.seed), e.length, float(np.sum(e.increments)),
                     _blob(e.increments), json.dumps([int(c) for c in e.catastrophes]))
                    for i, e in enumerate(job.episodes)
                ),
            )
            self.db.executemany(
                "INSERT INTO alarms VALUES (?, ?, ?, ?, ?)",
                ((job_id, a.config, int(a.episode), int(a.step), a.detector) for a in job.alarms),
            )

    def done_jobs(self, run_id: str) -> set[tuple[str, int]]:
        """The (scenario, seed) jobs of ``run_id`` already committed."""
        return {(s, int(k)) for s, k in self.db.execute("SELECT scenario, seed FROM jobs WHERE run_id=?", (run_id,))}

    def jobs(self, run_id: str) -> list[dict[str, Any]]:
        """Committed jobs in (scenario, seed) order, calibration parsed."""
        rows = self.db.execute(
            "SELECT scenario, seed, calibration, score_floor, wall_s, finished FROM jobs WHERE run_id=? "
            "ORDER BY scenario, seed",
            (run_id,),
        )
        return [
            {"scenario": s, "seed": int(k), "calibration": json.loads(c), "score_floor": f, "wall_s": w, "finished": t}
            for s, k, c, f, w, t in rows
        ]

    def episodes(self, run_id: str) -> list[EpisodeRecord]:
        """Every episode of the run, by job then index (``job`` set on each)."""
        rows = self.db.execute(
            "SELECT j.scenario, j.seed, e.role, e.variant, e.seed, e.increments, e.catastrophes "
            "FROM episodes e JOIN jobs j ON e.job_id = j.id WHERE j.run_id=? ORDER BY j.scenario, j.seed, e.idx",
            (run_id,),
        )
        return [
            EpisodeRecord(
                role, variant, int(seed), _unblob(inc), np.asarray(json.loads(cat), dtype=np.int64), (s, int(k))
            )
            for s, k, role, variant, seed, inc, cat in rows
        ]

    def alarms(self, run_id: str) -> list[AlarmRecord]:
        rows = self.db.execute(
            "SELECT j.scenario, j.seed, a.config, a.episode_idx, a.step, a.detector "
            "FROM alarms a JOIN jobs j ON a.job_id = j.id WHERE j.run_id=? "
            "ORDER BY j.scenario, j.seed, a.config, a.episode_idx",
            (run_id,),
        )
        return [AlarmRecord(c, int(i), int(st), d, (s, int(k))) for s, k, c, i, st, d in rows]


def export(store: Store, run_id: str, out: str | os.PathLike[str], fmt: str = "csv",
           table: Sequence[Mapping[str, Any]] | None = None) -> list[Path]:
    """Write the run's tables (``jobs``, ``episodes``, ``alarms``, and ``results`` if given) to ``out``.

    ``csv``: increments and catastrophe steps as JSON lists in a text column.
    ``parquet`` (needs ``pyarrow``): as list columns of float64 / int64.
    """
    if fmt not in ("csv", "parquet"):
        raise StoreError(f"format {fmt!r}; expected 'csv' or 'parquet'")
    store.run_config(run_id)  # unknown runs: a clear error
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        {"scenario": j["scenario"], "seed": j["seed"], "score_floor": j["score_floor"], "wall_s": j["wall_s"],
         "calibration": json.dumps(j["calibration"])}
        for j in store.jobs(run_id)
    ]
    listy = fmt == "parquet"
    episodes = [
        {"scenario": e.job[0], "job_seed": e.job[1], "index": i, "role": e.role, "variant": e.variant, "seed": e.seed,
         "length": e.length, "score": float(e.increments.sum()),
         "increments": e.increments.tolist() if listy else json.dumps(e.increments.tolist()),
         "catastrophes": e.catastrophes.tolist() if listy else json.dumps(e.catastrophes.tolist())}
        for i, e in _indexed(store.episodes(run_id))
    ]
    alarms = [
        {"scenario": a.job[0], "job_seed": a.job[1], "config": a.config, "episode_index": a.episode, "step": a.step,
         "detector": a.detector}
        for a in store.alarms(run_id)
    ]
    tables = {"jobs": jobs, "episodes": episodes, "alarms": alarms}
    if table is not None:
        tables["results"] = [dict(r) for r in table]
    return [_write_table(out / f"{name}.{fmt}", rows, fmt) for name, rows in tables.items()]


def _indexed(episodes: list[EpisodeRecord]) -> Iterator[tuple[int, EpisodeRecord]]:
    """Each episode with its index in its job (the key alarms refer to)."""
    last, i = None, 0
    for e in episodes:
        i = 0 if e.job != last else i + 1
        last = e.job
        yield i, e


def _write_table(path: Path, rows: list[dict[str, Any]], fmt: str) -> Path:
    if fmt == "csv":
        import csv

        with open(path, "w", newline="") as f:
            if rows:
                writer = csv.DictWriter(f, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
        return path
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise StoreError(
            "Parquet export needs pyarrow: pip install 'mesaguard[parquet]', or use --format csv"
        ) from None
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
