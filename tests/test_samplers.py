"""Sampler invariants on small synthetic stores, checked against plain-loop oracles.

Observations carry their own address: feature 0 is the episode number and feature 1 the
step within the episode, and the identity normalisation keeps them readable in the STATE
(or STEP) tokens. So every test decodes which store step each token came from and checks
the other fields against values computed here with plain Python loops.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest

from rl_ring.attention import reference_attention
from rl_ring.data.batch import Kind
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import (
    BCSampler,
    BCSamplerConfig,
    ChainConfig,
    ChainSampler,
    DTSampler,
    DTSamplerConfig,
    HistoryConfig,
    HistorySampler,
    ranges,
    top_percent_episodes,
)
from rl_ring.data.store import EpisodeStore

ID = Normalization.identity(3)


def make_store(lengths, *, tasks=None, discrete=False, seed=0, histories=None, order=None):
    """Episodes whose observation is (episode, t, noise); integer rewards."""
    rng = np.random.default_rng(seed)
    eps = []
    for e, n in enumerate(lengths):
        obs = np.stack([np.full(n, e), np.arange(n), rng.normal(size=n)], 1).astype(np.float32)
        act = rng.integers(0, 4, n) if discrete else rng.normal(size=(n, 2)).astype(np.float32)
        eps.append({"observations": obs, "actions": act, "rewards": rng.integers(0, 4, n) * 1.0})
    extras = {}
    if tasks is not None:
        extras["task_id"] = np.asarray(tasks)
    if histories is not None:
        extras["history_id"] = np.asarray(histories)
        extras["episode_in_history"] = np.asarray(order)
    meta = {"action_space": {"type": "discrete", "n": 4}} if discrete else {}
    return EpisodeStore.from_episodes(eps, episode_extras=extras, metadata=meta)


def steps_of_row(batch, r, layout):
    """(episode, t) of every step of row r, plus its token values as [S, k, F]."""
    k = layout.tokens_per_step
    n = int(batch.valid[r].sum())
    assert n % k == 0 and batch.valid[r, :n].all()
    vals = batch.values[r, :n].reshape(n // k, k, -1)
    pi = layout.predict_index
    return vals[:, pi, 0].astype(int), vals[:, pi, 1].astype(int), vals


def split_runs(ep, t):
    """Consecutive runs of one episode with consecutive steps: [(episode, first_t, length)]."""
    cut = np.flatnonzero((np.diff(ep) != 0) | (np.diff(t) != 1)) + 1
    bounds = np.concatenate([[0], cut, [len(ep)]])
    return [(ep[a], t[a], b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def check_padding_and_positions(batch):
    b, t = batch.shape
    np.testing.assert_array_equal(batch.positions, np.tile(np.arange(t), (b, 1)))
    pad = ~batch.valid
    assert (batch.loss_mask[pad] == 0).all() and (batch.kind[pad] == 0).all()
    assert (batch.values[pad] == 0).all() and (batch.segment_ids[pad] == 0).all()
    assert (batch.segment_ids[batch.valid] >= 1).all()
    for r in range(b):  # padding only at the end of a row
        n = batch.valid[r].sum()
        assert batch.valid[r, :n].all()
    batch.validate()


# ---------------------------------------------------------------------- chains (AT)
TASK_LENGTHS = (5, 7, 4, 6, 3, 8, 5, 6, 4)
TASKS = (0, 1, 0, 0, 1, 0, 1, 2, 1)


def check_chain_row(store, batch, r, layout, cfg):
    ep, t, vals = steps_of_row(batch, r, layout)
    runs = split_runs(ep, t)
    assert len(runs) == cfg.num_trajectories
    eps = [int(e) for e, _, _ in runs]
    assert len(set(store.episode_extras["task_id"][eps])) == 1, "one task per chain"
    if not cfg.replace:
        assert len(set(eps)) == len(eps)
    rets = [float(store.episode(e)["rewards"].sum()) for e in eps]
    assert rets == sorted(rets), "chain sorted by return ascending"
    best = max(rets)
    ki = {k: i for i, k in enumerate(layout.kinds)}
    k = layout.tokens_per_step
    row_loss = batch.loss_mask[r, : len(ep) * k].reshape(-1, k)
    row_ts = batch.timesteps[r, : len(ep) * k].reshape(-1, k)
    s = 0
    for j, (e, t0, w) in enumerate(runs):
        rew = store.episode(e)["rewards"]
        act = store.episode(e)["actions"]
        length = len(rew)
        if cfg.max_steps is None:
            assert (t0, w) == (0, length)
        else:
            assert w == min(length, cfg.max_steps)
        rtg_tok = vals[s : s + w, ki[Kind.RTG], 0]
        expect = [best - sum(rew[:u]) for u in range(t0, t0 + w)]
        np.testing.assert_array_equal(rtg_tok, expect)  # relabelled to the chain's best
        np.testing.assert_array_equal(np.diff(rtg_tok), -rew[t0 : t0 + w - 1])
        np.testing.assert_array_equal(vals[s : s + w, ki[Kind.ACTION], :2], act[t0 : t0 + w])
        d = np.zeros(w)
        if rets[j] == best and t0 + w == length:
            d[-1] = 1.0
        if Kind.DONE in ki:
            np.testing.assert_array_equal(vals[s : s + w, ki[Kind.DONE], 0], d)
        if Kind.REWARD in ki:
            np.testing.assert_array_equal(vals[s : s + w, ki[Kind.REWARD], 0], rew[t0 : t0 + w])
            if Kind.DONE not in ki:
                np.testing.assert_array_equal(vals[s : s + w, ki[Kind.REWARD], 1], d)
        trained = cfg.loss_on == "all" or j == len(runs) - 1
        expect_loss = np.zeros((w, k))
        expect_loss[:, ki[Kind.STATE]] = trained
        np.testing.assert_array_equal(row_loss[s : s + w], expect_loss)
        np.testing.assert_array_equal(
            row_ts[s : s + w], np.repeat(np.arange(t0, t0 + w), k).reshape(w, k)
        )
        tgt = batch.target[r, (s * k) + ki[Kind.STATE] : (s + w) * k : k]
        np.testing.assert_array_equal(tgt, act[t0 : t0 + w] * trained)
        s += w
    return runs


@pytest.mark.filterwarnings("ignore:ChainSampler. tasks")
@pytest.mark.parametrize(
    "cfg",
    [
        ChainConfig(batch_size=6, num_trajectories=3),
        ChainConfig(batch_size=6, num_trajectories=3, loss_on="last", pad_multiple=7),
        ChainConfig(batch_size=6, num_trajectories=2, max_steps=4, window="random"),
        ChainConfig(batch_size=6, num_trajectories=3, max_steps=3, window="end", done_token=True),
        ChainConfig(
            batch_size=6,
            num_trajectories=3,
            max_steps=3,
            window="start",
            reward_token=False,
            done_token=True,
        ),
    ],
    ids=["default", "last", "random-window", "end-window-done", "start-window-no-reward"],
)
def test_chain_invariants(cfg):
    store = make_store(TASK_LENGTHS, tasks=TASKS)
    sampler = ChainSampler(store, cfg, norm=ID)
    assert sampler.seq_len % cfg.pad_multiple == 0
    cap = min(max(TASK_LENGTHS), cfg.max_steps or 99)
    assert sampler.seq_len >= cfg.num_trajectories * cap * sampler.layout.tokens_per_step
    seen_offsets = set()
    for step in range(4):
        batch = sampler.batch_at(step)
        check_padding_and_positions(batch)
        assert batch.shape == (6, sampler.seq_len)
        for r in range(6):
            for _, t0, _ in check_chain_row(store, batch, r, sampler.layout, cfg):
                seen_offsets.add(int(t0))
    if cfg.window == "start" or cfg.max_steps is None:
        assert seen_offsets == {0}
    elif cfg.window == "random":
        assert len(seen_offsets) > 2  # windows of long episodes start at several places


def test_chain_discrete_targets_and_single_task():
    store = make_store((4, 6, 5, 3), discrete=True)  # no task_id: the whole store is one task
    sampler = ChainSampler(store, ChainConfig(batch_size=4, num_trajectories=4), norm=ID)
    batch = sampler.batch_at(0)
    assert batch.discrete_actions and batch.target.shape == (4, sampler.seq_len, 0)
    for r in range(4):
        ep, t, vals = steps_of_row(batch, r, sampler.layout)
        assert sorted(set(ep)) == [0, 1, 2, 3]  # all four episodes, each once
        acts = np.concatenate(
            [store.episode(e)["actions"][tt : tt + 1] for e, tt in zip(ep, t, strict=True)]
        )
        np.testing.assert_array_equal(vals[:, 2, :4], np.eye(4)[acts])  # one-hot ACTION inputs
        ids = batch.target_ids[r, 1 : 4 * len(ep) : 4]
        np.testing.assert_array_equal(ids, acts)
        assert batch.target_ids[r, 0::4].sum() == 0  # only at STATE tokens


@pytest.mark.filterwarnings("ignore:ChainSampler. tasks")
def test_chain_replacement_and_errors():
    store = make_store(TASK_LENGTHS, tasks=TASKS)
    with pytest.raises(ValueError, match="num_trajectories=5 is more than any task"):
        ChainSampler(store, ChainConfig(num_trajectories=5), norm=ID)
    with pytest.warns(UserWarning, match=r"tasks \[2\] have fewer than num_trajectories=3"):
        ChainSampler(store, ChainConfig(num_trajectories=3), norm=ID)
    cfg = ChainConfig(batch_size=8, num_trajectories=6, replace=True)
    sampler = ChainSampler(store, cfg, norm=ID)
    repeats = 0
    for r, eps in enumerate(sampler.specs_at(0)["episodes"]):
        repeats += len(set(eps.tolist())) < 6
        tasks = store.episode_extras["task_id"][eps]
        assert len(set(tasks.tolist())) == 1
        rets = store.episode_returns[eps]
        assert (np.diff(rets) >= 0).all()
        ep, _, _ = steps_of_row(sampler.batch_at(0), r, sampler.layout)
        np.testing.assert_array_equal(np.unique(ep), np.unique(eps))
    assert repeats > 0  # 6 draws from tasks of <= 4 episodes must repeat
    for bad, match in [
        (ChainConfig(pad_multiple=0), "pad_multiple must be an integer >= 1"),
        (ChainConfig(num_trajectories=0), "num_trajectories must be"),
        (ChainConfig(max_steps=0), "max_steps must be"),
        (ChainConfig(window="middle"), "window must be one of"),
        (ChainConfig(loss_on="best"), "loss_on must be one of"),
        (ChainConfig(batch_size=3, num_trajectories=2), "batch_size=3 is not divisible by num_"),
    ]:
        with pytest.raises(ValueError, match=match):
            ChainSampler(store, bad, norm=ID, num_hosts=2)


# ---------------------------------------------------------------------- DT / BC windows
def test_dt_windows_rtg_and_packing():
    lengths = (5, 7, 2, 6)
    store = make_store(lengths)
    cfg = DTSamplerConfig(batch_size=5, context_steps=4, pack=3, pad_multiple=8)
    sampler = DTSampler(store, cfg, norm=ID)
    assert sampler.seq_len == 40  # 3 windows x 4 steps x 3 tokens = 36 -> 40
    starts = set()
    for step in range(6):
        batch = sampler.batch_at(step)
        check_padding_and_positions(batch)
        for r in range(5):
            ep, t, vals = steps_of_row(batch, r, sampler.layout)
            runs = split_runs(ep, t)
            seg = batch.segment_ids[r, : 3 * len(ep) : 3]
            # three windows, each its own segment 1, 2, 3 (adjacent windows may even share an
            # episode, so they are told apart by segment, not by run)
            assert sorted(set(seg.tolist())) == [1, 2, 3]
            s = 0
            for w_id in (1, 2, 3):
                n = int((seg == w_id).sum())
                e, t0 = int(ep[s]), int(t[s])
                rew = store.episode(e)["rewards"]
                assert n == min(4, len(rew) - t0)  # K steps or up to the episode's end
                np.testing.assert_array_equal(t[s : s + n], np.arange(t0, t0 + n))
                np.testing.assert_array_equal(ep[s : s + n], e)
                hand = [sum(float(x) for x in rew[u:]) for u in range(t0, t0 + n)]
                np.testing.assert_array_equal(vals[s : s + n, 0, 0], hand)
                np.testing.assert_array_equal(
                    batch.timesteps[r, 3 * s : 3 * (s + n) : 3], np.arange(t0, t0 + n)
                )
                starts.add((e, t0))
                s += n
            # Every break between runs of consecutive steps is a break between windows
            # (windows that continue each other may form one run): at most 3 runs.
            assert 1 <= len(runs) <= 3
            run_starts = np.cumsum([n for _, _, n in runs])[:-1]
            assert all(seg[i] != seg[i - 1] for i in run_starts)
            np.testing.assert_array_equal(batch.loss_mask[r, : 3 * s], np.tile([0, 1, 0], s))
    # windows start anywhere in an episode (DT's uniform start), including the last step
    assert (1, 6) in starts or (0, 4) in starts or (3, 5) in starts
    with pytest.raises(ValueError, match="context_steps=8 is larger than every episode"):
        DTSampler(store, DTSamplerConfig(context_steps=8), norm=ID)
    with pytest.raises(ValueError, match="pack must be"):
        DTSampler(store, DTSamplerConfig(pack=0), norm=ID)


def test_segments_do_not_leak_through_attention():
    store = make_store((5, 7, 6, 6))
    sampler = DTSampler(store, DTSamplerConfig(batch_size=2, context_steps=4, pack=3), norm=ID)
    batch = sampler.batch_at(0)
    rng = np.random.default_rng(0)
    proj = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)  # values -> q, k, v (2 heads)

    def attend(values):
        q, k, v = np.einsum("btf,cfhd->cbthd", values, proj)
        return np.asarray(
            reference_attention(
                q, k, v, causal=True, segment_ids=batch.segment_ids, kv_mask=batch.valid
            )
        )

    base = attend(batch.values)
    perturbed = batch.values.copy()
    hit = batch.segment_ids == 2
    perturbed[hit] += rng.normal(size=perturbed[hit].shape)
    out = attend(perturbed)
    other = batch.valid & ~hit
    np.testing.assert_array_equal(out[other], base[other])
    assert np.abs(out[hit] - base[hit]).max() > 1e-3
    jax.clear_caches()


def test_top_percent_hand_computed():
    returns = np.array([5, 1, 5, 3, 9, 0, 2, 8, 7, 4.0])
    np.testing.assert_array_equal(top_percent_episodes(returns, 30), [4, 7, 8])
    np.testing.assert_array_equal(top_percent_episodes(returns, 31), [4, 7, 8, 0])
    np.testing.assert_array_equal(top_percent_episodes(returns, 35), [4, 7, 8, 0])
    # ties: the lower episode number first
    np.testing.assert_array_equal(top_percent_episodes(np.array([3, 5, 5, 1.0]), 25), [1])
    np.testing.assert_array_equal(top_percent_episodes(np.array([3, 5, 5, 1.0]), 50), [1, 2])
    np.testing.assert_array_equal(top_percent_episodes(np.array([3.0]), 1), [0])
    # many ties: within a return, episodes in increasing order (a plain loop as the oracle)
    many = np.random.default_rng(0).permutation(np.repeat(np.arange(10.0), 30))
    expect = [e for v in range(9, -1, -1) for e in range(300) if many[e] == v][:45]
    np.testing.assert_array_equal(top_percent_episodes(many, 15), expect)
    with pytest.raises(ValueError, match="top_percent must be in"):
        top_percent_episodes(returns, 0)


def test_bc_samples_only_top_episodes():
    store = make_store((6, 5, 7, 4, 6, 5, 8, 6, 5, 7), seed=3)
    returns = store.episode_returns
    expect = set(np.argsort(-returns, kind="stable")[:3].tolist())
    for state_only in (False, True):
        cfg = BCSamplerConfig(batch_size=8, top_percent=30, context_steps=3, state_only=state_only)
        sampler = BCSampler(store, cfg, norm=ID)
        assert set(sampler.selected.tolist()) == expect
        k = sampler.layout.tokens_per_step
        assert sampler.layout.kinds == ((Kind.STATE,) if state_only else (Kind.STATE, Kind.ACTION))
        seen = set()
        for step in range(5):
            batch = sampler.batch_at(step)
            check_padding_and_positions(batch)
            for r in range(8):
                ep, t, _ = steps_of_row(batch, r, sampler.layout)
                seen |= set(ep.tolist())
                acts = np.stack(
                    [store.episode(e)["actions"][tt] for e, tt in zip(ep, t, strict=True)]
                )
                np.testing.assert_array_equal(batch.target[r, : k * len(ep) : k], acts)
                assert batch.loss_mask[r].sum() == len(ep)
        assert seen == expect


# ---------------------------------------------------------------------- AD histories
def history_store():
    # Two histories, episodes stored out of order: the stream must follow episode_in_history.
    lengths = (4, 3, 5, 2, 4, 3, 5, 4)
    hist = (1, 0, 1, 0, 0, 1, 1, 0)
    order = (2, 1, 0, 0, 3, 1, 3, 2)
    return make_store(lengths, discrete=True, histories=hist, order=order), hist, order


@pytest.mark.parametrize("align", ["step", "episode"])
def test_history_windows_cross_episodes(align):
    store, hist, order = history_store()
    # The two streams in order, as (episode, t) lists: a plain loop.
    streams = {}
    for h in (0, 1):
        eps = sorted((o, e) for e, (hh, o) in enumerate(zip(hist, order, strict=True)) if hh == h)
        streams[h] = [(e, t) for _, e in eps for t in range(store.episode_lengths[e])]
    cfg = HistoryConfig(batch_size=4, window_steps=9, align=align, pad_multiple=4)
    sampler = HistorySampler(store, cfg, norm=ID)
    assert sampler.seq_len == 12
    crossed = 0
    for step in range(5):
        batch = sampler.batch_at(step)
        check_padding_and_positions(batch)
        for r in range(4):
            ep, t, vals = steps_of_row(batch, r, sampler.layout)
            assert len(ep) == 9
            h = int(hist[ep[0]])
            stream = streams[h]
            start = stream.index((int(ep[0]), int(t[0])))
            assert list(zip(ep.tolist(), t.tolist(), strict=True)) == stream[start : start + 9]
            if align == "episode":
                assert t[0] == 0
            crossed += len(set(ep.tolist())) > 1
            for i in range(9):
                pos = start + i
                a_onehot, prev_r, flag = vals[i, 0, 3:7], vals[i, 0, 7], vals[i, 0, 8]
                if pos == 0:
                    np.testing.assert_array_equal(a_onehot, 0)
                    assert prev_r == 0
                else:
                    pe, pt = stream[pos - 1]
                    np.testing.assert_array_equal(
                        a_onehot, np.eye(4)[store.episode(pe)["actions"][pt]]
                    )
                    assert prev_r == store.episode(pe)["rewards"][pt]
                assert flag == float(t[i] == 0)
                assert batch.timesteps[r, i] == t[i]
                assert batch.target_ids[r, i] == store.episode(int(ep[i]))["actions"][t[i]]
            assert batch.loss_mask[r, :9].all() and batch.loss_mask[r].sum() == 9
    assert crossed == 20  # every 9-step window spans more than one episode here


@pytest.mark.parametrize("discrete", [True, False])
def test_history_loss_weights_follow_their_episodes(discrete):
    store, hist, order = history_store()
    if not discrete:
        store = make_store(store.episode_lengths, histories=hist, order=order)
    weights = np.array([0.0, 0.5, 1.0, 2.0, 1.0, 0.0, 3.0, 1.0])
    store.episode_extras["w"] = weights
    cfg = HistoryConfig(batch_size=4, window_steps=9, weight_key="w", pad_multiple=4)
    sampler = HistorySampler(store, cfg, norm=ID)
    plain = HistorySampler(store, dataclasses.replace(cfg, weight_key=""), norm=ID)
    for step in range(5):
        batch, same = sampler.batch_at(step), plain.batch_at(step)
        # the same windows, only the loss mask weighs them
        np.testing.assert_array_equal(batch.values, same.values)
        for r in range(4):
            ep, t, _ = steps_of_row(batch, r, sampler.layout)
            np.testing.assert_array_equal(batch.loss_mask[r, :9], weights[ep])
            assert batch.loss_mask[r, 9:].sum() == 0
            acts = np.stack([store.episode(e)["actions"][tt]
                             for e, tt in zip(ep, t, strict=True)])
            keep = weights[ep] > 0
            if discrete:
                np.testing.assert_array_equal(batch.target_ids[r, :9], np.where(keep, acts, 0))
            else:  # weighted targets are the actions themselves, not scaled by the weight
                np.testing.assert_array_equal(batch.target[r, :9],
                                              np.where(keep[:, None], acts, 0))
    bad = dict(store.episode_extras)
    for w, match in ((np.full(8, -1.0), r"finite and >= 0; episode 0 has -1.0"),
                     (np.full(7, 1.0), r"has shape \(7,\), expected one weight per episode")):
        store.episode_extras["w"] = w
        with pytest.raises(ValueError, match=match):
            HistorySampler(store, cfg, norm=ID)
    store.episode_extras = bad
    with pytest.raises(ValueError, match="weight_key='nope' is not an episode extra"):
        HistorySampler(store, dataclasses.replace(cfg, weight_key="nope"), norm=ID)


@pytest.mark.parametrize("discrete", [True, False])
def test_history_label_key_changes_the_targets_only(discrete):
    store, hist, order = history_store()
    if not discrete:
        store = make_store(store.episode_lengths, histories=hist, order=order)
    rng = np.random.default_rng(3)
    labels = (rng.integers(0, store.act_dim, store.num_steps) if discrete
              else rng.normal(size=(store.num_steps, store.act_dim)).astype(np.float32))
    store.extras["chosen"] = labels
    cfg = HistoryConfig(batch_size=4, window_steps=9, label_key="chosen", pad_multiple=4)
    sampler = HistorySampler(store, cfg, norm=ID)
    plain = HistorySampler(store, dataclasses.replace(cfg, label_key=""), norm=ID)
    for step in range(5):
        batch, same = sampler.batch_at(step), plain.batch_at(step)
        # the same windows and tokens (the actions taken), the labels as targets
        for f in ("values", "kind", "timesteps", "loss_mask", "valid"):
            np.testing.assert_array_equal(getattr(batch, f), getattr(same, f), err_msg=f)
        for r in range(4):
            ep, t, _ = steps_of_row(batch, r, sampler.layout)
            rows = store.episode_starts[ep] + t
            if discrete:
                np.testing.assert_array_equal(batch.target_ids[r, :9], labels[rows])
                assert (batch.target_ids[r, :9] != same.target_ids[r, :9]).any()
            else:
                np.testing.assert_array_equal(batch.target[r, :9], labels[rows])
    store.extras["chosen"] = labels[:-1]
    with pytest.raises(ValueError, match=r"extras\['chosen'\]"):
        HistorySampler(store, cfg, norm=ID)
    with pytest.raises(ValueError, match=r"no extras\['nope'\]: label_key names"):
        HistorySampler(store, dataclasses.replace(cfg, label_key="nope"), norm=ID)


def test_history_errors():
    store, hist, order = history_store()
    with pytest.raises(ValueError, match=r"no episode_extras\['history_id'\]"):
        HistorySampler(make_store((4, 5)), HistoryConfig(window_steps=3), norm=ID)
    with pytest.raises(ValueError, match="window_steps=30 is longer than every learning history"):
        HistorySampler(store, HistoryConfig(window_steps=30), norm=ID)
    with pytest.raises(ValueError, match="align must be one of"):
        HistorySampler(store, HistoryConfig(window_steps=3, align="trial"), norm=ID)
    dup = make_store((3, 3), discrete=True, histories=(0, 0), order=(1, 1))
    with pytest.raises(ValueError, match="same episode_in_history 1"):
        HistorySampler(dup, HistoryConfig(window_steps=3), norm=ID)


# ---------------------------------------------------------------------- common machinery
def all_samplers():
    chain_store = make_store(TASK_LENGTHS, tasks=TASKS)
    hstore, _, _ = history_store()
    return (
        [ChainSampler, chain_store, ChainConfig(batch_size=4, num_trajectories=2, pad_multiple=4)],
        [DTSampler, chain_store, DTSamplerConfig(batch_size=4, context_steps=3, pack=2)],
        [BCSampler, chain_store, BCSamplerConfig(batch_size=4, top_percent=50, context_steps=2)],
        [HistorySampler, hstore, HistoryConfig(batch_size=4, window_steps=6)],
    )


def assert_batches_equal(a, b):
    for f in a.tokens():
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)


@pytest.mark.filterwarnings("ignore:ChainSampler. tasks")
@pytest.mark.parametrize("which", range(4), ids=["chain", "dt", "bc", "history"])
def test_determinism_hosts_and_resume(which):
    cls, store, cfg = all_samplers()[which]
    a = cls(store, cfg, norm=ID)
    b = cls(store, cfg, norm=ID)
    first = [a.next_batch() for _ in range(3)]
    for x in first:
        assert_batches_equal(x, b.next_batch())
    for x, y in zip(first[:-1], first[1:], strict=True):
        assert not np.array_equal(x.values, y.values), "consecutive batches differ"
    other = cls(store, type(cfg)(**{**cfg.__dict__, "seed": 1}), norm=ID)
    assert any(not np.array_equal(x.values, other.next_batch().values) for x in first), (
        "a different seed gives a different stream"
    )

    # Host shards: disjoint row slices whose concatenation is the single-host batch.
    hosts = [cls(store, cfg, norm=ID, host_id=h, num_hosts=2) for h in (0, 1)]
    for step in range(3):
        parts = [h.next_batch() for h in hosts]
        assert parts[0].shape[0] == 2
        for f in first[step].tokens():
            np.testing.assert_array_equal(
                np.concatenate([getattr(p, f) for p in parts]), getattr(first[step], f)
            )

    # Resume: a fresh sampler loaded from a JSON state continues the same stream, even on a
    # different number of hosts.
    state = json.loads(json.dumps(a.state_dict()))
    ahead = a.next_batch()
    resumed = cls(store, cfg, norm=ID)
    resumed.load_state_dict(state)
    assert_batches_equal(resumed.next_batch(), ahead)
    host1 = cls(store, cfg, norm=ID, host_id=1, num_hosts=2)
    host1.load_state_dict(state)
    np.testing.assert_array_equal(host1.next_batch().values, ahead.values[2:])
    bad = cls(store, type(cfg)(**{**cfg.__dict__, "seed": 5}), norm=ID)
    with pytest.raises(ValueError, match="saved config .* differs"):
        bad.load_state_dict(state)
    # A state saved before an option existed (the option at its default) still resumes;
    # one whose option is on does not match a state without it.
    field = ("step_prev_obs" if hasattr(cfg, "step_prev_obs") else
             next(f.name for f in dataclasses.fields(cfg)
                  if f.default is not dataclasses.MISSING and getattr(cfg, f.name) == f.default))
    older = {**state, "config": {k: v for k, v in state["config"].items() if k != field}}
    again = cls(store, cfg, norm=ID)
    again.load_state_dict(older)
    assert_batches_equal(again.next_batch(), ahead)
    if hasattr(cfg, "step_prev_obs"):
        on = cls(store, type(cfg)(**{**cfg.__dict__, "step_prev_obs": True}), norm=ID)
        with pytest.raises(ValueError, match="saved config .* differs"):
            on.load_state_dict(older)

    # Prefetching yields the same batches and its state counts only what was consumed.
    fresh = cls(store, cfg, norm=ID)
    with fresh.prefetch(depth=2) as it:
        assert_batches_equal(next(it), first[0])
        assert_batches_equal(next(it), first[1])
        assert it.state_dict()["step"] == 2
    assert fresh.step == 2


def test_ranges_matches_loop():
    starts, lengths = np.array([5, 0, 9, 3]), np.array([2, 0, 3, 1])
    expect = [x for s, n in zip(starts, lengths, strict=True) for x in range(s, s + n)]
    np.testing.assert_array_equal(ranges(starts, lengths), expect)
    assert ranges(np.array([1]), np.array([0])).size == 0


def test_prefetch_hands_over_errors_in_order():
    store = make_store((5, 6, 4, 7))

    class Failing(DTSampler):
        def batch_at(self, step):
            if step == 2:
                raise RuntimeError("store went away at step 2")
            return super().batch_at(step)

    sampler = Failing(store, DTSamplerConfig(batch_size=2, context_steps=3), norm=ID)
    plain = DTSampler(store, DTSamplerConfig(batch_size=2, context_steps=3), norm=ID)
    it = sampler.prefetch(depth=3)
    assert_batches_equal(next(it), plain.batch_at(0))
    assert_batches_equal(next(it), plain.batch_at(1))
    with pytest.raises(RuntimeError, match="store went away at step 2"):
        next(it)
    assert sampler.step == 2  # the failed batch was not consumed
    with pytest.raises(StopIteration):
        next(it)
