"""The env registry and the dm_control / Gymnasium adapters.

Oracles: dm_control itself (its ``flat_observation`` option is the layout ExoRL stores) and
MuJoCo's own state round trip.
"""

import importlib.util

import numpy as np
import pytest
from dm_control import suite
from gymnasium.utils.env_checker import check_env

import envs
from envs.dmc import flatten_observation

DMC_SAMPLE = ["dmc:walker-walk", "dmc:cartpole-swingup", "dmc:quadruped-run", "dmc:cheetah-run"]


def test_list_envs_has_the_featured_ids_first():
    ids = envs.list_envs()
    for env_id in (
        "dmc:walker-stand",
        "dmc:walker-run",
        "dmc:cartpole-balance",
        "dmc:quadruped-walk",
        "dmc:point_mass-easy",
        "dmc:pendulum-swingup",
        "dmc:point_mass_maze-reach_top_left",
        "dmc:jaco-reach_top_left",
        "gym:HalfCheetah-v5",
        "gym:Hopper-v5",
        "gym:Walker2d-v5",
        "darkroom",
        "keydoor",
        "bandit",
    ):
        assert env_id in ids
    assert ids[0] == "dmc:walker-stand" and len(ids) == len(set(ids))
    assert "dmc:acrobot-swingup" in ids and "gym:CartPole-v1" in ids  # the general families


@pytest.mark.parametrize(
    "bad, suggestion",
    [
        ("darkrom", "'darkroom'"),
        ("dmc:walker-wlak", "'dmc:walker-walk'"),
        ("gym:Hoper-v5", "Hopper-v5"),
    ],
)
def test_unknown_id_lists_known_ids_and_close_matches(bad, suggestion):
    with pytest.raises(KeyError) as info:
        envs.make(bad)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "unknown" in msg and repr(bad) in msg and "Did you mean" in msg and suggestion in msg
    for known in ("dmc:walker-run", "gym:Hopper-v5", "darkroom", "keydoor", "bandit"):
        assert known in msg
    with pytest.raises(KeyError):
        envs.env_info(bad)


def test_task_only_for_in_context_envs():
    with pytest.raises(ValueError, match="only in-context families take a task"):
        envs.make("dmc:cartpole-swingup", task=3)
    with pytest.raises(ValueError, match="task_split applies to the in-context"):
        envs.task_split("dmc:cartpole-swingup", "train")


def test_env_info():
    dr = envs.env_info("darkroom")
    assert dr.observation_shape == (2,) and dr.action_space == {"type": "discrete", "n": 5}
    assert dr.max_episode_steps == 20 and dr.in_context and dr.num_tasks == 80
    assert dr.reference_scores == "optimal_return"
    kd = envs.env_info("keydoor")
    assert kd.observation_shape == (3,) and kd.max_episode_steps == 50 and kd.num_tasks == 6320
    w = envs.env_info("dmc:walker-walk")
    assert w.observation_shape == (24,) and w.max_episode_steps == 1000 and not w.in_context
    assert w.action_space == {"type": "box", "low": [-1.0] * 6, "high": [1.0] * 6}
    h = envs.env_info("gym:Hopper-v5")
    assert h.observation_shape == (11,) and h.max_episode_steps == 1000
    assert h.reference_scores == "hopper"


@pytest.mark.parametrize("env_id", DMC_SAMPLE + ["dmc:point_mass-easy", "dmc:pendulum-swingup"])
def test_dmc_flat_observation_is_dm_controls_own(env_id):
    """Observations, rewards and discounts equal dm_control's flat_observation env (ExoRL's)."""
    domain, task = env_id[4:].split("-")
    ours = envs.make(env_id)
    oracle = suite.load(
        domain, task, task_kwargs={"random": 11}, environment_kwargs={"flat_observation": True}
    )
    obs, info = ours.reset(seed=11)
    ts = oracle.reset()
    np.testing.assert_array_equal(obs, ts.observation["observations"].astype(np.float32))
    # The reset physics state is reported, and equals dm_control's.
    np.testing.assert_array_equal(info["physics"], oracle.physics.get_state())
    # The layout names the dict entries in dm_control's order.
    plain = suite.load(domain, task, task_kwargs={"random": 11})
    keys = list(plain.reset().observation)
    assert list(ours.unwrapped.observation_layout) == keys
    rng = np.random.default_rng(0)
    for _ in range(25):
        a = rng.uniform(-1, 1, ours.action_space.shape).astype(np.float32)
        obs, r, term, trunc, info = ours.step(a)
        ts = oracle.step(a.astype(np.float64))
        np.testing.assert_array_equal(obs, ts.observation["observations"].astype(np.float32))
        assert r == ts.reward and info["discount"] == ts.discount and not (term or trunc)
        np.testing.assert_array_equal(info["physics"], oracle.physics.get_state())


