"""Token layouts and normalisation: payloads against hand-computed values, JSON round trips,
and the online (step-by-step) encoder against the samplers' batches."""

import json

import numpy as np
import pytest

from agents.base import OnlineEncoder
from rl_ring.data import normalize as normalize_mod
from rl_ring.data.batch import Kind
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import (
    ChainConfig,
    ChainSampler,
    DTSampler,
    DTSamplerConfig,
    HistoryConfig,
    HistorySampler,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, ad_layout, at_layout, bc_layout, dt_layout


def _store(lengths=(5, 7, 4, 6), discrete=False, n_actions=4, seed=0, histories=True):
    rng = np.random.default_rng(seed)
    eps = []
    for n in lengths:
        act = (
            rng.integers(0, n_actions, n)
            if discrete
            else rng.normal(size=(n, 2)).astype(np.float32)
        )
        eps.append(
            {
                "observations": rng.normal(size=(n, 3)).astype(np.float32) * [1, 5, 0.1]
                + [0, 2, 7],
                "actions": act,
                "rewards": rng.integers(-1, 4, n).astype(np.float32),
            }
        )
    extras = {}
    if histories:
        extras = {
            "history_id": np.zeros(len(lengths), int),
            "episode_in_history": np.arange(len(lengths)),
        }
    meta = {"action_space": {"type": "discrete", "n": n_actions}} if discrete else {}
    return EpisodeStore.from_episodes(eps, episode_extras=extras, metadata=meta)


# ---------------------------------------------------------------------- normalisation
def test_normalization_from_store_matches_numpy(monkeypatch):
    # A tiny chunk size exercises the chunk-merging of mean/variance.
    monkeypatch.setattr(normalize_mod, "_CHUNK_ROWS", 5)
    s = _store()
    obs = np.asarray(s.observations, np.float64)
    obs[:, 2] = 3.0  # a constant feature: std must fall back to 1, not divide by 0
    s = EpisodeStore(**{**s.__dict__, "observations": obs.astype(np.float32)})
    n = Normalization.from_store(s)
    np.testing.assert_allclose(n.obs_mean, obs.mean(0), rtol=1e-6)
    np.testing.assert_allclose(n.obs_std[:2], obs[:, :2].std(0), rtol=1e-5)
    assert n.obs_std[2] == 1.0
    assert n.return_scale == np.max(np.abs(s.episode_returns))
    assert n.reward_scale == np.max(np.abs(s.rewards))
    fixed = Normalization.from_store(s, normalize_obs=False, return_scale=100.0, reward_scale=2.0)
    np.testing.assert_array_equal(fixed.obs_mean, 0.0)
    np.testing.assert_array_equal(fixed.obs_std, 1.0)
    assert (fixed.return_scale, fixed.reward_scale) == (100.0, 2.0)
    x = np.asarray(s.observations[:4])
    np.testing.assert_allclose(n.normalize_obs(x), (x - n.obs_mean) / n.obs_std, rtol=1e-6)


def test_normalization_json_roundtrip_and_errors(tmp_path):
    n = Normalization.from_store(_store())
    again = Normalization.from_json(json.loads(json.dumps(n.to_json())))
    assert again == n
    np.testing.assert_array_equal(again.obs_std, n.obs_std)
    path = n.save(tmp_path / "norm.json")
    assert Normalization.load(path) == n
    assert [p.name for p in tmp_path.iterdir()] == ["norm.json"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json: not a JSON normalisation file"):
        Normalization.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="missing keys"):
        Normalization.from_dict({"format": "rl_ring.Normalization", "obs_mean": [0]})
    with pytest.raises(ValueError, match="return_scale must be finite and > 0"):
        Normalization(np.zeros(2), np.ones(2), return_scale=0.0)
    with pytest.raises(ValueError, match="obs_std finite and > 0"):
        Normalization(np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match=r"expected \[\.\.\., 3\]"):
        n.normalize_obs(np.zeros((2, 4)))


# ---------------------------------------------------------------------- layouts
def _norm():
    return Normalization(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 0.5]), 10.0, 2.0)


