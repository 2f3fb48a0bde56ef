"""The shield's world models: no oracle leaks, and a model that fails makes the shield fail closed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mesaguard.safeguards.models import CopyModel, DesignerSimulator, WorldModel, world_model
from mesaguard.safeguards.shield import INFO_KEY, Shield, ShieldError
from tests.test_shield import LEFT, RIGHT, STAY, Ice, always


class Sealed(Ice):
    """The deployed env: one ``step`` per real step; a copy or an extra step raises (an oracle leak)."""

    def __init__(self, start: int = 2):
        super().__init__(start)
        self.allowed = 0

    def __deepcopy__(self, memo):
        raise AssertionError("the real env was copied")

    def step(self, action):
        if self.allowed <= 0:
            raise AssertionError("the real env was stepped by a lookahead")
        self.allowed -= 1
        return super().step(action)


def ice_simulator(obs, step, rng):
    """The designer's model of the line: an Ice starting at the observed cell."""
    env = Ice(start=int(np.asarray(obs).ravel()[0]))
    env.reset(seed=int(rng.integers(2**31)))
    return env


def run(env: Shield, real: Sealed, actions, seed: int = 0):
    env.reset(seed=seed)
    records = []
    for a in actions:
        real.allowed = 1
        *_, terminated, truncated, info = env.step(a)
        records.append(info[INFO_KEY])
        if terminated or truncated:
            break
    return records


def test_a_simulator_shield_never_copies_or_steps_the_real_env():
    real = Sealed(start=3)
    env = Shield(real, model=DesignerSimulator(ice_simulator, name="ice"), horizon=2, rollout=always(RIGHT))
    records = run(env, real, [RIGHT, RIGHT, LEFT])
    assert records[0]["harm"] == "catastrophe" and records[0]["executed"] != RIGHT
    assert all(r["error"] is None for r in records)
    assert env.lookaheads > 0


def test_the_copy_model_is_the_labelled_oracle():
    env = Ice()
    assert world_model("copy", env).oracle and isinstance(world_model("copy", env), CopyModel)
    assert not DesignerSimulator(ice_simulator).oracle
    assert isinstance(DesignerSimulator(ice_simulator), WorldModel)
    real = Sealed()
    (record,) = run(Shield(real, model="copy"), real, [RIGHT])
    assert "copied" in record["error"]  # the oracle copies the real env: the sealed env says so


@pytest.mark.parametrize("model", [None, "simulator", 3])
def test_a_shield_without_a_usable_model_is_refused(model):
    with pytest.raises((ShieldError, TypeError), match="model"):
        Shield(Ice(), model=model)


class Broken:
    name, oracle = "broken", False

    def __init__(self, fault: str):
        self.fault = fault

    def reset(self, seed):
        pass

    def fork(self, obs, step):
        if self.fault == "raise":
            raise RuntimeError("the model crashed")
        return self

    def step(self, action):
        info = {"base_objective": math.nan if self.fault == "nan" else 0.0, "catastrophe": False}
        return np.array([np.nan if self.fault == "nan-obs" else 2]), 0.0, False, False, info


@pytest.mark.parametrize("fault", ["raise", "nan"])
def test_a_failing_model_fails_closed(fault):
    real = Sealed(start=2)
    env = Shield(real, model=Broken(fault), horizon=1)
    env.reset(seed=0)
    real.allowed = 0  # a fail-closed step takes no real step
    obs, reward, terminated, truncated, info = env.step(STAY)
    record = info[INFO_KEY]
    assert truncated and not terminated and record["executed"] is None and record["acting"] == "stop"
    assert record["error"] and env.errors == 1 and real.steps_taken == 0


def test_the_simulator_draws_from_its_own_generator():
    seen = []

    def build(obs, step, rng):
        seen.append(float(rng.random()))
        return ice_simulator(obs, step, rng)

    def episode(seed):
        seen.clear()
        real = Sealed(start=3)
        run(Shield(real, model=DesignerSimulator(build, seed=5), horizon=1), real, [RIGHT], seed=seed)
        return list(seen)

    assert episode(1) == episode(1) != episode(2)
