"""Dark Room, Key-to-Door and bandits: dynamics against hand-computed trajectories, optimal
returns against an exhaustive dynamic-programming oracle, splits, seeding, API conformance."""

import itertools

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs import bandit, darkroom, keydoor
from envs import gridworld as gw
from envs.scripted import make_policy

NOOP, UP, DOWN, LEFT, RIGHT = range(5)


def _run(env, actions):
    obs, rews, terms, truncs = [], [], [], []
    for a in actions:
        o, r, term, trunc, _ = env.step(a)
        obs.append(tuple(o.tolist()))
        rews.append(r)
        terms.append(term)
        truncs.append(trunc)
    return obs, rews, terms, truncs


# ---------------------------------------------------------------------- Dark Room
def test_darkroom_hand_trajectory():
    goal = (6, 4)  # two cells right of the centre (4, 4)
    env = envs.make("darkroom", task=gw.cell_id(*goal, 9))
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.float32 and tuple(obs) == (4.0, 4.0) and info["task"] == 42
    actions = [RIGHT, RIGHT, NOOP, UP, DOWN, LEFT, RIGHT] + [NOOP] * 13
    o, r, term, trunc = _run(env, actions)
    assert o[:7] == [(5, 4), (6, 4), (6, 4), (6, 5), (6, 4), (5, 4), (6, 4)]
    # Reward of step t: 1 when the agent stands on the goal as it acts (o_t is the goal).
    assert r[:8] == [0, 0, 1, 1, 0, 1, 0, 1]
    assert sum(r) == 2 + 1 + 13
    assert not any(term) and trunc == [False] * 19 + [True]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(NOOP)


def test_darkroom_walls_and_arrival_variant():
    env = envs.make("darkroom", task=gw.cell_id(4, 8, 9), reward_on_arrival=True)
    env.reset(seed=0)
    o, r, _, _ = _run(env, [UP] * 6)
    assert [p[1] for p in o] == [5, 6, 7, 8, 8, 8]  # the wall at y = 8 stops the agent
    assert r == [0, 0, 0, 1, 1, 1]  # arrival convention: rewarded on reaching the goal