def test_layout_widths_and_validation():
    n = _norm()
    at = at_layout(3, 5, True, n)
    assert at.kinds == (Kind.RTG, Kind.STATE, Kind.ACTION, Kind.REWARD)
    assert at.widths == {Kind.RTG: 1, Kind.STATE: 3, Kind.ACTION: 5, Kind.REWARD: 2}
    assert (at.feature_dim, at.predict_index, at.completion) == (5, 1, "reward_feature")
    assert at.token_features() == (("RTG", 1), ("STATE", 3), ("ACTION", 5), ("REWARD", 2))
    at_done = at_layout(3, 2, False, n, done_token=True)
    assert at_done.width(Kind.REWARD) == 1 and at_done.completion == "done_token"
    assert at_layout(3, 2, False, n, reward_token=False).completion == "none"
    assert dt_layout(3, 2, False, n).tokens_per_step == 3
    assert bc_layout(3, 2, False, n, state_only=True).kinds == (Kind.STATE,)
    ad = ad_layout(3, 5, True, n)
    assert (ad.feature_dim, ad.predict_kind, ad.predict_index) == (3 + 5 + 1 + 1, Kind.STEP, 0)
    assert ad_layout(3, 5, True, n, new_episode_flag=False).feature_dim == 9
    np.testing.assert_array_equal(at.step_kinds(2), [0, 1, 2, 3, 0, 1, 2, 3])

    with pytest.raises(ValueError, match="must follow it"):
        TokenLayout((Kind.RTG, Kind.ACTION, Kind.STATE), 3, 2, False, n)
    with pytest.raises(ValueError, match="must follow it"):
        TokenLayout((Kind.STATE, Kind.RTG), 3, 2, False, n)
    with pytest.raises(ValueError, match="no STATE"):
        TokenLayout((Kind.RTG, Kind.ACTION), 3, 2, False, n)
    with pytest.raises(ValueError, match="STEP is a layout of its own"):
        TokenLayout((Kind.STEP, Kind.ACTION), 3, 2, False, n)
    with pytest.raises(ValueError, match="repeat a kind"):
        TokenLayout((Kind.STATE, Kind.STATE), 3, 2, False, n)
    with pytest.raises(ValueError, match="norm has obs_dim 3, layout has 4"):
        TokenLayout((Kind.STATE,), 4, 2, False, n)


def _step_fields() -> dict[str, np.ndarray]:
    """Two STEP tokens' raw fields: a history's first step, then one after action 3."""
    return dict(obs=np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 3.0]]), prev_action=np.array([-1, 3]),
                prev_reward=np.array([0.0, 1.0]), new_episode=np.array([1.0, 0.0]))


def test_encode_token_hand_computed():
    n = _norm()
    at = at_layout(3, 4, True, n)
    np.testing.assert_allclose(at.encode_token(Kind.RTG, rtg=np.array([25.0])), [[2.5, 0, 0, 0]])
    np.testing.assert_allclose(
        at.encode_token(Kind.STATE, obs=np.array([[3.0, 6.0, 3.5]])), [[1.0, 1.0, 1.0, 0]]
    )
    np.testing.assert_array_equal(
        at.encode_token(Kind.ACTION, action=np.array([2, 0])), [[0, 0, 1, 0], [1, 0, 0, 0]]
    )
    np.testing.assert_allclose(
        at.encode_token(Kind.REWARD, reward=np.array([3.0]), done=np.array([1.0])),
        [[1.5, 1.0, 0, 0]],
    )
    ad = ad_layout(3, 4, True, n)
    step = ad.encode_token(Kind.STEP, **_step_fields())
    np.testing.assert_allclose(step, [[0, 0, 0, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 1, 0.5, 0]])
    cont = dt_layout(3, 2, False, n)
    np.testing.assert_allclose(
        cont.encode_token(Kind.ACTION, action=np.array([[0.5, -0.25]])), [[0.5, -0.25, 0]]
    )
    with pytest.raises(ValueError, match="a REWARD token needs 'done'"):
        at.encode_token(Kind.REWARD, reward=np.array([1.0]))
    with pytest.raises(ValueError, match=r"action ids span \[0, 4\], expected \[0, 4\)"):
        at.encode_token(Kind.ACTION, action=np.array([0, 4]))
    with pytest.raises(ValueError, match="kind DONE is not in layout"):
        at.encode_token(Kind.DONE, done=np.array([1.0]))
    with pytest.raises(ValueError, match="obs has shape"):
        at.encode_token(Kind.STATE, obs=np.zeros((1, 4)))


