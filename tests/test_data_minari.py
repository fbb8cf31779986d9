"""Minari reader/writer: a dataset built to the format with raw h5py, round trips, bad files."""

import json

import h5py
import numpy as np
import pytest

from rl_ring.data import DatasetError, EpisodeStore, load, read_minari, write_minari

OBS_SPACE = {
    "type": "Dict",
    "subspaces": {  # not alphabetical on purpose: flattening follows the space's order
        "observation": {"type": "Box", "dtype": "float64", "shape": [3],
                        "low": [-1e9] * 3, "high": [1e9] * 3},
        "achieved_goal": {"type": "Box", "dtype": "float64", "shape": [2],
                          "low": [-1e9] * 2, "high": [1e9] * 2},
    },
}
ACT_SPACE = {"type": "Box", "dtype": "float32", "shape": [2], "low": [-1, -1], "high": [1, 1]}


def _spec_dataset(root, lengths=(4, 3), nan=False):
    """``root/ns/env/name-v0/data/{metadata.json,main_data.hdf5}`` as Minari 0.5 writes them."""
    d = root / "ns" / "env" / "name-v0" / "data"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    eps = []
    with h5py.File(d / "main_data.hdf5", "w") as f:
        for i, t in enumerate(lengths):
            g = f.create_group(f"episode_{i}")
            g.attrs["id"] = i
            g.attrs["total_steps"] = t
            g.attrs["seed"] = 100 + i
            ep = {
                "observation": rng.normal(size=(t + 1, 3)),
                "achieved_goal": rng.normal(size=(t + 1, 2)),
                "actions": rng.uniform(-1, 1, (t, 2)).astype(np.float32),
                "rewards": rng.normal(size=t),
                "terminations": np.arange(t) == t - 1 if i == 0 else np.zeros(t, bool),
                "truncations": np.zeros(t, bool),
                "success": rng.integers(0, 2, t + 1).astype(bool),
            }
            if nan and i == 1:
                ep["rewards"][1] = np.nan
            g["observations/observation"] = ep["observation"]
            g["observations/achieved_goal"] = ep["achieved_goal"]
            for k in ("actions", "rewards", "terminations", "truncations"):
                g[k] = ep[k]
            g["infos/success"] = ep["success"]
            eps.append(ep)
    meta = {
        "total_episodes": len(lengths), "total_steps": int(sum(lengths)),
        "data_format": "hdf5", "observation_space": json.dumps(OBS_SPACE),
        "action_space": json.dumps(ACT_SPACE), "dataset_id": "ns/env/name-v0",
        "minari_version": "0.5.4", "algorithm_name": "random",
    }
    (d / "metadata.json").write_text(json.dumps(meta))
    return d.parent, eps


def test_reads_spec_dataset(tmp_path):
    path, eps = _spec_dataset(tmp_path)
    s = read_minari(path)
    np.testing.assert_array_equal(s.episode_starts, [0, 4, 7])
    for i, ep in enumerate(eps):
        got = s.episode(i)
        flat = np.concatenate([ep["observation"], ep["achieved_goal"]], axis=1).astype(np.float32)
        np.testing.assert_array_equal(got["observations"], flat[:-1])
        np.testing.assert_array_equal(got["next_observations"], flat[1:])
        np.testing.assert_array_equal(got["actions"], ep["actions"])
        np.testing.assert_array_equal(got["rewards"], ep["rewards"].astype(np.float32))
        np.testing.assert_array_equal(got["terminals"], ep["terminations"])
        np.testing.assert_array_equal(got["infos/success"], ep["success"][1:])
    np.testing.assert_array_equal(s.episode_extras["truncated"], [False, True])
    assert s.metadata["dataset_id"] == "ns/env/name-v0"
    assert s.metadata["action_space"]["type"] == "box" and s.metadata["skipped"] == 0
    assert load(path).num_steps == 7 and load(path / "data").num_steps == 7


@pytest.mark.parametrize("discrete", [False, True])
def test_store_round_trip(tmp_path, discrete):
    rng = np.random.default_rng(1)
    eps = []
    for n in (3, 5, 2):
        o = rng.normal(size=(n + 1, 4)).astype(np.float32)
        eps.append({
            "observations": o[:-1], "next_observations": o[1:],
            "actions": rng.integers(0, 3, n) if discrete else rng.normal(size=(n, 2)),
            "rewards": rng.normal(size=n),
            "terminals": np.arange(n) == n - 1 if n == 3 else np.zeros(n, bool),
            "timeouts": np.arange(n) == n - 1 if n == 5 else np.zeros(n, bool),
            "physics": rng.normal(size=(n, 6)),
            "infos/cost": rng.normal(size=n),
        })
    meta = {"env_id": "toy"}
    if discrete:
        meta["action_space"] = {"type": "discrete", "n": 3}
    s = EpisodeStore.from_episodes(
        eps, episode_extras={"task_id": [0, 1, 2], "truncated": [False, False, True]},
        metadata=meta,
    )
    out = write_minari(s, tmp_path / "rl_ring" / "toy" / "mixed-v1")
    t = read_minari(out)
    for k in ("observations", "actions", "rewards", "terminals", "timeouts", "episode_starts"):
        np.testing.assert_array_equal(getattr(t, k), getattr(s, k))
    assert sorted(t.extras) == sorted(s.extras)
    for k, v in s.extras.items():
        np.testing.assert_array_equal(t.extras[k], v)
    for k, v in s.episode_extras.items():
        np.testing.assert_array_equal(t.episode_extras[k], v)
    assert t.metadata["env_id"] == "toy" and t.metadata["dataset_id"] == "mixed-v1"
    assert t.discrete_actions == discrete and (not discrete or t.act_dim == 3)
    meta_json = json.loads((out / "data" / "metadata.json").read_text())
    assert meta_json["total_steps"] == 10 and meta_json["total_episodes"] == 3
    with h5py.File(out / "data" / "main_data.hdf5") as f:
        g = f["episode_1"]
        assert g.attrs["total_steps"] == 5 and g["observations"].shape == (6, 4)
        assert g["infos/physics"].shape == (6, 6)  # T+1 rows, like Minari's infos
        # the last episode ends with neither flag (a D4RL trailing run): Minari's collector
        # never writes such an end, so the file marks it truncated; the others are as stored
        ends = [(bool(f[f"episode_{i}/terminations"][-1]), bool(f[f"episode_{i}/truncations"][-1]))
                for i in range(3)]
        assert ends == [(True, False), (False, True), (False, True)]
        assert not f["episode_2/truncations"][:-1].any()
    assert meta_json["rl_ring"]["truncated_ends"] == [2]


