"""dm_control action repeat and time limit (``envs.make(..., action_repeat=, time_limit=)`` and
the id options ``dmc:<domain>-<task>:ar<k>:t<seconds>``), checked against dm_control run with a
k-times-longer control timestep, against the plain env stepped k times, and through the ExoRL
write / relabel / read path."""

import numpy as np
import pytest
from dm_control import suite

import envs
from envs.collect import collect_scripted, write
from envs.dmc import flatten_observation
from envs.registry import base_id, split_options
from envs.relabel import RELABELLER
from envs.scripted import make_policy
from rl_ring.data import read_exorl


def test_id_options_parse_and_errors():
    assert split_options("dmc:cartpole-swingup:ar8:t4") == (
        "dmc:cartpole-swingup", {"action_repeat": 8, "time_limit": 4.0})
    assert split_options("dmc:walker-run:t2.5") == ("dmc:walker-run", {"time_limit": 2.5})
    assert split_options("dmc:walker-run") == ("dmc:walker-run", {})
    assert split_options("darkroom") == ("darkroom", {})
    assert base_id("dmc:point_mass-easy:ar4") == "dmc:point_mass-easy"
    with pytest.raises(ValueError, match=r"unknown option 'x3'.*':ar<k>'"):
        envs.make("dmc:cartpole-swingup:x3")
    with pytest.raises(ValueError, match="action_repeat given twice"):
        envs.make("dmc:cartpole-swingup:ar2:ar3")
    with pytest.raises(ValueError, match=r"dmc:cartpole-swingup:ar0: action_repeat must be"):
        envs.make("dmc:cartpole-swingup:ar0")
    with pytest.raises(ValueError, match="time_limit must be a positive"):
        envs.make("dmc:cartpole-swingup", time_limit=-1.0)
    with pytest.raises(ValueError, match=r"\['action_repeat'\] given both in the id"):
        envs.make("dmc:cartpole-swingup:ar2", action_repeat=2)
    with pytest.raises(envs.UnknownEnvError, match="dmc:cartpole-swingp"):
        envs.make("dmc:cartpole-swingp:ar2")


@pytest.mark.parametrize(
    ("env_id", "steps"),
    [("dmc:cartpole-swingup:ar8:t4", 50), ("dmc:cartpole-swingup:ar3", 334),
     ("dmc:point_mass-easy:ar4:t4", 50), ("dmc:walker-run:t2", 80)],
)
def test_episode_length_follows_options(env_id, steps):
    env = envs.make(env_id, seed=0)
    assert env.spec.max_episode_steps == steps == env.unwrapped.step_limit
    assert envs.env_info(env_id).max_episode_steps == steps
    env.reset()
    n, ended = 0, False
    while not ended:
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        n, ended = n + 1, term or trunc
    assert n == steps and trunc and not term
    with pytest.raises(RuntimeError, match="after the end"):
        env.step(env.action_space.sample())


def test_action_repeat_is_dm_controls_longer_control_timestep():
    """Repeat k = dm_control with a k-times-longer control step: same states, rewards."""
    k = 8
    env = envs.make("dmc:cartpole-swingup:ar8:t4", seed=3)
    ref = suite.load("cartpole", "swingup", task_kwargs={"random": 3, "time_limit": 4.0},
                     environment_kwargs={"control_timestep": 0.01 * k})
    obs, info = env.reset(seed=3)
    ts = ref.reset()
    np.testing.assert_array_equal(obs, flatten_observation(ts.observation))
    rng = np.random.default_rng(0)
    rewards = []
    for _ in range(50):
        a = rng.uniform(-1, 1, size=(1,)).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        ts = ref.step(a.astype(np.float64))
        np.testing.assert_allclose(obs, flatten_observation(ts.observation), rtol=0, atol=1e-6)
        np.testing.assert_array_equal(info["physics"], ref.physics.get_state())
        assert r == pytest.approx(ts.reward, abs=1e-12)
        assert trunc == ts.last() and not term
        rewards.append(r)
    assert len(set(np.round(rewards, 6))) > 10  # a real trajectory, not a constant


def test_action_repeat_equals_the_plain_env_stepped_k_times():
    k = 3
    rep = envs.make("dmc:point_mass-easy", seed=1, action_repeat=k)
    plain = envs.make("dmc:point_mass-easy", seed=1)
    rep.reset(seed=7)
    plain.reset(seed=7)
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.uniform(-1, 1, size=(2,)).astype(np.float32)
        obs, r, *_, info = rep.step(a)
        for _ in range(k):
            pobs, pr, *_, pinfo = plain.step(a)
        np.testing.assert_array_equal(obs, pobs)
        np.testing.assert_array_equal(info["physics"], pinfo["physics"])
        assert r == pr  # the reward of the last repeated control step


@pytest.mark.parametrize(
    ("env_id", "task", "steps"),
    [("dmc:cartpole-swingup:ar8:t4", "cartpole_swingup", 50),
     ("dmc:point_mass-easy:ar8:t4", "point_mass_easy", 25),
     ("dmc:pendulum-swingup:ar4:t4", "pendulum_swingup", 50)],
)
def test_exorl_relabelling_reproduces_repeated_rewards(tmp_path, env_id, task, steps):
    """Collected with action repeat, written as ExoRL, relabelled from physics: the live
    rewards (point mass and pendulum pay for control / need the state, like cartpole)."""
    store = collect_scripted(env_id, 4, noise=(0.0, 0.3), seed=2)
    assert store.metadata["env_id"] == env_id
    assert store.num_steps == 4 * steps
    write(store, "exorl", tmp_path / "buffer")
    back = read_exorl(tmp_path / "buffer", task=task, relabel=RELABELLER, cache=False)
    np.testing.assert_allclose(back.rewards, store.rewards, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(back.observations, store.observations)
    # Not a trivial match: rewards span most of [0, 1] (hanging down to swung up).
    assert np.ptp(store.rewards) > 0.5


def test_scripted_policy_accepts_option_ids():
    env = envs.make("dmc:cartpole-swingup:ar8", seed=0)
    pol = make_policy("dmc:cartpole-swingup:ar8:t4", action_space=env.action_space, seed=0)
    obs, _ = env.reset()
    ref = make_policy("dmc:cartpole-swingup", action_space=env.action_space, seed=0)
    np.testing.assert_array_equal(pol(obs), ref(obs))
