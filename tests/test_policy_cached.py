"""The KV-cached policy acts exactly like the recomputing oracle (ContextPolicy): every agent,
continuous and discrete actions, rows out of step, idle rows, trial boundaries, sliding
windows; through the evaluator; and a training run's checkpoint becomes a cached policy by
default, on the command line too."""

import json

import gymnasium as gym
import numpy as np
import pytest
from flax import nnx
from model_oracle import assert_trees_close

import agents
from agents import base
from agents.policy import CachedPolicy, ContextPolicy
from rl_ring.data.store import EpisodeStore
from rl_ring.models.decode import refill_bucket

# Weights large enough that predictions differ clearly from token to token and row to row,
# small enough that two summation orders of attention agree to float32 tolerance (at 0.5 the
# reference and blockwise kernels themselves already differ by up to 7e-4 on BC).
INIT_STD = 0.2


def small_store(discrete: bool, seed: int = 0) -> EpisodeStore:
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


def make_pair(name: str, discrete: bool, context_steps: int, **options):
    agent = agents.get(name)
    cfg = agent.Config.tiny()
    store = small_store(discrete)
    spec = base.DataSpec.from_store(store)
    # A larger init makes predictions differ clearly from token to token (and from row to row).
    cfg = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.replace(init_std=INIT_STD)})
    model = agent.make_model(cfg, spec, rngs=nnx.Rngs(3))
    layout = agent.make_layout(cfg, store)
    kw = dict(context_steps=context_steps, **options)
    return ContextPolicy(model, layout, spec, **kw), CachedPolicy(model, layout, spec, **kw)


def drive(policies, *, steps: int, n: int = 3, episode_lengths=(4, 3, 5), seed: int = 5,
          discrete: bool, override: bool = False):
    """Plays the policies side by side on the same random observations and outcomes;
    row 1 idles at steps 2-3, row 2 from step 9 on. With ``override`` every other step's
    executed actions are random ones, passed to ``observe(..., actions=)``. Returns every
    step's actions."""
    rng = np.random.default_rng(seed)
    for p in policies:
        p.reset(n, seeds=list(range(n)))
        p.begin_trial(np.ones(n, bool))
    t_row = np.zeros(n, int)
    history = []
    for step in range(steps):
        mask = np.array([True, step not in (2, 3), step < 9, True][:n] + [True] * (n - 4))
        obs = rng.normal(size=(n, 3)).astype(np.float32)
        actions = [p.act(obs, mask) for p in policies]
        history.append((mask, actions))
        reward = rng.random(n).astype(np.float32)
        ended = (t_row + 1 == np.asarray(episode_lengths)) & mask
        executed = None
        if override and step % 2:
            executed = (rng.integers(0, 3, n) if discrete
                        else rng.uniform(-1, 1, (n, 2)).astype(np.float32))
        for p in policies:
            p.observe(reward, ended, np.zeros(n, bool), mask, actions=executed)
            p.begin_trial(ended)
        t_row = np.where(mask, t_row + 1, t_row)
        t_row[ended] = 0
    return history


def assert_same_actions(history, discrete: bool):
    for step, (mask, (oracle, cached)) in enumerate(history):
        rows = np.flatnonzero(mask)
        if discrete:
            np.testing.assert_array_equal(cached[rows], oracle[rows], err_msg=f"step {step}")
        else:
            assert_trees_close(cached[rows], oracle[rows], what=f"step {step}")


CASES = [(name, discrete) for name in ("at", "dt", "bc", "ad") for discrete in (False, True)]


@pytest.mark.parametrize("name, discrete", CASES)
def test_cached_policy_acts_like_the_oracle(name, discrete):
    # A context of 5 steps, 14 steps played: rows slide their windows, cross trial
    # boundaries and fall out of step; idle rows must not advance.
    oracle, cached = make_pair(name, discrete, context_steps=5)
    history = drive([oracle, cached], steps=14, discrete=discrete)
    assert_same_actions(history, discrete)
    np.testing.assert_array_equal(cached.length, oracle.length)
    # The windows slid (prefills happened) and decode ran at the other steps; decode
    # compiled at most once, the refill at most once per bucket size (decoders of equal
    # models share their compiled steps).
    assert cached.calls["prefill"] > 0 and cached.calls["decode"] > 0
    n = len(cached.length)
    assert cached.decoder.compilations["decode"] <= 1
    assert cached.decoder.compilations["prefill"] <= len({refill_bucket(r, n)
                                                          for r in range(1, n + 1)})


@pytest.mark.parametrize("name, discrete", [("ad", True), ("at", False)])
def test_executed_actions_replace_the_sampled_ones_in_both_contexts(name, discrete):
    # A driver that overrides moves (a withheld goal): the context records what was
    # executed, in the oracle and the cache alike, and the later actions depend on it.
    oracle, cached = make_pair(name, discrete, context_steps=5)
    history = drive([oracle, cached], steps=10, discrete=discrete, override=True)
    assert_same_actions(history, discrete)
    plain, _ = make_pair(name, discrete, context_steps=5)
    kept = drive([plain], steps=10, discrete=discrete)
    late = [not np.array_equal(a[0], b[0]) for (_, a), (_, b) in zip(history, kept,
                                                                       strict=True)]
    assert not late[0] and not late[1] and any(late[2:])
    oracle.act(np.zeros((3, 3), np.float32), np.ones(3, bool))
    executed = (np.array([2, 0, 1]) if discrete
                else np.array([[0.5, -0.5], [0.0, 0.1], [1.0, 1.0]], np.float32))
    oracle.observe(np.zeros(3), np.zeros(3, bool), np.zeros(3, bool),
                   np.array([True, False, True]), actions=executed)
    np.testing.assert_array_equal(oracle.last_action[[0, 2]], executed[[0, 2]])
    with pytest.raises(ValueError, match="actions of shape"):
        oracle.observe(np.zeros(3), np.zeros(3, bool), np.zeros(3, bool), np.ones(3, bool),
                       actions=executed[:2])