def test_writer_is_atomic(tmp_path):
    s = EpisodeStore.from_episodes([{
        "observations": np.zeros((3, 2)), "next_observations": np.ones((3, 2)),
        "actions": np.zeros((3, 1)), "rewards": np.zeros(3)}])
    with pytest.raises(ValueError, match=r"observations\[t\+1\] != next_observations\[t\]"):
        write_minari(s, tmp_path / "bad-v0")
    assert list(tmp_path.iterdir()) == []


def _patch(path, fn):
    with h5py.File(path / "data" / "main_data.hdf5", "a") as f:
        fn(f)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f["episode_1"].__delitem__("rewards"), r"\[episode_1/rewards\]: missing key"),
        (lambda f: f["episode_1"].attrs.__setitem__("total_steps", 9),
         r"\[episode_1\]: attribute total_steps=9 but 3 rewards"),
        (lambda f: f["episode_1"]["infos"].create_dataset("x", data=np.zeros(2)),
         r"\[episode_1/infos/x\]: has shape \(2,\), expected 4 rows"),
    ],
)
def test_bad_episodes(tmp_path, edit, message):
    path, _ = _spec_dataset(tmp_path)
    _patch(path, edit)
    with pytest.raises(DatasetError, match=message):
        read_minari(path)
    with pytest.warns(UserWarning, match="skipped 1 bad episode"):
        s = read_minari(path, skip_bad=True)
    assert s.metadata["skipped"] == 1 and s.num_episodes == 1


def test_nan_and_metadata_errors(tmp_path):
    path, _ = _spec_dataset(tmp_path / "a", nan=True)
    with pytest.raises(DatasetError, match=r"\[episode_1/rewards\]: non-finite .* row 1"):
        read_minari(path)
    with pytest.warns(UserWarning, match="skipped 1"):
        assert read_minari(path, skip_bad=True).num_episodes == 1
    path, _ = _spec_dataset(tmp_path / "b")
    meta_path = path / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["action_space"] = json.dumps({"type": "Tuple", "subspaces": []})
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"\[action_space\]: action space type 'Tuple'"):
        read_minari(path)
    meta_path.write_text("{not json")
    with pytest.raises(DatasetError, match=r"metadata.json: corrupt metadata"):
        read_minari(path)
    path, _ = _spec_dataset(tmp_path / "c")
    h5 = path / "data" / "main_data.hdf5"
    h5.write_bytes(h5.read_bytes()[:3000])
    with pytest.raises(DatasetError, match=r"main_data.hdf5"):
        read_minari(path)


def test_real_minari_reads_our_files_and_we_read_theirs(tmp_path, monkeypatch):
    """Optional: runs only where the ``minari`` package is installed."""
    minari = pytest.importorskip("minari")
    import gymnasium as gym

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    rng = np.random.default_rng(0)
    eps = []
    for n in (4, 3):
        o = rng.normal(size=(n + 1, 3)).astype(np.float32)
        eps.append({"observations": o[:-1], "next_observations": o[1:],
                    "actions": rng.integers(0, 2, n), "rewards": rng.normal(size=n),
                    "timeouts": np.arange(n) == n - 1})
    s = EpisodeStore.from_episodes(eps, metadata={"action_space": {"type": "discrete", "n": 2}})
    write_minari(s, tmp_path / "rl_ring" / "toy-v0", "rl_ring/toy-v0")
    ds = minari.load_dataset("rl_ring/toy-v0")
    assert ds.total_episodes == 2 and ds.total_steps == 7
    for i, ep in enumerate(ds.iterate_episodes()):
        np.testing.assert_array_equal(ep.observations[:-1], s.episode(i)["observations"])
        np.testing.assert_array_equal(ep.actions, s.episode(i)["actions"])
    # and the other way: a dataset minari itself writes
    from minari.data_collector import EpisodeBuffer

    buffers = [EpisodeBuffer(observations=np.asarray(e["observations"].tolist() +
                                                     [e["next_observations"][-1].tolist()],
                                                     np.float32),
                             actions=e["actions"], rewards=e["rewards"],
                             terminations=np.zeros(len(e["rewards"]), bool),
                             truncations=e["timeouts"]) for e in eps]
    minari.create_dataset_from_buffers(
        "rl_ring/theirs-v0", buffers, observation_space=gym.spaces.Box(-9, 9, (3,), np.float32),
        action_space=gym.spaces.Discrete(2), algorithm_name="x", author="x",
        author_email="x", code_permalink="x", description="x",
    )
    t = read_minari(tmp_path / "rl_ring" / "theirs-v0")
    for k in ("observations", "actions", "timeouts", "episode_starts"):
        np.testing.assert_array_equal(getattr(t, k), getattr(s, k))
    np.testing.assert_allclose(t.rewards, s.rewards, rtol=1e-6)
