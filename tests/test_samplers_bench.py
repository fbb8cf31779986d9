"""The data benchmark's tiny variant: shapes it reports, the memory-map claim, the train
comparison."""

import json

import numpy as np
import pytest

from experiments.bench import data as bd


@pytest.fixture(scope="module")
def quick_result(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    old = bd.ROOT
    bd.ROOT = root  # no results/train.json there: the comparison must say "pending"
    try:
        cfg = bd.BenchDataConfig(quick=True, seconds=0.03, out=str(root / "results" / "d.json"))
        return root, bd.run(cfg)
    finally:
        bd.ROOT = old


def test_bench_reports_the_default_shapes(quick_result):
    root, res = quick_result
    rows = {r["name"]: r for r in res["samplers"]}
    # tokens per batch by hand: rows x steps x tokens per step (padding-free here)
    expect = {
        "AT default": (8, 4 * 1000 * 4),
        "AT paper (32 x 1000 steps)": (1, 32 * 1000 * 4),
        "AD default": (8, 1000),
        "AD 1000 episodes": (1, 1000 * 20),
        "DT default": (64, 20 * 3),
        "DT packed 64 x 20 steps": (8, 64 * 20 * 3),
        "BC-10% default": (64, 20 * 2),
    }
    assert set(rows) == set(expect)
    for name, shape in expect.items():
        assert tuple(rows[name]["batch_shape"]) == shape, name
        assert rows[name]["tokens_per_batch"] == shape[0] * shape[1]
        assert rows[name]["tokens_per_s"] == pytest.approx(
            rows[name]["tokens_per_batch"] / rows[name]["seconds_per_batch_median"]
        )
    assert rows["AT default"]["valid_fraction"] == 1.0  # all episodes have 1000 steps
    assert rows["AD default"]["feature_dim"] == 2 + 5 + 1 + 1
    on_disk = json.loads((root / "results" / "d.json").read_text())
    assert on_disk["samplers"] == json.loads(json.dumps(res["samplers"]))
    assert (root / "results" / "d.png").stat().st_size > 0
    assert sorted(p.name for p in (root / "results").iterdir()) == ["d.json", "d.png"]


def test_bench_memory_map_is_not_loaded_whole(quick_result):
    _, res = quick_result
    mem = res["memory"]
    # Loading into RAM costs the whole store; mapping it costs (almost) nothing until read.
    assert mem["ram"]["loaded"]["VmRSS"] > 0.9 * mem["store_mib"]
    assert mem["mmap"]["loaded"]["VmRSS"] < 0.1 * mem["store_mib"]


def test_train_comparison(quick_result, tmp_path, monkeypatch):
    _, res = quick_result
    assert res["train_comparison"]["status"].startswith("pending")
    monkeypatch.setattr(bd, "ROOT", tmp_path)
    (tmp_path / "results").mkdir()
    train = {"runs": [{"name": "a", "tokens_per_s": 1000.0}, {"x": {"tokens_per_s": 4000.0}}]}
    (tmp_path / "results" / "train.json").write_text(json.dumps(train))
    comp = bd.train_comparison(res["samplers"])
    assert comp["status"] == "measured" and comp["train_tokens_per_s_max"] == 4000.0
    assert comp["train_figures"] == [
        ("runs[0].tokens_per_s", 1000.0),
        ("runs[1].x.tokens_per_s", 4000.0),
    ]
    row = res["samplers"][0]
    assert comp[row["name"]] == pytest.approx(row["tokens_per_s"] / 4000.0)


def test_synthetic_stores():
    walker = bd.walker_like_store(3, episode_len=10)
    assert (walker.obs_dim, walker.act_dim, walker.num_episodes) == (24, 6, 3)
    np.testing.assert_array_equal(walker.episode_lengths, 10)
    assert walker.timeouts.sum() == 3 and walker.timeouts[9] and walker.timeouts[-1]
    dark = bd.darkroom_like_store(2, 5, episode_len=4)
    assert dark.discrete_actions and dark.act_dim == 5
    np.testing.assert_array_equal(dark.episode_extras["history_id"], [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(dark.episode_extras["episode_in_history"], list(range(5)) * 2)


def test_ad_alignment_measure(quick_result):
    _, res = quick_result
    by = {
        (r["window_steps"], r["align"]): r["leading_partial_episode_fraction"]
        for r in res["ad_alignment"]
    }
    assert by[(100, "episode")] == 0.0 and by[(1000, "episode")] == 0.0
    # Uniform starts over 20-step episodes: the cut-off lead is (20 - o) steps for offset
    # o in 1..19 and 0 for o = 0, i.e. 9.5 steps on average: 9.5% of 100, 0.95% of 1000.
    assert abs(by[(100, "step")] - 0.095) < 0.03
    assert abs(by[(1000, "step")] - 0.0095) < 0.003
