import numpy as np
import pytest

from rl_ring.data import EpisodeStore, returns_to_go


def _store(discrete=False):
    rng = np.random.default_rng(0)
    eps = []
    for n in (3, 5, 2):
        act = rng.integers(0, 4, n) if discrete else rng.normal(size=(n, 2)).astype(np.float32)
        eps.append(
            {
                "observations": rng.normal(size=(n, 3)).astype(np.float32),
                "actions": act,
                "rewards": np.arange(n, dtype=np.float32),
                "terminals": np.eye(n, dtype=bool)[-1],
                "physics": rng.normal(size=(n, 4)),
            }
        )
    return EpisodeStore.from_episodes(
        eps, episode_extras={"task_id": [0, 1, 0]}, metadata={"env_id": "test"}
    )


def test_views_and_returns():
    s = _store()
    np.testing.assert_array_equal(s.episode_lengths, [3, 5, 2])
    np.testing.assert_allclose(s.episode_returns, [0 + 1 + 2, 0 + 1 + 2 + 3 + 4, 0 + 1])
    assert s.num_steps == 10 and s.obs_dim == 3 and s.act_dim == 2
    ep = s.episode(1)
    assert ep["physics"].shape == (5, 4) and ep["terminals"][-1]
    assert not s.timeouts.any()


def test_save_load_mmap_roundtrip(tmp_path):
    s = _store(discrete=True)
    s.save(tmp_path / "ds")
    t = EpisodeStore.load(tmp_path / "ds")
    assert isinstance(t.observations, np.memmap)
    for name in ("observations", "actions", "rewards", "terminals", "timeouts", "episode_starts"):
        np.testing.assert_array_equal(getattr(s, name), getattr(t, name))
    np.testing.assert_array_equal(s.extras["physics"], t.extras["physics"])
    np.testing.assert_array_equal(s.episode_extras["task_id"], t.episode_extras["task_id"])
    assert t.metadata == {"env_id": "test"} and t.discrete_actions
    # replacing needs overwrite=True; it is atomic and leaves no temporaries behind
    with pytest.raises(FileExistsError, match="overwrite"):
        s.select([2, 0]).save(tmp_path / "ds")
    s.select([2, 0]).save(tmp_path / "ds", overwrite=True)
    assert EpisodeStore.load(tmp_path / "ds").num_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_bad_store_errors(tmp_path):
    s = _store()
    with pytest.raises(ValueError, match="rewards has 9 rows but episode_starts ends at 10"):
        EpisodeStore(
            s.observations, s.actions, s.rewards[:-1], s.terminals, s.timeouts, s.episode_starts
        )
    with pytest.raises(ValueError, match=r"episode_extras\['task_id'\] has 2 rows, expected 3"):
        EpisodeStore(**{**s.__dict__, "episode_extras": {"task_id": np.zeros(2)}})
    with pytest.raises(FileNotFoundError, match="no store.json"):
        EpisodeStore.load(tmp_path)


def test_returns_to_go_hand_computed():
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0])), [6.0, 5.0, 3.0])
    np.testing.assert_allclose(
        returns_to_go(np.array([1.0, 2.0, 3.0]), 0.5), [1 + 1 + 0.75, 2 + 1.5, 3]
    )
