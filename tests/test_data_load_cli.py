"""Format detection, ``load``, ``rl-ring data info|convert|tasks`` output, memory mapping."""

import numpy as np
import pytest

from rl_ring.cli.data import main
from rl_ring.data import (
    DatasetError,
    EpisodeStore,
    detect_format,
    load,
    write_d4rl,
    write_exorl,
    write_minari,
)
from rl_ring.data.store import memory_probe

# Three episodes with returns 1.5, 4.0 and 10.0 and lengths 2, 3, 4.
REWARDS = ([0.5, 1.0], [1.0, 1.0, 2.0], [1.0, 2.0, 3.0, 4.0])


def _store():
    rng = np.random.default_rng(0)
    eps = []
    for r in REWARDS:
        n = len(r)
        o = rng.normal(size=(n + 1, 3)).astype(np.float32)
        p = rng.normal(size=(n + 1, 4))
        eps.append({
            "observations": o[:-1], "next_observations": o[1:],
            "actions": rng.uniform(-1, 1, (n, 2)), "rewards": np.array(r),
            "timeouts": np.arange(n) == n - 1, "physics": p[:-1], "next_physics": p[1:],
        })
    return EpisodeStore.from_episodes(eps)


@pytest.fixture
def datasets(tmp_path):
    s = _store()
    paths = {
        "store": s.save(tmp_path / "store"),
        "d4rl": write_d4rl(s, tmp_path / "hopper-medium-v2.hdf5"),
        "exorl": write_exorl(s, tmp_path / "exo" / "buffer"),
        "minari": write_minari(s, tmp_path / "mini" / "toy-v0"),
    }
    return s, paths


def test_detect_and_load_every_format(datasets, tmp_path):
    s, paths = datasets
    for fmt, path in paths.items():
        assert detect_format(path) == fmt
        t = load(path)
        np.testing.assert_array_equal(t.rewards, s.rewards)
        np.testing.assert_array_equal(t.episode_starts, s.episode_starts)
    assert detect_format(tmp_path / "exo") == "exorl"  # the directory above buffer/
    assert detect_format(paths["minari"] / "data") == "minari"
    (tmp_path / "junk.hdf5").write_bytes(b"not hdf5 at all")
    with pytest.raises(DatasetError, match="junk.hdf5: has an .hdf5 name but no HDF5 signature"):
        detect_format(tmp_path / "junk.hdf5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="matches no dataset format"):
        load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing")


@pytest.mark.parametrize("fmt", ["store", "d4rl", "exorl", "minari"])
def test_info_prints_the_numbers(datasets, capsys, fmt):
    _, paths = datasets
    assert main(["info", str(paths[fmt]), "--bins", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"format: {fmt}" in out
    assert "episodes: 3" in out and "steps: 9" in out
    assert "episode length: min 2  median 3  max 4" in out
    assert "return: min 1.500  median 4.000  max 10.000  mean 5.167" in out
    # bins over [1.5, 10]: [1.5, 4.333) holds 1.5 and 4.0, [7.167, 10] holds 10.0
    hist = out[out.index("return histogram (3 bins):") + 1:]
    assert [int(line.split()[-1]) for line in hist] == [2, 0, 1]
    assert hist[0].startswith("  [     1.500,      4.333)")
    if fmt == "d4rl":  # the file name is a D4RL dataset name: normalised scores too
        # 100 * (R + 20.272305) / 3254.572305 for R = 1.5, 4.0, 10.0
        assert "normalised score (hopper-medium-v2): min 0.67  median 0.75  max 0.93" in out


def test_convert_and_errors(datasets, tmp_path, capsys):
    s, paths = datasets
    for to, dst in (("store", "c_store"), ("d4rl", "c.hdf5"), ("minari", "c_min-v0"),
                    ("exorl", "c_exo")):
        assert main(["convert", str(paths["exorl"]), str(tmp_path / dst), "--to", to]) == 0
        t = load(tmp_path / dst)
        np.testing.assert_array_equal(t.observations, s.observations)
        np.testing.assert_array_equal(t.extras["next_physics"], s.extras["next_physics"])
    assert "wrote" in capsys.readouterr().out
    assert main(["info", str(paths["d4rl"]), "--task", "walker_run"]) == 2
    assert "--task relabels ExoRL data" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert main(["tasks"]) == 0
    tasks = capsys.readouterr().out.split()
    assert "walker_run" in tasks and "jaco_reach_top_left" in tasks
    assert "point_mass_maze_reach_bottom_right" in tasks and "cheetah_run_backward" in tasks


def test_memory_mapped_store_stays_small(tmp_path):
    n, d = 400_000, 32  # about 50 MiB of observations
    rng = np.random.default_rng(0)
    lengths = np.full(n // 1000, 1000)
    s = EpisodeStore(
        observations=rng.normal(size=(n, d)).astype(np.float32),
        actions=rng.normal(size=(n, 4)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        terminals=np.zeros(n, bool), timeouts=np.zeros(n, bool),
        episode_starts=np.concatenate([[0], np.cumsum(lengths)]),
    )
    s.save(tmp_path / "big")
    del s
    # Few windows: this kernel maps file pages in blocks of up to 2 MiB per fault.
    m = memory_probe(tmp_path / "big", batch=4, window=1000)
    assert m["store_mib"] == pytest.approx(n * (d + 4 + 1) * 4 / 2**20 + n * 2 / 2**20)
    assert m["ram_load_mib"] > 0.8 * m["store_mib"]  # a plain load holds everything
    assert m["mmap_load_mib"] < 0.1 * m["store_mib"]  # a mapped one holds almost nothing
    assert m["mmap_touch_mib"] < 0.3 * m["store_mib"]  # ... and only what a batch touches


def test_memory_probe_of_a_missing_store_names_it(tmp_path):
    with pytest.raises(RuntimeError, match="nowhere.*mmap measurement failed"):
        memory_probe(tmp_path / "nowhere", batch=1, window=1)