def test_step_prev_obs_hand_computed_and_validated():
    n = _norm()
    ad = ad_layout(3, 4, True, n, step_prev_obs=True)
    assert ad.feature_dim == 3 + 4 + 1 + 1 + 3
    assert ad.required_fields() == ("obs", "prev_action", "prev_reward", "new_episode",
                                    "prev_obs", "has_prev")
    step = ad.encode_token(Kind.STEP, **_step_fields(),
                           prev_obs=np.array([[9.0, 9.0, 9.0], [3.0, 6.0, 3.5]]),
                           has_prev=np.array([0.0, 1.0]))
    np.testing.assert_allclose(step, [[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
                                      [1, 0, 0, 0, 0, 0, 1, 0.5, 0, 1, 1, 1]])
    # Without the new-episode flag the previous observation follows the reward.
    flagless = ad_layout(3, 4, True, n, new_episode_flag=False, step_prev_obs=True)
    np.testing.assert_allclose(
        flagless.encode_token(Kind.STEP, obs=np.array([1.0, 2.0, 3.0]), prev_action=np.array(0),
                              prev_reward=np.array(0.0), prev_obs=np.array([3.0, 6.0, 3.5]),
                              has_prev=np.array(1.0)),
        [0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="a STEP token needs 'prev_obs'"):
        ad.encode_token(Kind.STEP, obs=np.zeros(3), prev_action=np.array(0),
                        prev_reward=np.array(0.0), new_episode=np.array(0.0))
    with pytest.raises(ValueError, match="step_prev_obs adds a feature to STEP tokens"):
        TokenLayout((Kind.STATE,), 3, 4, True, n, step_prev_obs=True)
    again = TokenLayout.from_dict(json.loads(json.dumps(ad.to_dict())))
    assert again == ad and again.step_prev_obs
    old = {k: v for k, v in ad_layout(3, 4, True, n).to_dict().items() if k != "step_prev_obs"}
    assert not TokenLayout.from_dict(old).step_prev_obs  # layouts saved before the option


def test_layout_dict_roundtrip():
    lay = ad_layout(3, 4, True, _norm(), new_episode_flag=False)
    again = TokenLayout.from_dict(json.loads(json.dumps(lay.to_dict())))
    assert again == lay and again.norm == lay.norm and not again.new_episode_flag
    with pytest.raises(ValueError, match="unknown kind"):
        TokenLayout.from_dict({**lay.to_dict(), "kinds": ["STATE", "NOPE"]})


# ---------------------------------------------------------------------- online == sampler
def _online_at(layout, store, plan_eps, offsets, widths, best):
    """Builds a chain's tokens one token at a time, as an evaluation loop would."""
    kinds, values = [], []
    for ep, off, w in zip(plan_eps, offsets, widths, strict=True):
        e = store.episode(int(ep))
        length = len(e["rewards"])
        ret = float(np.sum(e["rewards"], dtype=np.float64))
        collected = float(np.sum(e["rewards"][:off], dtype=np.float64))
        for t in range(off, off + w):
            done = float(t == length - 1 and ret == best)
            f = {
                "rtg": np.array(best - collected),
                "obs": e["observations"][t],
                "action": e["actions"][t],
                "reward": np.array(e["rewards"][t]),
                "done": np.array(done),
            }
            for kind in layout.kinds:
                kinds.append(int(kind))
                values.append(layout.encode_token(kind, **f))
            collected += float(e["rewards"][t])
    return np.array(kinds), np.array(values)


@pytest.mark.parametrize("discrete", [False, True])
def test_online_encoder_matches_chain_sampler(discrete):
    store = _store(lengths=(5, 7, 4, 6, 3), discrete=discrete)
    cfg = ChainConfig(batch_size=3, num_trajectories=3, max_steps=5, done_token=discrete)
    sampler = ChainSampler(store, cfg)
    batch = sampler.batch_at(0)
    specs = sampler.specs_at(0)
    for r in range(3):
        eps = specs["episodes"][r]
        best = float(np.max(store.episode_returns[eps]))
        kinds, values = _online_at(
            sampler.layout, store, eps, specs["offset"][r], specs["width"][r], best
        )
        n = len(kinds)
        np.testing.assert_array_equal(batch.kind[r, :n], kinds)
        np.testing.assert_allclose(batch.values[r, :n], values, rtol=1e-6, atol=1e-6)
        assert not batch.valid[r, n:].any()


def test_online_encoder_matches_dt_sampler():
    store = _store()
    sampler = DTSampler(store, DTSamplerConfig(batch_size=4, context_steps=3))
    batch, specs = sampler.batch_at(1), sampler.specs_at(1)
    for r in range(4):
        ep, off = int(specs["episode"][r, 0]), int(specs["offset"][r, 0])
        e = store.episode(ep)
        w = min(3, len(e["rewards"]) - off)
        vals = [
            sampler.layout.encode_token(
                kind,
                rtg=np.array(sum(float(x) for x in e["rewards"][t:])),
                obs=e["observations"][t],
                action=e["actions"][t],
            )
            for t in range(off, off + w)
            for kind in sampler.layout.kinds
        ]
        np.testing.assert_allclose(batch.values[r, : 3 * w], np.array(vals), rtol=1e-6, atol=1e-6)


def test_online_encoder_matches_history_sampler():
    store = _store(lengths=(4, 3, 5, 2, 4), discrete=True)
    sampler = HistorySampler(store, HistoryConfig(batch_size=4, window_steps=9))
    batch, specs = sampler.batch_at(2), sampler.specs_at(2)
    # The online loop walks the whole history from its start, tracking the previous step.
    stream_tokens = []
    prev_a, prev_r = -1, 0.0
    for ep in range(store.num_episodes):
        e = store.episode(ep)
        for t in range(len(e["rewards"])):
            stream_tokens.append(
                sampler.layout.encode_token(
                    Kind.STEP,
                    obs=e["observations"][t],
                    prev_action=np.array(prev_a),
                    prev_reward=np.array(prev_r),
                    new_episode=np.array(float(t == 0)),
                )
            )
            prev_a, prev_r = int(e["actions"][t]), float(e["rewards"][t])
    stream_tokens = np.array(stream_tokens)
    for r in range(4):
        s = int(specs["start"][r])
        np.testing.assert_allclose(batch.values[r, :9], stream_tokens[s : s + 9], atol=1e-6)


def test_online_encoder_matches_history_sampler_with_previous_observations():
    """``step_prev_obs``: the sampler's windows are the tokens an evaluation's OnlineEncoder
    builds walking the history, previous observation included (carried across episodes,
    zero before the history's first step)."""
    store = _store(lengths=(4, 3, 5, 2, 4), discrete=True)
    sampler = HistorySampler(store, HistoryConfig(batch_size=4, window_steps=9,
                                                  step_prev_obs=True))
    layout = sampler.layout
    assert layout.step_prev_obs and layout.feature_dim == 2 * store.obs_dim + store.act_dim + 2
    batch, specs = sampler.batch_at(2), sampler.specs_at(2)
    enc = OnlineEncoder(layout, 1)
    mask = np.ones(1, bool)
    stream_tokens = []
    for ep in range(store.num_episodes):
        e = store.episode(ep)
        enc.begin_trial(mask)
        for t in range(len(e["rewards"])):
            chunk = enc.before_action(e["observations"][t][None], mask)
            stream_tokens.append(chunk.values[0, 0])
            enc.after_action(np.array([e["actions"][t]]), np.array([e["rewards"][t]]),
                             np.array([t == len(e["rewards"]) - 1]), mask)
    stream_tokens = np.array(stream_tokens)
    o = store.obs_dim
    np.testing.assert_array_equal(stream_tokens[0, -o:], 0.0)  # no previous step
    obs = np.concatenate([store.episode(i)["observations"] for i in range(store.num_episodes)])
    np.testing.assert_allclose(stream_tokens[1:, -o:], layout.norm.normalize_obs(obs[:-1]),
                               rtol=1e-5, atol=1e-6)
    starts = {int(s) for s in specs["start"]}
    assert any(s > 0 for s in starts)
    for r in range(4):
        s = int(specs["start"][r])
        np.testing.assert_allclose(batch.values[r, :9], stream_tokens[s : s + 9], atol=1e-6)


def test_online_encoder_keeps_its_observation_when_the_caller_reuses_the_buffer():
    """``run_seed`` writes the next observations into the array it passed to ``act``
    before the step's ``after_action``: the previous observation of the next token (STEP
    with ``step_prev_obs``, DPT's TRANSITION) must still be the one acted on."""
    n = _norm()
    for layout in (ad_layout(3, 4, True, n, step_prev_obs=True),
                   TokenLayout((Kind.TRANSITION, Kind.STATE), 3, 4, True, n)):
        enc = OnlineEncoder(layout, 1)
        mask = np.ones(1, bool)
        buf = np.array([[3.0, 6.0, 3.5]], np.float32)
        enc.begin_trial(mask)
        enc.before_action(buf, mask)
        buf[:] = [[1.0, 2.0, 3.0]]  # the next observation, written in place
        enc.after_action(np.array([1]), np.array([0.0]), np.array([False]), mask)
        np.testing.assert_allclose(enc.prev_obs, [[3.0, 6.0, 3.5]])
        tok = enc.before_action(buf, mask).values[0, 0]
        o = 3
        prev = tok[-o:] if layout.kinds == (Kind.STEP,) else tok[:o]
        np.testing.assert_allclose(prev, [1.0, 1.0, 1.0])  # (3, 6, 3.5) normalised
