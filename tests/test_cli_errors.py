"""Every expected failure of the `mesaguard` command: one line on stderr naming what is wrong, exit code 2,
and nothing run or written before it; a bug keeps its traceback.

Each case runs the real entry point (:func:`mesaguard.cli.main`, in-process for speed); the subprocess tests
run ``python -m mesaguard.cli`` and a plain install without MuJoCo and highway-env (their imports blocked).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mesaguard.calibration import CalibrationError
from mesaguard.cli import OptionError, app, expected, main
from mesaguard.scenarios import EXTRAS, SCENARIOS
from mesaguard.store import Store, StoreError

RUN = "tiny"
TINY_BENCH = ["bench", "--scenarios", "strawberry", "--seeds", "1", "--episodes", "4", "--calibration-episodes", "6",
              "--alpha", "0.5", "--policy", "aligned", "--detectors", "threshold", "--run", RUN]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A real store and calibration made by the CLI, a copy of the store damaged in its middle, and odd paths."""
    root = tmp_path_factory.mktemp("cli")
    runner = CliRunner()
    store = root / "bench.sqlite"
    result = runner.invoke(app, [*TINY_BENCH, "--db", str(store)])
    assert result.exit_code == 0, result.output
    cal = root / "cal.json"
    result = runner.invoke(app, ["calibrate", "strawberry", "--policy", "aligned", "--episodes", "40", "--alpha", "0.1",
                                 "--detectors", "threshold", "-o", str(cal)])
    assert result.exit_code == 0, result.output
    corrupt = root / "corrupt.sqlite"
    shutil.copy(store, corrupt)
    db = sqlite3.connect(store)
    query = "SELECT page_size, rootpage FROM pragma_page_size, sqlite_master WHERE name='episodes'"
    page, first = db.execute(query).fetchone()
    db.close()
    assert 1 < first < corrupt.stat().st_size // page, "the episodes' first page is not in the middle of the file"
    with corrupt.open("r+b") as f:  # garbage over the episodes' first page; the schema and other tables are intact
        f.seek((first - 1) * page)
        f.write(bytes(range(256)) * (page // 256))
    (root / "folder").mkdir()
    (root / "empty.json").write_text("{}")
    return {"store": store, "cal": cal, "corrupt": corrupt, "dir": root / "folder", "tmp": root}


@dataclass(frozen=True)
class Case:
    argv: str  # {store} {cal} {corrupt} {dir} {tmp} are replaced by the fixture's paths
    names: tuple[str, ...]  # what the one line must name (after the same replacement)
    creates_nothing: str = ""  # a path that must not exist afterwards: the command wrote nothing
    quiet: bool = True  # nothing on stdout: the command failed before any work (no progress bar)


CASES = {
    "calibration path is a folder": Case("deploy strawberry --calibration {dir}", ("IsADirectoryError", "{dir}")),
    "missing calibration file": Case("deploy strawberry --calibration {tmp}/missing.json", ("{tmp}/missing.json",)),
    "not a calibration file": Case(
        "deploy strawberry --calibration {tmp}/empty.json", ("{tmp}/empty.json", "is not a mesaguard calibration")
    ),
    "calibration output is a folder": Case(
        "calibrate strawberry --policy aligned --episodes 40 -o {dir}", ("--out", "{dir}", "is a folder")
    ),
    "unknown joint rule": Case(
        "calibrate strawberry --match quantile -o {tmp}/q.json", ("unknown --match 'quantile'", "linear, quantiles"),
        "{tmp}/q.json",
    ),
    "report output is a folder": Case("report tiny --db {store} -o {dir}", ("--out", "{dir}", "is a folder")),
    "store damaged in the middle (report)": Case(
        "report tiny --db {corrupt} -o {tmp}/r.html", ("StoreError", "{corrupt}", "SQLite"), "{tmp}/r.html"
    ),
    "store damaged in the middle (export)": Case(
        "export tiny --db {corrupt} -o {tmp}/export", ("{corrupt}", "SQLite"), "{tmp}/export"
    ),
    "store damaged in the middle (bench resumes)": Case(
        " ".join(TINY_BENCH) + " --db {corrupt}", ("{corrupt}", "SQLite"), quiet=False
    ),
    "no store to report on": Case("report tiny --db {tmp}/none.sqlite", ("{tmp}/none.sqlite",), "{tmp}/none.sqlite"),
    "unknown run": Case("export nope --db {store} -o {tmp}/nope", ("'nope'", "{store}"), "{tmp}/nope"),
    "unknown --policy (calibrate)": Case("calibrate strawberry --policy agnet", ("--policy", "'agnet'", "aligned")),
    "unknown --policy (bench)": Case(
        "bench --scenarios strawberry --policy agnet --db {tmp}/p.sqlite", ("--policy", "'agnet'"), "{tmp}/p.sqlite"
    ),
    "unknown --protocol": Case(
        "deploy strawberry --calibration {cal} --detectors threshold --protocol stpo -o {tmp}/deploy.json",
        ("--protocol", "'stpo'", "stop, fallback"),
        "{tmp}/deploy.json",
    ),
    "unknown scenario": Case("calibrate strawbery", ("'strawbery'", "strawberry")),
    "unknown scenario (bench)": Case(
        "bench --scenarios strawberry,strawbery --db {tmp}/s.sqlite", ("'strawbery'",), "{tmp}/s.sqlite"
    ),
    "unknown variant": Case(
        "deploy strawberry --calibration {cal} --detectors threshold --variant depoly", ("'depoly'", "train, deploy")
    ),
    "unknown detector": Case("calibrate strawberry --detectors cusum,cusm", ("'cusm'",)),
    "a detector the calibration lacks": Case(
        "deploy strawberry --calibration {cal} --detectors cusum", ("cusum", "not in this calibration")
    ),
    "too few calibration episodes": Case("calibrate strawberry --episodes 10", ("--episodes 10", "37")),
}


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_expected_failure_is_one_line_and_exit_2(case, files, capsys, monkeypatch):
    def fill(text: str) -> str:
        return text.format(**{k: str(v) for k, v in files.items()})

    monkeypatch.setattr(sys, "argv", ["mesaguard", *fill(case.argv).split()])
    with pytest.raises(SystemExit) as exit_:
        main()
    out, err = capsys.readouterr()
    assert exit_.value.code == 2, err
    assert len(err.splitlines()) == 1, err
    for name in case.names:
        assert fill(name) in err, err
    if case.quiet:
        assert out == ""
    if case.creates_nothing:
        assert not Path(fill(case.creates_nothing)).exists()


def test_the_damaged_store_opens_and_fails_on_reading_its_episodes(files):
    with Store(files["corrupt"]) as store, pytest.raises(sqlite3.DatabaseError, match="malformed"):  # it opens
        store.db.execute("SELECT * FROM episodes").fetchall()


@pytest.mark.parametrize(
    ("exc", "is_expected"),
    [
        (CalibrationError("x"), True),
        (StoreError("x"), True),
        (OptionError("x"), True),
        (IsADirectoryError(21, "Is a directory", "x"), True),
        (PermissionError(13, "Permission denied", "x"), True),
        (sqlite3.DatabaseError("file is not a database"), True),
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), True),
        (ValueError("a plain ValueError is a bug"), False),
        (sqlite3.ProgrammingError("a wrong query is a bug"), False),
        (KeyError("x"), False),
        (RuntimeError("x"), False),
    ],
)
def test_what_is_expected_and_what_is_a_bug(exc, is_expected):
    assert expected(exc) is is_expected


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300, check=False
    )


