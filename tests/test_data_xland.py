"""The XLand-100B layout: files written with h5py to the published spec and with our writer,
bad files, and the AD / DPT samplers against numpy slices and plain-loop oracles."""

import h5py
import numpy as np
import pytest

from rl_ring.cli import data as data_cli
from rl_ring.data import detect_format, load
from rl_ring.data.checks import DatasetError
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import DPTSampler, DPTSamplerConfig, HistoryConfig, HistorySampler
from rl_ring.data.xland import (
    NUM_ACTIONS,
    NUM_COLORS,
    NUM_TILES,
    XLandDataset,
    XLandDPTConfig,
    XLandDPTSampler,
    XLandDPTWindowSampler,
    XLandGroup,
    XLandHistorySampler,
    XLandWriter,
    encode_states,
    write_xland,
)
from rl_ring.io import OutputExistsError

# Two tasks; histories longer than one 4096-step chunk so windows cross chunk boundaries.
SHAPES = [(2, 5000), (3, 4300)]


def make_arrays(h, s, seed):
    rng = np.random.default_rng(seed)
    tile = rng.integers(0, NUM_TILES, (h, s, 5, 5))
    color = rng.integers(0, NUM_COLORS, (h, s, 5, 5))
    return {
        "states": (tile * NUM_COLORS + color).astype(np.uint8),
        "actions": rng.integers(0, NUM_ACTIONS, (h, s)).astype(np.uint8),
        "rewards": (rng.random((h, s)) * (rng.random((h, s)) < 0.1)).astype(np.float16),
        "dones": rng.random((h, s)) < 0.02,
        "expert_actions": rng.integers(0, NUM_ACTIONS, (h, s)).astype(np.uint8),
    }


GROUPS = [make_arrays(h, s, i) for i, (h, s) in enumerate(SHAPES)]
ATTRS = [("trivial-1m", "XLand-MiniGrid-R1-9x9", 11), ("trivial-1m", "XLand-MiniGrid-R1-9x9", 42)]


def write_by_hand(path, groups=GROUPS, attrs=ATTRS, mutate=None):
    """The published layout with h5py alone (what the dataset's combine.py writes)."""
    with h5py.File(path, "w") as f:
        for i, (arrs, (bench, env, rid)) in enumerate(zip(groups, attrs, strict=True)):
            g = f.create_group(str(i))
            g.attrs["benchmark-id"] = bench
            g.attrs["env-id"] = env
            g.attrs["ruleset-id"] = rid
            for k, v in arrs.items():
                chunks = (1, 4096, 5, 5) if k == "states" else (1, 4096)
                g.create_dataset(k, data=v, chunks=chunks, compression="gzip",
                                 compression_opts=6)
        if mutate:
            mutate(f)
    return path


def histories():
    """Every history as (group, row) arrays, in file order."""
    return [(g, {k: v[r] for k, v in arrs.items()})
            for g, arrs in enumerate(GROUPS) for r in range(len(arrs["actions"]))]


@pytest.fixture(scope="module")
def hand_file(tmp_path_factory):
    return write_by_hand(tmp_path_factory.mktemp("xland") / "hand.hdf5")


def test_constants_are_xminigrids():
    from xminigrid.core import constants

    assert (NUM_TILES, NUM_COLORS, NUM_ACTIONS) == (
        constants.NUM_TILES, constants.NUM_COLORS, constants.NUM_ACTIONS)


def test_reads_a_file_written_to_the_spec(hand_file):
    assert detect_format(hand_file) == "xland"
    with XLandDataset(hand_file) as d:
        assert [g.num_histories for g in d.groups] == [2, 3]
        assert [g.ruleset_id for g in d.groups] == [11, 42]
        assert d.num_steps == 2 * 5000 + 3 * 4300
        assert d.env_ids() == ["XLand-MiniGrid-R1-9x9"]
        for i, (_, hist) in enumerate(histories()):
            got = d.read(i, 4000, 4200)  # across the chunk boundary at 4096
            for k, v in hist.items():
                np.testing.assert_array_equal(got[k], v[4000:4200])
                assert got[k].dtype == v.dtype
        with pytest.raises(IndexError, match="out of range"):
            d.read(0, 4990, 5001)


