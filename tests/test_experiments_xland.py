"""The XLand-MiniGrid AD experiment: its tiny variant end to end, its pieces, the plan.

Oracles: episode returns summed by hand, the one-hot view decoded back to the env's own
(tile, colour) cells, the training file read back with XLandDataset, the recipe's sampler
against an XLandHistorySampler built directly, means recomputed from per-episode curves.
"""

import dataclasses
import json

import numpy as np
import pytest

from experiments import xland_ad as xa
from experiments import xland_ad_report as rep


def test_episode_returns_by_hand():
    h = {"rewards": np.array([[0.0, 0.5, 0.0, 0.0, 0.25, 0.0],
                              [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]], np.float32),
         "dones": np.array([[0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]], bool)}
    rets = xa.episode_returns(h)
    assert rets[0].tolist() == [0.5, 0.25] and rets[1].tolist() == [0.0]
    # The trailing unfinished episode is not counted; episode 2 exists in one history only.
    assert xa.episode_curve(h, 3) == [0.25, 0.25, None]
    assert rep.last_half([1.0, None, 3.0, 5.0]) == 4.0


def test_onehot_view_decodes_to_the_env_cells():
    from rl_ring.data import xland as xd

    env = xa.onehot_env("xland:XLand-MiniGrid-R1-9x9:trivial-n10", task=3, seed=0)
    obs, _ = env.reset()
    raw = env.unwrapped.timestep.observation  # xminigrid's [5, 5, 2] (tile, colour)
    assert obs.shape == (625,) and obs.dtype == np.float32
    cells = obs.reshape(25, 25)
    assert np.array_equal(cells[:, :xd.NUM_TILES].argmax(1), np.asarray(raw)[..., 0].ravel())
    assert np.array_equal(cells[:, xd.NUM_TILES:].argmax(1), np.asarray(raw)[..., 1].ravel())
    assert cells.sum() == 50  # one tile and one colour per cell


def test_xland_recipe_streams_ad_windows_from_the_file(tmp_path):
    from agents import ad
    from agents.run import resolve_config, xland_recipe
    from rl_ring.data.samplers import HistoryConfig
    from rl_ring.data.xland import XLandDataset, XLandHistorySampler

    # The tiny run's history length and collection batch: the collector compiled once.
    run = xa.tiny_run().replace(train_rulesets=2, window_steps=16)
    path = tmp_path / "h.hdf5"
    info = xa.write_histories(run, path)
    data = XLandDataset(path)
    assert [g.ruleset_id for g in data.groups] == info["rulesets"] == xa.rulesets(
        run, "train", 2)
    assert data.num_steps == info["steps"] == 2 * run.history_steps
    cfg = resolve_config(xa.train_config(run, str(path), str(tmp_path / "w")))
    recipe = xland_recipe(cfg, data)
    assert recipe.meta["data_spec"]["obs_dim"] == 625
    got = recipe.make_sampler(batch_size=2, seed=5).next_batch()
    want = XLandHistorySampler(data, HistoryConfig(window_steps=16, batch_size=2, seed=5)
                               ).next_batch()
    for k, v in want.tokens().items():
        np.testing.assert_array_equal(got.tokens()[k], v)
    with pytest.raises(ValueError, match="'ad' or 'dpt' only"):
        xland_recipe(cfg.replace(agent="dt"), data)
    assert ad.NAME == "ad"


