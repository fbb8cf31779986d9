"""experiments.grid_memory: the episode-to-episode counts against hand-computed values, read
from evaluation reports written as ``rl_ring.eval`` writes them; the sources played."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import context_scaling as cs
from experiments import grid_memory as gm


def test_stage_stats_hand_computed():
    # 3 tasks x 5 episodes; the door is a return of 2, the key >= 1.
    r = np.array([[0, 1, 2, 2, 1],
                  [0, 0, 0, 0, 0],
                  [1, 1, 1, 2, 0]], float)
    key, door = gm.memory_stats("keydoor", r)["key"], gm.memory_stats("keydoor", r)["door"]
    assert key["ever"] == pytest.approx(2 / 3)
    assert key["first"] == 1.5  # episodes 2 and 1: median 1.5
    assert key["after"] == pytest.approx((3 / 3 + 3 / 4) / 2)
    # (e, e+1) pairs: row 0 hits at e = 1, 2, 3, each followed by a hit; row 2 at e = 0..3,
    # followed by 1, 1, 1, 0: 6 of 7. Misses before the end: row 0's e = 0 (then a hit),
    # row 1's four: 1 of 5.
    assert key["carry"] == pytest.approx(6 / 7)
    assert key["fresh"] == pytest.approx(1 / 5)
    assert key["rate"] == pytest.approx(8 / 15)
    assert door["ever"] == pytest.approx(2 / 3) and door["first"] == 3.5
    assert door["after"] == pytest.approx((1 / 2 + 0 / 1) / 2)
    assert door["carry"] == pytest.approx(1 / 3)
    assert door["fresh"] == pytest.approx(2 / 9)
    dark = gm.memory_stats("darkroom-hard", np.zeros((2, 3)))["goal"]
    assert dark["ever"] == 0 and dark["first"] is None and dark["after"] is None
    assert dark["carry"] is None and dark["fresh"] == 0
    with pytest.raises(ValueError, match="expected returns"):
        gm.stage_stats(np.zeros((3, 1)), 1.0)


def _report(path, returns, tasks, status="ok"):
    eps = [{"seed": 2000, "env_index": i, "trial": t, "task": tasks[i], "status": status,
            "return": float(returns[i][t])}
           for i in range(len(returns)) for t in range(len(returns[i]))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": "rl_ring.EvalReport", "episodes": eps}))


def _folder(tmp_path, name, returns, tasks, seeds=(0,)):
    folder = tmp_path / name
    for s in seeds:
        run = folder / f"ad-w4-seed{s}"
        _report(run / "eval" / "report.json", returns, tasks)
        (run / cs.TRAINED_FILE).write_text("{}")
    return folder


def test_main_reads_reports_plays_the_sources_and_refuses_bad_input(tmp_path):
    from envs.registry import task_subset

    tasks = task_subset("keydoor", "test", 2)
    a = _folder(tmp_path, "a", [[0, 1, 2, 2], [1, 1, 1, 1]], tasks, seeds=(0, 1))
    _report(a / "baseline_random" / "report.json", [[0, 0], [1, 0]], tasks)
    out = tmp_path / "out"
    assert gm.main(["--env", "keydoor", "--folders", str(a), "--out", str(out)]) == 0
    summary = json.loads((out / "grid_memory_keydoor.json").read_text())
    assert (out / "grid_memory_keydoor.png").stat().st_size > 0
    names = [p["name"] for p in summary["players"]]
    assert names == ["a ad-w4", "random", *cs.main_config("keydoor").learners]
    ad = summary["players"][0]
    assert ad["key"]["ever"] == 1.0 and ad["key"]["carry"] == 1.0
    assert ad["door"]["carry"] == 1.0 and ad["door"]["first"] == 3.0
    assert ad["door"]["carry_std"] == 0 and ad["door"]["rate"] == pytest.approx(2 / 8)
    assert len(ad["runs"]) == 2 and summary["episodes"] == 4
    for p in summary["players"][2:]:  # the sources find the key within 4 episodes here
        assert 0 < p["key"]["rate"] <= 1
    # The result files are not replaced without --overwrite; the folders are checked.
    assert gm.main(["--env", "keydoor", "--folders", str(a), "--out", str(out)]) == 2
    err_cases = [
        ["--folders", str(tmp_path / "missing")],
        ["--folders", str(tmp_path / "out")],  # no finished run in it
        ["--env", "bandit-hard", "--folders", str(a)],
    ]
    for extra in err_cases:
        assert gm.main([*extra, "--out", str(tmp_path / "o2"), "--no-sources"]) == 2
    assert not (tmp_path / "o2").exists()
    b = _folder(tmp_path, "b", [[0, 1, 2]], tasks[:1])
    assert gm.main(["--folders", str(a), str(b), "--out", str(tmp_path / "o3"),
                    "--no-sources"]) == 2  # other tasks / lengths than the first report
    bad = _folder(tmp_path, "bad", [[0, 1], [0, 0]], tasks)
    _report(bad / "ad-w4-seed0" / "eval" / "report.json", [[0, 1], [0, 0]], tasks,
            status="error")
    assert gm.main(["--folders", str(bad), "--out", str(tmp_path / "o4"),
                    "--no-sources"]) == 2
