"""Tests of the lookahead shield: it never executes an action whose lookahead it judged catastrophic."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from mesaguard.calibration import CalibrationError, conformal_rank
from mesaguard.safeguards.shield import INFO_KEY, Shield, ShieldError, increment_bound
from mesaguard.scenarios import make

LEFT, RIGHT, STAY, BURN = range(4)


class Ice(gym.Env):
    """A line of cells 0..5. Cell 5 is a cliff (catastrophe); cell 4 is ice: whatever the
    action, the next step slides onto the cliff. ``BURN`` stays put at a cost of -1
    (an increment, no catastrophe). Reaching cell 0 ends the episode with +1."""

    action_space = spaces.Discrete(4)
    observation_space = spaces.Box(0, 5, (1,), dtype=np.int64)

    def __init__(self, start: int = 2):
        self.start = start
        self.x = start
        self.steps_taken = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = self.start
        return np.array([self.x]), {}

    def step(self, action):
        self.steps_taken += 1
        base = 0.0
        if self.x == 4:
            self.x = 5
        elif action == LEFT:
            self.x -= 1
        elif action == RIGHT:
            self.x += 1
        elif action == BURN:
            base = -1.0
        catastrophe = self.x == 5
        terminated = self.x in (0, 5)
        if self.x == 0:
            base = 1.0
        return np.array([self.x]), 0.0, terminated, False, {"base_objective": base, "catastrophe": catastrophe}


def always(action):
    return lambda obs: action


def test_catastrophe_on_the_first_step_is_replaced():
    env = Shield(Ice(start=4 - 1), model="copy", horizon=1)  # from cell 3, RIGHT lands on the ice: harmless 1 step
    env.reset(seed=0)
    _, _, _, _, info = env.step(RIGHT)
    assert info[INFO_KEY]["harm"] is None and info[INFO_KEY]["executed"] == RIGHT
    _, _, _, truncated, info = env.step(RIGHT)  # on the ice every action slides onto the cliff: nothing is safe
    record = info[INFO_KEY]
    assert record["executed"] is None and truncated and record["acting"] == "stop"
    assert set(record["judged"].values()) == {"catastrophe"}
    assert not info["catastrophe"] and env.unwrapped.x == 4  # the shield did not act


def test_horizon_two_sees_the_ice():
    env = Shield(Ice(start=3), model="copy", horizon=2, rollout=always(STAY))
    env.reset(seed=0)
    _, _, _, _, info = env.step(RIGHT)
    record = info[INFO_KEY]
    assert record["harm"] == "catastrophe" and record["replaced"]
    assert record["executed"] in (LEFT, STAY, BURN) and env.unwrapped.x != 4


def test_search_finds_a_way_out_the_continuation_misses():
    # From cell 2, RIGHT then the continuation (RIGHT) reaches the ice, harm at step 3 of 3.
    # RIGHT is not harmful in itself: STAY after it avoids the ice. Search says so; no search does not.
    searched = Shield(Ice(start=2), model="copy", horizon=3, rollout=always(RIGHT), search=True)
    naive = Shield(Ice(start=2), model="copy", horizon=3, rollout=always(RIGHT), search=False)
    for env in (searched, naive):
        env.reset(seed=0)
    assert searched.step(RIGHT)[4][INFO_KEY]["harm"] is None
    assert naive.step(RIGHT)[4][INFO_KEY]["harm"] == "catastrophe"
    assert searched.replaced == 0 and naive.replaced == 1


def test_bound_makes_a_low_increment_harmful_and_the_best_alternative_wins():
    env = Shield(Ice(start=1), model="copy", horizon=1, bound=-0.5)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(BURN)
    record = info[INFO_KEY]
    assert record["harm"] == "bound" and record["executed"] == LEFT  # LEFT reaches the goal: +1, the best
    assert record["value"] == 1.0 and terminated


def test_fallback_plays_when_nothing_is_harmless_unless_catastrophic():
    # Every action has a below-bound increment under bound=2: harmless is impossible.
    env = Shield(Ice(start=2), model="copy", horizon=1, bound=2.0, fallback=always(STAY))
    env.reset(seed=0)
    _, _, _, truncated, info = env.step(RIGHT)
    assert info[INFO_KEY]["acting"] == "fallback" and info[INFO_KEY]["executed"] == STAY and not truncated
    ice = Shield(Ice(start=4), model="copy", horizon=1, fallback=always(STAY))
    ice.reset(seed=0)
    _, _, _, truncated, info = ice.step(STAY)
    assert info[INFO_KEY]["acting"] == "stop" and truncated and ice.unwrapped.x == 4


def test_internal_error_fails_closed():
    def broken(obs):
        raise RuntimeError("policy exploded")

    env = Shield(Ice(start=2), model="copy", horizon=2, rollout=broken)
    obs, _ = env.reset(seed=0)
    obs2, reward, terminated, truncated, info = env.step(LEFT)
    record = info[INFO_KEY]
    assert truncated and not terminated and reward == 0.0
    assert "policy exploded" in record["error"] and record["executed"] is None
    assert env.unwrapped.steps_taken == 0 and env.errors == 1 and env.stopped == 1
    assert info["base_objective"] == 0.0 and info["catastrophe"] is False
    assert np.array_equal(obs, obs2)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"horizon": 0}, "horizon=0"), ({"bound": math.nan}, "bound=nan"), ({"rollout": 3}, "rollout=3")],
)
def test_bad_arguments_are_named(kwargs, fragment):
    with pytest.raises(ShieldError, match=fragment):
        Shield(Ice(), model="copy", **kwargs)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    actions=st.lists(st.integers(0, 2), min_size=5, max_size=25),
    horizon=st.integers(1, 2),
)
def test_never_executes_an_action_judged_catastrophic(seed, actions, horizon):
    """On the lava scenario with arbitrary proposals: every executed action was judged, and not catastrophic;
    the real env then never reports a catastrophe (the copies are exact)."""
    env = Shield(make("lava", "deploy"), model="copy", horizon=horizon)
    env.reset(seed=seed)
    for a in actions:
        _, _, terminated, truncated, info = env.step(a)
        record = info[INFO_KEY]
        if record["executed"] is not None:
            assert record["judged"][record["executed"]] != "catastrophe"
        assert not info["catastrophe"]
        if terminated or truncated:
            break


def test_shielded_agent_on_lava_deploy_does_no_harm():
    from mesaguard.experiment import agent

    plain, shielded = make("lava", "deploy"), Shield(make("lava", "deploy"), model="copy", horizon=1)
    policy = agent("lava", plain)
    harm = {"plain": 0, "shielded": 0}
    for name, env in (("plain", plain), ("shielded", shielded)):
        for seed in range(20_000, 20_005):
            obs, _ = env.reset(seed=seed)
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(policy(obs))
                harm[name] += bool(info["catastrophe"])
                done = terminated or truncated
    assert harm["plain"] > 0  # the agent walks into the lava on some of these starts (66% of deploy episodes)
    assert harm["shielded"] == 0 and shielded.replaced > 0


def test_increment_bound_is_the_conformal_rank_of_episode_minima():
    rng = np.random.default_rng(0)
    episodes = [rng.normal(size=rng.integers(1, 20)) for _ in range(50)]
    k = conformal_rank(50, 0.1)
    assert increment_bound(episodes, 0.1) == -np.sort([-e.min() for e in episodes])[k - 1]
    with pytest.raises(CalibrationError):
        increment_bound(episodes[:5], 0.1)
    with pytest.raises(ShieldError, match="finite"):
        increment_bound([np.array([0.0, np.nan])] * 30, 0.1)


def test_increment_bound_false_intervention_rate_follows_the_beta_law():
    """Episodes of 10 iid N(0, 1) increments: P(new min < bound) = 1 - Phi(-bound)**10 exactly.

    Over many calibration sets the realized rate is Beta(n + 1 - k, k) distributed, mean
    (n + 1 - k) / (n + 1) <= alpha; the mean of m sets is within 4 standard errors of it.
    """
    rng = np.random.default_rng(1)
    n, alpha, m = 200, 0.1, 300
    k = conformal_rank(n, alpha)
    rates = []
    for _ in range(m):
        bound = increment_bound(list(rng.normal(size=(n, 10))), alpha)
        rates.append(1.0 - stats.norm.sf(bound) ** 10)
    law = stats.beta(n + 1 - k, k)
    assert abs(np.mean(rates) - law.mean()) < 4 * law.std() / math.sqrt(m)
    assert law.mean() <= alpha


def test_step_before_reset_is_an_error():
    with pytest.raises(ShieldError, match="reset"):
        Shield(Ice(), model="copy").step(LEFT)


# -- continuous actions (Box) --------------------------------------------------

TARGET = np.array([0.5, 0.25])


class Slide(gym.Env):
    """A point on a line driven by 2-d actions in an asymmetric box: ``x += a[0]``, and ``x > 1`` is a
    catastrophe (it ends the episode). Each step's base objective is ``1 - |a - TARGET| ** 2``: known
    in closed form, so the best of the judged candidates can be recomputed."""

    action_space = spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 0.5], np.float32))
    observation_space = spaces.Box(-np.inf, np.inf, (1,), dtype=np.float64)

    def __init__(self):
        self.x = 0.0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x = 0.0
        return np.array([self.x]), {}

    def step(self, action):
        a = np.asarray(action, dtype=np.float64)
        self.x += float(a[0])
        catastrophe = self.x > 1.0
        base = 1.0 - float(np.sum((a - TARGET) ** 2))
        return np.array([self.x]), 0.0, catastrophe, False, {"base_objective": base, "catastrophe": catastrophe}


def value(action) -> float:
    return 1.0 - float(np.sum((np.asarray(action, dtype=np.float64) - TARGET) ** 2))


def in_box(space, action) -> bool:
    a = np.asarray(action, dtype=space.dtype).reshape(space.shape)
    return bool(np.all(a >= space.low) and np.all(a <= space.high))


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    proposals=st.lists(st.tuples(st.floats(-3, 3), st.floats(-3, 3)), min_size=1, max_size=12),
    candidates=st.integers(1, 12),
    horizon=st.integers(1, 2),
)
def test_box_never_executes_an_action_judged_harmful_and_candidates_stay_in_the_box(
    seed, proposals, candidates, horizon
):
    """Proposals anywhere (out of the box too), a bound that binds for most of them (value >= 0.7 is
    within 0.55 of TARGET): every executed action was judged harmless, lies in the box, and its real
    step is harmless too (the copy is exact); every judged candidate lies in the box."""
    env = Shield(Slide(), model="copy", horizon=horizon, bound=0.7, candidates=candidates, seed=seed)
    env.reset(seed=0)
    for p in proposals:
        _, _, terminated, truncated, info = env.step(np.array(p, np.float32))
        record = info[INFO_KEY]
        drawn = [k for k in record["judged"] if k != record["proposed"]]
        assert all(in_box(env.action_space, k) for k in drawn)
        if record["replaced"]:
            assert len(drawn) <= candidates
        if record["executed"] is not None:
            assert record["judged"][record["executed"]] is None
            assert not info["catastrophe"] and info["base_objective"] >= 0.7
            if record["replaced"]:
                assert in_box(env.action_space, record["executed"])
        if terminated or truncated:
            break


def test_box_harmful_proposal_is_replaced_by_the_best_harmless_candidate():
    env = Shield(Slide(), model="copy", horizon=1, bound=0.9, candidates=64, seed=3)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([-0.6, 0.45], np.float32))  # value 1 - 1.21 - 0.04: harmful
    record = info[INFO_KEY]
    assert record["harm"] == "bound" and record["acting"] == "shield" and record["replaced"]
    harmless = [k for k, harm in record["judged"].items() if harm is None]
    assert len(harmless) >= 2  # a choice was made (value >= 0.9 is 17% of the box's area near TARGET)
    best = max(harmless, key=value)
    assert record["executed"] == best and record["value"] == pytest.approx(value(best))
    assert info["base_objective"] == pytest.approx(value(best))
    assert len(record["judged"]) == record["lookaheads"] <= 65  # candidates clipped onto the same corner count once


def test_box_candidates_are_half_perturbations_and_include_the_fallback():
    env = Shield(
        Slide(), model="copy", horizon=1, bound=2.0, candidates=9, seed=0, spread=1e-6, fallback=always(TARGET)
    )
    env.reset(seed=0)
    proposal = np.array([-0.5, 0.5], np.float32)
    _, _, _, _, info = env.step(proposal)  # bound 2 > any value: nothing is harmless, the fallback plays
    record = info[INFO_KEY]
    drawn = [np.array(k) for k in record["judged"] if k != record["proposed"]]
    near = [k for k in drawn if np.max(np.abs(k - proposal)) < 1e-4]
    assert len(near) == 5  # ceil(9 / 2) perturbations within a few spread-widths; 4 uniform draws elsewhere
    assert tuple(TARGET.tolist()) in record["judged"] and record["acting"] == "fallback"
    assert record["executed"] == tuple(TARGET.tolist())


def test_box_candidates_are_reproducible_with_the_seed():
    def records(shield_seed, episode_seed):
        env = Shield(Slide(), model="copy", horizon=1, bound=0.9, candidates=8, seed=shield_seed)
        out = []
        for _ in range(2):  # a second episode with the same reset seed repeats the first
            env.reset(seed=episode_seed)
            out.append(tuple(env.step(np.array([-1.0, 0.0], np.float32))[4][INFO_KEY]["judged"]))
        return out

    first, again = records(1, 5)
    assert first == again and records(1, 5) == [first, again]
    assert records(2, 5)[0] != first and records(1, 6)[0] != first


def test_box_search_deviates_with_the_candidates():
    # From x = 0, 0.6 twice reaches x = 1.2: harm at step 2 on the continuation (the action repeated),
    # avoidable by a smaller second step. Search finds one among the candidates; without search it is replaced.
    searched = Shield(Slide(), model="copy", horizon=2, candidates=16, seed=0, search=True)
    naive = Shield(Slide(), model="copy", horizon=2, candidates=16, seed=0, search=False)
    for env in (searched, naive):
        env.reset(seed=0)
    proposal = np.array([0.6, 0.25], np.float32)
    assert searched.step(proposal)[4][INFO_KEY]["harm"] is None and searched.replaced == 0
    record = naive.step(proposal)[4][INFO_KEY]
    assert record["harm"] == "catastrophe" and record["replaced"] and 2 * record["executed"][0] <= 1.0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"candidates": 0}, "candidates=0"),
        ({"candidates": -2}, "candidates=-2"),
        ({"candidates": True}, "candidates=True"),
        ({"candidates": 2.5}, "candidates=2.5"),
        ({"seed": -1}, "seed=-1"),
        ({"seed": True}, "seed=True"),
        ({"spread": 0.0}, "spread=0.0"),
        ({"spread": math.nan}, "spread=nan"),
    ],
)
def test_box_bad_arguments_are_named(kwargs, fragment):
    with pytest.raises(ShieldError, match=fragment):
        Shield(Slide(), model="copy", **kwargs)


def test_box_with_an_unbounded_dimension_is_refused():
    env = Slide()
    env.action_space = spaces.Box(np.array([-1.0, -np.inf], np.float32), np.array([1.0, 1.0], np.float32))
    with pytest.raises(ShieldError, match=r"Box\(.*unbounded"):
        Shield(env, model="copy")


def test_cheetah_copies_are_exact_and_the_shield_keeps_a_binding_bound():
    """The shipped cheetah agent under a bound of 0 a step (binding on about a fifth of its steps): every
    executed step's real increment is exactly its lookahead value (the MuJoCo copy is exact) and not
    below the bound; harmful proposals are replaced or, with no harmless candidate, the episode stops."""
    from mesaguard.train import load_agent

    policy = load_agent("cheetah")
    env = Shield(make("cheetah", "train"), model="copy", horizon=1, bound=0.0, candidates=8, seed=0)
    obs, _ = env.reset(seed=0)
    replaced = stopped = 0
    for _ in range(60):
        obs, _, terminated, truncated, info = env.step(policy(obs))
        record = info[INFO_KEY]
        assert all(in_box(env.action_space, k) for k in record["judged"] if k != record["proposed"])
        if record["executed"] is None:
            stopped += 1
            assert record["harm"] is not None and truncated
        else:
            assert record["judged"][record["executed"]] is None
            assert info["base_objective"] == record["value"] >= 0.0
            replaced += record["replaced"]
        if terminated or truncated:
            obs, _ = env.reset(seed=1 + stopped)
    assert replaced > 0  # the bound binds
