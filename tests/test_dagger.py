"""DAgger-style data: a policy's own histories labelled by shadow source learners.

Oracles: every recorded transition replayed in a fresh env, and every label recomputed by
a fresh learner of the same name and seed fed the recorded transitions one by one; a tiny
trained AD model played and relabelled end to end through ``context_scaling``.
"""

import json
import shutil

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs.learners.dagger import labelled_rollouts
from envs.learners.history import make_learner
from envs.recording import episode_seed
from experiments import context_scaling as cs
from rl_ring.data import EpisodeStore
from rl_ring.data.samplers import HistoryConfig, HistorySampler
from rl_ring.eval import RandomPolicy

STEP = {0: (0, 0), 1: (0, 1), 2: (0, -1), 3: (-1, 0), 4: (1, 0)}


@pytest.mark.parametrize("learners,memory", [(("posterior", "optimistic"), 0),
                                             (("posterior-aligned", "optimistic-aligned"), 0),
                                             (("posterior", "optimistic-aligned"), 2)])
@pytest.mark.parametrize("env_id", ["keydoor", "darkroom-hard"])
def test_labels_are_the_sources_actions_on_the_policys_transitions(env_id, learners, memory):
    tasks = envs.task_split(env_id, "train")[:5]
    store = labelled_rollouts(RandomPolicy(gym.spaces.Discrete(5)), env_id, tasks, learners,
                              episodes=3, seed=4, rows=2, memory=memory)  # 3 batches of rows
    x = store.episode_extras
    assert store.num_episodes == 15 and store.metadata["histories"] == 5
    np.testing.assert_array_equal(x["history_id"], np.repeat(np.arange(5), 3))
    np.testing.assert_array_equal(x["task_id"], np.repeat(tasks, 3))
    np.testing.assert_array_equal(x["episode_in_history"], np.tile(np.arange(3), 5))
    meant, took = store.extras["intended_actions"], np.asarray(store.actions)
    assert 0.5 < (meant != took).mean() < 0.95  # random moves, the sources' own are not
    for h, task in enumerate(tasks):
        learner = make_learner(learners[h % 2], 5, 3, episode_seed(4, h, tag=2),
                               env_id=env_id, task=task, memory=memory)
        env = envs.make(env_id, task=task, seed=0)
        for e in range(3):
            ep = store.episode(3 * h + e)
            obs, _ = env.reset(seed=e)
            for t in range(len(ep["actions"])):
                np.testing.assert_allclose(ep["observations"][t], obs)
                learner.act(obs)
                assert ep["intended_actions"][t] == learner.intended
                o, r, te, tr, _ = env.step(int(ep["actions"][t]))
                assert (r, te, tr and not te) == (ep["rewards"][t], ep["terminals"][t],
                                                  ep["timeouts"][t])
                learner.update(obs, int(ep["actions"][t]), float(r), o, te, tr)
                obs = o
            learner.end_episode()
    # no label walks into a wall; the sampler trains on them
    size = 9 if env_id == "keydoor" else 17
    after = np.rint(store.observations[:, :2]).astype(int) + np.array([STEP[a] for a in meant])
    assert np.all((after >= 0) & (after < size))
    sampler = HistorySampler(store, HistoryConfig(batch_size=2, window_steps=40,
                                                  label_key="intended_actions"))
    assert sampler.batch_at(0).loss_mask.sum() == 80
    with pytest.raises(ValueError, match="expected tasks, learners"):
        labelled_rollouts(RandomPolicy(gym.spaces.Discrete(5)), env_id, [], learners,
                          episodes=3)