BLOCK_EXTRAS = "import sys; sys.modules.update(mujoco=None, highway_env=None); from mesaguard.cli import main; "


@pytest.mark.parametrize("arg", ["--protocol", "--calibration"])
def test_python_m_entry_point_prints_one_unwrapped_line(tmp_path, arg):
    """``python -m mesaguard.cli`` defines the CLI's classes in ``__main__``, and a pipe is 80 columns: one line."""
    folder = tmp_path / ("a-folder-whose-name-is-long-enough-to-be-wrapped-at-eighty-columns-" * 2)
    folder.mkdir()
    argv = ["deploy", "strawberry", "--calibration", str(folder)] + (
        ["--protocol", "stpo"] if arg == "--protocol" else []
    )
    out = subprocess.run([sys.executable, "-m", "mesaguard.cli", *argv], capture_output=True, text=True, check=False,
                         env={**os.environ, "COLUMNS": "80"})
    line = {
        "--protocol": "OptionError: unknown --protocol 'stpo'; expected one of: stop, fallback",
        "--calibration": f"IsADirectoryError: Is a directory: '{folder}'",
    }[arg]
    assert out.returncode == 2 and out.stderr.splitlines() == [line], out.stderr


def test_default_bench_without_extras_skips_their_scenarios_with_one_line_each(tmp_path):
    argv = ["mesaguard", *TINY_BENCH[:1], *TINY_BENCH[3:], "--db", "b.sqlite"]  # every scenario
    out = _python(BLOCK_EXTRAS + f"sys.argv = {argv!r}; main()", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "skipping cheetah: it needs the mujoco extra: pip install 'mesaguard[mujoco]'",
        "skipping driving: it needs the driving extra: pip install 'mesaguard[driving]'",
    ]
    with Store(tmp_path / "b.sqlite") as store:
        ran = store.run_config(RUN)["scenarios"]
        assert sorted(ran) == sorted(set(SCENARIOS) - {"cheetah", "driving"})
        assert {key[0] for key in store.done_jobs(RUN)} == set(ran)


