"""A user's own env, policy and base objective through the real `mesaguard` entry point.

The task is written into a temporary folder as a user would (CartPole with a pole whose length is a keyword
argument, a hand-written PD controller, a safety margin as the base objective) and named on the command line as
``module:attr``, imported from the current directory. No training: the policy is scripted.
"""

from __future__ import annotations

import itertools
import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mesaguard import metrics
from mesaguard.calibration import Calibration
from mesaguard.cli import main

MODULE = "longpole_task"
TASK = '''
import gymnasium as gym
import numpy as np

LIMIT = 12 * 2 * np.pi / 360  # CartPole-v1 fails an episode past 12 degrees


def make_env(length=0.5):
    env = gym.make("CartPole-v1")
    pole = env.unwrapped
    pole.length = length
    pole.polemass_length = pole.masspole * length
    return env


def controller(obs):
    return int(obs[2] + 0.5 * obs[3] > 0)


def controller_for(env):  # a factory: its first parameter is named env
    return controller


def margin(t):
    return 1.0 - abs(float(t.next_obs[2])) / LIMIT


def wrong_action(obs):
    return 7
'''
EPISODES, CAL_EPISODES, ALPHA = 20, 40, 0.1
SHIFT = '{"length": 1.5}'


def run(monkeypatch, *args: str) -> int:
    """The exit code of ``mesaguard ARGS`` run through :func:`mesaguard.cli.main`."""
    monkeypatch.setattr(sys, "argv", ["mesaguard", *args])
    try:
        main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def user_module(tmp_path: Path, monkeypatch, name: str, text: str) -> Iterator[Path]:
    """A fixture's body: the user's task module ``name`` written into ``tmp_path``, the current directory, and
    forgotten afterwards."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop(name, None)


@pytest.fixture
def task(tmp_path, monkeypatch):
    """The user's task module in the current directory, forgotten afterwards."""
    yield from user_module(tmp_path, monkeypatch, MODULE, TASK)


def calibrate(monkeypatch, out: Path, policy: str = "controller") -> int:
    return run(monkeypatch, "calibrate", "--env", f"{MODULE}:make_env", "--policy", f"{MODULE}:{policy}",
               "--objective", f"{MODULE}:margin", "--episodes", str(CAL_EPISODES), "--alpha", str(ALPHA),
               "--detectors", "envelope,cusum", "-o", str(out))


def test_calibrate_then_deploy_a_users_env_policy_and_objective(task, monkeypatch, capsys):
    cal_path = task / "cal.json"
    assert calibrate(monkeypatch, cal_path) == 0
    cal = Calibration.load(cal_path)
    assert cal.objective == "margin"  # recorded: a guard computing another objective is an error
    assert cal.metadata["objective"] == f"{MODULE}:margin" and cal.scenario == f"{MODULE}:make_env"
    assert cal.n_fit + cal.n_cal == CAL_EPISODES
    capsys.readouterr()

    out = task / "deploy.json"
    assert run(monkeypatch, "deploy", "--env", f"{MODULE}:make_env", "--shifted-kwargs", SHIFT, "--policy",
               f"{MODULE}:controller_for", "--objective", f"{MODULE}:margin", "--calibration", str(cal_path),
               "--episodes", str(EPISODES), "--detectors", "envelope,cusum", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    assert "shifted alarms" in printed and "catastrophes" not in printed  # CartPole reports no info["catastrophe"]
    table = json.loads(out.read_text())
    assert [r["detectors"] for r in table["rows"]] == ["envelope", "cusum", "envelope+cusum"]
    assert all(r["catastrophes_free"] is None for r in table["rows"])

    # The same numbers as the Python API on the same seeds: the command line adds nothing of its own.
    sys.path.insert(0, str(task))
    try:
        from longpole_task import controller, make_env, margin  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(task))
    from mesaguard.guard import GuardedEnv
    from mesaguard.rollout import rollout
    from mesaguard.userenv import EVALUATION_SEED

    seeds = range(EVALUATION_SEED, EVALUATION_SEED + EPISODES)
    for row, names in zip(table["rows"], (["envelope"], ["cusum"], ["envelope", "cusum"])):
        for key, length in (("false_alarms", 0.5), ("shifted_alarms", 1.5)):
            runs = rollout(lambda length=length, names=names: GuardedEnv(make_env(length), cal, detectors=names,
                                                                         objective=margin),
                           lambda env: controller, seeds, objective=margin)
            assert row[key]["k"] == metrics.false_alarm_rate(runs).k and row[key]["n"] == EPISODES


