"""Collectors and ``rl-ring collect``: EpisodeStore conventions, reproducibility by seed,
format round trips through the data package's readers, and clear errors."""

import jax
import numpy as np
import pytest

import envs
from envs.collect import collect_random, collect_scripted, main
from envs.learners.sac import SAC, Batch, SACConfig, actor_loss, critic_loss, train_sac
from envs.recording import episode_seed
from rl_ring.data import EpisodeStore, read_d4rl, read_exorl, read_minari


def _assert_same_arrays(a: EpisodeStore, b: EpisodeStore) -> None:
    for name in ("observations", "actions", "rewards", "terminals", "timeouts", "episode_starts"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.tobytes() == getattr(b, name).tobytes(), name
    assert sorted(a.extras) == sorted(b.extras)
    for k in a.extras:
        assert a.extras[k].tobytes() == b.extras[k].tobytes(), k
    for k in a.episode_extras:
        np.testing.assert_array_equal(a.episode_extras[k], b.episode_extras[k])


def _check_episode_conventions(store: EpisodeStore) -> None:
    for i in range(store.num_episodes):
        ep = store.episode(i)
        np.testing.assert_array_equal(ep["next_observations"][:-1], ep["observations"][1:])
        if "physics" in ep:
            np.testing.assert_array_equal(ep["next_physics"][:-1], ep["physics"][1:])
        ended = ep["terminals"] | ep["timeouts"]
        assert ended[-1] and not ended[:-1].any()


def test_random_dmc_collection_follows_store_conventions_and_is_reproducible():
    a = collect_random("dmc:cartpole-swingup", 2, seed=5)
    b = collect_random("dmc:cartpole-swingup", 2, seed=5)
    _assert_same_arrays(a, b)
    assert not np.array_equal(a.actions, collect_random("dmc:cartpole-swingup", 2, seed=6).actions)
    assert a.num_steps == 2000 and a.timeouts.sum() == 2 and not a.terminals.any()
    assert sorted(a.extras) == ["discount", "next_observations", "next_physics", "physics"]
    np.testing.assert_array_equal(a.extras["discount"], 1.0)
    _check_episode_conventions(a)
    # physics[0] of episode i is the reset state of episode_seed(seed, i); every physics row
    # reproduces its observation row.
    env = envs.make("dmc:cartpole-swingup")
    for i in range(2):
        ep = a.episode(i)
        obs0, info = env.reset(seed=episode_seed(5, i))
        np.testing.assert_array_equal(ep["physics"][0], info["physics"])
        np.testing.assert_array_equal(ep["observations"][0], obs0)
        for t in (0, 1, 500, 999):
            np.testing.assert_allclose(
                env.unwrapped.observation_from_physics(ep["physics"][t]),
                ep["observations"][t],
                atol=1e-6,
            )
    # Stored rewards equal dm_control's: replay the actions from the same reset.
    env.reset(seed=episode_seed(5, 0))
    ep = a.episode(0)
    replay = [env.step(act)[1] for act in ep["actions"][:50]]
    np.testing.assert_array_equal(np.float32(replay), ep["rewards"][:50])
    assert a.metadata["action_space"] == {"type": "box", "low": [-1.0], "high": [1.0]}
    assert a.metadata["observation_layout"] == {"position": [0, 3], "velocity": [3, 5]}


def test_in_context_random_collection_cycles_tasks():
    s = collect_random("darkroom", 5, seed=0, tasks="test")
    test = envs.task_split("darkroom", "test")
    np.testing.assert_array_equal(s.episode_extras["task_id"], test[:5])
    assert s.actions.dtype == np.int64
    assert s.metadata["action_space"] == {"type": "discrete", "n": 5}
    assert np.all(s.episode_lengths == 20)


def test_scripted_oracle_data_reaches_optimal_returns():
    s = collect_scripted("darkroom", 6, noise=(0.0,), seed=0)
    opt = [envs.optimal_return("darkroom", t) for t in s.episode_extras["task_id"]]
    np.testing.assert_array_equal(s.episode_returns, opt)


def test_cli_histories_to_store(tmp_path, capsys):
    out = tmp_path / "hist"
    rc = main(
        ["darkroom", "--policy", "qlearning", "--episodes-per-history", "10", "--histories", "3",
         "--out", str(out), "--seed", "2", "--quiet"]
    )  # fmt: skip
    assert rc == 0
    s = EpisodeStore.load(out)
    assert s.num_episodes == 30 and s.metadata["policy"] == "qlearning"
    np.testing.assert_array_equal(s.episode_extras["history_id"], np.repeat([0, 1, 2], 10))
    np.testing.assert_array_equal(s.episode_extras["episode_in_history"], np.tile(range(10), 3))
    train = envs.task_split("darkroom", "train")
    np.testing.assert_array_equal(s.episode_extras["task_id"], np.repeat(train[:3], 10))
    assert s.metadata["collect_args"]["episodes_per_history"] == 10
    printed = capsys.readouterr().out
    assert "30 episodes, 600 steps" in printed and "learning curve" in printed


def test_cli_scripted_exorl_round_trip(tmp_path, capsys):
    out = tmp_path / "buffer"
    args = ["dmc:pendulum-swingup", "--policy", "scripted", "--noise", "0", "0.5",
            "--episodes", "2", "--format", "exorl", "--out", str(out), "--seed", "1",
            "--quiet"]  # fmt: skip
    assert main(args) == 0
    direct = collect_scripted("dmc:pendulum-swingup", 2, noise=(0.0, 0.5), seed=1)
    back = read_exorl(out)
    for name in ("observations", "actions", "rewards", "timeouts", "terminals"):
        np.testing.assert_array_equal(getattr(back, name), getattr(direct, name), err_msg=name)
    for k in ("physics", "next_physics", "discount", "next_observations"):
        np.testing.assert_array_equal(back.extras[k], direct.extras[k], err_msg=k)
    np.testing.assert_array_equal(back.episode_extras["policy_noise"], [0.0, 0.5])
    printed = capsys.readouterr().out
    assert "noise 0: return" in printed and "noise 0.5: return" in printed


def test_d4rl_and_minari_round_trips(tmp_path):
    hop = collect_random("gym:Hopper-v5", 3, seed=0)
    assert hop.terminals.sum() == 3  # random Hopper falls: variable-length episodes
    assert {"infos/qpos", "infos/qvel"} <= set(hop.extras)
    assert main(["gym:Hopper-v5", "--episodes", "3", "--format", "d4rl",
                 "--out", str(tmp_path / "hop.hdf5"), "--quiet"]) == 0  # fmt: skip
    _assert_same_arrays(hop, read_d4rl(tmp_path / "hop.hdf5"))
    dr = collect_random("keydoor", 4, seed=0)
    assert main(["keydoor", "--episodes", "4", "--format", "minari",
                 "--out", str(tmp_path / "kd-v0"), "--quiet"]) == 0  # fmt: skip
    back = read_minari(tmp_path / "kd-v0")
    np.testing.assert_array_equal(back.actions, dr.actions)
    np.testing.assert_array_equal(back.observations, dr.observations)
    np.testing.assert_array_equal(back.episode_extras["task_id"], dr.episode_extras["task_id"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["darkrom", "--episodes", "1"], "Did you mean 'darkroom'"),
        (["darkroom"], "give --episodes N"),
        (["dmc:walker-walk", "--policy", "scripted", "--episodes", "1"], "no scripted policy"),
        (["darkroom", "--episodes", "1", "--format", "exorl"], "needs dm_control physics"),
        (["dmc:walker-walk", "--policy", "qlearning"], "learning histories are for"),
    ],
)
def test_cli_errors(tmp_path, capsys, args, message):
    out = tmp_path / "x"
    assert main([*args, "--out", str(out), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-written


@pytest.mark.slow
def test_tiny_sac_run_is_reproducible_and_learns_on_its_replay():
    cfg = SACConfig(hidden=32, batch_size=32, warmup_steps=200, update_every=50)
    a = train_sac("dmc:pendulum-swingup", steps=1000, seed=0, config=cfg)
    b = train_sac("dmc:pendulum-swingup", steps=1000, seed=0, config=cfg)
    _assert_same_arrays(a.store, b.store)
    assert a.store.num_steps == 1000 and a.store.metadata["policy"] == "sac"
    # Updates in rounds of 50 at env steps 200, 250, ..., 1000.
    assert int(a.state.updates) == 17 * 50
    # Warm-up actions are uniform; afterwards the policy acts (and differs from uniform).
    acts = a.store.actions[:, 0]
    assert abs(acts[:200].mean()) < 0.15 and np.all(np.abs(acts) <= 1.0)
    leaves = jax.tree.leaves(a.state.actor)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in leaves)

    # Learning on the replay. Swing-up pays nothing in 1000 steps (every reward is 0), so
    # returns cannot rise and the action statistics stay within noise of uniform (post-warm-up
    # std 0.38-0.59 over seeds 0-5, uniform 0.58); the losses the learner minimises are the
    # signal. On the run's one episode, against an untrained learner from the run's init key:
    # the soft Bellman error fell 35-350x (seeds 0-5; bound: 20x), and under the trained
    # critic the trained actor's loss is 0.049-0.065 lower (bound: 0.02).
    env = envs.make("dmc:pendulum-swingup")
    sac = SAC(env.observation_space.shape[0], env.action_space.low, env.action_space.high, cfg)
    env.close()
    fresh = sac.init(jax.random.split(jax.random.key(0), 3)[0])
    trained = a.state
    ep = a.store.episode(0)
    batch = Batch(
        ep["observations"], ep["actions"], ep["rewards"], ep["next_observations"],
        ep["terminals"].astype(np.float32),
    )  # fmt: skip
    key = jax.random.key(123)

    def bellman(s):
        return float(critic_loss(s.critic, s.target, s.actor, s.log_alpha, batch, key,
                                 cfg.gamma, sac.bounds))  # fmt: skip

    def policy_loss(actor):
        return float(actor_loss(actor, trained.critic, trained.log_alpha, batch, key,
                                sac.bounds)[0])  # fmt: skip

    assert bellman(trained) < bellman(fresh) / 20, (bellman(trained), bellman(fresh))
    assert policy_loss(trained.actor) < policy_loss(fresh.actor) - 0.02, (
        policy_loss(trained.actor),
        policy_loss(fresh.actor),
    )