def test_episode_store_view(hand_file):
    store = load(hand_file)
    assert store.metadata["source_format"] == "xland"
    offset = 0
    eps = 0
    for i, (g, hist) in enumerate(histories()):
        n = len(hist["dones"])
        ends = [t + 1 for t in range(n) if hist["dones"][t]]
        if not ends or ends[-1] != n:
            ends.append(n)
        starts = [0] + ends[:-1]
        for e, (a, b) in enumerate(zip(starts, ends, strict=True)):
            ep = store.episode(eps + e)
            np.testing.assert_array_equal(ep["observations"],
                                          encode_states(hist["states"][a:b]))
            np.testing.assert_array_equal(ep["actions"], hist["actions"][a:b])
            np.testing.assert_array_equal(ep["expert_actions"],
                                          hist["expert_actions"][a:b])
            assert store.episode_extras["history_id"][eps + e] == i
            assert store.episode_extras["episode_in_history"][eps + e] == e
            assert store.episode_extras["ruleset_id"][eps + e] == ATTRS[g][2]
        assert bool(store.episode_extras["truncated"][eps + len(ends) - 1]) == (
            not hist["dones"][-1])
        eps += len(ends)
        offset += n
    assert store.num_episodes == eps and store.num_steps == offset
    with pytest.raises(DatasetError, match="XLandHistorySampler"):
        load(hand_file, max_bytes=1000)


def test_onehot_and_index_encodings():
    cells = np.array([[0, 1, 12, 155, 30]] * 5, np.uint8)
    onehot = encode_states(cells).reshape(25, 25)
    index = encode_states(cells, "index").reshape(25, 2)
    for c, v in enumerate(cells.reshape(-1)):
        tile, color = divmod(int(v), NUM_COLORS)
        want = np.zeros(25)
        want[tile] = want[NUM_TILES + color] = 1
        np.testing.assert_array_equal(onehot[c], want)
        np.testing.assert_array_equal(index[c], [tile, color])
    with pytest.raises(ValueError, match="< 156"):
        encode_states(np.full((5, 5), 156, np.uint8))


def test_writer_matches_the_spec_and_round_trips(tmp_path, hand_file):
    groups = [XLandGroup(*a, **{k: v for k, v in arrs.items()})
              for a, arrs in zip(ATTRS, GROUPS, strict=True)]
    path = write_xland(tmp_path / "w.hdf5", groups)
    with h5py.File(path, "r") as f, h5py.File(hand_file, "r") as ref:
        assert sorted(f.keys()) == ["0", "1"]
        for name in ("0", "1"):
            assert dict(f[name].attrs) == dict(ref[name].attrs)
            for k in ("states", "actions", "rewards", "dones", "expert_actions"):
                ds, want = f[name][k], ref[name][k]
                assert ds.dtype == want.dtype and ds.shape == want.shape
                assert ds.chunks == ((1, 4096, 5, 5) if k == "states" else (1, 4096))
                assert ds.compression == "gzip"
                np.testing.assert_array_equal(ds[()], want[()])
    with pytest.raises(OutputExistsError):
        write_xland(path, groups)
    write_xland(path, groups[:1], overwrite=True)
    assert XLandDataset(path).num_groups == 1
    # Appending step blocks gives the same file contents.
    with XLandWriter(tmp_path / "a.hdf5") as w:
        for (bench, env, rid), arrs in zip(ATTRS, GROUPS, strict=True):
            h, s = arrs["actions"].shape
            gw = w.create_group(bench, env, rid, h, s)
            for a in range(0, s, 1500):
                gw.append(**{k: v[:, a : a + 1500] for k, v in arrs.items()})
    with h5py.File(tmp_path / "a.hdf5", "r") as f, h5py.File(hand_file, "r") as ref:
        for name in ("0", "1"):
            for k in ref[name]:
                np.testing.assert_array_equal(f[name][k][()], ref[name][k][()])


