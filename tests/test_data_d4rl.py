"""D4RL reader against files built to the spec with raw h5py, writer round trips, bad files."""

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rl_ring.data import DatasetError, EpisodeStore, read_d4rl, write_d4rl


def _spec_file(path, *, timeouts=True, n=12, nan_row=None):
    """A D4RL-layout file: episodes end at row 2 (terminal), 6 (timeout), a truncated tail."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(n + 1, 3)).astype(np.float32)
    rewards = np.arange(n, dtype=np.float32)
    if nan_row is not None:
        rewards[nan_row] = np.nan
    terminals = np.zeros(n, bool)
    terminals[2] = True
    to = np.zeros(n, bool)
    to[6] = True
    with h5py.File(path, "w") as f:
        f["observations"] = obs[:-1]
        f["next_observations"] = obs[1:]
        f["actions"] = rng.normal(size=(n, 2)).astype(np.float32)
        f["rewards"] = rewards
        f["terminals"] = terminals
        if timeouts:
            f["timeouts"] = to
        f["infos/qpos"] = rng.normal(size=(n, 4)).astype(np.float32)
        f["infos/qvel"] = rng.normal(size=(n, 4)).astype(np.float32)
        f["infos/action_log_probs"] = rng.normal(size=n).astype(np.float32)
        f["metadata/algorithm"] = b"SAC"
        f["metadata/iteration"] = np.int64(1000)
        f["metadata/policy/fc0/weight"] = np.ones((256, 3), np.float32)
        f["metadata/policy/nonlinearity"] = b"relu"
    return obs, rewards


def test_reads_spec_file_with_terminals_timeouts_and_truncated_tail(tmp_path):
    path = tmp_path / "hopper-medium-v2.hdf5"
    obs, rewards = _spec_file(path)
    s = read_d4rl(path)
    np.testing.assert_array_equal(s.episode_starts, [0, 3, 7, 12])
    np.testing.assert_array_equal(s.episode_extras["truncated"], [False, False, True])
    np.testing.assert_allclose(s.episode_returns, [0 + 1 + 2, 3 + 4 + 5 + 6, 7 + 8 + 9 + 10 + 11])
    np.testing.assert_array_equal(s.observations, obs[:-1])
    np.testing.assert_array_equal(s.extras["next_observations"], obs[1:])
    assert sorted(s.extras) == [
        "infos/action_log_probs", "infos/qpos", "infos/qvel", "next_observations"
    ]
    assert s.terminals.nonzero()[0].tolist() == [2] and s.timeouts.nonzero()[0].tolist() == [6]
    meta = s.metadata["d4rl_metadata"]
    assert meta["algorithm"] == "SAC" and meta["iteration"] == 1000
    assert meta["policy/nonlinearity"] == "relu"
    assert meta["policy/fc0/weight"] == {"dtype": "float32", "shape": [256, 3], "summarised": True}
    assert s.metadata["skipped"] == 0 and s.observations.dtype == np.float32


def test_v0_file_without_timeouts_splits_at_terminals_only(tmp_path):
    path = tmp_path / "old.hdf5"
    _spec_file(path, timeouts=False)
    s = read_d4rl(path)
    np.testing.assert_array_equal(s.episode_starts, [0, 3, 12])
    assert not s.timeouts.any()
    assert any("timeouts" in note for note in s.metadata["notes"])


def _store(discrete):
    rng = np.random.default_rng(1)
    eps = []
    for n, term, tout in ((4, True, False), (3, False, False), (5, False, True)):
        o = rng.normal(size=(n + 1, 3)).astype(np.float32)
        eps.append({
            "observations": o[:-1],
            "next_observations": o[1:],
            "actions": rng.integers(0, 5, n) if discrete else rng.normal(size=(n, 2)),
            "rewards": rng.normal(size=n),
            "terminals": np.arange(n) == n - 1 if term else np.zeros(n, bool),
            "timeouts": np.arange(n) == n - 1 if tout else np.zeros(n, bool),
            "physics": rng.normal(size=(n, 6)),
            "infos/goal": rng.normal(size=(n, 2)).astype(np.float32),
        })
    return EpisodeStore.from_episodes(
        eps,
        episode_extras={"task_id": [3, 1, 2], "truncated": [False, True, False]},
        metadata={"env_id": "toy", "action_space": {"type": "discrete", "n": 5}} if discrete
        else {"env_id": "toy"},
    )


@pytest.mark.parametrize("discrete", [False, True])
def test_store_round_trip(tmp_path, discrete):
    s = _store(discrete)
    write_d4rl(s, tmp_path / "x.hdf5")
    t = read_d4rl(tmp_path / "x.hdf5")
    # the middle episode ends with neither flag: its boundary survives through the manifest
    np.testing.assert_array_equal(t.episode_starts, s.episode_starts)
    for k in ("observations", "actions", "rewards", "terminals", "timeouts"):
        np.testing.assert_array_equal(getattr(t, k), getattr(s, k))
        assert getattr(t, k).dtype == getattr(s, k).dtype
    assert sorted(t.extras) == sorted(s.extras)
    for k in s.extras:
        np.testing.assert_array_equal(t.extras[k], s.extras[k])
    for k in s.episode_extras:
        np.testing.assert_array_equal(t.episode_extras[k], s.episode_extras[k])
    assert t.metadata["env_id"] == "toy" and t.discrete_actions == discrete
    with h5py.File(tmp_path / "x.hdf5") as f:  # plain D4RL readers see the standard keys
        assert f["actions"].dtype == (np.int64 if discrete else np.float32)
        assert f["terminals"].dtype == bool and "infos/physics" in f


def test_writer_is_atomic(tmp_path):
    s = _store(False)
    write_d4rl(s, tmp_path / "x.hdf5")
    bad = EpisodeStore(**{**s.__dict__, "extras": {"infos/a": np.zeros(12), "a": np.zeros(12)}})
    with pytest.raises(ValueError, match="collides"):
        write_d4rl(bad, tmp_path / "x.hdf5", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.hdf5"]
    assert read_d4rl(tmp_path / "x.hdf5").num_episodes == 3  # the old file is intact


def _rewrite(path, key, value):
    with h5py.File(path, "a") as f:
        del f[key]
        f[key] = value


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("rewards", np.zeros(11, np.float32),
         r"\[observations\]: has shape \(12, 3\), expected 11 rows like 'rewards'"),
        ("observations", np.array([b"a"] * 12), r"\[observations\]: dtype .* is not"),
        ("terminals", np.full(12, 2.0), r"\[terminals\]: flag value 2.0 at row 0 is not 0/1"),
        ("infos/qpos", np.zeros((5, 4)),
         r"\[infos/qpos\]: has shape \(5, 4\), expected 12 rows like 'rewards'"),
        ("actions", np.zeros((12, 2), np.int64), r"\[actions\]: integer actions must be \(N,\)"),
    ],
)
def test_bad_files_name_the_key(tmp_path, key, value, message):
    path = tmp_path / "bad.hdf5"
    _spec_file(path)
    _rewrite(path, key, value)
    with pytest.raises(DatasetError, match=message):
        read_d4rl(path)


def test_missing_key_and_nan(tmp_path):
    path = tmp_path / "bad.hdf5"
    _spec_file(path)
    with h5py.File(path, "a") as f:
        del f["actions"]
    with pytest.raises(DatasetError, match=r"\[actions\]: missing required key"):
        read_d4rl(path)
    _spec_file(path, nan_row=4)
    with pytest.raises(DatasetError, match=r"bad.hdf5 \[rewards\]: non-finite value .* row 4"):
        read_d4rl(path)
    with pytest.warns(UserWarning, match="skipped 1 bad episode"):
        s = read_d4rl(path, skip_bad=True)
    assert s.metadata["skipped"] == 1
    np.testing.assert_array_equal(s.episode_lengths, [3, 5])  # the 4-step episode is gone
    np.testing.assert_allclose(s.episode_returns, [3, 7 + 8 + 9 + 10 + 11])
    np.testing.assert_array_equal(s.episode_extras["truncated"], [False, True])


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frac=st.floats(0.0, 0.98))
def test_truncated_bytes_raise_dataset_error(tmp_path, frac):
    path = tmp_path / "full.hdf5"
    _spec_file(path)
    data = path.read_bytes()
    cut = tmp_path / "cut.hdf5"
    cut.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(DatasetError, match="cut.hdf5"):
        read_d4rl(cut)
