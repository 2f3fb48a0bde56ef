"""The monitor's compiled twins (mesaguard.monitor.compiled) against its Python classes: the same numbers, bit for bit.

The compiled episode, ledger and uniforms claim the Python ones' values in Python's floating point, so these tests
compare with ``==``, never with a tolerance: the ledger after any sequence of bets and levels, in every mode, and
whole monitors fed the same deployment.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import ndtri

from mesaguard.calibration import Calibration
from mesaguard.monitor import DeploymentMonitor
from mesaguard.monitor.compiled import OFF, built, twins
from mesaguard.monitor.episodes import Episode
from mesaguard.monitor.evidence import SHIFTS
from mesaguard.monitor.ledger import Ledger
from mesaguard.monitor.stops import CROSSED

BUILT = built()
compiled_only = pytest.mark.skipif(not BUILT, reason="mesaguard.monitor._compiled is not built here (see below)")
if BUILT:
    from mesaguard.monitor import _compiled


def test_the_compiled_monitor_data_is_built_here() -> None:
    # Built by `pip install -e .` (Cython and a C compiler); where it is not, the monitor runs in Python, slower.
    assert BUILT, "mesaguard.monitor._compiled is not built: install with a C compiler (make venv)"


def test_the_python_classes_serve_where_it_is_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OFF, "1")
    assert twins() == (Episode, Ledger)
    cal = Calibration.fit([np.full(5, 1.0) + 0.1 * k for k in range(40)], alpha=0.1, detectors=["cusum"])
    monitor = DeploymentMonitor(cal)
    monitor.start()
    assert type(monitor.ledger) is Ledger and type(monitor._episodes.running[0]) is Episode


LEDGER = ("log_wealth", "_base", "log_evidence", "bag", "episodes", "last_bet", "first", "_seen", "_losing")


def ledger_state(book: object) -> tuple:
    return tuple(getattr(book, name) for name in LEDGER)


values = st.one_of(st.floats(-6, 6, allow_nan=False), st.sampled_from([CROSSED, 0.0, 1.0]))
episodes = st.tuples(values, st.floats(0, 1, exclude_max=True), st.booleans(), st.booleans(), st.integers(0, 2))
# an operation: ("commit", value, u, censored, counts) | ("level", [(value, u, steps)...]) | ("clear",)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), episodes),
        st.tuples(st.just("level"), st.lists(st.tuples(values, st.floats(0, 1, exclude_max=True),
                                                       st.integers(0, 3)), min_size=1, max_size=3)),
        st.tuples(st.just("clear"), st.just(None)),
    ),
    max_size=40,
)


@compiled_only
@pytest.mark.parametrize("mode,horizon,threshold", [("anytime", None, math.log(20.0)), ("fixed", 5, math.log(8.0)),
                                                    ("change", None, math.log(50.0))])
@settings(max_examples=60, deadline=None)
@given(reference=st.lists(values, min_size=1, max_size=30), ops=operations,
       shifts=st.sampled_from([SHIFTS, (0.5,), (0.2, 3.0)]))
def test_the_compiled_ledger_equals_the_python_ledger(mode, horizon, threshold, reference, ops, shifts) -> None:
    python = Ledger(mode, np.array(shifts), threshold, horizon, reference)
    compiled = _compiled.Ledger(mode, np.array(shifts), threshold, horizon, reference)
    assert ledger_state(compiled) == ledger_state(python)
    next_id = 0
    for op, arg in ops:
        if op == "commit":
            value, u, censored, counts, steps = arg
            made = [kind(next_id, u=u, value=value, steps=steps + 1, done=True, censored=censored, counts=counts)
                    for kind in (Episode, _compiled.Episode)]
            next_id += 1
            assert compiled.commit(made[1]) == python.commit(made[0])
        elif op == "level":
            pending = [[kind(next_id + j, u=u, value=value, steps=steps) for j, (value, u, steps) in enumerate(arg)]
                       for kind in (Episode, _compiled.Episode)]
            for _ in range(2):  # the second: from the cache where one episode is pending
                assert compiled.level(pending[1], next_id + len(arg)) == python.level(pending[0], next_id + len(arg))
            assert compiled._level(pending[1], next_id + len(arg)) == python._level(pending[0], next_id + len(arg))
        else:
            compiled.new_test(next_id)
            python.new_test(next_id)
        assert ledger_state(compiled) == ledger_state(python)
    twin = pickle.loads(pickle.dumps(compiled))
    assert ledger_state(twin)[:-2] == ledger_state(compiled)[:-2]  # the cache is not carried


@compiled_only
def test_a_compiled_episode_is_a_python_episode() -> None:
    for fields in [dict(), dict(u=0.25, value=1.5, steps=3, done=True), dict(value=CROSSED, done=True, censored=True),
                   dict(value=2.0, done=True, censored=True), dict(value=2.0, counts=False)]:
        python, compiled = Episode(7, **fields), _compiled.Episode(7, **fields)
        assert repr(compiled) == repr(python)
        assert compiled.in_bag == python.in_bag
        assert compiled == pickle.loads(pickle.dumps(compiled)) == copy.deepcopy(compiled)
        assert compiled != _compiled.Episode(8, **fields)


@compiled_only
def test_the_normal_scores_are_scipys_bit_for_bit() -> None:
    p = np.concatenate([[1e-300, 1e-200, 1e-17, 1 - 1e-16, 0.5], np.random.default_rng(0).random(20_000),
                        np.logspace(-300, -1, 2_000)])
    mine = [_compiled.Ledger("anytime", np.array([1.0]), 3.0, None, [0.0])._after([0.0], float(x))[0] for x in p]
    assert mine == (-ndtri(p)).tolist()


@compiled_only
def test_the_uniforms_are_the_generators_draws() -> None:
    python, compiled = np.random.default_rng(3), np.random.default_rng(3)
    draws = _compiled.Uniforms(compiled)
    assert [draws.random() for _ in range(1000)] == [python.random() for _ in range(1000)]
    assert compiled.random() == python.random()  # the same state, advanced the same way


def feed(monitor: DeploymentMonitor, rng: np.random.Generator, n: int) -> list:
    """A vector deployment: staggered 20-step episodes, a few cut short (censored), a drop from half way on; the
    evidence after every step, the alarms and the ledger at the end."""
    out = []
    age = np.arange(monitor.n_envs) * 5  # steps into each env's episode
    for k in range(n):
        drop = 1.0 if k > n // 2 else 0.0
        out.append(monitor.update(rng.normal(1.0 - drop, 0.5, monitor.n_envs)))
        age += 1
        cut = rng.random(monitor.n_envs) < 0.005
        ending = (age >= 20) | cut
        if ending.any():
            monitor.finish(ending, censored=cut)
            monitor.start(ending)
            age[ending] = 0
        if monitor.alarm:
            out.append((monitor.alarm_episode, monitor.alarm_steps))
            monitor.clear()
    return out + [monitor.ledger.bag, monitor.ledger.log_wealth, monitor.finished, monitor.steps]


@compiled_only
@pytest.mark.parametrize("mode", [dict(), dict(horizon=100), dict(mode="change", arl=200.0)], ids=str)
def test_a_monitor_of_compiled_twins_equals_a_python_monitor(mode: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.0, 0.5, 20) for _ in range(200)], alpha=0.1, detectors=["cusum"])
    runs = []
    for off in ("0", "1"):
        monkeypatch.setenv(OFF, off)
        monitor = DeploymentMonitor(cal, n_envs=4, seed=1, **mode)
        monitor.start()
        runs.append(feed(monitor, np.random.default_rng(2), 600))
    assert runs[0] == runs[1]


@pytest.mark.parametrize("copy_of", [lambda m: pickle.loads(pickle.dumps(m)), copy.deepcopy], ids=["pickle", "copy"])
def test_a_monitor_pickles_and_copies_mid_deployment(copy_of) -> None:
    """Its counters (C fields where compiled), its episodes and ledger travel: the copy goes on as the original."""
    rng = np.random.default_rng(0)
    cal = Calibration.fit([rng.normal(1.0, 0.5, 20) for _ in range(200)], alpha=0.1, detectors=["cusum"])
    monitor = DeploymentMonitor(cal, n_envs=2, seed=1)
    monitor.start()
    feed(monitor, np.random.default_rng(2), 300)
    twin = copy_of(monitor)
    assert (twin.steps, twin.finished, twin.log_evidence, twin.alarm) == (monitor.steps, monitor.finished,
                                                                           monitor.log_evidence, monitor.alarm)
    assert feed(twin, np.random.default_rng(3), 300) == feed(monitor, np.random.default_rng(3), 300)


WITHOUT_EXTENSIONS = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):  # as if installed without a C compiler: no extension imports
    def find_spec(self, name, path, target=None):
        if name.endswith(("._compiled", "._step")) and name.startswith("mesaguard."):
            raise ImportError(name)
if sys.argv[1] == "blocked":
    sys.meta_path.insert(0, Block())
import gymnasium as gym
import numpy as np
from mesaguard.calibration import Calibration
from mesaguard.guard import GuardedEnv
from mesaguard.guard.compiled import available
from mesaguard.monitor import DeploymentMonitor
from mesaguard.monitor.compiled import built
from mesaguard.protocols import Alert
rng = np.random.default_rng(0)
cal = Calibration.fit([rng.normal(1.1, 0.2, int(rng.integers(10, 60))) for _ in range(200)], alpha=0.2)
monitor = DeploymentMonitor(cal, alpha=0.2)
env = GuardedEnv(gym.make("CartPole-v1"), cal, protocol=Alert(lambda alarm: None), monitor=monitor)
reports = []
for episode in range(20):
    env.reset(seed=episode)
    done = False
    while not done:
        *_, terminated, truncated, info = env.step(episode % 2)
        reports.append(info["mesaguard"])
        done = terminated or truncated
print(json.dumps([available(), built(), env._plain is not None, reports]))
"""


def test_without_the_extensions_the_python_guard_and_monitor_serve_the_same() -> None:
    """The install without a C compiler, simulated by refusing the extensions' imports in a fresh interpreter: the
    Python guard and monitor run, and every report of a monitored deployment is the compiled one's."""

    def run(mode: str) -> list:
        out = subprocess.run([sys.executable, "-c", WITHOUT_EXTENSIONS, mode], capture_output=True, text=True,
                             check=True)
        return json.loads(out.stdout)

    blocked, free = run("blocked"), run("free")
    assert blocked[:3] == [False, False, False]
    assert free[:3] == [BUILT, BUILT, BUILT]
    assert blocked[3] == free[3] and len(blocked[3]) > 20