def test_writer_is_atomic(tmp_path):
    arrs = GROUPS[1]
    with pytest.raises(ValueError, match="only 100 were appended"):
        with XLandWriter(tmp_path / "x.hdf5") as w:
            gw = w.create_group("b", "e", 1, 3, 4300)
            gw.append(**{k: v[:, :100] for k, v in arrs.items()})
    with pytest.raises(RuntimeError, match="boom"):
        with XLandWriter(tmp_path / "x.hdf5") as w:
            w.add(XLandGroup("b", "e", 1, **arrs))
            raise RuntimeError("boom")
    with pytest.raises(ValueError, match=r"actions values span \[300, 300\], expected \[0, 256\)"):
        bad = dict(arrs, actions=np.full((3, 4300), 300))
        write_xland(tmp_path / "x.hdf5", [XLandGroup("b", "e", 1, **bad)])
    assert list(tmp_path.iterdir()) == []  # nothing published, no temporary left


@pytest.mark.parametrize("mutate, key, text", [
    (lambda f: f["1"].attrs.__delitem__("env-id"), "1.attrs[env-id]", "missing attribute"),
    (lambda f: f["1"].attrs.__setitem__("ruleset-id", "x"), "1.attrs[ruleset-id]",
     "expected an integer"),
    (lambda f: f.move("1", "task1"), "task1", "not a task number"),
    (lambda f: f["0"].__delitem__("expert_actions"), "0/expert_actions", "missing dataset"),
    (lambda f: (f["1"].__delitem__("actions"),
                f["1"].create_dataset("actions", data=np.zeros((3, 4000), np.uint8))),
     "1/actions", r"shape \(3, 4000\), expected \(3, 4300\) like states \(truncated"),
    (lambda f: (f["0"].__delitem__("states"),
                f["0"].create_dataset("states", data=np.zeros((2, 5000, 25), np.uint8))),
     "0/states", r"shape \(2, 5000, 25\), expected \[histories, steps, 5, 5\]"),
    (lambda f: (f["0"].__delitem__("states"),
                f["0"].create_dataset("states", data=np.zeros((2, 5000, 5, 5), np.float32))),
     "0/states", "dtype float32, expected uint8"),
])
def test_bad_files_name_file_group_and_key(tmp_path, mutate, key, text):
    path = write_by_hand(tmp_path / "bad.hdf5", mutate=mutate)
    with pytest.raises(DatasetError, match=text) as err:
        XLandDataset(path)
    assert err.value.key == key and str(path) in str(err.value)


def test_other_hdf5_files_stay_d4rl(tmp_path):
    with h5py.File(tmp_path / "d.hdf5", "w") as f:
        f["observations"] = np.zeros((3, 2))
    assert detect_format(tmp_path / "d.hdf5") == "d4rl"


def oracle_steps(hist, start, w):
    """Plain-loop STEP inputs of a window: prev action/reward, new-episode flag, timestep."""
    rows = []
    t = 0
    for p in range(start + w):
        new = p == 0 or bool(hist["dones"][p - 1])
        t = 0 if new else t + 1
        if p >= start:
            prev_a = int(hist["actions"][p - 1]) if p > 0 else -1
            prev_r = float(hist["rewards"][p - 1]) if p > 0 else 0.0
            rows.append((prev_a, prev_r, float(new), t))
    return rows


