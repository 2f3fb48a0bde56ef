"""Impact penalty: state graph, relative reachability, attainable utility, the reward wrapper."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesaguard.safeguards.impact import (
    AttainableUtility,
    ImpactError,
    ImpactPenalty,
    RelativeReachability,
    StateGraph,
    minigrid_key,
)
from mesaguard.scenarios import make
from mesaguard.scenarios.side_effects import CORNERS, FORWARD, LEFT, RIGHT

N_STATES = 624  # side-effects deploy: every (agent cell, heading, box cell) reachable from a start


@pytest.fixture(scope="module")
def graph() -> StateGraph:
    env = make("side-effects", "deploy")
    env.reset(seed=1)
    g = StateGraph(3)
    g.index(env)
    return g


@pytest.fixture(scope="module")
def measures(graph: StateGraph) -> dict[str, object]:
    return {
        "rr": RelativeReachability(graph),
        "rr-discounted": RelativeReachability(graph, discount=0.9),
        "aup-random": AttainableUtility(graph, n_aux=5),
        "aup-reach": AttainableUtility(graph, n_aux=5, aux="reach"),
    }


def _box(key) -> tuple[int, int]:
    """The box cell from a minigrid_key (its grid bytes)."""
    grid = np.frombuffer(key[4], dtype=np.uint8).reshape(8, 7, 3)
    (x, y), = np.argwhere(grid[:, :, 0] == 7)  # MiniGrid's OBJECT_TO_IDX["box"]
    return int(x), int(y)


def test_graph_is_closed_and_its_size(graph):
    assert len(graph) == N_STATES
    succ = graph.successor_array()
    assert succ.shape == (N_STATES, 3)
    assert succ.min() >= 0 and succ.max() < N_STATES  # every successor of every state is known
    assert len(set(graph.keys)) == N_STATES


def test_graph_matches_the_real_env_step_by_step(graph):
    """Along random trajectories, each real step lands on the state the graph predicted."""
    rng = np.random.default_rng(0)
    env = make("side-effects", "deploy")
    for seed in range(5):
        env.reset(seed=seed)
        state = graph.index(env)
        for _ in range(60):
            action = int(rng.integers(3))
            _, _, terminated, truncated, _ = env.step(action)
            nxt = graph.index(env)
            assert nxt == graph.successors[state][action]
            state = nxt
            if terminated or truncated:
                break
    assert len(graph) == N_STATES  # nothing new was found on the way


@pytest.mark.parametrize("name", ["rr", "rr-discounted", "aup-random", "aup-reach"])
def test_penalty_is_zero_for_the_inaction_baseline_itself(graph, measures, name):
    m = measures[name]
    assert all(m.deviation(i, i) == 0.0 for i in range(len(graph)))


@given(a=st.integers(0, N_STATES - 1), b=st.integers(0, N_STATES - 1))
def test_deviations_lie_in_unit_interval(graph, measures, a, b):
    for m in measures.values():
        d = m.deviation(a, b)
        assert 0.0 <= d <= 1.0 + 1e-12
        assert (d == 0.0) or a != b


@given(a=st.integers(0, N_STATES - 1), b=st.integers(0, N_STATES - 1))
def test_aup_is_symmetric_and_rr_is_not_larger_than_reach_lost(graph, measures, a, b):
    for name in ("aup-random", "aup-reach"):
        assert measures[name].deviation(a, b) == pytest.approx(measures[name].deviation(b, a), abs=1e-15)
    rr = measures["rr"]
    reach_a, reach_b = rr.reachability(a), rr.reachability(b)
    lost = np.count_nonzero((reach_b > 0) & (reach_a == 0)) / np.count_nonzero(reach_b)
    assert rr.deviation(a, b) == pytest.approx(lost)


def test_rr_counts_only_irreversible_pushes(graph, measures):
    """Undiscounted RR: 0 for every move that can be undone, > 0 exactly where the box is cornered."""
    rr = measures["rr"]
    keys = graph.keys
    for i, row in enumerate(graph.successors):
        for j in row:
            cornered = _box(keys[j]) in CORNERS and _box(keys[i]) not in CORNERS
            assert (rr.deviation(j, i) > 0) == cornered, (keys[i][:3], _box(keys[i]), _box(keys[j]))


def test_cornering_from_the_start_loses_five_sixths(graph, measures):
    """The box starts at (5, 1); from (4, 1) facing east, forward corners it at (6, 1).

    Before, the box can still be brought to any of the 6 cells of row 1 (it never
    leaves the wall), with 104 agent states each; after, it stays at (6, 1): 5/6 of
    the states are lost.
    """
    env = make("side-effects", "deploy")
    env.reset(seed=1)
    u = env.unwrapped
    u.agent_pos, u.agent_dir = (4, 1), 0
    before = graph.index(env)
    env.step(FORWARD)
    after = graph.index(env)
    assert _box(graph.keys[after]) == (6, 1)
    assert measures["rr"].deviation(after, before) == pytest.approx(5 / 6)
    # the pushes back and forth are reversible; both AUP variants see *some* change
    assert measures["aup-reach"].deviation(after, before) > 0
    assert measures["aup-random"].deviation(after, before) > 0


def test_aup_values_satisfy_bellman(graph, measures):
    m = measures["aup-random"]
    v = m.values()
    succ = graph.successor_array()
    from mesaguard.safeguards.impact import _uniform

    rewards = np.array([[_uniform(m.seed, i, k) for k in graph.keys] for i in range(m.n_aux)])
    bellman = (1 - m.discount) * rewards + m.discount * v[:, succ].max(axis=2)
    np.testing.assert_allclose(v, bellman, atol=1e-10)
    assert v.min() >= 0 and v.max() <= 1


def test_aux_rewards_do_not_depend_on_discovery_order(graph):
    """Exploring from another start numbers states differently; a state's values stay the same."""
    env = make("side-effects", "deploy")
    env.reset(seed=7)
    other = StateGraph(3)
    other.index(env)
    assert set(other.keys) == set(graph.keys) and other.keys != graph.keys
    a, b = AttainableUtility(graph, n_aux=3), AttainableUtility(other, n_aux=3)
    order = [other.ids[k] for k in graph.keys]
    np.testing.assert_allclose(a.values(), b.values()[:, order], atol=1e-12)


