"""Trials in an evaluation row: DT and BC, trained on windows inside one episode, start every
trial with an empty context (their actions equal a fresh policy's on that trial alone, cached
or recomputed); AT keeps earlier trials in context, as its chain of hindsight needs."""

import numpy as np
import pytest
from flax import nnx
from model_oracle import assert_trees_close

import agents
from agents import base
from agents.policy import CachedPolicy, ContextPolicy, policy_from_model
from rl_ring.data.store import EpisodeStore


def _store(seed: int = 0) -> EpisodeStore:
    rng = np.random.default_rng(seed)
    eps = [
        dict(observations=rng.normal(size=(n, 3)).astype(np.float32),
             actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
             rewards=rng.random(n).astype(np.float32))
        for n in (6, 5, 7, 6)
    ]
    meta = {"action_space": {"type": "box", "low": [-1.0, -1.0], "high": [1.0, 1.0]}}
    return EpisodeStore.from_episodes(eps, metadata=meta)


def _policy(name: str, cached: bool, context_steps: int = 8):
    agent = agents.get(name)
    cfg = agent.Config.tiny()
    # A larger init makes predictions depend clearly on the context.
    cfg = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.replace(init_std=0.2)})
    store = _store()
    spec = base.DataSpec.from_store(store)
    model = agent.make_model(cfg, spec, rngs=nnx.Rngs(1))
    layout = agent.make_layout(cfg, store)
    return policy_from_model(name, cfg, model, spec, layout, cached=cached,
                             context_steps=context_steps)


def _play(policy, trials: list[tuple[np.ndarray, np.ndarray]], n: int = 2):
    """Plays ``trials`` (observations [T, n, 3], rewards [T, n]) in one row set; every row
    ends each trial at its last step. Returns the actions of every trial."""
    policy.reset(n, seeds=list(range(n)))
    out = []
    mask = np.ones(n, bool)
    for obs, rew in trials:
        policy.begin_trial(mask)
        acts = []
        for t in range(len(obs)):
            acts.append(policy.act(obs[t], mask))
            last = np.full(n, t == len(obs) - 1)
            policy.observe(rew[t], np.zeros(n, bool), last, mask)
        out.append(np.stack(acts))
    return out


def _trials(seed: int, lengths=(5, 4, 5)):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(t, 2, 3)).astype(np.float32), rng.random((t, 2)).astype(np.float32))
            for t in lengths]


@pytest.mark.parametrize("name", ["dt", "bc"])
@pytest.mark.parametrize("cached", [False, True])
def test_window_agents_start_each_trial_afresh(name, cached):
    policy = _policy(name, cached)
    assert isinstance(policy, CachedPolicy if cached else ContextPolicy)
    assert policy.trial_context is False
    trials = _trials(0)
    played = _play(policy, trials)
    for k in range(1, len(trials)):
        alone = _play(_policy(name, cached), [trials[k]])[0]
        assert_trees_close(played[k], alone, what=f"{name} trial {k}")
    if cached:
        # Emptied rows were refilled from their new context, not decoded onto the old cache.
        assert policy.calls["prefill"] == len(trials) - 1


def test_at_keeps_earlier_trials_in_context():
    policy = _policy("at", cached=True)
    assert policy.trial_context is True
    trials = _trials(1)
    played = _play(policy, trials)
    alone = _play(_policy("at", cached=True), [trials[1]])[0]
    # Same observations, but trial 2 is conditioned on trial 1: actions differ.
    assert np.abs(played[1] - alone).max() > 1e-3
    # The first trial has nothing before it either way.
    assert_trees_close(played[0], _play(_policy("at", cached=True), [trials[0]])[0],
                       what="at trial 0")


def test_recompute_and_cached_agree_across_emptied_trials():
    trials = _trials(2, lengths=(6, 6, 3))
    a = _play(_policy("dt", cached=False, context_steps=4), trials)
    b = _play(_policy("dt", cached=True, context_steps=4), trials)
    for k, (x, y) in enumerate(zip(a, b, strict=True)):
        assert_trees_close(y, x, what=f"trial {k}")