@pytest.mark.parametrize("encoding", ["onehot", "index"])
def test_ad_windows_equal_numpy_slices(hand_file, encoding):
    w = 700
    s = XLandHistorySampler(hand_file, HistoryConfig(window_steps=w, batch_size=6, seed=3),
                            obs_encoding=encoding)
    hists = histories()
    od = s.layout.obs_dim
    for step in range(2):
        specs = s.specs_at(step)
        specs["start"][0] = 0  # a window at a history's first step
        specs["start"][1] = hists[int(specs["history"][1])][1]["actions"].shape[0] - w
        batch = s.batch_for(specs)
        for r in range(6):
            h, start = int(specs["history"][r]), int(specs["start"][r])
            hist = hists[h][1]
            vals = batch.values[r]
            np.testing.assert_array_equal(vals[:, :od], encode_states(
                hist["states"][start : start + w], encoding))
            np.testing.assert_array_equal(batch.target_ids[r], hist["actions"][start:start + w])
            for i, (pa, pr, new, t) in enumerate(oracle_steps(hist, start, w)):
                onehot = np.zeros(NUM_ACTIONS)
                if pa >= 0:
                    onehot[pa] = 1
                np.testing.assert_array_equal(vals[i, od : od + NUM_ACTIONS], onehot)
                assert vals[i, od + NUM_ACTIONS] == np.float32(pr)
                assert vals[i, od + NUM_ACTIONS + 1] == new
                assert batch.timesteps[r, i] == t
    assert s.batch_at(0).values.shape == (6, w, od + NUM_ACTIONS + 2)


def test_ad_batches_equal_history_sampler_on_the_store_view(hand_file):
    cfg = HistoryConfig(window_steps=300, batch_size=8, seed=5)
    xs = XLandHistorySampler(hand_file, cfg)
    hs = HistorySampler(load(hand_file), cfg, norm=Normalization.identity(625))
    for step in (0, 7):
        a, b = xs.batch_at(step), hs.batch_at(step)
        for f, v in a.tokens().items():
            np.testing.assert_array_equal(v, getattr(b, f), err_msg=f)
    # Host shards concatenate to the single-host batch; the stream resumes from its state.
    halves = [XLandHistorySampler(hand_file, cfg, host_id=i, num_hosts=2).batch_at(7)
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h.values for h in halves]), b.values)
    xs.next_batch()
    again = XLandHistorySampler(hand_file, cfg)
    again.load_state_dict(xs.state_dict())
    np.testing.assert_array_equal(again.next_batch().values, xs.next_batch().values)


def test_ad_agent_layout_matches(hand_file):
    from agents import ad

    cfg = ad.ADConfig.tiny()
    s = XLandHistorySampler(hand_file, HistoryConfig(window_steps=cfg.window_steps))
    assert ad.make_layout(cfg, XLandDataset(hand_file).data_spec(), s.norm) == s.layout


@pytest.mark.parametrize("context", ["random", "window"])
def test_dpt_items_equal_numpy_slices(hand_file, context):
    s = XLandDPTSampler(hand_file, XLandDPTConfig(context_steps=600, context=context,
                                                  batch_size=4, seed=2))
    hists = histories()
    out = s.batch_at(1)
    for r in range(4):
        g = int(out["group"][r])
        ch, qh = hists[out["context_history"][r]], hists[out["query_history"][r]]
        assert ch[0] == g and qh[0] == g  # context and query come from the drawn task
        idx = out["context_index"][r]
        assert np.all(idx + 1 < len(ch[1]["actions"]))
        np.testing.assert_array_equal(out["context_obs"][r], encode_states(ch[1]["states"][idx]))
        np.testing.assert_array_equal(out["context_next_obs"][r],
                                      encode_states(ch[1]["states"][idx + 1]))
        np.testing.assert_array_equal(out["context_actions"][r], ch[1]["actions"][idx])
        np.testing.assert_array_equal(out["context_rewards"][r], ch[1]["rewards"][idx])
        np.testing.assert_array_equal(out["context_dones"][r], ch[1]["dones"][idx])
        t = int(out["query_step"][r])
        np.testing.assert_array_equal(out["query_obs"][r], encode_states(qh[1]["states"][t]))
        assert out["label"][r] == qh[1]["expert_actions"][t]
    if context == "window":
        assert np.all(np.diff(out["context_index"], axis=1) == 1)


def test_data_info_cli(hand_file, capsys):
    assert data_cli.main(["info", str(hand_file)]) == 0
    text = capsys.readouterr().out
    eps = sum(int(h["dones"].sum()) + int(not h["dones"][-1]) for _, h in histories())
    assert "format: xland" in text and "groups (tasks): 2" in text
    assert "histories: 5" in text and f"steps: {2 * 5000 + 3 * 4300}" in text
    assert f"episodes: {eps} " in text and "XLand-MiniGrid-R1-9x9" in text


