"""Agents: registry and config errors, data specs, the act rule, and the online token encoder
replayed over the same episodes as each agent's sampler."""

import numpy as np
import pytest
from flax import nnx

import agents
from agents import base
from agents.presets import train_preset
from rl_ring.data.batch import Kind
from rl_ring.data.store import EpisodeStore


def store_with_exact_returns(discrete=False, lengths=(6, 4, 7, 5, 6), seed=0):
    # Rewards are multiples of 1/8, so returns sum exactly in any order (the completion flag
    # compares a return with the best one).
    rng = np.random.default_rng(seed)
    eps = []
    for n in lengths:
        obs = rng.normal(size=(n, 3)).astype(np.float32) * [1.0, 3.0, 0.5] + [0.0, 1.0, -2.0]
        act = rng.integers(0, 3, n) if discrete else rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        rew = rng.integers(0, 9, n).astype(np.float32) / 8.0
        eps.append(dict(observations=obs.astype(np.float32), actions=act, rewards=rew))
    extras = {
        "history_id": np.zeros(len(lengths), int),
        "episode_in_history": np.arange(len(lengths)),
    }
    meta = (
        {"action_space": {"type": "discrete", "n": 3}}
        if discrete
        else {"action_space": {"type": "box", "low": [-1.0, -1.0], "high": [1.0, 1.0]}}
    )
    return EpisodeStore.from_episodes(eps, episode_extras=extras, metadata=meta)


# ------------------------------------------------------------------------------ registry
def test_registry_knows_the_five_agents_and_names_them_on_error():
    assert agents.names() == ("at", "dt", "bc", "ad", "dpt")
    for name in agents.names():
        agent = agents.get(name)
        assert agent.NAME == name
        for attr in ("Config", "make_sampler", "make_model", "loss_fn", "make_layout"):
            assert hasattr(agent, attr), f"{name} lacks {attr}"
    with pytest.raises(
        ValueError, match=r"unknown agent 'ppo'; known agents are \['ad', 'at', 'bc', 'dpt', 'dt'\]"
    ):
        agents.get("ppo")


def test_wrong_config_type_and_bad_model_options_fail_before_compute():
    store = store_with_exact_returns()
    with pytest.raises(TypeError, match="expected a ATConfig, got DTConfig"):
        agents.get("at").make_model(agents.get("dt").Config.tiny(), store, rngs=nnx.Rngs(0))
    bad = agents.get("dt").Config.tiny()
    with pytest.raises(ValueError, match="num_heads=3 does not divide width=32"):
        bad.__class__(**{**bad.__dict__, "model": bad.model.replace(num_heads=3)})


def test_dt_default_config_is_the_dt_papers():
    cfg = agents.get("dt").Config()
    m = cfg.model
    assert (m.depth, m.num_heads, m.width, m.dropout, cfg.context_steps) == (3, 1, 128, 0.1, 20)
    # The DT paper's training settings are the d4rl-dt preset's.
    rec = train_preset("d4rl-dt", "dt")
    assert (rec.optim.lr, rec.optim.warmup_steps, rec.batch_size, rec.optim.grad_clip) == (
        1e-4,
        10_000,
        64,
        0.25,
    )


def test_model_shapes_come_from_the_data_and_layout():
    store = store_with_exact_returns()
    model = agents.get("at").make_model(agents.get("at").Config.tiny(), store, rngs=nnx.Rngs(0))
    cfg = model.cfg
    assert (cfg.obs_dim, cfg.act_dim, cfg.discrete_actions) == (3, 2, False)
    assert dict(cfg.token_features) == {"RTG": 1, "STATE": 3, "ACTION": 2, "REWARD": 2}
    assert cfg.squash_actions and cfg.action_low == (-1.0, -1.0) and cfg.action_high == (1.0, 1.0)
    ad = agents.get("ad").make_model(
        agents.get("ad").Config.tiny(), store_with_exact_returns(discrete=True), rngs=nnx.Rngs(0)
    )
    # obs 3 + one-hot previous action 3 + previous reward + new-episode flag
    assert dict(ad.cfg.token_features) == {"STEP": 8} and ad.cfg.discrete_actions