@pytest.mark.parametrize(("scenario", "extra"), [("cheetah", "mujoco"), ("driving", "driving")])
def test_a_scenario_named_without_its_extra_is_one_line_naming_it(tmp_path, scenario, extra):
    argv = ["mesaguard", "bench", "--scenarios", f"strawberry,{scenario}", "--db", "b.sqlite"]
    out = _python(BLOCK_EXTRAS + f"sys.argv = {argv!r}; main()", tmp_path)
    assert out.returncode == 2 and out.stderr.splitlines() == [
        f"OptionError: scenario '{scenario}' needs the {extra} extra: pip install 'mesaguard[{extra}]'"
    ], out.stderr
    assert not (tmp_path / "b.sqlite").exists()


def test_every_scenario_extra_is_a_pyproject_extra_and_installed_here():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert {s.extra for s in SCENARIOS.values()} - {""} == set(EXTRAS) <= set(extras)
    assert all(s.missing_extra() is None for s in SCENARIOS.values())  # the dev install has every extra


def test_signed_calibrations_from_the_command_line(tmp_path, monkeypatch, capsys):
    """keygen, calibrate --sign-key and deploy --verify-key: a wrong key is one line and exit 2, before any rollout."""
    import os

    from mesaguard.cli import main

    def run(*args: str) -> int:
        monkeypatch.setattr(sys, "argv", ["mesaguard", *args])
        try:
            main()
        except SystemExit as exit_:
            return int(exit_.code or 0)
        return 0

    assert run("keygen", str(tmp_path / "team.key")) == 0
    assert oct(os.stat(tmp_path / "team.key").st_mode & 0o777) == "0o600"
    assert run("keygen", str(tmp_path / "other.key")) == 0
    cal = tmp_path / "cal.json"
    assert run("calibrate", "lava", "--episodes", "40", "--alpha", "0.1", "--sign-key", str(tmp_path / "team.key"),
               "-o", str(cal)) == 0
    from mesaguard.calibration import Calibration
    from mesaguard.signing import load_verify_key

    assert Calibration.load(cal, verify_key=load_verify_key(tmp_path / "team.key.pub")).scenario == "lava"
    out = tmp_path / "deploy.json"
    assert run("deploy", "lava", "--calibration", str(cal), "--verify-key", str(tmp_path / "other.key.pub"),
               "-o", str(out)) == 2
    assert not out.exists()  # refused before any rollout
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "signature" in lines[0]
