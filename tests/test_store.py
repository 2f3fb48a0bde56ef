"""The bench's SQLite store: round trip, one transaction per job, crash safety, export."""

import csv
import json
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from mesaguard.store import AlarmRecord, EpisodeRecord, JobRecord, Store, StoreError, export


def job(seed, n=3, length=5):
    rng = np.random.default_rng(seed)
    episodes = [
        EpisodeRecord("calibration" if i == 0 else "evaluation", "train" if i < 2 else "deploy", 100 * seed + i,
                      rng.normal(size=length + i), np.array([2, 4][: i % 3]))
        for i in range(n)
    ]
    return JobRecord("strawberry", seed, {"format": "cal", "seed": seed}, 1.5, 0.25, episodes,
                     [AlarmRecord("cusum", 2, 3, "cusum"), AlarmRecord("cusum+envelope", 1, 1, "envelope")])


def test_round_trip_is_exact(tmp_path):
    with Store(tmp_path / "b.sqlite") as store:
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.create_run("r", {"alpha": 0.1, "seeds": [0, 1]}) is True
        assert store.create_run("r", {"seeds": [0, 1], "alpha": 0.1}) is False  # same config: a resume
        with pytest.raises(StoreError, match="started with another configuration"):
            store.create_run("r", {"alpha": 0.2, "seeds": [0, 1]})
        written = [job(0), job(1)]
        for j in written:
            store.write_job("r", j)
    with Store(tmp_path / "b.sqlite") as store:  # reopened: everything came from disk
        assert store.done_jobs("r") == {("strawberry", 0), ("strawberry", 1)}
        assert store.run_config("r") == {"alpha": 0.1, "seeds": [0, 1]}
        calibrations = [j["calibration"] for j in store.jobs("r")]
        assert calibrations == [{"format": "cal", "seed": 0}, {"format": "cal", "seed": 1}]
        episodes = store.episodes("r")
        expected = [e for j in written for e in j.episodes]
        assert len(episodes) == len(expected)
        for got, want in zip(episodes, expected):
            assert got.increments.dtype == np.float64 and got.increments.tobytes() == want.increments.tobytes()
            assert got.catastrophes.tolist() == want.catastrophes.tolist()
            assert (got.role, got.variant, got.seed, got.length) == (want.role, want.variant, want.seed, want.length)
        alarms = store.alarms("r")
        assert [(a.job, a.config, a.episode, a.step, a.detector) for a in alarms][:2] == [
            (("strawberry", 0), "cusum", 2, 3, "cusum"), (("strawberry", 0), "cusum+envelope", 1, 1, "envelope")
        ]
        with pytest.raises(StoreError, match="no run 'nope'.*runs there: r"):
            store.run_config("nope")


def test_a_job_is_all_or_nothing(tmp_path):
    with Store(tmp_path / "b.sqlite") as store:
        store.create_run("r", {})
        store.write_job("r", job(0))
        bad = job(1)
        bad.alarms.append(AlarmRecord("cusum", 2, 3, "cusum"))  # duplicate key: fails after episodes were inserted
        with pytest.raises(sqlite3.IntegrityError):
            store.write_job("r", bad)
        assert store.done_jobs("r") == {("strawberry", 0)}
        assert store.db.execute("SELECT COUNT(*) FROM episodes").fetchone()[0] == 3  # nothing of job 1 is left
        store.write_job("r", job(1))  # and it can be written again
        assert len(store.done_jobs("r")) == 2


def test_not_a_store_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="is not a mesaguard store"):
        Store(path)


WRITER = """
import sys, time
import numpy as np
from mesaguard.store import EpisodeRecord, JobRecord, Store
store = Store(sys.argv[1])
store.create_run("r", {})
for seed in range(10_000):
    eps = [EpisodeRecord("evaluation", "train", i, np.full(200, float(seed)), np.array([], dtype=np.int64))
           for i in range(50)]
    store.write_job("r", JobRecord("s", seed, {}, 0.0, 0.0, eps))
"""


def test_sigkill_loses_no_committed_job(tmp_path):
    path = tmp_path / "b.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if path.exists():
                with sqlite3.connect(path) as db:
                    try:
                        if db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] >= 5:
                            break
                    except sqlite3.OperationalError:
                        pass  # the schema is not there yet
        proc.send_signal(signal.SIGKILL)  # mid-write, most likely inside a transaction
    finally:
        proc.wait()
    with Store(path) as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done = sorted(seed for _, seed in store.done_jobs("r"))
        assert len(done) >= 5 and done == list(range(len(done)))  # every committed job, and only whole ones
        counts = store.db.execute("SELECT job_id, COUNT(*) FROM episodes GROUP BY job_id").fetchall()
        assert len(counts) == len(done) and all(c == 50 for _, c in counts)
        for e in store.episodes("r"):
            assert e.increments.shape == (200,) and (e.increments == e.job[1]).all()


def test_export_csv_and_parquet(tmp_path):
    with Store(tmp_path / "b.sqlite") as store:
        store.create_run("r", {"alpha": 0.1})
        store.write_job("r", job(0))
        paths = export(store, "r", tmp_path / "csv", "csv", table=[{"detectors": "cusum", "rate": 0.5}])
        assert sorted(p.name for p in paths) == ["alarms.csv", "episodes.csv", "jobs.csv", "results.csv"]
        rows = list(csv.DictReader(open(tmp_path / "csv" / "episodes.csv")))
        assert len(rows) == 3
        np.testing.assert_array_equal(json.loads(rows[1]["increments"]), job(0).episodes[1].increments)
        assert list(csv.DictReader(open(tmp_path / "csv" / "results.csv"))) == [{"detectors": "cusum", "rate": "0.5"}]
        pq = pytest.importorskip("pyarrow.parquet")
        export(store, "r", tmp_path / "pq", "parquet")
        episodes = pq.read_table(tmp_path / "pq" / "episodes.parquet").to_pylist()
        assert episodes[2]["increments"] == job(0).episodes[2].increments.tolist()
        assert episodes[2]["catastrophes"] == [2, 4][:2 % 3]
        assert pq.read_table(tmp_path / "pq" / "alarms.parquet").num_rows == 2
        with pytest.raises(StoreError, match="format 'xlsx'"):
            export(store, "r", tmp_path, "xlsx")