# ------------------------------------------------------------------------------ data spec
def test_data_spec_from_store_and_round_trip():
    store = store_with_exact_returns()
    spec = base.DataSpec.from_store(store)
    best = max(float(np.sum(store.episode(i)["rewards"], dtype=np.float64)) for i in range(5))
    assert spec == base.DataSpec(
        3, 2, False, (-1.0, -1.0), (1.0, 1.0), max_episode_len=7, max_return=best
    )
    assert base.DataSpec.from_dict(spec.to_dict()) == spec
    # Without a declared box the observed range is used.
    bare = EpisodeStore.from_episodes(
        [
            dict(
                observations=np.zeros((2, 1)),
                actions=np.array([[0.5], [-2.0]]),
                rewards=np.zeros(2),
            )
        ]
    )
    assert base.DataSpec.from_store(bare).action_low == (-2.0,)
    assert base.DataSpec.from_store(bare).action_high == (0.5,)
    with pytest.raises(ValueError, match="format is None"):
        base.DataSpec.from_dict({"obs_dim": 3})
    with pytest.raises(TypeError, match="got int"):
        base.DataSpec.coerce(3)


# ------------------------------------------------------------------------------ act rule
def test_action_from_prediction():
    spec = base.DataSpec(3, 2, False, (-1.0, 0.0), (1.0, 0.5))
    out = base.action_from_prediction(np.array([[2.0, 0.25], [-3.0, -1.0]]), spec)
    np.testing.assert_allclose(out, [[1.0, 0.25], [-1.0, 0.0]])
    dspec = base.DataSpec(3, 3, True)
    logits = np.log(np.array([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05]]))
    np.testing.assert_array_equal(base.action_from_prediction(logits, dspec), [1, 0])
    rng = np.random.default_rng(0)
    draws = np.stack(
        [base.action_from_prediction(logits, dspec, greedy=False, rng=rng) for _ in range(4000)]
    )
    freq = np.mean(draws[:, 0][:, None] == np.arange(3), axis=0)
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.03)  # > 4 sigma of 4000 draws
    # Temperature 0.5 squares the probabilities (renormalised): 0.04, 0.25, 0.09 over 0.38.
    draws = np.stack([base.action_from_prediction(logits, dspec, greedy=False, rng=rng,
                                                  temperature=0.5) for _ in range(4000)])
    freq = np.mean(draws[:, 0][:, None] == np.arange(3), axis=0)
    np.testing.assert_allclose(freq, np.array([0.04, 0.25, 0.09]) / 0.38, atol=0.03)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            base.action_from_prediction(logits, dspec, greedy=False, rng=rng, temperature=bad)


# ------------------------------------------------------------------------------ online == sampler
def replay(encoder, steps):
    """Feeds ``(obs, action, reward, ended)`` steps of one row to an encoder; all tokens."""
    kinds, values, times = [], [], []
    mask = np.ones(1, bool)
    for obs, action, reward, ended, new_trial in steps:
        if new_trial:
            encoder.begin_trial(mask)
        for chunk in (
            encoder.before_action(obs[None], mask),
            encoder.after_action(
                np.asarray(action)[None], np.array([reward]), np.array([ended]), mask
            ),
        ):
            kinds.append(chunk.kind[0])
            values.append(chunk.values[0])
            times.append(chunk.timesteps[0])
    return np.concatenate(kinds), np.concatenate(values), np.concatenate(times)


def episode_steps(store, ep, lo=0, hi=None):
    e = store.episode(int(ep))
    n = len(e["rewards"])
    hi = n if hi is None else hi
    return [
        (e["observations"][t], e["actions"][t], float(e["rewards"][t]), t == n - 1, t == lo)
        for t in range(lo, hi)
    ]


