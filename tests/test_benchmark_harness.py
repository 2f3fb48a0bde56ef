"""The benchmarks' shared harness: the machine record, atomic result files, the common arguments, timing turns."""

from __future__ import annotations

import datetime
import doctest
import importlib.util
import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
_spec = importlib.util.spec_from_file_location("benchmarks_harness", BENCHMARKS / "harness.py")
harness = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = harness  # as an import would (dataclasses and doctest look modules up there)
_spec.loader.exec_module(harness)


def test_the_module_doctests_pass():
    result = doctest.testmod(harness)
    assert result.attempted >= 3 and result.failed == 0


def test_machine_record_has_its_fields():
    record = harness.machine()
    assert tuple(record) == harness.MACHINE_FIELDS
    assert record["python"] == platform.python_version()
    assert record["platform"] == platform.platform()
    assert record["cpus"] == os.cpu_count()
    assert record["packages"]["numpy"] == np.__version__
    assert set(record["packages"]) <= set(harness.PACKAGES)
    date = datetime.datetime.fromisoformat(record["date"])
    assert date.utcoffset() == datetime.timedelta(0)
    assert len(record["load_average_at_end"]) == 3
    json.dumps(record, allow_nan=False)  # it goes into a result file as it is


def test_write_puts_numpy_values_as_plain_json(tmp_path):
    path = harness.write(tmp_path / "r.json", {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3)})
    assert path == tmp_path / "r.json"
    assert path.read_text().endswith("\n")
    assert json.loads(path.read_text()) == {"n": 3, "x": 0.5, "a": [0, 1, 2]}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), object()])
