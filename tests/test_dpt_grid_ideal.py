"""The perfectly trained DPT's play on Dark Room hard (experiments/dpt_grid_ideal.py)."""

import json

import numpy as np
import pytest

from envs import gridworld as gw
from experiments import context_scaling as cs
from experiments import dpt_grid_ideal as ideal

CENTRE = gw.cell_id(8, 8, 17)


def test_labels_by_hand():
    x_first, anyway = ideal.label_table("x-first"), ideal.label_table("any-shortest")
    to = gw.cell_id(10, 5, 17)  # 2 right, 3 down of the centre
    assert x_first[CENTRE, to].tolist() == [0, 0, 0, 0, 1]  # right first
    assert anyway[CENTRE, to].tolist() == [0, 0, 0.5, 0, 0.5]  # down or right
    assert x_first[to, to].tolist() == anyway[to, to].tolist() == [1, 0, 0, 0, 0]
    up = gw.cell_id(8, 12, 17)
    assert x_first[CENTRE, up].tolist() == anyway[CENTRE, up].tolist() == [0, 1, 0, 0, 0]
    np.testing.assert_allclose(anyway.sum(axis=2), 1.0)
    np.testing.assert_allclose(x_first.sum(axis=2), 1.0)
    with pytest.raises(ValueError, match="expected one of x-first, any-shortest"):
        ideal.label_table("diagonal")


def test_action_probabilities_by_hand():
    weights = np.ones((1, 17 * 17))
    weights[0, CENTRE] = 0.0  # the 288 goals
    # x-first from the centre: up / down only for the 8 goals above / below in its column,
    # left / right for the 136 on either side; never the no-op.
    p = ideal.action_probs(ideal.label_table("x-first"), np.array([CENTRE]), weights)
    assert p[0] == pytest.approx(np.array([0, 8, 8, 136, 136]) / 288)
    # any-shortest: each of the four moves shortens the way to 8 (column) + 64 x 2 / 2 goals
    # of its quadrants (a quadrant's goals split between its two moves): 1/4 each.
    p = ideal.action_probs(ideal.label_table("any-shortest"), np.array([CENTRE]), weights)
    assert p[0] == pytest.approx([0, 0.25, 0.25, 0.25, 0.25])
    # one goal left in the posterior: its label
    one = np.zeros_like(weights)
    one[0, gw.cell_id(3, 8, 17)] = 1.0
    p = ideal.action_probs(ideal.label_table("x-first"), np.array([CENTRE]), one)
    assert p[0].tolist() == [0, 0, 0, 1, 0]


def test_play_exploits_a_found_goal_and_excludes_visited_cells():
    goals = cs.heldout_tasks(cs.main_config("darkroom-hard"))
    table = ideal.label_table("any-shortest")
    for window in (4, 64):
        out = ideal.play(goals, table, window=window, episodes=24, seed=3)
        r = out["returns"]
        assert r.shape == (len(goals), 24) and set(np.unique(r)) <= {0.0, 1.0}
        hit = r > 0
        first = np.where(hit.any(1), hit.argmax(1), 24)
        for i, f in enumerate(first):  # once the reward is in context, every episode finds it
            assert r[i, f:].all()
        assert 0 < hit.any(1).mean() < 1
        assert 1 < out["cells_visited"][0] <= 21  # the start and at most 20 moves
    again = ideal.play(goals, table, window=4, episodes=24, seed=3)
    assert np.array_equal(again["returns"], ideal.play(goals, table, window=4, episodes=24,
                                                       seed=3)["returns"])
    # A goal next to the centre: a shortest-path walker that knows nothing goes there
    # with probability >= 1/4 on its first step, so within 24 episodes almost surely.
    near = ideal.play([gw.cell_id(9, 8, 17)] * 8, table, window=4, episodes=24, seed=0)
    assert near["returns"][:, -1].all()


def test_main_writes_results_and_keeps_them(tmp_path, capsys):
    argv = ["--episodes", "6", "--seeds", "2", "--windows", "4", "--labels", "x-first",
            "--out", str(tmp_path)]
    assert ideal.main(argv) == 0
    summary = json.loads((tmp_path / "dpt_grid_ideal.json").read_text())
    assert (tmp_path / "dpt_grid_ideal.png").stat().st_size > 10_000
    (c,) = summary["configs"]
    assert (c["labels"], c["window"], summary["goals"]) == ("x-first", 4, 58)
    assert len(c["final"]["per_seed"]) == 2 and len(c["curve"]) == 6
    assert c["final"]["mean"] == pytest.approx(np.mean(c["final"]["per_seed"]))
    assert summary["trained"] == []
    capsys.readouterr()
    assert ideal.main(argv) == 2  # results exist
    assert "--overwrite" in capsys.readouterr().err
    assert ideal.main([*argv, "--overwrite", "--folders", str(tmp_path / "none")]) == 2
    capsys.readouterr()
    assert ideal.main([*argv, "--overwrite", "--windows", "0"]) == 2
    assert "--windows 0: expected integers >= 1" in capsys.readouterr().err
    assert ideal.main([*argv, "--overwrite", "--labels", "diagonal"]) == 2
    assert "--labels 'diagonal'" in capsys.readouterr().err
