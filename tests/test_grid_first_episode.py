"""Episode 1 of grid AD models, their sources and random actions
(experiments/grid_first_episode.py)."""

import json

import numpy as np
import pytest

from envs import gridworld as gw
from experiments import context_scaling as cs
from experiments import grid_first_episode as gfe
from rl_ring.data import EpisodeStore


def test_episode_stats_by_hand():
    # right (moves), right (into the wall: stays), no-op, left (back to the start)
    before = [(7, 4), (8, 4), (8, 4), (8, 4)]
    after = [(8, 4), (8, 4), (8, 4), (7, 4)]
    s = gfe.episode_stats(np.array([7, 4]), before, [4, 4, 0, 3], after, 1.0, optimal=2.0)
    assert s["cells"] == 2  # (7, 4) and (8, 4)
    assert s["wall_moves"] == pytest.approx(1 / 3)  # 1 of the 3 moves
    assert s["noops"] == pytest.approx(1 / 4)
    assert (s["return"], s["found"], s["solved"]) == (1.0, 1.0, 0.0)
    assert s["actions"].tolist() == [1, 0, 0, 1, 2]
    done = gfe.episode_stats(np.array([4, 4]), [(4, 4)], [1], [(4, 5)], 2.0, optimal=2.0)
    assert (done["solved"], done["wall_moves"], done["cells"]) == (1.0, 0.0, 2.0)
    summary = gfe.summarize([s, done])
    assert summary["cells"] == 2.0 and summary["solved"] == 0.5 and summary["episodes"] == 2
    assert summary["actions"]["right"] == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="expected one of each per step"):
        gfe.episode_stats(np.array([4, 4]), [(4, 4)], [1, 2], [(4, 5)], 0.0, optimal=1.0)


def test_wall_actions_by_hand():
    pos = np.array([[0, 0], [4, 4], [8, 3], [2, 8]])
    walls = gfe.wall_actions(pos, 9)  # noop, up (y+1), down (y-1), left (x-1), right (x+1)
    assert walls.tolist() == [[False, False, True, True, False],
                              [False, False, False, False, False],
                              [False, False, False, False, True],
                              [False, True, False, False, False]]
    for (x, y), row in zip(pos, walls, strict=True):  # the grid's own moves agree
        assert [gw.move((x, y), a, 9) == (x, y) and a != 0 for a in range(5)] == row.tolist()


@pytest.mark.parametrize("env", cs.GRID_ENVS)
def test_sources_never_walk_into_a_wall_and_random_actions_do(env):
    from envs.registry import task_subset

    tasks = task_subset(env, "test", 12)
    cfg = cs.main_config(env)
    for i, learner in enumerate(cfg.learners):
        s = gfe.summarize(gfe.source_first_episodes(cfg, learner, tasks, seed=5 + i))
        assert s["episodes"] == 12 and s["wall_moves"] == 0.0 and s["cells"] > 10
    import gymnasium as gym

    from rl_ring.eval import RandomPolicy

    space = gym.spaces.Discrete(gw.NUM_ACTIONS)
    random = gfe.play_first_episode(RandomPolicy(space), env, tasks, seed=0)
    again = gfe.play_first_episode(RandomPolicy(space), env, tasks, seed=0)
    assert [e["return"] for e in random] == [e["return"] for e in again]
    assert [e["cells"] for e in random] == [e["cells"] for e in again]
    s = gfe.summarize(random)
    assert 0 < s["noops"] < 0.4 and 0 <= s["wall_moves"] < 0.5
    assert sum(s["actions"].values()) == pytest.approx(1.0)


def test_tiny_keydoor_run_plays_its_first_episode(tmp_path, capsys):
    out, work = tmp_path / "results", tmp_path / "runs"
    argv = ["--tiny", "--env", "keydoor", "--seeds", "1", "--agents", "ad", "--windows", "2",
            "--eval-tasks", "3", "--source-noise", "0.2", "--source-labels", "intended",
            "--out", str(out), "--workdir", str(work)]
    assert cs.main(argv) == 0
    folder = work / "tiny-keydoor-eval3-noise0.2-intended"
    assert json.loads((out / "context_scaling_keydoor_eval3_noise0.2_intended.json")
                      .read_text())["eval_tasks"] == 3
    # trained on what the noisy sources meant, not on what they took
    store = EpisodeStore.load(folder / "data-ad")
    assert (store.extras["intended_actions"] != store.actions).mean() > 0.1
    trained = json.loads((folder / "ad-w2-seed0" / "train" / "config.json").read_text())
    assert '"label_key": "intended_actions"' in json.dumps(trained)
    assert gfe.main(["--env", "keydoor", "--tasks", "4", "--folders", str(folder),
                     "--out", str(out)]) == 0
    summary = json.loads((out / "grid_first_episode_keydoor.json").read_text())
    assert (out / "grid_first_episode_keydoor.png").stat().st_size > 10_000
    names = [p["name"] for p in summary["players"]]
    assert names == ["posterior", "optimistic", "random",
                     "tiny-keydoor-eval3-noise0.2-intended w2"]
    run = summary["players"][-1]
    assert [r["run"] for r in run["runs"]] == ["ad-w2-seed0"] and run["window"] == 2
    assert run["episodes"] == 4 and 1 <= run["cells"] <= 51
    assert set(run["greedy"]) == set(gfe.STATS) and 1 <= run["greedy"]["cells"] <= 51
    tf = run["runs"][0]["teacher_forced"]
    assert tf["histories"] >= 1 and tf["wall_steps"] > 0 and 0 <= tf["wall_mass"] <= 1
    assert 0 <= tf["accuracy"] <= 1
    # the results are not overwritten, and a folder without a finished run is an error
    assert gfe.main(["--env", "keydoor", "--tasks", "4", "--out", str(out)]) == 2
    assert "exist" in capsys.readouterr().err
    assert gfe.main(["--env", "keydoor", "--tasks", "4", "--folders", str(tmp_path),
                     "--out", str(tmp_path / "o2")]) == 2
    assert "no finished AD run" in capsys.readouterr().err
    assert gfe.main(["--env", "bandit-hard", "--out", str(tmp_path / "o3")]) == 2
    assert "expected a grid family" in capsys.readouterr().err