def test_info_estimates_episodes_of_large_files(hand_file):
    hists = [h for _, h in histories()]
    with XLandDataset(hand_file) as d:
        line = d.info_lines(max_histories=2)[-1]
    pick = [0, 4]  # evenly spaced over 5 histories
    eps = sum(int(hists[i]["dones"].sum()) + int(not hists[i]["dones"][-1]) for i in pick)
    total = eps * (2 * 5000 + 3 * 4300) / (5000 + 4300)
    assert line.startswith(f"episodes: ~{total:.4g} (estimated from 2 of 5 histories")


# ---------------------------------------------------------------------- DPT streamed windows
# Task 0: two histories across the writer's 4096-step chunk; task 1: three 60-step histories,
# shorter than a context alone but not as one task's stream.
DPT_SHAPES = [(2, 4200), (3, 60)]
DPT_K = 100


@pytest.fixture(scope="module")
def dpt_file(tmp_path_factory):
    groups = [XLandGroup("trivial", "XLand-MiniGrid-R1-9x9", i, **make_arrays(h, s, 10 + i))
              for i, (h, s) in enumerate(DPT_SHAPES)]
    return write_xland(tmp_path_factory.mktemp("xland_dpt") / "dpt.hdf5", groups)


@pytest.mark.parametrize("group_key, order_key", [("history_id", "episode_in_history"),
                                                   ("task_id", "")])
def test_dpt_windows_equal_dpt_sampler_on_the_store_view(dpt_file, group_key, order_key):
    cfg = DPTSamplerConfig(context_steps=DPT_K, group_key=group_key, order_key=order_key,
                           label_key="expert_actions", batch_size=6, seed=1)
    xs = XLandDPTWindowSampler(dpt_file, cfg)
    ds = DPTSampler(load(dpt_file), cfg, norm=Normalization.identity(625))
    specs = xs.specs_at(0)
    for k, v in ds.specs_at(0).items():  # the same draw
        np.testing.assert_array_equal(specs[k], v)
    # Forced windows: a stream's first and last, across the 4096 chunk (task 0's first
    # history), across a history's end into the next (a task stream).
    last = int(xs.group_steps[0]) - DPT_K
    forced = {"history_id": ([0, 0, 1, 1, 0, 0], [0, last, 4050, 4000, 4100, 17]),
              "task_id": ([0, 0, 0, 1, 1, 0], [0, last, 4150, 30, 80, 4050])}[group_key]
    forced = {"group": np.array(forced[0]), "start": np.array(forced[1])}
    for sp in (forced, xs.specs_at(3)):
        a, b = xs.batch_for(sp), ds.assemble(ds._plan(sp, ds.host_rows))
        for f, v in b.tokens().items():
            np.testing.assert_array_equal(a.tokens()[f], v, err_msg=f)
    # Host shards concatenate to the single-host batch; the stream resumes from its state.
    halves = [XLandDPTWindowSampler(dpt_file, cfg, host_id=i, num_hosts=2).batch_at(5)
              for i in range(2)]
    np.testing.assert_array_equal(np.concatenate([h.values for h in halves]),
                                  ds.batch_at(5).values)
    xs.next_batch()
    again = XLandDPTWindowSampler(dpt_file, cfg)
    again.load_state_dict(xs.state_dict())
    np.testing.assert_array_equal(again.next_batch().values, xs.next_batch().values)


