"""The Decision-Pretrained Transformer: its token layout (hand-computed payloads), the
labelled sampler against a step-by-step oracle (windows and shuffled in-context datasets,
loss on every query only), the online encoder building the very tokens it trained on, the
KV-cached policy acting like the recomputing oracle, ring attention over 8 devices following
one device, and a tiny run on bandits with optimal-arm labels through the CLI (the loss
falls, more context helps) evaluated from its checkpoint with ``rl-ring eval``."""

import json

import numpy as np
import pytest
from model_oracle import assert_trees_close
from test_agents import replay
from test_policy_cached import assert_same_actions, drive, make_pair

import agents
from rl_ring.data.batch import Kind
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import DPTSampler, DPTSamplerConfig
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, dpt_layout

dpt = agents.get("dpt")


def labelled_store(seed=0, lengths=(5, 3, 6, 4, 2, 7), tasks=(0, 1, 0, 1, 1, 0)):
    """Episodes of two tasks (2-dim states, 3 actions) with random optimal-action labels."""
    rng = np.random.default_rng(seed)
    eps = []
    for n in lengths:
        eps.append(dict(
            observations=rng.normal(size=(n, 2)).astype(np.float32) * [1.0, 3.0] + [0.5, -1.0],
            actions=rng.integers(0, 3, n),
            rewards=rng.integers(0, 5, n).astype(np.float32) / 4.0,
            optimal_actions=rng.integers(0, 3, n),
        ))
    return EpisodeStore.from_episodes(
        eps, episode_extras={"task_id": np.asarray(tasks)},
        metadata={"action_space": {"type": "discrete", "n": 3}})


# ------------------------------------------------------------------------------ layout
def test_transition_token_payload_by_hand():
    norm = Normalization(obs_mean=np.array([1.0, 2.0]), obs_std=np.array([2.0, 4.0]),
                         reward_scale=2.0)
    layout = dpt_layout(2, 3, True, norm)
    assert layout.kinds == (Kind.TRANSITION, Kind.STATE) and layout.predict_index == 1
    assert dict(layout.token_features()) == {"TRANSITION": 2 + 3 + 1 + 2 + 1, "STATE": 2}
    tok = layout.encode_token(
        Kind.TRANSITION, prev_obs=np.array([[3.0, 6.0], [3.0, 6.0], [3.0, 6.0]]),
        prev_action=np.array([2, 0, 1]), prev_reward=np.array([1.0, -4.0, 1.0]),
        prev_next_obs=np.array([[1.0, 10.0], [5.0, 2.0], [5.0, 2.0]]),
        prev_ended=np.array([0.0, 1.0, 1.0]), has_prev=np.array([1.0, 1.0, 0.0]))
    np.testing.assert_array_equal(tok, [
        [1.0, 1.0, 0, 0, 1, 0.5, 0.0, 2.0, 0.0],  # s, one-hot a, r / 2, s', not ended
        [1.0, 1.0, 1, 0, 0, -2.0, 0.0, 0.0, 1.0],  # ended: the next state is hidden
        [0.0] * 9,  # no transition yet
    ])
    # A transition is seen before the state it precedes; after it, it would be a leak.
    with pytest.raises(ValueError, match="only RTG and TRANSITION may precede STATE"):
        TokenLayout((Kind.STATE, Kind.TRANSITION), 2, 3, True, norm)


# ------------------------------------------------------------------------------ sampler
def oracle_streams(store, key="task_id"):
    """Per group: the store rows of its episodes in store order, and each row's
    (timestep, is-last-of-episode)."""
    streams, where = {}, {}
    for e in range(store.num_episodes):
        s, t = int(store.episode_starts[e]), int(store.episode_starts[e + 1])
        g = int(store.episode_extras[key][e])
        streams.setdefault(g, []).extend(range(s, t))
        for i in range(s, t):
            where[i] = (i - s, i == t - 1)
    return streams, where


def oracle_step(store, norm, query, prev, where):
    """Expected (TRANSITION, STATE) payloads, timestep and target of one step."""
    z = lambda o: (np.asarray(o, np.float64) - norm.obs_mean) / norm.obs_std  # noqa: E731
    tr = np.zeros(9)
    if prev is not None:
        ended = where[prev][1]
        tr[:2] = z(store.observations[prev])
        tr[2 + int(store.actions[prev])] = 1.0
        tr[5] = store.rewards[prev] / norm.reward_scale
        tr[6:8] = 0.0 if ended else z(store.observations[prev + 1])
        tr[8] = float(ended)
    state = np.zeros(9)
    state[:2] = z(store.observations[query])
    return tr, state, where[query][0], int(store.extras["optimal_actions"][query])