def test_deploy_defaults_to_the_recorded_objective_and_names_a_callable_to_pass_again(task, monkeypatch, capsys):
    cal_path = task / "cal.json"
    assert calibrate(monkeypatch, cal_path) == 0
    capsys.readouterr()
    base = ["deploy", "--env", f"{MODULE}:make_env", "--shifted-kwargs", SHIFT, "--policy", f"{MODULE}:controller",
            "--calibration", str(cal_path), "--episodes", "2", "--detectors", "cusum", "-o", str(task / "deploy.json")]
    assert run(monkeypatch, *base) == 2
    assert run(monkeypatch, *base, "--objective", "reward") == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    assert f"--objective {MODULE}:margin" in lines[0]
    assert "'margin'" in lines[1] and "'reward'" in lines[1]
    assert not (task / "deploy.json").exists()


def test_a_gymnasium_id_with_kwargs_and_the_reward(task, monkeypatch):
    out = task / "cal.json"
    with pytest.warns(UserWarning, match="never varies"):  # CartPole's reward is +1 at every step
        code = run(monkeypatch, "calibrate", "--env", "CartPole-v1", "--env-kwargs", '{"max_episode_steps": 60}',
                   "--policy", f"{MODULE}:controller", "--objective", "reward", "--episodes", "40", "--alpha", "0.1",
                   "--detectors", "threshold", "-o", str(out))
    assert code == 0
    cal = Calibration.load(out)
    assert cal.objective == "reward" and cal.scenario == "CartPole-v1"
    assert cal.metadata["env_kwargs"] == {"max_episode_steps": 60}


BAD = {
    "no such attribute": (["calibrate", "--env", f"{MODULE}:nope", "--policy", f"{MODULE}:controller"],
                          ["--env", "nope"]),
    "no such module": (["calibrate", "--env", "no_such_module:make_env", "--policy", f"{MODULE}:controller"],
                       ["--env", "no_such_module"]),
    "not callable": (["calibrate", "--env", f"{MODULE}:LIMIT", "--policy", f"{MODULE}:controller"],
                     ["--env", "LIMIT", "not callable"]),
    "unknown Gymnasium id": (["calibrate", "--env", "CartPol-v1", "--policy", f"{MODULE}:controller"],
                             ["--env", "CartPol-v1"]),
    "kwargs not an object": (["calibrate", "--env", f"{MODULE}:make_env", "--env-kwargs", "[1]", "--policy",
                              f"{MODULE}:controller"], ["--env-kwargs", "JSON object"]),
    "kwargs the factory does not take": (["calibrate", "--env", f"{MODULE}:make_env", "--env-kwargs", '{"lenght": 1}',
                                          "--policy", f"{MODULE}:controller"], ["--env-kwargs", "lenght"]),
    "no policy": (["calibrate", "--env", f"{MODULE}:make_env"], ["--policy"]),
    "policy neither callable nor file": (["calibrate", "--env", f"{MODULE}:make_env", "--policy", "no_file"],
                                         ["--policy", "no_file", "save_policy"]),
    "action outside the space": (["calibrate", "--env", f"{MODULE}:make_env", "--policy", f"{MODULE}:wrong_action"],
                                 ["--policy", "wrong_action", "action space"]),
    "unknown objective": (["calibrate", "--env", f"{MODULE}:make_env", "--policy", f"{MODULE}:controller",
                           "--objective", "rewrd"], ["--objective", "rewrd"]),
    "objective missing from info": (["calibrate", "--env", f"{MODULE}:make_env", "--policy", f"{MODULE}:controller",
                                     "--objective", "info:margin"], ["margin"]),
    "scenario and env": (["calibrate", "strawberry", "--env", f"{MODULE}:make_env"], ["strawberry", "--env"]),
    "objective for a scenario": (["calibrate", "strawberry", "--objective", "reward"], ["--objective", "strawberry"]),
    "no shifted env": (["deploy", "--env", f"{MODULE}:make_env", "--policy", f"{MODULE}:controller",
                        "--calibration", "cal.json"], ["--shifted-kwargs", "--shifted-env"]),
    "fallback without a scenario": (["deploy", "--env", f"{MODULE}:make_env", "--policy", f"{MODULE}:controller",
                                     "--calibration", "cal.json", "--protocol", "fallback"], ["--protocol"]),
}