def test_dpt_windows_by_hand(dpt_file):
    # Oracle from the arrays: per step the previous step's transition (next state hidden,
    # ended 1 after a done), the step's state as query, its expert action as target.
    arrs = make_arrays(*DPT_SHAPES[0], 10)
    s = XLandDPTWindowSampler(dpt_file, DPTSamplerConfig(
        context_steps=DPT_K, group_key="history_id", label_key="expert_actions", batch_size=2))
    hist, start = 1, 4040  # across the chunk boundary at 4096
    batch = s.batch_for({"group": np.array([hist, 0]), "start": np.array([start, 0])})
    h = {k: v[hist] for k, v in arrs.items()}
    od, a = 625, NUM_ACTIONS
    vals = batch.values[0].reshape(DPT_K, 2, -1)
    assert h["dones"][start - 1 : start + DPT_K - 1].any()  # the window crosses an episode end
    for j in range(DPT_K):
        t, p = start + j, start + j - 1
        np.testing.assert_array_equal(vals[j, 1, :od], encode_states(h["states"][t]))
        assert batch.target_ids[0, 2 * j + 1] == h["expert_actions"][t]
        assert batch.loss_mask[0, 2 * j + 1] == 1 and batch.loss_mask[0, 2 * j] == 0
        tr = vals[j, 0]
        ended = bool(h["dones"][p])
        np.testing.assert_array_equal(tr[:od], encode_states(h["states"][p]))
        assert tr[od : od + a].argmax() == h["actions"][p] and tr[od + a] == np.float32(
            h["rewards"][p])
        np.testing.assert_array_equal(tr[od + a + 1 : 2 * od + a + 1],
                                      0 if ended else encode_states(h["states"][t]))
        assert tr[2 * od + a + 1] == ended
    # The stream's first step has no transition before it.
    assert not batch.values[1, 0].any() and batch.values[1, 1, :od].any()
    with pytest.raises(ValueError, match="label_key='rewards'.*'expert_actions'"):
        XLandDPTWindowSampler(dpt_file, DPTSamplerConfig(context_steps=8, label_key="rewards",
                                                          group_key="history_id"))
    # DPT's default label name reads the file's expert actions: the same batches.
    same = [XLandDPTWindowSampler(dpt_file, DPTSamplerConfig(
        context_steps=8, group_key="history_id", label_key=k, batch_size=2, seed=4)).next_batch()
        for k in ("expert_actions", "optimal_actions")]
    np.testing.assert_array_equal(same[0].target_ids, same[1].target_ids)
    with pytest.raises(ValueError, match="context='shuffle' is not supported"):
        XLandDPTWindowSampler(dpt_file, DPTSamplerConfig(
            context_steps=8, context="shuffle", label_key="expert_actions"))
    with pytest.raises(ValueError, match="group_key='task_id' with order_key="):
        XLandDPTWindowSampler(dpt_file, DPTSamplerConfig(
            context_steps=8, order_key="episode_in_history", label_key="expert_actions"))


def test_rl_ring_train_dpt_streams_from_the_file(dpt_file, tmp_path, monkeypatch):
    from rl_ring.cli.train import main as train_main
    from rl_ring.train.checkpoint import checkpoint_meta
    from rl_ring.train.metrics import read_metrics

    def no_store(*a, **k):
        raise AssertionError("DPT on an XLand file must stream, not load an EpisodeStore")

    monkeypatch.setattr(XLandDataset, "to_store", no_store)
    run = tmp_path / "dpt"
    code = train_main(["--agent", "dpt", "--preset", "tiny", "--data", str(dpt_file),
                       "--workdir", str(run), "--mesh", "seq=1", "--devices", "1",
                       "--steps", "2", "--batch-size", "2", "--log-every", "1",
                       "--no-progress", "--no-tensorboard"])  # DPT's defaults work
    assert code == 0
    losses = [r["loss"] for r in read_metrics(run)]
    assert len(losses) == 2 and all(np.isfinite(losses))
    meta = checkpoint_meta(run)
    assert meta["sampler"]["sampler"] == "xland_dpt" and meta["sampler"]["step"] == 2
    assert meta["sampler"]["store"] == {"format": "xland", "histories": 5, "steps": 8580,
                                        "obs_encoding": "onehot"}
    # 16 steps of (TRANSITION, STATE); a transition is (s, one-hot a, r, s', ended).
    assert meta["batch_shape"]["seq_len"] == 32
    assert meta["batch_shape"]["feature_dim"] == 2 * 625 + NUM_ACTIONS + 2
