"""experiments.dagger_search: fruitless-search shares of DAgger data, against hand counts."""

import json

import numpy as np
import pytest

from experiments import dagger_search as ds
from rl_ring.data import EpisodeStore


def _store():
    # 3 histories x 3 episodes x 2 steps; positions (x, y) per step, returns per episode
    pos = [[(8, 7)] * 2, [(8, 7)] * 2, [(8, 7)] * 2,  # history 0: left out (not the last 2)
           [(8, 7), (5, 5)], [(8, 9), (8, 8)], [(8, 9), (7, 8)],  # 1: goal (8, 8), found in ep 1
           [(1, 0), (0, 1)], [(3, 3), (2, 2)], [(0, 0), (1, 1)]]  # 2: goal (0, 0), never found
    rets = [0, 0, 0, 0, 1, 0, 0, 0, 0]
    obs = np.asarray(pos, np.float32).reshape(-1, 2)
    rewards = np.zeros(18, np.float32)
    rewards[np.flatnonzero(rets) * 2 + 1] = 1
    ends = np.zeros(18, bool)
    ends[1::2] = True
    return EpisodeStore(
        observations=obs, actions=np.zeros(18, np.int64), rewards=rewards,
        terminals=np.zeros(18, bool), timeouts=ends, episode_starts=np.arange(0, 19, 2),
        episode_extras={"history_id": np.repeat(np.arange(3), 3),
                        "task_id": np.repeat([8 * 17 + 8, 8 * 17 + 8, 0], 3),
                        "episode_in_history": np.tile(np.arange(3), 3)})


def test_search_stats_match_hand_counts():
    got = ds.search_stats(_store(), 17, 2)
    # fruitless: history 1's episode 0, history 2's three; the find and after it are not
    assert got["episodes"] == 6 and got["search_share"] == pytest.approx(4 / 6)
    # their 8 steps: (8, 7) next to (8, 8); (1, 0), (0, 1) next to (0, 0); (0, 0) is on it
    assert got["search_steps"] == 8 and got["adjacent_share"] == pytest.approx(3 / 8)
    assert got["chance_adjacent"] == pytest.approx((4 + 2) / 2 / 288)
    assert ds.search_stats(_store(), 17, 3)["search_share"] == pytest.approx(7 / 9)
    with pytest.raises(ValueError, match="--histories 4: expected 1 to 3"):
        ds.search_stats(_store(), 17, 4)


def test_main_writes_results_and_refuses_bad_input(tmp_path, capsys):
    run = tmp_path / "run"
    _store().save(run / "data-ad")
    out = tmp_path / "out"
    argv = ["--folders", str(run), "--histories", "2", "--out", str(out), "--tag", "t"]
    assert ds.main(argv) == 0
    (row,) = json.loads((out / "dagger_search_t.json").read_text())["rows"]
    assert row["search_share"] == pytest.approx(4 / 6)
    assert ds.main(argv) == 2  # results there: not overwritten
    assert "--overwrite" in capsys.readouterr().err
    assert ds.main([*argv, "--overwrite", "--folders", str(tmp_path)]) == 2
    assert "no data-ad/store.json" in capsys.readouterr().err
    assert ds.main([*argv, "--overwrite", "--env", "keydoor"]) == 2
    assert "Dark Room family" in capsys.readouterr().err
