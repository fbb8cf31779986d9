"""The model with blockwise and ring attention, on 1 and 8 (fake) devices and in every token
layout, gives the loss and gradients of reference attention on one device, for every agent."""

import jax
import numpy as np
import pytest
from flax import nnx
from model_oracle import assert_trees_close

import agents
from rl_ring import sharding
from rl_ring.attention import layout as attn_layout
from rl_ring.data.batch import TOKEN_FIELDS
from rl_ring.data.store import EpisodeStore

# Small chunks so that each device's block is itself several query/key chunks.
CHUNKS = (("q_chunk", 4), ("k_chunk", 4))


def synthetic_store(discrete: bool = False, episodes: int = 10, length: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        obs = rng.normal(size=(length, 3)).astype(np.float32)
        if discrete:
            act = (obs[:, 0] > 0).astype(np.int64) + (obs[:, 1] > 0).astype(np.int64)
        else:
            act = np.tanh(obs[:, :2]).astype(np.float32)
        rew = rng.random(length).astype(np.float32)
        eps.append(dict(observations=obs, actions=act, rewards=rew))
    extras = {"history_id": np.zeros(episodes, int), "episode_in_history": np.arange(episodes)}
    meta = {"action_space": {"type": "discrete", "n": 3}} if discrete else {}
    return EpisodeStore.from_episodes(eps, episode_extras=extras, metadata=meta)


def agent_batch(name: str, *, discrete: bool = False, pad_multiple: int = 16):
    agent = agents.get(name)
    cfg = agent.Config.tiny()
    store = synthetic_store(discrete)
    sampler = agent.make_sampler(store, cfg, batch_size=2, seed=1, pad_multiple=pad_multiple)
    tokens = sampler.next_batch().tokens()
    return agent, cfg, store, tokens


def with_attention(cfg, impl: str, layout: str = "contiguous"):
    return cfg.__class__(
        **{
            **cfg.__dict__,
            "model": cfg.model.replace(attn_impl=impl, attn_layout=layout, attn_options=CHUNKS),
        }
    )


def loss_and_grads(agent, cfg, store, tokens, mesh=None):
    model = agent.make_model(cfg, store, rngs=nnx.Rngs(0))

    @nnx.jit
    def run(model, tokens):
        def f(model):
            return agent.loss_fn(model, tokens, mesh=mesh)[0]

        return nnx.value_and_grad(f)(model)

    if mesh is not None:
        tokens = {
            k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in tokens.items()
        }
    loss, grads = run(model, tokens)
    return float(loss), nnx.to_pure_dict(nnx.state(grads))


_ORACLE: dict = {}


def oracle(name: str, discrete: bool):
    """Reference attention, one device, contiguous tokens (computed once per agent)."""
    key = (name, discrete)
    if key not in _ORACLE:
        agent, cfg, store, tokens = agent_batch(name, discrete=discrete)
        ref = with_attention(cfg, "reference")
        _ORACLE[key] = (tokens, loss_and_grads(agent, ref, store, tokens))
    return _ORACLE[key]


def permuted(tokens: dict, shards: int, layout: str) -> dict:
    return {f: attn_layout.permute(np.asarray(tokens[f]), shards, layout) for f in TOKEN_FIELDS}


def check(name, discrete, impl, layout, mesh_spec):
    tokens, (loss0, grads0) = oracle(name, discrete)
    agent, cfg, store, _ = agent_batch(name, discrete=discrete)
    mesh = None if mesh_spec is None else sharding.make_mesh(mesh_spec)
    shards = 8 if mesh is None else sharding.axis_size(mesh, sharding.SEQ)
    loss, grads = loss_and_grads(
        agent, with_attention(cfg, impl, layout), store, permuted(tokens, shards, layout), mesh
    )
    what = f"{name} {impl} {layout} {mesh_spec}"
    assert np.isfinite(loss0) and loss0 > 0
    assert_trees_close(loss, loss0, what=f"{what} loss")
    assert_trees_close(grads, grads0, what=f"{what} grads")


# AD runs on discrete actions (its usual setting: Dark Room, Key-to-Door), the others on
# continuous ones; AT is checked on discrete actions as well below.
DISCRETE = {"at": False, "dt": False, "bc": False, "ad": True}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["contiguous", "zigzag", "striped"])
@pytest.mark.parametrize("name", ["at", "dt", "bc", "ad"])
def test_ring_attention_on_seq8_matches_reference(name, layout):
    check(name, DISCRETE[name], "ring", layout, "seq=8")


@pytest.mark.slow
def test_ring_attention_on_data2_seq4_matches_reference():
    check("at", False, "ring", "zigzag", "data=2,seq=4")


@pytest.mark.slow
def test_discrete_at_ring_matches_reference():
    check("at", True, "ring", "striped", "seq=8")


def test_blockwise_attention_matches_reference():
    check("at", False, "blockwise", "zigzag", None)


def test_oracle_is_sensitive_to_the_layout_positions():
    # Permuting tokens but keeping contiguous positions must change the loss: the check above
    # would not notice a model that ignored positions otherwise.
    tokens, (loss0, _) = oracle("at", False)
    agent, cfg, store, _ = agent_batch("at")
    bad = permuted(tokens, 8, "striped")
    bad["positions"] = np.asarray(tokens["positions"])
    loss, _ = loss_and_grads(agent, with_attention(cfg, "reference"), store, bad)
    assert abs(loss - loss0) > 1e-4