def test_dagger_step_end_to_end(tmp_path, capsys):
    out, work = tmp_path / "results", tmp_path / "runs"
    base = ["--tiny", "--env", "keydoor", "--seeds", "1", "--agents", "ad", "--windows", "2",
            "--eval-tasks", "2", "--out", str(out), "--workdir", str(work)]
    assert cs.main(base) == 0
    first = work / "tiny-keydoor-eval2"
    argv = base + ["--dagger-from", str(first), "--dagger-window", "2",
                   "--dagger-histories", "6", "--dagger-episodes", "3"]
    assert cs.main(argv) == 0
    folder = work / "tiny-keydoor-eval2-dagger2-dh6x3"
    assert "dagger: ad-w2-seed0 played 6 histories of 3 episodes" in capsys.readouterr().out
    store = EpisodeStore.load(folder / "data-ad")
    sources = EpisodeStore.load(first / "data-ad")
    assert store.num_episodes == sources.num_episodes + 18
    # the sources' part keeps its actions as labels; the model's part has the sources' own
    n = sources.num_steps
    np.testing.assert_array_equal(store.extras["intended_actions"][:n], sources.actions)
    assert (store.extras["intended_actions"][n:] != store.actions[n:]).any()
    trained = json.loads((folder / "ad-w2-seed0" / "train" / "config.json").read_text())
    assert '"label_key": "intended_actions"' in json.dumps(trained)
    assert (out / "context_scaling_keydoor_eval2_dagger2_dh6x3.json").exists()
    # round 2 from round 1: its data (sources and round 1's rollouts) and new rollouts
    # (labelled by one shadow source instead of the sources in turn)
    again = base + ["--dagger-from", str(folder), "--dagger-window", "2",
                    "--dagger-histories", "4", "--dagger-episodes", "2",
                    "--dagger-learners", "optimistic"]
    assert cs.main(again) == 0
    assert "the shadows (optimistic) would have" in capsys.readouterr().out
    second = EpisodeStore.load(work / "tiny-keydoor-eval2-dagger2r2-dh4x2-dloptimistic"
                               / "data-ad")
    assert second.num_episodes == store.num_episodes + 8
    np.testing.assert_array_equal(second.actions[:store.num_steps], store.actions)
    # aligned, forgetting shadows: named in the run folder
    step = cs.tiny_config("keydoor").replace(
        dagger_from=str(first), dagger_window=2, dagger_memory=16,
        dagger_learners=("posterior-aligned", "optimistic-aligned"))
    assert cs.config_suffix(step, cs.tiny_config("keydoor")) == (
        "-dagger2-dlposterior-aligned+optimistic-aligned-dm16")
    held = cs.tiny_config("darkroom-hard").replace(dagger_from=str(first), dagger_window=2,
                                                   dagger_withhold=64)
    assert cs.config_suffix(held, cs.tiny_config("darkroom-hard")) == "-dagger2-dw64"
    assert cs.config_suffix(held.replace(dagger_withhold_turns=2),
                            cs.tiny_config("darkroom-hard")) == "-dagger2-dw64t2"
    assert cs.dagger_round(cs.tiny_config("keydoor").replace(
        dagger_from="w/keydoor-dagger16r2", dagger_window=16)) == 3
    # a folder without that run, a renamed round, other sources' data: refused before
    # anything is written
    renamed = tmp_path / "renamed"
    shutil.copytree(folder, renamed)
    for src, extra, match in ((tmp_path, [], "no finished run ad-w2-seed0"),
                              (renamed, [], "a renamed folder?"),
                              (folder, ["--histories", "5"], "histories 8 (here 5)")):
        bad = base[:-4] + ["--dagger-from", str(src), "--dagger-window", "2", *extra,
                           "--out", str(tmp_path / "o2"), "--workdir", str(tmp_path / "w2")]
        assert cs.main(bad) == 2
        assert match in capsys.readouterr().err
        assert not (tmp_path / "o2").exists() and not (tmp_path / "w2").exists()
    for extra, match in ((["--dagger-window", "2"], "a DAgger step takes both"),
                         (["--dagger-from", str(first), "--dagger-window", "2",
                           "--dagger-episodes", "0"], "expected >= 1"),
                         (["--dagger-learners", "optimistic"], "give --dagger-from"),
                         (["--dagger-memory", "4"], "--dagger-memory 4: expected episodes"),
                         (["--dagger-from", str(first), "--dagger-window", "2",
                           "--dagger-memory", "-1"], "--dagger-memory -1: expected"),
                         (["--dagger-from", str(first), "--dagger-window", "2",
                           "--dagger-learners", "ucb"], "--dagger-learners ucb: expected"),
                         (["--dagger-from", str(first), "--dagger-window", "2",
                           "--dagger-withhold", "8"], "on a Dark Room family (here keydoor)"),
                         (["--dagger-withhold", "8"], "--dagger-withhold 8: expected"),
                         (["--dagger-withhold-turns", "1"],
                          "--dagger-withhold-turns 1: expected")):
        assert cs.main(base[:-4] + extra + ["--out", str(tmp_path / "o3"), "--workdir",
                                            str(tmp_path / "w3")]) == 2
        assert match in capsys.readouterr().err