@pytest.mark.parametrize("argv,names", BAD.values(), ids=list(BAD))
def test_a_bad_value_is_one_line_exit_2_and_nothing_written(argv, names, task, monkeypatch, capsys):
    out = task / "out.json"
    assert run(monkeypatch, *argv, "--episodes", "40", "-o", str(out)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    for name in names:
        assert name in lines[0], lines[0]
    assert captured.out == "" and not out.exists()


# ---------------------------------------------------------------------------
# A scenario of one's own, registered in-process and by a package's entry point
# ---------------------------------------------------------------------------

PLUGIN = "mg_fake_plugin"
PLUGIN_CODE = '''
import gymnasium as gym
import numpy as np

from mesaguard.scenarios import register

LIMIT = 12 * 2 * np.pi / 360


class Margin(gym.Wrapper):
    """CartPole reporting its safety margin as info["base_objective"]."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "base_objective": 1.0 - abs(float(obs[2])) / LIMIT}


def make_env(variant, render_mode=None):
    env = gym.make("CartPole-v1", render_mode=render_mode, max_episode_steps=100)
    pole = env.unwrapped
    pole.length = {"short": 0.5, "long": 1.5}[variant]
    pole.polemass_length = pole.masspole * pole.length
    return Margin(env)


def pd(env):
    return lambda obs: int(obs[2] + 0.5 * obs[3] > 0)


def register_all():
    register("plugged-pole", make_env, variants=("short", "long"), aligned=pd,
             failure_mode="distribution shift", shift="a longer pole", base_objective="safety margin")
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A fake installed distribution on sys.path: its module and a .dist-info declaring the entry point."""
    from mesaguard import scenarios

    site = tmp_path / "site"
    info = site / f"{PLUGIN}-0.1.dist-info"
    info.mkdir(parents=True)
    (site / f"{PLUGIN}.py").write_text(textwrap.dedent(PLUGIN_CODE))
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PLUGIN}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{scenarios.ENTRY_POINTS}]\nplugged = {PLUGIN}:register_all\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    if "plugged-pole" in scenarios.SCENARIOS:
        scenarios._unregister("plugged-pole")
    sys.modules.pop(PLUGIN, None)


def test_a_package_registers_its_scenario_through_the_entry_point_and_the_cli_runs_it(plugin, monkeypatch):
    from mesaguard import scenarios

    assert "plugged-pole" not in scenarios.SCENARIOS
    assert scenarios.load_entry_points() == ["plugged"]
    assert scenarios.load_entry_points() == []  # once each
    scenario = scenarios.get("plugged-pole")
    assert scenario.reference_variant == "short" and scenario.shifted_variants == ("long",)
    cal = plugin / "cal.json"
    assert run(monkeypatch, "calibrate", "plugged-pole", "--policy", "aligned", "--episodes", "40", "--alpha", "0.1",
               "--detectors", "envelope", "-o", str(cal)) == 0
    assert Calibration.load(cal).scenario == "plugged-pole"
    out = plugin / "deploy.json"
    assert run(monkeypatch, "deploy", "plugged-pole", "--calibration", str(cal), "--policy", "aligned",
               "--episodes", "10", "--detectors", "envelope", "-o", str(out)) == 0
    assert json.loads(out.read_text())["scenario"] == "plugged-pole"
    assert run(monkeypatch, "calibrate", "plugged-pole", "--policy", "misaligned", "--episodes", "40",
               "-o", str(plugin / "none.json")) == 2  # registered without one: one line, before any rollout
    assert not (plugin / "none.json").exists()


def test_register_checks_its_arguments(plugin):
    from mesaguard.scenarios import SCENARIOS, ScenarioError, get, register

    sys.path.insert(0, str(plugin / "site"))
    try:
        from mg_fake_plugin import make_env  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(plugin / "site"))
    bad = {  # name: (keyword arguments, what the message must say)
        "Bad Name": ({"variants": ("a", "b")}, "lower-case"),
        "strawberry": ({"variants": ("a", "b")}, "already registered"),
        "one-variant": ({"variants": ("a",)}, "two or more distinct"),
        "same-variants": ({"variants": ("a", "a")}, "two or more distinct"),
        "bad-reference": ({"variants": ("a", "b"), "reference": "c"}, "unknown variant 'c'"),
        "bad-policy": ({"variants": ("a", "b"), "aligned": 3}, "aligned=3 is not callable"),
    }
    for name, (kwargs, message) in bad.items():
        with pytest.raises(ScenarioError, match=message):
            register(name, make_env, **kwargs)
        assert name == "strawberry" or name not in SCENARIOS
    register("plugged-pole", make_env, variants=("short", "long"))
    assert get("plugged-pole").make("long").unwrapped.length == 1.5
    with pytest.raises(ScenarioError, match="no aligned policy|without an aligned"):
        get("plugged-pole").aligned(None)


def test_a_policy_saved_with_save_policy_from_a_users_own_sb3_model(task, monkeypatch, capsys):
    """``save_policy(model, STEM)`` of a user's PPO model (untrained here: no training in tests) is a --policy."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    from mesaguard.policies import save_policy

    save_policy(PPO("MlpPolicy", gym.make("CartPole-v1"), seed=0), task / "mine")
    save_policy(PPO("MlpPolicy", gym.make("Pendulum-v1"), seed=0), task / "pendulum")
    out = task / "cal.json"
    args = ["calibrate", "--env", f"{MODULE}:make_env", "--objective", f"{MODULE}:margin", "--episodes", "40",
            "--alpha", "0.1", "--detectors", "envelope"]
    assert run(monkeypatch, *args, "--policy", str(task / "mine"), "-o", str(out)) == 0
    assert Calibration.load(out).metadata["policy"] == str(task / "mine")
    capsys.readouterr()
    assert run(monkeypatch, *args, "--policy", str(task / "pendulum.json"), "-o", str(task / "no.json")) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "pendulum" in line and "first observation" in line
    assert not (task / "no.json").exists()


# -- mesaguard bench and report on a user's task ----------------------------------------------------------------

BENCH = ["bench", "--env", f"{MODULE}:make_env", "--shifted-kwargs", SHIFT, "--policy", f"{MODULE}:controller",
         "--objective", f"{MODULE}:margin", "--seeds", "2", "--episodes", str(EPISODES), "--calibration-episodes",
         str(CAL_EPISODES), "--alpha", str(ALPHA), "--detectors", "envelope,cusum"]


def test_bench_on_a_users_task_is_stored_and_read_back_without_the_registry_or_the_users_code(task, monkeypatch,
                                                                                            capsys):
    from mesaguard.bench import BenchConfig, deployment_table, load_run, table
    from mesaguard.bench.config import UserTask
    from mesaguard.store import Store

    db = task / "b.sqlite"
    assert run(monkeypatch, *BENCH, "--db", str(db)) == 0
    printed = capsys.readouterr().out
    task_config = BenchConfig(scenarios=(f"{MODULE}:make_env",), detectors=("envelope", "cusum"), seeds=(0, 1),
                              episodes=EPISODES, calibration_episodes=CAL_EPISODES, alpha=ALPHA,
                              policy=f"{MODULE}:controller",
                              task=UserTask(f"{MODULE}:make_env", {}, None, json.loads(SHIFT), f"{MODULE}:margin"))
    run_id = task_config.run_id()
    assert f"as run {run_id}" in " ".join(printed.split()) and ":" not in run_id  # it names a folder (export)

    # Read back elsewhere, the user's module forgotten: the store holds all a run needs.
    sys.modules.pop(MODULE, None)
    monkeypatch.chdir(task.parent)
    with Store(db) as store:
        config, jobs = load_run(store, run_id)
        rows, deployments = table(store, run_id), deployment_table(store, run_id)
    assert MODULE not in sys.modules
    assert config == task_config and sorted(jobs) == [(f"{MODULE}:make_env", 0), (f"{MODULE}:make_env", 1)]
    assert [(r.variant, r.detectors) for r in rows] == [("shifted", "envelope"), ("shifted", "cusum"),
                                                       ("shifted", "envelope+cusum")]
    assert {(r.variant, r.detectors) for r in deployments} == {(v, d) for v in ("reference", "shifted")
                                                               for d in ("envelope", "cusum", "envelope+cusum")}
    job = jobs[(f"{MODULE}:make_env", 0)]
    assert job.calibration.objective == "margin" and job.calibration.n_fit + job.calibration.n_cal == CAL_EPISODES
    assert all(r.false_alarms.n == 2 * EPISODES and r.seeds == 2 for r in rows)

    # Seed 0's calibration is the one `mesaguard calibrate --env` fits on the same seeds: one way to calibrate.
    monkeypatch.chdir(task)
    assert calibrate(monkeypatch, task / "cal.json") == 0
    alone = Calibration.load(task / "cal.json")
    assert alone.thresholds_for(["envelope", "cusum"]) == job.calibration.thresholds_for(["envelope", "cusum"])


def test_report_on_a_users_bench_run(task, monkeypatch, capsys):
    db = task / "b.sqlite"
    assert run(monkeypatch, *BENCH, "--seeds", "1", "--db", str(db)) == 0
    from mesaguard.store import Store

    with Store(db) as store:
        (run_id,) = store.runs()
    sys.modules.pop(MODULE, None)
    assert run(monkeypatch, "report", run_id, "--db", str(db), "-o", str(task / "report.html")) == 0
    assert MODULE not in sys.modules
    page = (task / "report.html").read_text()
    assert f"{MODULE}:make_env" in page and "shifted" in page


BENCH_BAD = {
    "scenarios and --env": (["--scenarios", "strawberry"], "both --scenarios 'strawberry' and --env"),
    "safeguards": (["--safeguards", "shield"], "--safeguards 'shield' is for a scenario"),
    "no shift": (None, "needs the shifted env"),
    "shifted kwargs on a scenario": (["--scenarios", "strawberry", "--shifted-kwargs", "{}"], "is for --env"),
}


@pytest.mark.parametrize("extra,message", BENCH_BAD.values(), ids=list(BENCH_BAD))
def test_bench_refuses_options_of_the_other_kind_of_task(extra, message, task, monkeypatch, capsys):
    if extra is None:
        argv = [a for a in BENCH if a not in ("--shifted-kwargs", SHIFT)]
    elif extra[0] == "--scenarios" and len(extra) > 2:
        argv = ["bench", *extra]
    else:
        argv = [*BENCH, *extra]
    assert run(monkeypatch, *argv, "--db", str(task / "b.sqlite")) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert not (task / "b.sqlite").exists()


# -- what the commands print: 80 columns, and --format for scripts ----------------------------------------------

def _commands(task: Path) -> dict[str, list[str]]:
    cal = str(task / "cal.json")
    return {
        "calibrate": ["calibrate", "--env", f"{MODULE}:make_env", "--policy", f"{MODULE}:controller", "--objective",
                      f"{MODULE}:margin", "--episodes", str(CAL_EPISODES), "--alpha", str(ALPHA), "-o", cal],
        "deploy": ["deploy", "--env", f"{MODULE}:make_env", "--shifted-kwargs", SHIFT, "--policy",
                   f"{MODULE}:controller", "--objective", f"{MODULE}:margin", "--calibration", cal, "--episodes",
                   "10", "-o", str(task / "deploy.json")],
        "bench": [*BENCH, "--seeds", "1", "--db", str(task / "b.sqlite")],
        "scenarios": ["scenarios"],
    }


def test_every_table_fits_80_columns_and_no_name_is_cut(task, monkeypatch, capsys):
    from mesaguard.cli.base import console

    monkeypatch.setenv("COLUMNS", "80")  # a CI log: not a terminal, 80 columns
    monkeypatch.setattr(console, "_width", None)  # read COLUMNS now, whatever it was at import
    for name, argv in _commands(task).items():
        assert run(monkeypatch, *argv) == 0, name
        out = capsys.readouterr().out
        lines = out.splitlines()
        assert max(len(line) for line in lines) <= 80, (name, out)
        assert "…" not in out, (name, out)
        if name in ("deploy", "bench"):
            assert " joint " in out and "envelope+cusum" not in out, out  # one name for the joint set


def _markdown(text: str) -> list[list[str]]:
    """The rows (header first) of the first pipe table in ``text``."""
    lines = list(itertools.takewhile(lambda line: line.startswith("|"),
                                     itertools.dropwhile(lambda line: not line.startswith("|"), text.splitlines())))
    assert set(lines[1].replace("|", "").split()) == {"---"}
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[:1] + lines[2:]]


# calibrate: the default set's two detectors; deploy: each of them and the two jointly
@pytest.mark.parametrize("command,rows", [("calibrate", 2), ("deploy", 3), ("bench", 3), ("scenarios", None)])
def test_each_format_parses_back_to_the_same_rows(command, rows, task, monkeypatch, capsys):
    import csv
    import io

    argv = _commands(task)[command]
    if command in ("deploy", "bench"):  # deploy needs the calibration; the bench's run is then resumed
        assert run(monkeypatch, *_commands(task)["calibrate"]) == 0
    out = {}
    for fmt in ("json", "csv", "markdown"):
        capsys.readouterr()
        assert run(monkeypatch, *argv, "--format", fmt) == 0, fmt
        out[fmt] = capsys.readouterr().out
    records = json.loads(out["json"])  # stdout holds the table alone: progress and messages went to stderr
    assert isinstance(records, list) and all(isinstance(r, dict) for r in records)
    if rows is not None:
        assert len(records) == rows
    as_text = [{k: "" if v is None else str(v) for k, v in r.items()} for r in records]
    assert list(csv.DictReader(io.StringIO(out["csv"]))) == as_text
    table = _markdown(out["markdown"])
    assert len(table) == 1 + len(records) and len({len(r) for r in table}) == 1
    if command == "bench":
        assert [r["detectors"] for r in records] == ["envelope", "cusum", "envelope+cusum"]  # exact, for scripts
        assert [r[1] for r in table[1:]][-1] == "joint" and records[0]["false_alarms_n"] == EPISODES