def test_tiny_experiment_end_to_end(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--tiny", "--seeds", "1", "--out", str(out), "--workdir", str(work)]
    assert xa.main(argv) == 0
    s = json.loads((out / "xland_ad.json").read_text())
    assert (out / "xland_ad.png").stat().st_size > 0
    run = xa.tiny_run()
    assert set(s["windows"]) == {"64", "128"}
    for w, e in s["windows"].items():
        assert e["window_steps"] == int(w) and e["seeds"] == [0]
        assert len(e["per_episode_mean"]) == run.eval_episodes
        assert e["last_half_return"] == pytest.approx(rep.last_half(e["per_episode_mean"]))
        assert all(v is None or 0.0 <= v <= 1.0 for v in e["per_episode_mean"])
    b = s["baselines"]
    # Reward 1 - 0.9 t / 40: the expert's short paths earn most of it, random actions little.
    assert b["expert"] > 0.7 and b["expert"] > b["random"] + 0.3
    assert len(b["source_curve"]) == run.eval_episodes
    assert set(s["heldout_rulesets"]).isdisjoint(s["data"]["train_rulesets"])
    assert s["data"]["histories"] == run.train_rulesets
    # Results exist: a second run refuses to overwrite them outside its work directory.
    assert xa.main(argv) == 2


def test_plan_analytic_rows(tmp_path):
    s = xa.run_plan(xa.Args(plan=True, plan_compile=False, out=str(tmp_path)))
    rows = {(r["steps"], r["devices"]): r for r in s["rows"]}
    assert set(rows) == {(t, n) for t in xa.PLAN_STEPS for n in (1, 8, 64)} | {
        (t, 1) for t in xa.PLAN_SINGLE_EXTRA}
    for t in xa.PLAN_STEPS:
        one, r8, r64 = rows[t, 1], rows[t, 8], rows[t, 64]
        assert one["attention"] == "blockwise" and r8["attention"] == "ring"
        # Ring attention holds 1/n of the sequence: more devices, less memory per device.
        assert r64["attention_fwd_bwd_bytes_per_layer"] < r8[
            "attention_fwd_bwd_bytes_per_layer"] < one["attention_fwd_bwd_bytes_per_layer"]
    assert json.loads((tmp_path / "xland_plan.json").read_text())["rows"] == json.loads(
        json.dumps(s["rows"]))
    assert dataclasses.is_dataclass(xa.XLandRun())


def test_xland_windows_without_an_episode_boundary_count_timesteps(tmp_path):
    # A window inside one episode (no done in it, not at the history's start): its
    # timesteps continue the episode that began after the last done before it.
    from rl_ring.data.samplers import HistoryConfig
    from rl_ring.data.xland import XLandGroup, XLandHistorySampler, write_xland

    s = 64
    dones = np.zeros((1, s), bool)
    dones[0, 9] = True
    g = XLandGroup("trivial", "XLand-MiniGrid-R1-9x9", 0, np.zeros((1, s, 5, 5), np.uint8),
                   np.zeros((1, s), np.uint8), np.zeros((1, s), np.float32), dones,
                   np.zeros((1, s), np.uint8))
    path = write_xland(tmp_path / "one.hdf5", [g])
    sampler = XLandHistorySampler(path, HistoryConfig(window_steps=16, batch_size=1))
    _, plan = sampler.read_rows({"history": np.array([0]), "start": np.array([20])},
                                np.array([0]))
    assert plan.timesteps.tolist() == list(range(10, 26))
    assert not plan.new_episode.any()


def test_dpt_trains_on_the_file_loaded_as_a_store(tmp_path):
    # DPT's recipe on the XLand file: every query's target is the expert action the file
    # records for that step of the history.
    from agents.run import load_dataset, recipe, resolve_config
    from rl_ring.data.xland import XLandDataset

    run = xa.tiny_run().replace(train_rulesets=2, window_steps=16, agent="dpt")
    path = tmp_path / "h.hdf5"
    xa.write_histories(run, path)
    cfg = resolve_config(xa.train_config(run, str(path), str(tmp_path / "w")))
    store = load_dataset(str(path))
    sampler = recipe(cfg, store).make_sampler(batch_size=2, seed=3)
    plan = sampler._plan(sampler.specs_at(0), sampler.host_rows)  # the queries' store rows
    batch = sampler.next_batch()
    mask = batch.loss_mask > 0
    # Oracle: the expert actions read straight from the file (histories in file order).
    expert = np.concatenate([XLandDataset(path).read(h, 0, run.history_steps)[
        "expert_actions"] for h in range(2)]).astype(np.int64)
    assert np.array_equal(np.asarray(store.extras["expert_actions"]), expert)
    assert np.array_equal(batch.target_ids[mask].reshape(2, 16), expert[plan.query])
    # A window of one history: consecutive store rows.
    assert (np.diff(plan.query, axis=1) == 1).all()


def test_evaluation_fields_keep_the_trained_run():
    # A run whose config differs only in how it is evaluated keeps its checkpoint; any
    # training field, or a field an older record lacks set away from its default, retrains.
    base = json.loads(json.dumps(dataclasses.asdict(xa.tiny_run())))
    assert xa.same_training(base, base | {"eval_backend": "workers", "eval_episodes": 7})
    assert not xa.same_training(base, base | {"steps": base["steps"] + 1})
    assert not xa.same_training(base, base | {"window_steps": 2 * base["window_steps"]})
    older = {k: v for k, v in base.items() if k != "tiny_model"}
    assert xa.same_training(older, base | {"tiny_model": False})
    assert not xa.same_training(older, base | {"tiny_model": True})
    assert not xa.same_training(base | {"gone": 1}, base)