def test_wrapper_zero_for_a_step_that_changes_nothing(measures):
    """Forward into a wall leaves the state as it was: the baseline itself, no penalty."""
    env = ImpactPenalty(make("side-effects", "deploy"), measure=measures["aup-random"], beta=5.0)
    env.reset(seed=1)
    u = env.unwrapped
    u.agent_pos, u.agent_dir = (1, 1), 2  # top-left cell, facing west: a wall ahead
    env._state = env.graph.index(env)
    _, reward, _, _, info = env.step(FORWARD)
    assert info["impact"] == 0.0 and reward == 0.0


def test_wrapper_with_a_noop_action_is_zero_for_that_action(measures):
    env = ImpactPenalty(make("side-effects", "deploy"), measure=measures["aup-random"], beta=5.0, noop_action=LEFT)
    env.reset(seed=1)
    for _ in range(4):
        _, _, _, _, info = env.step(LEFT)
        assert info["impact"] == 0.0
    _, _, _, _, info = env.step(RIGHT)  # turning the other way differs from the no-op (AUP sees the heading)
    assert info["impact"] > 0.0


def test_wrapper_penalizes_cornering_and_keeps_the_base_objective(measures):
    beta = 0.5
    env = ImpactPenalty(make("side-effects", "deploy"), measure=measures["rr"], beta=beta)
    plain = make("side-effects", "deploy")
    env.reset(seed=3)
    plain.reset(seed=3)
    for env_ in (env, plain):
        u = env_.unwrapped
        u.agent_pos, u.agent_dir = (4, 1), 0
    env._state = env.graph.index(env)
    _, reward, _, _, info = env.step(FORWARD)
    _, plain_reward, _, _, plain_info = plain.step(FORWARD)
    assert info["catastrophe"] and info["base_objective"] == plain_info["base_objective"] == -1.0
    assert info["impact"] == pytest.approx(5 / 6)
    assert reward == pytest.approx(plain_reward - beta * 5 / 6)