def test_flatten_observation_orders_dict_values_and_skips_images():
    from collections import OrderedDict

    ob = OrderedDict(b=np.array([[1.0, 2.0]]), a=3.0, img=np.zeros((2, 2, 3), np.uint8))
    np.testing.assert_array_equal(flatten_observation(ob), np.array([1, 2, 3], np.float32))


@pytest.mark.parametrize("env_id", ["dmc:walker-walk", "dmc:cartpole-swingup", "dmc:cheetah-run"])
def test_physics_state_reproduces_the_observation(env_id):
    env = envs.make(env_id)
    obs0, info = env.reset(seed=4)
    states, observations = [info["physics"]], [obs0]
    rng = np.random.default_rng(1)
    for _ in range(10):
        obs, _, _, _, info = env.step(rng.uniform(-1, 1, env.action_space.shape))
        states.append(info["physics"])
        observations.append(obs)
    dmc = env.unwrapped
    for state, obs in zip(states, observations, strict=True):
        np.testing.assert_allclose(dmc.observation_from_physics(state), obs, rtol=0, atol=1e-6)


def test_dmc_episode_is_1000_steps_and_truncates():
    env = envs.make("dmc:cartpole-balance", seed=0)
    env.reset()
    zero = np.zeros(env.action_space.shape, np.float32)
    n = 0
    while True:
        _, _, term, trunc, info = env.step(zero)
        n += 1
        if term or trunc:
            break
    assert n == 1000 == env.spec.max_episode_steps and trunc and not term
    assert info["discount"] == 1.0
    with pytest.raises(RuntimeError, match="reset"):
        env.step(zero)


def test_dmc_seeding():
    a = envs.make("dmc:walker-run", seed=3)
    b = envs.make("dmc:walker-run")
    obs_a, _ = a.reset()
    obs_b, _ = b.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_b)
    obs_c, _ = b.reset(seed=4)
    assert not np.array_equal(obs_a, obs_c)
    obs_d, _ = a.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_d)


def test_dmc_bad_action_shape():
    env = envs.make("dmc:walker-walk", seed=0)
    env.reset()
    with pytest.raises(ValueError, match=r"dmc:walker-walk: action must have shape \(6,\)"):
        env.step(np.zeros(5))


@pytest.mark.filterwarnings("ignore:.*(infinity|-infinity)")
def test_dmc_check_env():
    check_env(envs.make("dmc:cartpole-swingup", seed=0), skip_render_check=True)


def test_gym_ids_and_seed():
    env = envs.make("gym:Hopper-v5", seed=7)
    obs_a, _ = env.reset()
    obs_b, _ = envs.make("gym:Hopper-v5").reset(seed=7)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert env.spec.max_episode_steps == 1000


@pytest.mark.parametrize("domain", ["point_mass_maze", "jaco"])
def test_exorl_custom_domains(domain):
    env_id = f"dmc:{domain}-reach_top_left"
    if importlib.util.find_spec(f"envs.{domain}") is None:
        with pytest.raises(ImportError, match=f"envs.{domain}"):
            envs.make(env_id).reset()
        pytest.skip(f"envs/{domain}.py has not landed yet")
    env = envs.make(env_id, seed=0)
    obs, info = env.reset()
    assert obs.dtype == np.float32 and obs.shape == env.observation_space.shape
    assert "physics" in info
    zero = np.zeros(env.action_space.shape, np.float32)
    steps = 0
    while True:
        obs2, r, term, trunc, info = env.step(zero)
        steps += 1
        assert np.isfinite(r) and obs2.shape == obs.shape and "physics" in info
        if term or trunc:
            break
    assert steps == env.spec.max_episode_steps and trunc and not term
    obs3, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs3, obs)  # reseeding reproduces the reset


def test_dmc_rgb_array_render_with_egl():
    """Rendering needs a GL backend chosen before MuJoCo loads: run it in a subprocess."""
    import os
    import subprocess
    import sys

    code = (
        "import numpy as np, envs\n"
        "env = envs.make('dmc:cartpole-swingup', seed=0, render_mode='rgb_array',"
        " render_size=(48, 64))\n"
        "env.reset()\n"
        "a = env.render()\n"
        "for _ in range(30): env.step(np.ones(1, np.float32))\n"
        "b = env.render()\n"
        "print(a.shape, a.dtype, float(a.std()) > 0, bool((a != b).any()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "MUJOCO_GL": "egl"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "EGL" in proc.stderr:
        pytest.skip(f"no EGL here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(48, 64, 3) uint8 True True"
