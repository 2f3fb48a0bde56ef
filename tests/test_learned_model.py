"""The learned world model: its file format (no pickle, crafted files refused), its harms, and no oracle leaks."""

from __future__ import annotations

import json
import pickle
import shlex
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import safetensors.numpy
import torch

from mesaguard.artifacts import write_sidecar
from mesaguard.safeguards.learned import (
    KIND,
    LearnedModel,
    LearnedModelError,
    load_learned,
    shipped_models,
)
from mesaguard.safeguards.learned_file import load_learned_file, save_learned
from mesaguard.safeguards.learned_fit import FitConfig, fit
from mesaguard.safeguards.learned_fit import main as fit_main
from mesaguard.safeguards.models import WorldModel
from mesaguard.safeguards.shield import INFO_KEY, Shield
from mesaguard.scenarios import get, make

TINY = FitConfig(episodes=6, held_out=40, steps=30, hidden=(8,), members=3, components=16)


@pytest.fixture(scope="module")
def tiny() -> LearnedModel:
    """A small lava model: seconds to fit, every part of a real one."""
    return fit("lava", seed=3, config=TINY)


@pytest.fixture
def saved(tiny: LearnedModel, tmp_path: Path) -> Path:
    return save_learned(tiny, tmp_path / "lava")


def test_a_learned_model_is_a_non_oracle_world_model(tiny):
    assert isinstance(tiny, WorldModel) and not tiny.oracle