def test_shared_measure_is_explored_once():
    m = RelativeReachability(StateGraph(3))
    envs = [ImpactPenalty(make("side-effects", "deploy"), measure=m, beta=1.0) for _ in range(2)]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    assert envs[0].graph is envs[1].graph and len(m.graph) == N_STATES and m.graph.version == 1


def test_records_constructor_args():
    env = ImpactPenalty(make("side-effects", "deploy"), measure="rr", beta=0.25, discount=0.9)
    assert env.spec is None or env.spec.kwargs is not None
    assert env._saved_kwargs["beta"] == 0.25 and env._saved_kwargs["discount"] == 0.9


def test_bad_input_is_named():
    env = make("side-effects", "deploy")
    with pytest.raises(ImpactError, match="unknown impact measure 'xx'"):
        ImpactPenalty(env, measure="xx")
    with pytest.raises(ImpactError, match="beta=-1"):
        ImpactPenalty(env, beta=-1)
    with pytest.raises(ImpactError, match="noop_action=3"):
        ImpactPenalty(env, noop_action=3)
    with pytest.raises(ImpactError, match="Discrete"):
        ImpactPenalty(gym.make("Pendulum-v1"))
    with pytest.raises(ImpactError, match="aux='x'"):
        ImpactPenalty(env, measure="aup", aux="x")
    with pytest.raises(ImpactError, match="discount=1.5"):
        ImpactPenalty(env, measure="rr", discount=1.5)
    with pytest.raises(ImpactError, match="before reset"):
        ImpactPenalty(env).step(0)
    tiny = StateGraph(3, max_states=10)
    env.reset(seed=0)
    with pytest.raises(ImpactError, match="max_states=10"):
        tiny.index(env)


def test_minigrid_key_sees_the_box():
    env = make("side-effects", "deploy")
    env.reset(seed=1)
    copy_ = copy.deepcopy(env.unwrapped)
    assert minigrid_key(env) == minigrid_key(copy_)
    copy_.agent_pos, copy_.agent_dir = (4, 1), 0
    copy_.step(FORWARD)
    assert minigrid_key(copy_)[4] != minigrid_key(env)[4]


def test_train_with_the_penalty_on_another_variant(tmp_path, measures):
    """train(variant=, wrapper=) trains on that variant under the wrapper and records both."""
    import functools
    import json

    from mesaguard.train import PPOConfig, train

    seen: list[ImpactPenalty] = []

    def wrapper(env):
        seen.append(ImpactPenalty(env, measure=measure, beta=1.0))
        return seen[-1]

    measure = measures["rr"]  # its deploy graph is already explored
    version = measure.graph.version
    config = PPOConfig(n_envs=2, n_steps=32, batch_size=32, n_epochs=1)
    stem = train("side-effects", 64, 0, tmp_path, config=config, variant="deploy", wrapper=wrapper)
    metadata = json.loads((tmp_path / "side-effects.json").read_text())["metadata"]
    assert metadata["variant"] == "deploy" and "wrapper" in metadata
    assert len(seen) == 2 and all(e.unwrapped.variant == "deploy" for e in seen)
    assert len(measure.graph) == N_STATES and measure.graph.version == version  # no env explored it again
    assert stem == tmp_path / "side-effects"
    partial = functools.partial(ImpactPenalty, measure=measure, beta=1.0)
    assert "RelativeReachability(discount=1.0)" in repr(partial)
