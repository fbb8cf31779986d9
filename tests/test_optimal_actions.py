"""Optimal-action labels: the in-context envs' ``optimal_action`` on hand-computed cells and
arms, walking it earns the optimal return, collectors record it next to every logged
action (``extras["optimal_actions"]``), and it survives the store, D4RL and Minari round
trips."""

import h5py
import numpy as np
import pytest

from envs import make
from envs.bandit import arm_means
from envs.collect import collect_random, write
from envs.collect import main as collect_main
from envs.gridworld import cell_id
from envs.keydoor import task_id
from envs.learners.history import collect_histories
from rl_ring.data import EpisodeStore, load, read_d4rl, read_minari

NOOP, UP, DOWN, LEFT, RIGHT = range(5)


# ------------------------------------------------------------------------- the envs' oracle
def test_darkroom_shortest_path_actions_by_hand():
    env = make("darkroom", task=cell_id(6, 4, 9))  # goal at x=6, y=4
    env.reset(seed=0)
    cases = {(4, 4): RIGHT, (0, 0): RIGHT, (8, 4): LEFT, (6, 2): UP, (6, 7): DOWN,
             (6, 4): NOOP, (7, 8): LEFT}
    for (x, y), want in cases.items():
        assert env.unwrapped.optimal_action(np.array([x, y], np.float32)) == want, (x, y)
    hard = make("darkroom-hard", task=cell_id(0, 16, 17))
    hard.reset(seed=0)
    assert hard.unwrapped.optimal_action(np.array([8, 8], np.float32)) == LEFT
    assert hard.unwrapped.optimal_action(np.array([0, 3], np.float32)) == UP
    assert hard.unwrapped.optimal_action(np.array([0, 16], np.float32)) == NOOP
    with pytest.raises(ValueError, match="observation must have 2 entries"):
        env.unwrapped.optimal_action(np.zeros(3))


def test_keydoor_goes_to_the_key_first_then_the_door():
    env = make("keydoor", task=task_id((2, 4), (4, 6)))  # key (2, 4), door (4, 6)
    env.reset(seed=0)
    opt = env.unwrapped.optimal_action
    assert opt(np.array([4, 4, 0], np.float32)) == LEFT  # centre -> key
    assert opt(np.array([2, 7, 0], np.float32)) == DOWN
    assert opt(np.array([4, 6, 0], np.float32)) == LEFT  # on the door without the key
    assert opt(np.array([2, 4, 1], np.float32)) == RIGHT  # key held -> door
    assert opt(np.array([4, 2, 1], np.float32)) == UP


def test_bandit_optimal_arm_has_zero_regret():
    env = make("bandit", task=17)
    env.reset(seed=0)
    best = env.unwrapped.optimal_action(None)
    assert best == int(np.argmax(arm_means(17, arms=5)))
    # The env's own regret (computed from its means, independently) is 0 only for that arm.
    for arm in range(5):
        env.reset(seed=arm)
        info = env.step(arm)[4]
        assert (info["regret"] == 0.0) == (arm == best)


@pytest.mark.parametrize("env_id, tasks", [
    ("darkroom", [cell_id(0, 0, 9), cell_id(8, 3, 9), cell_id(4, 8, 9)]),
    ("darkroom-hard", [cell_id(16, 16, 17), cell_id(3, 9, 17)]),
    ("keydoor", [task_id((0, 0), (8, 8)), task_id((7, 1), (2, 5)), task_id((4, 5), (4, 3))]),
])
def test_walking_the_optimal_action_earns_the_optimal_return(env_id, tasks):
    for task in tasks:
        env = make(env_id, task=task)
        obs, _ = env.reset(seed=0)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(env.unwrapped.optimal_action(obs))
            total += r
            done = term or trunc
        assert total == env.unwrapped.optimal_return(), (env_id, task)


# ------------------------------------------------------------------------- collectors
def test_collectors_record_the_label_of_every_observation():
    store = collect_random("keydoor", 6, seed=1, num_tasks=3)
    labels = store.extras["optimal_actions"]
    assert labels.dtype == np.int64 and labels.shape == (store.num_steps,)
    for e in range(store.num_episodes):
        env = make("keydoor", task=int(store.episode_extras["task_id"][e]))
        env.reset(seed=0)
        s, t = store.episode_starts[e], store.episode_starts[e + 1]
        want = [env.unwrapped.optimal_action(o) for o in store.observations[s:t]]
        np.testing.assert_array_equal(labels[s:t], want)
    assert (labels != store.actions).any()  # random actions, optimal labels
    hist = collect_histories("bandit", "thompson", tasks=[3, 8], episodes_per_history=5)
    want = np.repeat([np.argmax(arm_means(t, arms=5)) for t in (3, 8)], 5)
    np.testing.assert_array_equal(hist.extras["optimal_actions"], want)


def test_envs_without_an_oracle_record_no_labels():
    store = collect_random("gym:CartPole-v1", 1, seed=0)
    assert "optimal_actions" not in store.extras


# ------------------------------------------------------------------------- round trips
def test_labels_survive_store_d4rl_and_minari_round_trips(tmp_path, capsys):
    out = tmp_path / "bandit_random"
    argv = ["bandit", "--policy", "random", "--episodes", "12", "--num-tasks", "3", "--out",
            str(out), "--quiet"]
    assert collect_main(argv) == 0, capsys.readouterr().err
    store = load(out)
    tasks = store.episode_extras["task_id"]
    assert len(set(tasks.tolist())) == 3
    np.testing.assert_array_equal(store.extras["optimal_actions"],
                                  [np.argmax(arm_means(t, arms=5)) for t in tasks])
    d4rl = write(store, "d4rl", tmp_path / "d.hdf5")
    with h5py.File(d4rl) as f:  # where other D4RL readers find it
        np.testing.assert_array_equal(f["infos/optimal_actions"][()],
                                      store.extras["optimal_actions"])
    minari = write(store, "minari", tmp_path / "m")
    for back in (EpisodeStore.load(out), read_d4rl(d4rl), read_minari(minari)):
        got = back.extras["optimal_actions"]
        assert got.dtype.kind == "i"
        np.testing.assert_array_equal(got, store.extras["optimal_actions"])
        np.testing.assert_array_equal(back.actions, store.actions)