class _GoalSeeker:
    """Walks straight to each row's goal (told by the test); keeps the actions the driver
    reports executing, as a context policy's context does."""

    def __init__(self, goals):
        self.goals, self.executed = goals, []

    def reset(self, num_envs, *, seeds):
        del seeds
        self.n = num_envs

    def begin_trial(self, env_mask):
        self.episode = [[] for _ in range(self.n)]
        self.executed.append(self.episode)

    def act(self, obs, env_mask):
        from envs.gridworld import step_towards

        return np.array([step_towards((int(o[0]), int(o[1])), g) if m else 0
                         for o, g, m in zip(obs, self.goals, env_mask, strict=True)])

    def observe(self, reward, terminated, truncated, env_mask, *, actions=None):
        del reward, terminated, truncated
        assert actions is not None  # a driver that overrides moves says so
        for i in np.flatnonzero(env_mask):
            self.episode[i].append(int(actions[i]))


def test_withheld_goal_stays_unfound_and_the_context_takes_the_executed_moves():
    env_id, episodes = "darkroom-hard", 6
    tasks = envs.task_split(env_id, "train")[:4]
    goals = [(t % 17, t // 17) for t in tasks]
    policy = _GoalSeeker(goals)
    store = labelled_rollouts(policy, env_id, tasks, ["posterior-aligned"], episodes=episodes,
                              seed=3, withhold=4)
    x = store.episode_extras
    held = np.asarray(x["goal_withheld"], bool).reshape(4, episodes)
    drawn = [np.random.default_rng(episode_seed(3, h, tag=3)).integers(5) for h in range(4)]
    np.testing.assert_array_equal(held.sum(1), drawn)  # W_h uniform in [0, 4], a prefix
    assert (held[:, :-1] >= held[:, 1:]).all() and 0 < held.sum() < held.size
    ret = store.episode_returns.reshape(4, episodes)
    # the seeker finds its goal in every episode it is not withheld from, none other
    np.testing.assert_array_equal(ret, np.where(held, 0.0, 1.0))
    for h in range(4):
        for e in range(episodes):
            ep = store.episode(h * episodes + e)
            cells = {tuple(np.rint(o).astype(int)) for o in ep["next_observations"]}
            assert (goals[h] in cells) != held[h, e]
            # the record and the policy's context hold the moves executed, not the ones meant
            assert policy.executed[e][h] == ep["actions"].tolist()
            if held[h, e]:
                assert (ep["actions"] != ep["intended_actions"]).any()
    # a fresh shadow fed the recorded (executed) moves gives the same labels, and never
    # rules out a withheld goal
    for h, task in enumerate(tasks):
        shadow = make_learner("posterior-aligned", 5, episodes, episode_seed(3, h, tag=2),
                              env_id=env_id, task=task)
        for e in range(episodes):
            ep = store.episode(h * episodes + e)
            for t in range(len(ep["actions"])):
                shadow.act(ep["observations"][t])
                assert ep["intended_actions"][t] == shadow.intended
                shadow.update(ep["observations"][t], int(ep["actions"][t]),
                              float(ep["rewards"][t]), ep["next_observations"][t], False,
                              bool(ep["timeouts"][t]))
            shadow.end_episode()
            if held[h, e]:
                assert task in shadow.candidates[0]
    # turned away once, the goal comes back in the next episode: the seeker is turned away
    # in every withheld episode, so it is withheld from one episode at most
    again = labelled_rollouts(_GoalSeeker(goals), env_id, tasks, ["posterior-aligned"],
                              episodes=episodes, seed=3, withhold=4, withhold_turns=1)
    once = np.asarray(again.episode_extras["goal_withheld"], bool).reshape(4, episodes)
    np.testing.assert_array_equal(once, held & (np.arange(episodes) < 1))
    np.testing.assert_array_equal(again.episode_returns.reshape(4, episodes),
                                  np.where(once, 0.0, 1.0))
    for bad in ({"withhold": -1}, {"withhold": 2, "env_id": "keydoor"},
                {"withhold_turns": 1}, {"withhold": 2, "withhold_turns": -1}):
        kw = {"env_id": env_id, **bad}
        with pytest.raises(ValueError, match="withhold(_turns)?="):
            labelled_rollouts(policy, kw.pop("env_id"), tasks, ["posterior"], episodes=2, **kw)

