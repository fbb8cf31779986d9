"""The evaluation policy: at every step its action is the model's prediction on exactly the
row's context (no padding, oldest steps slid out), rows advance independently, and a
training run's checkpoint becomes a policy."""

import gymnasium as gym
import numpy as np
import pytest
from flax import nnx
from model_oracle import assert_trees_close

import agents
from agents import base
from agents.policy import ContextPolicy, check_action_space, policy_from_model
from rl_ring.data.store import EpisodeStore


def small_store(discrete=False, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for n in (5, 7, 6, 4):
        obs = rng.normal(size=(n, 3)).astype(np.float32)
        act = rng.integers(0, 3, n) if discrete else rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        eps.append(dict(observations=obs, actions=act, rewards=rng.random(n).astype(np.float32)))
    extras = {"history_id": np.zeros(4, int), "episode_in_history": np.arange(4)}
    meta = (
        {"action_space": {"type": "discrete", "n": 3}}
        if discrete
        else {"action_space": {"type": "box", "low": [-1.0, -1.0], "high": [1.0, 1.0]}}
    )
    return EpisodeStore.from_episodes(eps, episode_extras=extras, metadata=meta)


def setup(name, discrete, context_steps):
    agent = agents.get(name)
    cfg = agent.Config.tiny()
    store = small_store(discrete)
    spec = base.DataSpec.from_store(store)
    # A larger init makes predictions differ clearly from token to token.
    cfg = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.replace(init_std=0.5)})
    model = agent.make_model(cfg, spec, rngs=nnx.Rngs(3))
    layout = agent.make_layout(cfg, store)
    policy = ContextPolicy(model, layout, spec, context_steps=context_steps)
    return agent, model, layout, spec, policy


@nnx.jit
def _forward(model, tokens):
    return model(tokens)