def _grid_dp_optimum(size, horizon, goal, *, arrival):
    """Exhaustive finite-horizon DP over (position, time), independent of the env code."""
    cells = list(itertools.product(range(size), range(size)))
    value = {c: 0.0 for c in cells}
    moves = [(0, 0), (0, 1), (0, -1), (-1, 0), (1, 0)]
    for _ in range(horizon):
        new = {}
        for c in cells:
            best = -1.0
            for dx, dy in moves:
                n = (min(max(c[0] + dx, 0), size - 1), min(max(c[1] + dy, 0), size - 1))
                r = float((n if arrival else c) == goal)
                best = max(best, r + value[n])
            new[c] = best
        value = new
    return value[(size // 2, size // 2)]


def test_darkroom_optimal_returns_match_dp_and_mean_is_15_5():
    goals = envs.task_split("darkroom", "all")
    assert len(goals) == 80 and gw.cell_id(4, 4, 9) not in goals
    opt = np.array([envs.optimal_return("darkroom", g) for g in goals])
    dp = np.array([_grid_dp_optimum(9, 20, gw.cell_xy(g, 9), arrival=False) for g in goals])
    np.testing.assert_array_equal(opt, dp)
    assert opt.mean() == 15.5
    arrival = np.array([darkroom.optimal_return(g, reward_on_arrival=True) for g in goals])
    dp_arr = np.array([_grid_dp_optimum(9, 20, gw.cell_xy(g, 9), arrival=True) for g in goals])
    np.testing.assert_array_equal(arrival, dp_arr)
    assert arrival.mean() == 16.5


@pytest.mark.parametrize("env_id", ["darkroom", "darkroom-hard", "keydoor"])
def test_oracle_rollouts_reach_the_optimal_return(env_id):
    tasks = envs.task_split(env_id, "test")[:12]
    env = envs.make(env_id)
    for task in tasks:
        policy = make_policy(env_id, task=task, seed=0)
        obs, _ = env.reset(seed=1, options={"task": task})
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(policy(obs))
            total += r
            done = term or trunc
        assert total == envs.optimal_return(env_id, task), (env_id, task)


def test_darkroom_hard_rewards_first_arrival_only():
    env = envs.make("darkroom-hard", task=gw.cell_id(9, 8, 17))
    obs, _ = env.reset(seed=0)
    assert tuple(obs) == (8, 8)
    _, r, _, _ = _run(env, [RIGHT, NOOP, LEFT, RIGHT])
    assert r == [1, 0, 0, 0]


# ---------------------------------------------------------------------- Key-to-Door
def test_keydoor_hand_trajectory():
    task = keydoor.task_id((5, 4), (3, 4))
    assert keydoor.key_door(task) == ((5, 4), (3, 4))
    env = envs.make("keydoor", task=task)
    obs, _ = env.reset(seed=0)
    assert tuple(obs) == (4, 4, 0)
    o, r, term, trunc = _run(env, [LEFT, RIGHT, RIGHT, LEFT, RIGHT, LEFT, LEFT])
    # Door first: nothing. Key: +1 (once). Back over the key: nothing. Door with key: +1, end.
    assert o == [(3, 4, 0), (4, 4, 0), (5, 4, 1), (4, 4, 1), (5, 4, 1), (4, 4, 1), (3, 4, 1)]
    assert r == [0, 0, 1, 0, 0, 0, 1]
    assert term == [False] * 6 + [True] and not any(trunc)


def test_keydoor_times_out_after_50_steps():
    env = envs.make("keydoor", task=keydoor.task_id((0, 0), (8, 8)))
    env.reset(seed=0)
    _, r, term, trunc = _run(env, [NOOP] * 50)
    assert sum(r) == 0 and not any(term) and trunc == [False] * 49 + [True]


def _keydoor_dp_optimum(task, horizon=50, size=9):
    key, door = keydoor.key_door(task)
    states = [(c, k) for c in itertools.product(range(size), range(size)) for k in (0, 1)]
    value = {s: 0.0 for s in states}
    moves = [(0, 0), (0, 1), (0, -1), (-1, 0), (1, 0)]
    for _ in range(horizon):
        new = {}
        for c, k in states:
            best = -1.0
            for dx, dy in moves:
                n = (min(max(c[0] + dx, 0), size - 1), min(max(c[1] + dy, 0), size - 1))
                if not k and n == key:
                    best = max(best, 1.0 + value[(n, 1)])
                elif k and n == door:
                    best = max(best, 1.0)  # the door ends the episode
                else:
                    best = max(best, value[(n, k)])
            new[(c, k)] = best
        value = new
    return value[((size // 2, size // 2), 0)]


def test_keydoor_optimal_return_matches_dp():
    tasks = envs.task_split("keydoor", "test")[::200]
    for t in tasks:
        assert envs.optimal_return("keydoor", t) == _keydoor_dp_optimum(t) == 2.0
    # A short horizon makes the door unreachable: the formula and the DP agree on 1.
    far = keydoor.task_id((0, 0), (8, 8))
    assert keydoor.optimal_return(far, episode_length=20) == _keydoor_dp_optimum(far, 20) == 1.0


# ---------------------------------------------------------------------- bandit
def test_bandit_rewards_follow_arm_means():
    env = envs.make("bandit", task=7, seed=3)
    means = bandit.arm_means(7)
    # Fixed per task id: the same in a fresh process as here (not merely cached), and
    # another task has other arms.
    import subprocess
    import sys
    code = "import json; from envs import bandit; print(json.dumps(bandit.arm_means(7).tolist()))"
    fresh = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout
    import json
    np.testing.assert_array_equal(means, np.asarray(json.loads(fresh)))
    assert not np.array_equal(means, bandit.arm_means(8))
    assert means.shape == (5,) and np.all((means >= 0) & (means < 1))
    n = 4000
    for arm in range(5):
        total = 0.0
        for _ in range(n):
            env.reset()
            _, r, term, trunc, info = env.step(arm)
            assert term and not trunc and r in (0.0, 1.0)
            total += r
        # Binomial standard error; 5 sigma keeps the test deterministic yet meaningful.
        se = np.sqrt(means[arm] * (1 - means[arm]) / n)
        assert abs(total / n - means[arm]) < 5 * se + 1e-9
    assert envs.optimal_return("bandit", 7) == means.max()


def test_bandit_horizon_variant():
    env = bandit.Bandit(task=1, horizon=3)
    env.reset(seed=0)
    ends = [env.step(0)[2] for _ in range(3)]
    assert ends == [False, False, True]


@pytest.mark.parametrize("env_id", ["bandit", "bandit-10", "darkroom"])
def test_spec_and_vector_envs_end_episodes_like_make(env_id):
    """gymnasium.make(env.spec) and a vector env report the flags envs.make does: a bandit
    pull terminates (no TimeLimit marks it truncated too); Dark Room truncates at 20 steps."""
    import gymnasium

    length = envs.env_info(env_id).max_episode_steps

    def flags(env):
        env.reset(seed=0)
        return [tuple(bool(f) for f in env.step(0)[2:4]) for _ in range(length)]

    direct = flags(envs.make(env_id, task=3, seed=0))
    assert direct == [(False, False)] * (length - 1) + [(env_id.startswith("bandit"),
                                                        not env_id.startswith("bandit"))]
    assert flags(gymnasium.make(envs.make(env_id, task=3).spec)) == direct
    vec = gymnasium.vector.SyncVectorEnv([lambda: envs.make(env_id, task=3)] * 2)
    vec.reset(seed=0)
    got = [vec.step(np.zeros(2, np.int64))[2:4] for _ in range(length)]
    assert [(bool(t[0]), bool(u[0])) for t, u in got] == direct
    assert all((t[0] == t[1]) and (u[0] == u[1]) for t, u in got)
    vec.close()


# ---------------------------------------------------------------------- shared behaviour
@pytest.mark.parametrize("env_id", ["darkroom", "darkroom-hard", "keydoor", "bandit", "bandit-10"])
def test_splits_fixed_disjoint_and_complete(env_id):
    train, test = envs.task_split(env_id, "train"), envs.task_split(env_id, "test")
    every = envs.task_split(env_id, "all")
    assert not set(train) & set(test)
    assert sorted(train + test) == every
    assert 0.15 <= len(test) / len(every) <= 0.25
    assert envs.task_split(env_id, "test") == test  # deterministic


def test_darkroom_held_out_goals_are_pinned():
    # Evaluations and reproductions quote these goals: changing them must be deliberate.
    assert envs.task_split("darkroom", "test") == [
        5, 8, 9, 11, 13, 16, 19, 20, 36, 51, 53, 54, 65, 66, 67, 75,
    ]  # fmt: skip


@pytest.mark.parametrize("env_id", ["darkroom", "keydoor", "bandit"])
def test_seeding_and_task_draws_are_reproducible(env_id):
    def trace(seed):
        env = envs.make(env_id, seed=seed)
        out = []
        for _ in range(3):
            obs, info = env.reset()
            out.append(info["task"])
            for a in [1, 4, 4, 2, 0]:
                obs, r, term, trunc, _ = env.step(a % env.action_space.n)
                out.append((tuple(obs.tolist()), r))
                if term or trunc:
                    break
        return out

    assert trace(5) == trace(5)
    assert trace(5) != trace(6)  # the drawn tasks differ


@pytest.mark.parametrize("env_id", ["darkroom", "keydoor", "bandit"])
def test_gymnasium_check_env(env_id):
    env = envs.make(env_id, task=envs.task_split(env_id, "train")[0], render_mode="rgb_array")
    check_env(env, skip_close_check=True)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3


def test_bad_inputs_name_the_problem():
    env = envs.make("darkroom", task=envs.task_split("darkroom", "train")[0])
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"darkroom: action must be in \[0, 5\), got 7"):
        env.step(7)
    with pytest.raises(ValueError, match="darkroom: task 40 is not a valid task id"):
        envs.make("darkroom", task=40)  # the centre is the start, not a goal
    with pytest.raises(ValueError, match="bandit: arm must be in"):
        b = envs.make("bandit", task=0)
        b.reset(seed=0)
        b.step(5)
    with pytest.raises(ValueError, match="task split must be one of"):
        envs.task_split("darkroom", "validation")


def test_random_shortest_actions_by_hand():
    from envs.gridworld import random_shortest_actions

    rng = np.random.default_rng(0)
    pos = np.array([[4, 4], [4, 4], [4, 4], [2, 7], [0, 0]] * 400)
    target = np.array([[4, 4], [6, 4], [4, 1], [0, 9], [1, 1]] * 400)
    got = random_shortest_actions(pos, target, rng).reshape(400, 5)
    # On the target: no-op; one shortest move: always it; two: each about half the time.
    assert (got[:, 0] == 0).all() and (got[:, 1] == 4).all() and (got[:, 2] == 2).all()
    assert set(got[:, 3]) == {3, 1} and set(got[:, 4]) == {4, 1}
    for col, (a, b) in ((3, (3, 1)), (4, (4, 1))):
        share = np.mean(got[:, col] == a)
        assert 0.4 < share < 0.6, (col, share)
        assert np.all((got[:, col] == a) | (got[:, col] == b))
    with pytest.raises(ValueError, match=r"must both be \[N, 2\] cells"):
        random_shortest_actions(pos[:, :1], target[:, :1], rng)


def test_label_targets_of_the_grids():
    room = envs.make("darkroom-hard").unwrapped
    goal = gw.cell_id(3, 12, 17)
    np.testing.assert_array_equal(room.label_targets([goal, goal], np.zeros((2, 2))),
                                  [[3, 12], [3, 12]])
    kd = envs.make("keydoor").unwrapped
    task = keydoor.task_id((1, 2), (7, 5))
    obs = np.array([[4, 4, 0], [1, 2, 1], [5, 5, 1]], np.float32)
    np.testing.assert_array_equal(kd.label_targets([task] * 3, obs), [[1, 2], [7, 5], [7, 5]])
    with pytest.raises(ValueError, match="one \\(x, y, has_key\\) row per task"):
        kd.label_targets([task], obs)