def test_round_trip_without_pickle(tiny, saved, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("unpickling is not allowed")

    for module, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    loaded = load_learned_file(saved)
    assert sorted(loaded.arrays) == sorted(tiny.arrays)
    for name, array in tiny.arrays.items():
        assert np.array_equal(loaded.arrays[name], array), name
    obs, _ = make("lava", "deploy").reset(seed=1)
    a, b = tiny.assess(np.stack([obs, obs]), [0, 2]), loaded.assess(np.stack([obs, obs]), [0, 2])
    assert np.array_equal(a.members, b.members) and np.array_equal(a.scope, b.scope)
    assert (loaded.disagreement_threshold, loaded.scope_threshold) == (tiny.disagreement_threshold,
                                                                       tiny.scope_threshold)
    assert loaded.metadata["command"] == tiny.metadata["command"]


def _rewrite(saved: Path, body_change=None, arrays_change=None) -> None:
    """Change the JSON body and/or the arrays of a saved model, then seal it again (hashes made to match)."""
    json_path = saved.parent / f"{saved.name}.json"
    data = json.loads(json_path.read_text())
    if arrays_change is not None:
        arrays = safetensors.numpy.load((saved.parent / f"{saved.name}.safetensors").read_bytes())
        arrays_change(arrays)
        data["arrays"] = write_sidecar(saved.parent / f"{saved.name}.safetensors", arrays)
    if body_change is not None:
        body_change(data)
    body = {k: v for k, v in data.items() if k not in ("format", "schema_version", "content_hash", "signature")}
    json_path.write_text(json.dumps(KIND.seal(body)))


def _nan(arrays):
    arrays["w0"][0, 0, 0] = np.nan


def _shape(arrays):
    arrays["w1"] = arrays["w1"][:, :-1]


def _extra(arrays):
    arrays["extra"] = np.zeros(3, dtype=np.float32)


def _float64(arrays):
    arrays["b0"] = arrays["b0"].astype(np.float64)


def _scale(arrays):
    arrays["in_scale"][0] = 0.0


@pytest.mark.parametrize("change, field, words", [
    (_nan, "arrays.file", "w0 holds NaN"),
    (_shape, "arrays.file", "w1 is float32"),
    (_extra, "arrays.file", "extra is not part of it"),
    (_float64, "arrays.file", "b0 is float64"),
    (_scale, "arrays.file", "positive in_scale"),
])
def test_crafted_arrays_are_errors_naming_file_and_field(saved, change, field, words):
    _rewrite(saved, arrays_change=change)
    with pytest.raises(LearnedModelError, match="lava.json") as err:
        load_learned_file(saved)
    assert f"field {field}" in str(err.value) and words in str(err.value)


def _set(path: str, value):
    def change(data):
        *parents, last = path.split(".")
        for p in parents:
            data = data[p]
        data[last] = value
    return change


@pytest.mark.parametrize("path, value, field", [
    ("members", 0, "members"),
    ("hidden", [8, "x"], "hidden[1]"),
    ("activation", "Sigmoid", "activation"),
    ("harm.catastrophe_probability", 1.5, "harm.catastrophe_probability"),
    ("harm.scope_threshold", -1.0, "harm.scope_threshold"),
    ("scope_residual", 0.0, "scope_residual"),
    ("scope_components", 10**6, "scope_components"),
    ("observation_space.type", "Dict", "observation_space.type"),
])
def test_crafted_fields_are_errors_naming_file_and_field(saved, path, value, field):
    _rewrite(saved, body_change=_set(path, value))
    with pytest.raises(LearnedModelError, match=f"lava.json: field {field.replace('[', '.').replace(']', '')}|"
                                                f"lava.json: field {field}"):
        load_learned_file(saved)


def test_a_changed_members_count_does_not_match_the_arrays(saved):
    _rewrite(saved, body_change=_set("members", 4))
    with pytest.raises(LearnedModelError, match=r"field arrays.file .*w0 is float32 \[3, "):
        load_learned_file(saved)


def test_bad_hashes_and_schemas_are_errors(saved):
    sidecar = saved.parent / f"{saved.name}.safetensors"
    json_path = saved.parent / f"{saved.name}.json"
    good_json, good_arrays = json_path.read_text(), sidecar.read_bytes()
    sidecar.write_bytes(good_arrays[:-4] + b"\0\0\0\0")
    with pytest.raises(LearnedModelError, match="corrupt or belongs to another file.*field arrays.hash"):
        load_learned_file(saved)
    sidecar.write_bytes(good_arrays)
    data = json.loads(good_json)
    json_path.write_text(json.dumps({**data, "scope_residual": 2.0}))
    with pytest.raises(LearnedModelError, match="corrupt: its content hash does not match.*field content_hash"):
        load_learned_file(saved)
    json_path.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(LearnedModelError, match="schema version 99; this mesaguard reads version 1"):
        load_learned_file(saved)
    json_path.write_text(json.dumps({**data, "format": "mesaguard-policy"}))
    with pytest.raises(LearnedModelError, match="not a mesaguard learned model file"):
        load_learned_file(saved)
    sidecar.unlink()
    json_path.write_text(good_json)
    with pytest.raises(LearnedModelError, match="arrays file .* is missing"):
        load_learned_file(saved)


def test_the_batched_predictor(tiny):
    env = make("lava", "train")
    obs = np.stack([env.reset(seed=s)[0] for s in range(4)])
    actions = np.array([0, 1, 2, 2])
    members = tiny.predict_members(obs, actions)
    assert members.shape == (tiny.members, 4, obs.shape[1])
    assert np.allclose(tiny.predict(obs, actions), members.mean(axis=0))
    with pytest.raises(LearnedModelError, match="actions"):
        tiny.predict(obs, np.array([0, 1, 2, 3]))


def test_the_thresholds_are_the_conformal_rank_of_held_out_episode_maxima(tiny):
    data = tiny.metadata["data"]
    n, k = data["held_out_episodes"], data["threshold_rank"]
    assert k == int(np.ceil((n + 1) * (1 - tiny.alpha / 2) - 1e-12))
    from mesaguard.policies import load_agent
    from mesaguard.safeguards.learned_fit import HELD_SEED, collect

    held = collect("lava", "train", range(HELD_SEED, HELD_SEED + n), load_agent("lava"))
    p = tiny.assess(held.obs, held.action)
    for field, threshold in (("disagreement", tiny.disagreement_threshold), ("scope", tiny.scope_threshold)):
        maxima = np.array([getattr(p, field)[held.episode == i].max() for i in range(n)])
        assert (maxima > threshold).sum() == n - k or (maxima > threshold).sum() < n - k  # ties at the threshold
        assert (maxima >= threshold).sum() >= n - k + 1


def test_far_inputs_are_harm_out_of_scope_and_disagreement(tiny):
    obs, _ = make("lava", "train").reset(seed=0)
    far = np.full_like(obs, 1.0)  # every cell every object and colour at once: no room looks like that
    *_, info = tiny.fork(far, 0).step(2)
    assert info["catastrophe"] and info["model_harm"] in ("disagreement", "out_of_scope")
    *_, info = tiny.restricted(disagreement=False).fork(far, 0).step(2)
    assert info["catastrophe"] and info["model_harm"] == "out_of_scope" and info["scope"] > tiny.scope_threshold
    *_, info = tiny.restricted(scope=False).fork(50.0 * far, 0).step(2)
    assert info["catastrophe"] and info["model_harm"] == "disagreement", info
    *_, info = tiny.restricted(scope=False, disagreement=False).fork(obs, 0).step(0)
    assert info["model_harm"] in (None, "catastrophe")


class Sealed(gym.Wrapper):
    """The deployed env: one ``step`` per real step; a copy, an extra step or a look at its RNG raises."""

    def __init__(self, env):
        super().__init__(env)
        self.allowed = 0

    def __deepcopy__(self, memo):
        raise AssertionError("the real env was copied")

    @property
    def np_random(self):
        raise AssertionError("the real env's random state was read")

    def step(self, action):
        if self.allowed <= 0:
            raise AssertionError("the real env was stepped by a lookahead")
        self.allowed -= 1
        return self.env.step(action)


def test_a_learned_shield_never_copies_steps_or_reads_the_real_env():
    real = Sealed(make("lava", "deploy"))
    model = load_learned("lava")
    env = Shield(real, model=model, horizon=2, rollout=lambda obs: 2)
    agent = get("lava").misaligned(real.unwrapped)
    obs, _ = env.reset(seed=0)
    records = []
    for _ in range(5):
        real.allowed = 1
        obs, _, terminated, truncated, info = env.step(agent(obs))
        records.append(info[INFO_KEY])
        if terminated or truncated:
            break
    assert all(r["error"] is None for r in records) and env.lookaheads > 0
    # the deploy room is out of the reference data's scope: every action is harm as the model sees it
    assert records[0]["harm"] == "catastrophe" and records[0]["acting"] == "stop"


def test_a_model_that_returns_nan_makes_the_shield_fail_closed(tiny):
    arrays = dict(tiny.arrays)
    arrays["b0"] = np.full_like(arrays["b0"], np.nan)
    broken = LearnedModel(tiny.observation_space, tiny.action_space, arrays, scope_residual=tiny.scope_residual,
                          catastrophe_probability=0.5, disagreement_threshold=1.0, scope_threshold=1.0, alpha=0.05)
    real = Sealed(make("lava", "train"))
    env = Shield(real, model=broken)
    env.reset(seed=0)
    _, _, terminated, truncated, info = env.step(2)
    record = info[INFO_KEY]
    assert truncated and not terminated and record["acting"] == "stop" and "NaN" in record["error"]
    assert env.errors == 1


def test_a_fit_is_reproduced_bit_for_bit_from_its_recorded_command(tiny, saved, tmp_path):
    words = shlex.split(tiny.metadata["command"])
    assert words[:4] == ["python", "-m", "mesaguard.safeguards.learned", "train"]
    assert fit_main([*words[4:], "--out", str(tmp_path / "again")]) == 0
    again = tmp_path / "again" / "lava.safetensors"
    assert again.read_bytes() == (saved.parent / "lava.safetensors").read_bytes()


def test_an_unknown_scenario_names_the_shipped_models():
    with pytest.raises(LearnedModelError, match="no shipped learned model for scenario 'nope'; shipped: "):
        load_learned("nope")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", shipped_models())
def test_a_shipped_model_is_reproduced_from_its_recorded_command(scenario, tmp_path):
    model = load_learned(scenario)
    words = shlex.split(model.metadata["command"])
    assert fit_main([*words[4:], "--out", str(tmp_path)]) == 0
    again = load_learned_file(tmp_path / scenario)
    for name, array in model.arrays.items():
        assert np.array_equal(again.arrays[name], array), name
