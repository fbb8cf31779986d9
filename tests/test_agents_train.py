"""Every agent learns: a plain optax loop over its sampler drives the held-out loss of a tiny
model far below its start on data whose actions are a fixed function of the state."""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

import agents
from agents import base
from agents.policy import policy_from_model
from rl_ring.data.store import EpisodeStore

W = np.array([[1.5, -1.0, 0.5], [-0.5, 2.0, 1.0]], np.float32)  # [act, obs]


def policy_store(discrete: bool, episodes: int = 24, length: int = 12, seed: int = 0):
    """Random states; the action is tanh(W s) (continuous) or argmax of [W s, 0] (3 ids)."""
    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(episodes):
        obs = rng.normal(size=(length, 3)).astype(np.float32)
        z = obs @ W.T
        if discrete:
            act = np.argmax(np.concatenate([z, np.zeros((length, 1))], axis=1), axis=1)
        else:
            act = np.tanh(z).astype(np.float32)
        rew = rng.random(length).astype(np.float32)
        eps.append(dict(observations=obs, actions=act, rewards=rew))
    extras = {
        "history_id": np.arange(episodes) % 2,
        "episode_in_history": np.arange(episodes) // 2,
    }
    meta = (
        {"action_space": {"type": "discrete", "n": 3}}
        if discrete
        else {"action_space": {"type": "box", "low": [-1.0, -1.0], "high": [1.0, 1.0]}}
    )
    return EpisodeStore.from_episodes(eps, episode_extras=extras, metadata=meta)


def train(name: str, discrete: bool, steps: int = 250, lr: float = 3e-3):
    agent = agents.get(name)
    cfg = agent.Config.tiny()
    store = policy_store(discrete)
    sampler = agent.make_sampler(store, cfg, batch_size=8, seed=0)
    held_out = sampler.batch_at(10_000).tokens()
    graphdef, params = nnx.split(agent.make_model(cfg, store, rngs=nnx.Rngs(0)))
    tx = optax.adam(lr)
    opt_state = tx.init(params)

    def loss_of(params, tokens):
        return agent.loss_fn(nnx.merge(graphdef, params), tokens)[0]

    @jax.jit
    def step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_of)(params, tokens)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    eval_loss = jax.jit(loss_of)
    start = float(eval_loss(params, held_out))
    for _ in range(steps):
        params, opt_state, _ = step(params, opt_state, sampler.next_batch().tokens())
    return start, float(eval_loss(params, held_out)), nnx.merge(graphdef, params), store


_TRAINED: dict = {}


def trained(name, discrete):
    if (name, discrete) not in _TRAINED:
        _TRAINED[name, discrete] = train(name, discrete)
    return _TRAINED[name, discrete]


@pytest.mark.parametrize(
    "name, discrete", [("at", False), ("dt", False), ("bc", False), ("ad", True), ("at", True)]
)
def test_agent_learns_a_state_to_action_map(name, discrete):
    start, end, _, _ = trained(name, discrete)
    assert np.isfinite(start) and start > (0.5 if discrete else 0.1)
    assert end < 0.02 * start, f"{name}: held-out loss {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize("name, discrete", [("bc", False), ("ad", True)])
def test_trained_agent_acts_the_map_through_the_evaluation_policy(name, discrete):
    # The act rule end to end: online tokens, the predict token, the action read-out.
    _, _, model, store = trained(name, discrete)
    agent = agents.get(name)
    cfg = agent.Config.tiny()
    spec = base.DataSpec.from_store(store)
    policy = policy_from_model(name, cfg, model, spec, agent.make_layout(cfg, store))
    n, rng = 4, np.random.default_rng(7)
    policy.reset(n, seeds=range(n))
    policy.begin_trial(np.ones(n, bool))
    got, want = [], []
    for t in range(12):
        obs = rng.normal(size=(n, 3)).astype(np.float32)
        got.append(policy.act(obs, np.ones(n, bool)))
        z = obs @ W.T
        want.append(np.argmax(np.c_[z, np.zeros(n)], axis=1) if discrete else np.tanh(z))
        ended = np.full(n, t == 11)
        policy.observe(rng.random(n), ended, np.zeros(n, bool), np.ones(n, bool))
    got, want = np.stack(got), np.stack(want)
    if discrete:
        assert np.mean(got == want) > 0.9, np.mean(got == want)
    else:
        assert np.mean(np.abs(got - want)) < 0.1, np.mean(np.abs(got - want))