def test_a_value_json_cannot_hold_leaves_the_old_file_intact(tmp_path, bad):
    path = tmp_path / "r.json"
    harness.write(path, {"figure": 1.0})
    before = path.read_bytes()
    with pytest.raises((ValueError, TypeError)):
        harness.write(path, {"figure": bad})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_a_write_that_fails_half_way_leaves_the_old_file_intact(tmp_path):
    # A real failure in the middle of writing: the process may not write files over 4 KiB,
    # so writing the 50 KB result fails with EFBIG after the first 4 KiB went to disk.
    path = tmp_path / "r.json"
    harness.write(path, {"figure": 1.0})
    before = path.read_bytes()
    script = textwrap.dedent(
        f"""
        import errno, importlib.util, resource, signal, sys
        spec = importlib.util.spec_from_file_location("harness", {str(BENCHMARKS / "harness.py")!r})
        harness = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(harness)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            harness.write({str(path)!r}, {{"figures": list(range(10_000))}})
        except OSError as exc:
            sys.exit(3 if exc.errno == errno.EFBIG else 4)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # the half-written temporary file is gone


def test_out_path_never_puts_a_quick_run_over_the_results(tmp_path):
    parser = harness.parser("A benchmark.\n\nMore.")
    assert harness.out_path("x", parser.parse_args([])) == harness.RESULTS / "x.json"
    quick = harness.out_path("x", parser.parse_args(["--quick"]))
    assert quick.name == "x.json" and harness.RESULTS not in quick.parents
    out = tmp_path / "y.json"
    assert harness.out_path("x", parser.parse_args(["--quick", "--out", str(out)])) == out


def test_interleaved_with_a_generator_runs_every_variant_once_per_round():
    calls: list[str] = []
    variants = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("a", "b", "c")}
    out = harness.interleaved(variants, rounds=4, rng=np.random.default_rng(0))
    assert [sorted(calls[i : i + 3]) for i in range(0, 12, 3)] == [["a", "b", "c"]] * 4
    assert {name: len(v) for name, v in out.items()} == {"a": 4, "b": 4, "c": 4}
    assert sorted(x for v in out.values() for x in v) == list(range(1, 13))


def test_every_benchmark_writes_through_the_harness():
    # modules the scripts import, not benchmarks of their own
    helpers = {"harness.py", "fused_floor.py", "fused_compiled.py"}
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if p.name not in helpers)
    assert len(scripts) >= 12
    for script in scripts:
        source = script.read_text()
        assert "import harness" in source and "harness.write(" in source and "harness.machine()" in source, script
        assert "harness.parser(" in source and "harness.out_path(" in source, script
        for private in ("write_text(", "write_atomic(", "json.dump(", "argparse", "platform."):
            assert private not in source, (script.name, private)


def test_every_machine_record_in_the_results_has_the_one_shape():
    def records(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "machine":
                    yield value
                else:
                    yield from records(value)
        elif isinstance(node, list):
            for value in node:
                yield from records(value)

    seen = 0
    for path in sorted((BENCHMARKS / "results").glob("*.json")):
        for record in records(json.loads(path.read_text())):
            assert isinstance(record, dict) and tuple(record) == harness.MACHINE_FIELDS, path.name
            assert isinstance(record["packages"], dict), path.name
            seen += 1
    assert seen >= 5  # guard_overhead, quantilizer, scope, shield and its cheetah runs


def test_the_greenberg_mannor_pendulum_agent_ships_without_pickle_and_balances():
    """The benchmark's Pendulum agent: JSON + safetensors (hash checked on load), the command that made it recorded,
    and a policy that swings up and balances (a random policy scores about -1,200; it recorded about -157)."""
    import gymnasium as gym

    from mesaguard.policies import load_policy

    agent = load_policy(BENCHMARKS / "agents" / "pendulum")
    assert agent.metadata["command"] == "python benchmarks/agents/pendulum_ppo.py"
    assert agent.metadata["evaluation_mean_return_100"] > -300
    env = gym.make("Pendulum-v1")
    returns = []
    for seed in range(3):
        obs, _ = env.reset(seed=20_000 + seed)
        total, done = 0.0, False
        while not done:
            action = agent(obs)
            assert env.action_space.contains(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    assert np.mean(returns) > -500  # about -157 on average; the worst start of a good agent stays above -500


def test_the_default_set_is_compared_with_the_papers_best_test_on_the_same_episodes(monkeypatch):
    """greenberg_mannor.against_paper: discordant pairs and the exact two-sided McNemar p-value, by hand."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import greenberg_mannor

    fired = {
        "joint: cusum+meanshift+rank": np.array([True] * 8 + [False] * 2),
        "paper Mean": np.array([True] * 5 + [False] * 5),
        "paper Hotelling": np.array([True] * 10),  # the paper's best: 10 of 10
    }
    pair = greenberg_mannor.against_paper(fired, "joint: cusum+meanshift+rank")
    assert pair["paper"] == "paper Hotelling"
    assert (pair["only_default"], pair["only_paper"]) == (0, 2)
    assert pair["mcnemar_p"] == pytest.approx(0.5)  # 2 * P(Bin(2, 1/2) <= 0)
    fired["paper Hotelling"] = np.array([False] * 7 + [True] * 3)  # now Mean (5) is the paper's best
    pair = greenberg_mannor.against_paper(fired, "joint: cusum+meanshift+rank")
    assert (pair["paper"], pair["only_default"], pair["only_paper"]) == ("paper Mean", 3, 0)
    assert pair["mcnemar_p"] == pytest.approx(0.25)  # 2 * P(Bin(3, 1/2) <= 0)


def test_the_timing_references_compute_the_guards_statistics_step_for_step(monkeypatch):
    """guard_overhead's references that are not mesaguard (the inlined floor, the compiled step) are only
    references if they do the guard's arithmetic: ``references`` raises at the first step where their statistics
    differ from GuardedEnv's. Rewards whose spread falls a hundredfold mid-episode, and a drop in later episodes,
    so that every statistic moves and the alarm fires; episodes long enough for CUSUM's blocks (3 steps)."""
    from mesaguard.calibration import Calibration

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    overhead = importlib.import_module("guard_overhead")
    compiled = importlib.import_module("fused_compiled")
    rng = np.random.default_rng(0)
    T = 240
    spread = np.where(np.arange(T) < T // 2, 1.0, 0.01)
    cal = Calibration.fit([1.0 + spread * rng.normal(size=T) for _ in range(120)], alpha=0.1)
    assert cal.detectors["cusum"].params["block"] == 3
    drop = np.repeat([0.0, 0.0, 0.0, 0.5, 0.05, 0.0], T)  # whole episodes shifted: one large, one small
    rewards = (1.0 - drop + np.tile(spread, drop.size // T) * rng.normal(size=drop.size)).tolist()
    refs = overhead.references(lambda: overhead.NullEnv(rewards, episode_length=T), cal, np.zeros(len(rewards), int))
    assert overhead.FLOOR in refs
    assert overhead.COMPILED in refs or compiled.build() is None  # left out only where nothing can compile it