def test_long_context_is_decoded_without_refills_and_one_compilation():
    # Context larger than the whole game: the cache only ever appends.
    oracle, cached = make_pair("at", False, context_steps=40)
    history = drive([oracle, cached], steps=20, discrete=False)
    assert_same_actions(history, False)
    assert cached.calls == {"decode": 20, "prefill": 0}
    assert cached.decoder.compilations == {"decode": 1, "prefill": 0}


def test_slide_several_steps_at_once_and_sampled_discrete_actions():
    oracle, cached = make_pair("at", True, context_steps=6, slide_steps=3, greedy=False)
    history = drive([oracle, cached], steps=16, discrete=True)
    assert_same_actions(history, True)
    # A row slides at its 7th step, then every 3rd: row 0 (active throughout) at steps 6, 9,
    # 12, 15; row 1 (idle at steps 2-3) at 8, 11, 14; row 2 (stops after step 8) at 6, with
    # row 0. Seven refill calls instead of one per step from step 6 on.
    assert cached.calls["prefill"] == 7
    with pytest.raises(ValueError, match="slide_steps must lie in"):
        make_pair("at", False, context_steps=4, slide_steps=5)


def test_sequence_sharded_cache_policy():
    from rl_ring.sharding import make_mesh

    oracle, cached = make_pair("at", False, context_steps=8)
    sharded = CachedPolicy(
        cached.model, cached.layout, cached.spec, context_steps=8, mesh=make_mesh("data=2,seq=4"),
    )
    # capacity 8 steps x 4 tokens = 32 slots over seq=4; 4 rows over data=2.
    history = drive([oracle, sharded], steps=12, n=4, episode_lengths=(4, 3, 5, 6),
                    discrete=False)
    assert_same_actions(history, False)


def test_evaluator_gives_the_same_episodes_with_either_policy(tmp_path):
    from rl_ring.eval.evaluate import EvalConfig, evaluate

    oracle, cached = make_pair("at", True, context_steps=12)
    reports = []
    for name, policy in (("oracle", oracle), ("cached", cached)):
        cfg = EvalConfig(
            env="countdown", env_factory="toy_envs:CountdownEnv", out=str(tmp_path / name),
            trials=3, envs=3, seeds=1, task_split="none", progress=False,
        )
        reports.append(evaluate(cfg, policy=policy))
    eps = [[(e["env_index"], e["trial"], e["return"], e["length"]) for e in r["episodes"]]
           for r in reports]
    assert eps[0] == eps[1]
    # The policy's choices matter here: returns differ from what arm 0 alone would earn.
    assert len({e[2] for e in eps[0]}) > 1


def _train_tiny(tmp_path, agent="at"):
    from agents.run import train
    from rl_ring.train import TrainConfig
    from rl_ring.train.optim import OptimConfig

    cfg = TrainConfig(
        agent=agent, preset="tiny", workdir=str(tmp_path / "run"), mesh="seq=1", devices=1,
        steps=3, batch_size=2, ckpt_every=3, progress=False, tensorboard=False,
        async_checkpoint=False, optim=OptimConfig(lr=1e-3, warmup_steps=0),
    )
    train(cfg, store=small_store(discrete=True))
    return tmp_path / "run"


@pytest.mark.slow
def test_checkpoint_gives_a_cached_policy_by_default_and_the_cli_uses_it(tmp_path, capsys):
    run = _train_tiny(tmp_path)
    space = gym.spaces.Discrete(3)
    cached = agents.eval_policy_from_checkpoint(run, action_space=space)
    oracle = agents.eval_policy_from_checkpoint(run, action_space=space, cached=False)
    assert type(cached) is CachedPolicy and type(oracle) is ContextPolicy
    history = drive([oracle, cached], steps=10, discrete=True)
    assert_same_actions(history, True)

    from rl_ring.cli import eval as cli

    outs = {}
    for name, extra in (("cached", []), ("recompute", ["--policy", "recompute"])):
        argv = ["--checkpoint", str(run), "--env", "countdown", "--env-factory",
                "toy_envs:CountdownEnv", "--task-split", "none", "--trials", "2",
                "--envs", "2", "--seeds", "1", "--out", str(tmp_path / name), "--no-progress",
                *extra]
        assert cli.main(argv) == 0, capsys.readouterr().err
        outs[name] = json.loads((tmp_path / name / "report.json").read_text())
    assert outs["cached"]["config"]["policy"] == f"checkpoint:{run}"
    ep = {k: [(e["return"], e["length"]) for e in r["episodes"]] for k, r in outs.items()}
    assert ep["cached"] == ep["recompute"]
    # --temperature reaches the checkpoint's policy.
    assert cli.checkpoint_policy(str(run), temperature=0.25)(space).temperature == 0.25