def test_window_rows_match_a_step_by_step_oracle():
    store = labelled_store()
    cfg = DPTSamplerConfig(context_steps=6, batch_size=6, seed=3, pad_multiple=8)
    sampler = DPTSampler(store, cfg)
    batch, specs = sampler.batch_at(0), sampler.specs_at(0)
    streams, where = oracle_streams(store)
    norm = sampler.norm
    assert batch.shape == (6, 16)  # 6 steps x 2 tokens, padded to 16
    starts = set()
    for r in range(6):
        stream = streams[int(specs["group"][r])]
        s = int(specs["start"][r])
        starts.add(s)
        for j in range(6):
            p = s + j
            want = oracle_step(store, norm, stream[p], stream[p - 1] if p else None, where)
            np.testing.assert_allclose(batch.values[r, 2 * j], want[0], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(batch.values[r, 2 * j + 1], want[1], rtol=1e-6,
                                       atol=1e-6)
            assert batch.timesteps[r, 2 * j] == batch.timesteps[r, 2 * j + 1] == want[2]
            assert batch.target_ids[r, 2 * j + 1] == want[3]
        # Loss on every query (STATE), none on transitions or padding.
        np.testing.assert_array_equal(batch.loss_mask[r], [0, 1] * 6 + [0] * 4)
        np.testing.assert_array_equal(batch.kind[r, :12], [Kind.TRANSITION, Kind.STATE] * 6)
        assert batch.valid[r, :12].all() and not batch.valid[r, 12:].any()
    assert 0 in starts and len(starts) > 2  # stream starts (no transition) and mid-stream
    # Two hosts materialise the two halves of the same global batch.
    halves = [DPTSampler(store, cfg, host_id=h, num_hosts=2).batch_at(0) for h in (0, 1)]
    for f, arr in batch.tokens().items():
        np.testing.assert_array_equal(np.concatenate([getattr(b, f) for b in halves]), arr)


def test_shuffled_datasets_draw_each_row_from_one_task():
    store = labelled_store(lengths=(5, 3, 6, 4, 2, 7, 9), tasks=(0, 1, 0, 1, 1, 0, 1))
    cfg = DPTSamplerConfig(context_steps=5, context="shuffle", batch_size=8, seed=1)
    sampler = DPTSampler(store, cfg)
    plan = sampler.plan_at(0)
    batch = sampler.assemble(plan)
    streams, where = oracle_streams(store)
    for r in range(8):
        rows = set(streams[int(sampler.specs_at(0)["group"][r])])
        prev = plan.prev[r]
        assert prev[0] == -1 and len(set(prev[1:])) == 4 and set(prev[1:]) <= rows
        assert set(plan.query[r]) <= rows
        for j in range(5):
            p = None if j == 0 else int(prev[j])
            want = oracle_step(store, sampler.norm, int(plan.query[r, j]), p, where)
            np.testing.assert_allclose(batch.values[r, 2 * j], want[0], rtol=1e-6, atol=1e-6)
            assert batch.target_ids[r, 2 * j + 1] == want[3]


def test_sampler_errors_name_what_is_missing():
    store = labelled_store()
    bare = EpisodeStore(store.observations, store.actions, store.rewards, store.terminals,
                        store.timeouts, store.episode_starts, extras={},
                        episode_extras=store.episode_extras, metadata=store.metadata)
    with pytest.raises(ValueError, match=r"no extras\['optimal_actions'\].*rl-ring collect"):
        DPTSampler(bare)
    with pytest.raises(ValueError, match=r"no episode_extras\['history_id'\]"):
        DPTSampler(store, DPTSamplerConfig(group_key="history_id"))
    with pytest.raises(ValueError, match="context_steps=40 is longer than every group"):
        DPTSampler(store, DPTSamplerConfig(context_steps=40))
    with pytest.raises(ValueError, match="context must be one of"):
        DPTSampler(store, DPTSamplerConfig(context="random"))


def test_online_tokens_match_the_window_sampler():
    # One evaluation row playing a group's episodes one after another builds exactly the
    # tokens of the sampler's windows over that stream.
    store = labelled_store()
    cfg = dpt.Config(context_steps=7)
    sampler = dpt.make_sampler(store, cfg, batch_size=6, seed=5)
    batch, specs = sampler.batch_at(0), sampler.specs_at(0)
    layout = dpt.make_layout(cfg, store)
    assert layout == sampler.layout
    streams, where = oracle_streams(store)
    for r in range(6):
        stream = streams[int(specs["group"][r])]
        steps = [(store.observations[i], store.actions[i], float(store.rewards[i]),
                  where[i][1], where[i][0] == 0) for i in stream]
        kinds, values, times = replay(dpt.online_encoder(layout, 1), steps)
        s = int(specs["start"][r])
        sl = slice(2 * s, 2 * s + 14)
        np.testing.assert_array_equal(batch.kind[r], kinds[sl])
        np.testing.assert_allclose(batch.values[r], values[sl], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(batch.timesteps[r], times[sl])


# ------------------------------------------------------------------------------ policy
@pytest.mark.parametrize("options", [{}, {"greedy": False, "slide_steps": 2}])
def test_cached_policy_acts_like_the_recomputing_oracle(options):
    # 14 steps in a 5-step context: windows slide, trials end, rows idle and fall out of step.
    oracle, cached = make_pair("dpt", True, context_steps=5, **options)
    history = drive([oracle, cached], steps=14, discrete=True)
    assert_same_actions(history, True)
    assert cached.calls["prefill"] > 0 and cached.calls["decode"] > 0


# ------------------------------------------------------------------------------ training
def test_ring_over_8_devices_gives_the_loss_and_gradients_of_one_device():
    from test_model_sharded import loss_and_grads, permuted, with_attention

    from rl_ring import sharding

    store = labelled_store(lengths=(9, 8, 7, 9, 8, 6), tasks=(0, 1, 0, 1, 0, 1))
    cfg = dpt.Config.tiny()  # 16 steps x 2 tokens: 4 per device, each 2 chunks of 2
    tokens = dpt.make_sampler(store, cfg, batch_size=2, seed=1).next_batch().tokens()
    chunks = (("q_chunk", 2), ("k_chunk", 2))
    one = with_attention(cfg, "blockwise")
    one = one.__class__(**{**one.__dict__, "model": one.model.replace(attn_options=chunks)})
    ring = with_attention(cfg, "ring", "zigzag")
    ring = ring.__class__(**{**ring.__dict__, "model": ring.model.replace(attn_options=chunks)})
    loss0, grads0 = loss_and_grads(dpt, one, store, tokens)
    loss, grads = loss_and_grads(dpt, ring, store, permuted(tokens, 8, "zigzag"),
                                 sharding.make_mesh("seq=8"))
    assert loss0 > 0.5  # about ln 3: an untrained model's cross-entropy over 3 actions
    assert_trees_close(loss, loss0, what="loss")
    assert_trees_close(grads, grads0, what="grads")


def easy_bandit_store(tasks=64, pulls=48, arms=5, seed=0):
    """Uniformly random pulls of Bernoulli bandits whose best arm pays 0.9 and the others
    0.1, one pull per episode, labelled with the best arm (what ``rl-ring collect bandit
    --policy random`` records, with gaps wide enough for a tiny model to learn quickly)."""
    rng = np.random.default_rng(seed)
    eps, task_ids = [], []
    for task in range(tasks):
        best = rng.integers(arms)
        means = np.where(np.arange(arms) == best, 0.9, 0.1)
        for _ in range(pulls):
            a = rng.integers(arms)
            eps.append(dict(observations=np.zeros((1, 1), np.float32), actions=np.array([a]),
                            rewards=np.array([float(rng.random() < means[a])], np.float32),
                            terminals=np.array([True]), optimal_actions=np.array([best])))
            task_ids.append(task)
    return EpisodeStore.from_episodes(
        eps, episode_extras={"task_id": np.array(task_ids)},
        metadata={"action_space": {"type": "discrete", "n": arms}})


@pytest.mark.slow
def test_bandit_run_learns_from_labels_and_evaluates_from_its_checkpoint(tmp_path, capsys):
    from agents.run import load_checkpoint
    from rl_ring.cli import eval as cli_eval
    from rl_ring.cli.train import main as train_main
    from rl_ring.models import action_loss
    from rl_ring.train.metrics import read_metrics

    data = easy_bandit_store().save(tmp_path / "pulls")
    run = tmp_path / "dpt"
    code = train_main(["--agent", "dpt", "--preset", "tiny", "--data", str(data), "--env",
                       "bandit", "--workdir", str(run), "--mesh", "seq=1", "--devices", "1",
                       "--steps", "150", "--batch-size", "32", "--ckpt-every", "150",
                       "--log-every", "1", "--no-progress", "--no-tensorboard",
                       "--optim.lr", "5e-3", "--optim.warmup-steps", "10"])
    assert code == 0, capsys.readouterr().err
    losses = np.array([r["loss"] for r in read_metrics(run)])
    # Without context the best arm is a 1-in-5 guess (cross-entropy ln 5 = 1.61).
    assert losses[:3].mean() > 1.5 and losses[-10:].mean() < 0.8 * losses[:3].mean(), losses

    # The checkpoint predicts better with more pulls in context: its loss at queries 12-15
    # is below its loss at queries 0-3 (fresh batches).
    model, cfg, norm, _ = load_checkpoint(run)
    assert cfg.agent == "dpt" and cfg.env == "bandit"
    store = EpisodeStore.load(data)
    batch = dpt.make_sampler(store, cfg.agent_config, batch_size=64, seed=99,
                             norm=norm).next_batch().tokens()
    pred = np.asarray(model(batch))
    per_query = []
    for j in (slice(0, 4), slice(12, 16)):
        mask = np.zeros_like(batch["loss_mask"])
        mask[:, 1::2][:, j] = 1.0
        per_query.append(float(action_loss(pred, {**batch, "loss_mask": mask},
                                           discrete=True)[0]))
    assert per_query[1] < 0.8 * per_query[0], per_query

    # `rl-ring eval --checkpoint` plays it on held-out bandits, sampling its actions.
    out = tmp_path / "eval"
    argv = ["--checkpoint", str(run), "--env", "bandit", "--task-split", "test", "--trials",
            "20", "--envs", "2", "--seeds", "1", "--out", str(out), "--no-progress"]
    assert cli_eval.main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["policy"] == f"checkpoint:{run}"
    assert len(report["episodes"]) == 2 * 20