def oracle_action(model, layout, spec, tokens_so_far, context_steps):
    """The action from one forward pass over exactly the last ``context_steps`` steps."""
    kinds, values, times = (np.concatenate(x) for x in zip(*tokens_so_far, strict=True))
    k = layout.tokens_per_step
    steps = -(-len(kinds) // k)
    start = max(0, steps - context_steps) * k
    kinds, values, times = kinds[start:], values[start:], times[start:]
    t = len(kinds)
    tokens = {
        "kind": kinds[None],
        "values": values[None],
        "positions": np.arange(t, dtype=np.int32)[None],
        "timesteps": times[None],
        "segment_ids": np.zeros((1, t), np.int32),
        "valid": np.ones((1, t), bool),
    }
    pred = np.asarray(_forward(model, tokens))[:, -1]
    return base.action_from_prediction(pred, spec)[0]


@pytest.mark.parametrize(
    "name, discrete, context_steps", [("at", False, 9), ("dt", False, 3), ("ad", True, 5)]
)
def test_policy_acts_on_exactly_the_rows_context(name, discrete, context_steps):
    agent, model, layout, spec, policy = setup(name, discrete, context_steps)
    n = 2
    policy.reset(n, seeds=[0, 1])
    oracle = [base.OnlineEncoder(layout, 1, target_return=policy.target_return) for _ in range(n)]
    history = [[] for _ in range(n)]
    rng = np.random.default_rng(5)
    lengths = [4, 3]  # episode lengths of the two rows: they fall out of step
    t_row = [0, 0]
    policy.begin_trial(np.ones(n, bool))
    for o in oracle:
        o.begin_trial(np.ones(1, bool))
    for step in range(11):
        # Row 1 idles at steps 2 and 3: it must not advance.
        mask = np.array([True, step not in (2, 3)])
        obs = rng.normal(size=(n, 3)).astype(np.float32)
        actions = policy.act(obs, mask)
        for i in np.flatnonzero(mask):
            history[i].append(oracle[i].before_action(obs[i : i + 1], np.ones(1, bool)))
            chunks = [(c.kind[0], c.values[0], c.timesteps[0]) for c in history[i]]
            want = oracle_action(model, layout, spec, chunks, context_steps)
            assert_trees_close(actions[i], want, what=f"row {i} step {step}")
        reward = rng.random(n).astype(np.float32)
        ended = np.array([t_row[i] + 1 == lengths[i] for i in range(n)])
        policy.observe(reward, ended, np.zeros(n, bool), mask)
        for i in np.flatnonzero(mask):
            one = np.ones(1, bool)
            history[i].append(
                oracle[i].after_action(actions[i : i + 1], reward[i : i + 1], ended[i : i + 1], one)
            )
            t_row[i] += 1
            if ended[i]:
                t_row[i] = 0
                oracle[i].begin_trial(one)
        restart = mask & ended
        policy.begin_trial(restart)
    assert policy.length.max() <= policy.capacity


def test_action_space_check_and_missing_target():
    spec = base.DataSpec(3, 2, False, (-1.0, -1.0), (1.0, 1.0))
    check_action_space(gym.spaces.Box(-1, 1, (2,)), spec)
    with pytest.raises(ValueError, match="trained on box actions"):
        check_action_space(gym.spaces.Discrete(2), spec, where="run")
    with pytest.raises(ValueError, match="act_dim=2 .* has 3"):
        check_action_space(gym.spaces.Box(-1, 1, (3,)), spec)
    agent = agents.get("dt")
    cfg = agent.Config.tiny()
    model = agent.make_model(cfg, spec, rngs=nnx.Rngs(0))
    layout = agent.make_layout(cfg, spec)
    with pytest.raises(ValueError, match="pass target_return"):
        ContextPolicy(model, layout, spec, context_steps=3)
    p = policy_from_model("dt", cfg, model, spec, layout, target_return=2.0)
    assert p.capacity == cfg.context_steps * 3 and p.target_return == 2.0


def test_checkpoint_becomes_a_policy(tmp_path):
    from agents.run import load_checkpoint, train
    from rl_ring.train import TrainConfig
    from rl_ring.train.optim import OptimConfig

    store = small_store()
    cfg = TrainConfig(
        agent="dt",
        preset="tiny",
        workdir=str(tmp_path / "run"),
        mesh="seq=1",
        devices=1,
        steps=3,
        batch_size=2,
        ckpt_every=3,
        progress=False,
        tensorboard=False,
        async_checkpoint=False,
        optim=OptimConfig(lr=1e-3, warmup_steps=0),
    )
    train(cfg, store=store)
    box = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    policy = agents.eval_policy_from_checkpoint(tmp_path / "run", action_space=box)
    loaded = load_checkpoint(tmp_path / "run")
    spec = base.DataSpec.from_store(store)
    assert policy.target_return == pytest.approx(spec.max_return)
    direct = ContextPolicy(
        loaded.model,
        agents.get("dt").make_layout(loaded.config.agent_config, spec, loaded.norm),
        spec,
        context_steps=loaded.config.agent_config.context_steps,
    )
    obs = np.random.default_rng(0).normal(size=(2, 3)).astype(np.float32)
    for p in (policy, direct):
        p.reset(2, seeds=[0, 1])
        p.begin_trial(np.ones(2, bool))
    assert_trees_close(policy.act(obs, np.ones(2, bool)), direct.act(obs, np.ones(2, bool)))
    with pytest.raises(ValueError, match="trained on box actions"):
        agents.eval_policy_from_checkpoint(tmp_path / "run", action_space=gym.spaces.Discrete(3))


def test_horizon_warning_when_episodes_outlast_the_trained_trajectories():
    """The tiny AT preset cuts trajectories to 8 steps: evaluated on 1,000-step episodes it
    must say so; a model trained on whole episodes (or DT's sliding windows) must not."""
    from agents import at, dt
    from agents.base import DataSpec
    from agents.policy import horizon_warning

    spec = DataSpec(obs_dim=3, act_dim=1, discrete_actions=False, max_episode_len=1000)
    note = horizon_warning(at.Config.tiny(), spec, 1000)
    assert note is not None and "at most 8 steps" in note and "last 1000 steps" in note
    assert horizon_warning(at.Config.tiny(), spec, 16) is None  # within 2x of what it saw
    assert horizon_warning(at.Config(max_steps=None), spec, 1000) is None
    assert horizon_warning(dt.Config.tiny(), spec, 1000) is None