def assert_row(batch, r, kinds, values, times):
    n = len(kinds)
    np.testing.assert_array_equal(batch.kind[r, :n], kinds)
    np.testing.assert_allclose(batch.values[r, :n], values, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(batch.timesteps[r, :n], times)
    assert batch.valid[r, :n].all() and not batch.valid[r, n:].any()


@pytest.mark.parametrize("discrete, done_token", [(False, False), (True, True)])
def test_at_online_tokens_match_chain_sampler(discrete, done_token):
    at = agents.get("at")
    store = store_with_exact_returns(discrete)
    cfg = at.Config(num_trajectories=3, done_token=done_token)
    sampler = at.make_sampler(store, cfg, batch_size=3, seed=4)
    batch, specs = sampler.batch_at(0), sampler.specs_at(0)
    layout = at.make_layout(cfg, store)
    assert layout == sampler.layout  # the evaluator can rebuild the training layout
    for r in range(3):
        eps = specs["episodes"][r]
        best = float(store.episode_returns[eps].max())
        enc = at.online_encoder(layout, 1, target_return=best)
        steps = [s for ep in eps for s in episode_steps(store, ep)]
        kinds, values, times = replay(enc, steps)
        assert_row(batch, r, kinds, values, times)
        # The best trajectory ends with the completion flag set, and only it.
        flag = values[kinds == (Kind.DONE if done_token else Kind.REWARD), 0 if done_token else 1]
        # (another trajectory of the chain may tie the best return: it is flagged too)
        ties = [i for i, ep in enumerate(eps) if store.episode_returns[ep] == best]
        assert flag.sum() == len(ties) and flag[-1] == 1.0


@pytest.mark.parametrize("name", ["dt", "bc"])
def test_dt_and_bc_online_tokens_match_window_sampler(name):
    agent = agents.get(name)
    store = store_with_exact_returns()
    cfg = (
        agent.Config(context_steps=3)
        if name == "dt"
        else agent.Config(top_percent=40.0, context_steps=3)
    )
    sampler = agent.make_sampler(store, cfg, batch_size=6, seed=2)
    batch, specs = sampler.batch_at(1), sampler.specs_at(1)
    layout = agent.make_layout(cfg, store)
    assert layout == sampler.layout
    for r in range(6):
        ep, off = int(specs["episode"][r, 0]), int(specs["offset"][r, 0])
        kw = {"target_return": float(store.episode_returns[ep])} if name == "dt" else {}
        enc = agent.online_encoder(layout, 1, **kw)
        # Evaluation plays the episode from its start; the window is a slice of that stream.
        kinds, values, times = replay(enc, episode_steps(store, ep))
        k = layout.tokens_per_step
        w = min(3, len(store.episode(ep)["rewards"]) - off)
        sl = slice(off * k, (off + w) * k)
        assert_row(batch, r, kinds[sl], values[sl], times[sl])


def test_ad_online_tokens_match_history_sampler():
    ad = agents.get("ad")
    store = store_with_exact_returns(discrete=True)
    cfg = ad.Config(window_steps=10)
    sampler = ad.make_sampler(store, cfg, batch_size=4, seed=3)
    batch, specs = sampler.batch_at(0), sampler.specs_at(0)
    layout = ad.make_layout(cfg, store)
    enc = ad.online_encoder(layout, 1)
    # One evaluation row plays the whole history: previous action/reward carry across episodes.
    steps = [s for ep in range(store.num_episodes) for s in episode_steps(store, ep)]
    kinds, values, times = replay(enc, steps)
    assert enc.after_kinds == ()
    for r in range(4):
        s = int(specs["start"][r])
        assert_row(batch, r, kinds[s : s + 10], values[s : s + 10], times[s : s + 10])


def test_online_encoder_rows_outside_the_mask_do_not_move():
    store = store_with_exact_returns()
    layout = agents.get("dt").make_layout(agents.get("dt").Config(), store)
    both = base.OnlineEncoder(layout, 2, target_return=5.0)
    solo = base.OnlineEncoder(layout, 1, target_return=5.0)
    both.begin_trial(np.array([True, True]))
    solo.begin_trial(np.array([True]))
    e = store.episode(0)
    for t in range(3):
        obs = np.stack([e["observations"][t], np.zeros(3, np.float32)])
        mask = np.array([True, t == 0])  # row 1 steps once, then idles
        got = both.before_action(obs, mask)
        want = solo.before_action(obs[:1], mask[:1])
        np.testing.assert_allclose(got.values[0], want.values[0])
        act = np.stack([e["actions"][t], np.ones(2, np.float32)])
        both.after_action(act, np.array([e["rewards"][t], 2.0]), np.array([False, False]), mask)
        solo.after_action(act[:1], np.array([e["rewards"][t]]), np.array([False]), mask[:1])
    assert both.timestep.tolist() == [3, 1] and both.rtg[1] == 3.0
    with pytest.raises(ValueError, match="target_return is required"):
        base.OnlineEncoder(layout, 1)
