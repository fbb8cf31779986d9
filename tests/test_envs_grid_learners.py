"""Grid-world source algorithms: the noisy oracle and posterior sampling.

Oracles: hand-computed schedules, the exhaustive optimal returns of the registry, shortest
path lengths, and the visited-cell sets recomputed from the recorded episodes.
"""

import numpy as np
import pytest

import envs
from envs import gridworld as gw
from envs import keydoor
from envs.learners.grid import NoiseSchedule, NoisyOracle, PosteriorSampling, step_towards
from envs.learners.history import collect_histories, make_learner
from envs.recording import run_episode


def test_noise_schedule_hand_values_and_errors():
    s = NoiseSchedule(start=1.0, end=0.2, decay_fraction=0.5)
    got = [s.at(e, 10) for e in range(8)]
    np.testing.assert_allclose(got, [1.0, 0.84, 0.68, 0.52, 0.36, 0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="NoiseSchedule.start"):
        NoiseSchedule(start=1.5)
    with pytest.raises(ValueError, match="decay_fraction"):
        NoiseSchedule(decay_fraction=0.0)


def test_step_towards_walks_every_shortest_path_and_varies():
    rng = np.random.default_rng(0)
    for pos in [(0, 0), (4, 4), (8, 3), (2, 7)]:
        for target in [(0, 0), (8, 8), (4, 1), (2, 7)]:
            p, steps = pos, 0
            while p != target:
                a = step_towards(p, target, rng)
                assert gw.manhattan(gw.move(p, a, 9), target) == gw.manhattan(p, target) - 1
                p, steps = gw.move(p, a, 9), steps + 1
            assert steps == gw.manhattan(pos, target)
            assert step_towards(target, target, rng) == 0
    # Both moves (up and right) are drawn at the first step of a diagonal walk, about evenly.
    first = [step_towards((4, 4), (8, 8), rng) for _ in range(400)]
    assert set(first) == {1, 4}
    assert 160 < first.count(1) < 240


@pytest.mark.parametrize("env_id", ["darkroom", "keydoor"])
def test_noisy_oracle_without_noise_is_optimal(env_id):
    tasks = envs.task_split(env_id, "all")
    if env_id == "keydoor":
        tasks = tasks[::97]
    env = envs.make(env_id)
    for task in tasks:
        oracle = NoisyOracle(env_id, task, 5, 1, seed=task, noise=NoiseSchedule(0.0, 0.0))
        ep = run_episode(env, oracle.act, seed=0, options={"task": task})
        assert ep["rewards"].sum() == envs.optimal_return(env_id, task)
        if env_id == "keydoor":
            key, door = keydoor.key_door(task)
            assert len(ep["rewards"]) == gw.manhattan((4, 4), key) + gw.manhattan(key, door)


def test_noisy_oracle_histories_follow_the_schedule():
    sched = NoiseSchedule(start=1.0, end=0.0, decay_fraction=0.5)
    store = collect_histories("darkroom", "noisy_oracle", tasks=[0, 80], episodes_per_history=10,
                              histories=2, noise=sched)
    want = [sched.at(e, 10) for e in range(10)] * 2
    np.testing.assert_allclose(store.episode_extras["policy_noise"], want, atol=1e-7)
    assert store.metadata["noise"] == {"start": 1.0, "end": 0.0, "decay_fraction": 0.5}
    ret = store.episode_returns.reshape(2, 10)
    # Noise-free episodes (from episode 5 on) are optimal; the first (all random) are not.
    for h, task in enumerate([0, 80]):
        np.testing.assert_array_equal(ret[h, 5:], envs.optimal_return("darkroom", task))
    assert ret[:, 0].max() < 12


@pytest.mark.parametrize("learner", ["noisy_oracle", "posterior", "optimistic"])
def test_grid_sources_record_what_they_meant_before_their_noise(learner):
    # Key-to-Door task 5: from every cell the intended move walks towards the key, then the
    # door (oracle), or towards a cell not ruled out (posterior): never into a wall.
    noisy = collect_histories("keydoor", learner, tasks=[5, 11], episodes_per_history=4,
                              histories=2, noise=NoiseSchedule(start=0.4, end=0.4), seed=2)
    clean = collect_histories("keydoor", learner, tasks=[5, 11], episodes_per_history=4,
                              histories=2, noise=NoiseSchedule(start=0.0, end=0.0), seed=2)
    np.testing.assert_array_equal(clean.extras["intended_actions"], clean.actions)
    meant, took = noisy.extras["intended_actions"], np.asarray(noisy.actions)
    assert meant.dtype == np.int64 and meant.shape == took.shape
    # 40% random steps, a random step equal to the intended one a fifth of the time
    assert 0.2 < (meant != took).mean() < 0.45
    pos = np.rint(noisy.observations[:, :2]).astype(int)
    step = {0: (0, 0), 1: (0, 1), 2: (0, -1), 3: (-1, 0), 4: (1, 0)}
    after = pos + np.array([step[int(a)] for a in meant])
    assert np.all((after >= 0) & (after < 9))  # no intended move into the wall
    if learner == "noisy_oracle":  # the oracle's intention is a shortest-path move
        env = envs.make("keydoor").unwrapped
        tasks = np.repeat(noisy.episode_extras["task_id"], noisy.episode_lengths)
        target = env.label_targets(tasks, np.asarray(noisy.observations))
        before = np.abs(target - pos).sum(1)
        np.testing.assert_array_equal(np.abs(target - after).sum(1), np.maximum(before - 1, 0))


def _darkroom_history(goal: int, seed: int, episodes: int, nearest: bool = False):
    env = envs.make("darkroom")
    learner = PosteriorSampling("darkroom", 5, episodes, seed, nearest=nearest)
    eps = []
    for e in range(episodes):
        targets = []

        def act(obs, targets=targets):
            a = learner.act(obs)
            targets.append(learner.target)
            return a

        ep = run_episode(env, act, seed=e, options={"task": goal}, learn=learner.update)
        learner.end_episode()
        ep["targets"] = targets
        eps.append(ep)
    return eps


def test_posterior_sampling_targets_only_cells_not_ruled_out():
    goal = gw.cell_id(8, 0, 9)
    visited = set()
    found = None
    for ep in _darkroom_history(goal, seed=3, episodes=12):
        for obs, r, target in zip(ep["observations"], ep["rewards"], ep["targets"], strict=True):
            cell = (int(obs[0]), int(obs[1]))
            if found is not None:
                assert target == found
            else:
                # Every draw is a cell no earlier step has visited without a reward.
                assert target not in visited and target != (4, 4)
            if r > 0 and found is None:
                found = cell
            visited.add(cell)
    assert found == (8, 0)


def test_optimistic_learner_walks_to_the_nearest_cell_not_ruled_out():
    goal = gw.cell_id(8, 8, 9)
    visited, prev_target, draws = set(), None, 0
    for ep in _darkroom_history(goal, seed=5, episodes=10, nearest=True):
        prev_target = None
        for obs, r, target in zip(ep["observations"], ep["rewards"], ep["targets"], strict=True):
            pos = (int(obs[0]), int(obs[1]))
            if r == 0 and target != prev_target and target != (8, 8):
                # A new target: at the smallest distance among the cells not visited yet.
                cands = [gw.cell_xy(c, 9) for c in range(81) if c != 40]
                cands = [c for c in cands if c not in visited]
                assert gw.manhattan(pos, target) == min(gw.manhattan(pos, c) for c in cands)
                draws += 1
            prev_target = target
            visited.add(pos)
    assert draws > 10


def test_posterior_sampling_ignores_the_goal_until_found_then_is_optimal():
    a, b = gw.cell_id(0, 8, 9), gw.cell_id(8, 0, 9)
    ha, hb = _darkroom_history(a, 7, 15), _darkroom_history(b, 7, 15)
    flat = [np.concatenate([ep[k] for ep in h]) for h in (ha, hb) for k in ("actions", "rewards")]
    acts_a, rew_a, acts_b, rew_b = flat
    first = min(np.flatnonzero(rew_a)[0], np.flatnonzero(rew_b)[0])
    # Same seed, different goals: identical behaviour up to the first reward of either.
    np.testing.assert_array_equal(acts_a[: first + 1], acts_b[: first + 1])
    for h, goal in ((ha, a), (hb, b)):
        returns = [ep["rewards"].sum() for ep in h]
        k = next(i for i, r in enumerate(returns) if r > 0)
        assert all(r == envs.optimal_return("darkroom", goal) for r in returns[k + 1:])


def test_posterior_sampling_keydoor_finds_key_then_door():
    task = keydoor.task_id((1, 7), (6, 2))
    store = collect_histories("keydoor", "posterior", tasks=[task], episodes_per_history=40,
                              histories=1)
    returns = store.episode_returns
    lengths = store.episode_lengths
    k = int(np.flatnonzero(returns == 2)[0])
    assert k < 39
    np.testing.assert_array_equal(returns[k + 1:], 2.0)
    np.testing.assert_array_equal(lengths[k + 1:], 6 + 10)  # centre -> key -> door


@pytest.mark.parametrize("name", ["posterior-aligned", "optimistic-aligned"])
def test_aligned_shadow_reaims_where_the_agents_move_heads(name):
    size = 17
    learner = make_learner(name, 5, 4, seed=2, env_id="darkroom-hard")
    here = np.array([8.0, 8.0], np.float32)
    learner.act(here)
    target = learner.target
    # A move towards the target keeps it; so does a move that stays put (a wall, no-op).
    toward = gw.move((8, 8), step_towards((8, 8), target, np.random.default_rng(0)), size)
    nxt = np.array(toward, np.float32)
    learner.update(here, 1, 0.0, nxt, False, False)
    assert learner.target == target
    learner.update(nxt, 0, 0.0, nxt, False, False)
    assert learner.target == target
    # A move away: re-aimed at a cell not ruled out that the move brought closer.
    was = toward
    away = next(a for a in (1, 2, 3, 4)
                if gw.manhattan(gw.move(was, a, size), target) > gw.manhattan(was, target))
    pos = gw.move(was, away, size)
    learner.update(np.array(was, np.float32), away, 0.0, np.array(pos, np.float32), False, False)
    new = learner.target
    assert new != target and gw.manhattan(pos, new) < gw.manhattan(was, new)
    ruled_out = {(8, 8), was, pos}
    assert new not in ruled_out
    if name == "optimistic-aligned":  # the nearest of those cells
        pool = [gw.cell_xy(c, size) for c in range(size * size)]
        pool = [c for c in pool if c not in ruled_out
                and gw.manhattan(pos, c) < gw.manhattan(was, c)]
        assert gw.manhattan(pos, new) == min(gw.manhattan(pos, c) for c in pool)
    # Its next label continues the walk.
    learner.act(np.array(pos, np.float32))
    assert gw.manhattan(gw.move(pos, learner.intended, size), new) < gw.manhattan(pos, new)


@pytest.mark.parametrize("plain", ["posterior", "optimistic"])
def test_aligned_shadow_acting_alone_plays_as_the_plain_learner(plain):
    tasks = envs.task_split("darkroom-hard", "train")[:3]
    a = collect_histories("darkroom-hard", plain, tasks=tasks, episodes_per_history=30,
                          histories=3, seed=1)
    b = collect_histories("darkroom-hard", f"{plain}-aligned", tasks=tasks,
                          episodes_per_history=30, histories=3, seed=1)
    np.testing.assert_array_equal(np.asarray(a.actions), np.asarray(b.actions))
    assert a.episode_returns.sum() > 0


def test_posterior_sampling_with_a_memory_forgets_older_episodes():
    size, goal = 17, (3, 5)
    here = np.array([8.0, 8.0], np.float32)

    def arrive(learner, cell, reward):
        learner.update(here, 1, reward, np.array(cell, np.float32), False, False)

    short, whole = (make_learner("optimistic", 5, 10, seed=0, env_id="darkroom-hard",
                                 memory=m) for m in (2, 0))
    for learner in (short, whole):
        arrive(learner, (8, 9), 0.0)          # episode 0: (8, 9) ruled out
        learner.end_episode()
        arrive(learner, goal, 1.0)            # episode 1: the goal found...
        arrive(learner, goal, 0.0)            # ...and arrived on again without reward
        arrive(learner, (8, 7), 0.0)          # (8, 7) ruled out
        learner.end_episode()                 # episode 2 remembers episodes 1-2
    cell = lambda xy: gw.cell_id(*xy, size)  # noqa: E731
    assert short.found[0] == whole.found[0] == goal
    assert cell((8, 9)) in short.candidates[0] and cell((8, 9)) not in whole.candidates[0]
    assert cell((8, 7)) not in short.candidates[0]
    short.end_episode()                       # episode 3 remembers 2-3: the goal is forgotten
    whole.end_episode()
    assert short.found[0] is None and whole.found[0] == goal
    # forgotten, but never ruled out: the goal cell is a candidate again, (8, 7) too
    assert {cell(goal), cell((8, 7)), cell((8, 9))} <= short.candidates[0]
    assert len(short.candidates[0]) == size * size - 1
    short.act(here)
    assert gw.manhattan((8, 8), short.target) == 1  # the nearest cells, none ruled out
    with pytest.raises(ValueError, match="memory=3 is for posterior sampling"):
        make_learner("noisy_oracle", 5, 10, seed=0, env_id="darkroom-hard", task=1, memory=3)


def test_make_learner_errors_name_what_is_missing():
    with pytest.raises(ValueError, match="needs env_id"):
        make_learner("posterior", 5, 10, 0)
    with pytest.raises(ValueError, match="pass task="):
        make_learner("noisy_oracle", 5, 10, 0, env_id="darkroom")
    with pytest.raises(ValueError, match="grid learners support"):
        make_learner("posterior", 5, 10, 0, env_id="bandit")
    with pytest.raises(ValueError, match="not a darkroom goal"):
        make_learner("noisy_oracle", 5, 10, 0, env_id="darkroom", task=40)
