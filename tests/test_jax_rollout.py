"""The JAX-native rollout gives the Python workers' episodes: same seeds, same policy (a tiny
AD transformer, KV-cached, sliding its context), a toy JAX env and an XLand-MiniGrid env
(each also played through a gym-like wrapper by today's ``run_seed``); on a mesh too."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from gymnasium import spaces

import agents
from agents import base
from agents.policy import CachedPolicy, functional_policy
from rl_ring.data.normalize import Normalization
from rl_ring.eval.env_spec import EnvSpec
from rl_ring.eval.jax_rollout import (
    RolloutOutput,
    jax_rollout,
    make_rollout,
    make_rollout_steps,
    rollout_seeds,
    seed_result,
)
from rl_ring.eval.report import build_report, validate_report
from rl_ring.eval.rollout import NOT_RUN, OK, run_seed
from rl_ring.eval.workers import InProcessWorkers

NUM_ACTIONS = 3


# ------------------------------------------------------------------ a toy JAX environment
def toy_reset(seed):
    """Episodes of 2..5 steps (from the seed) with a seed-dependent favourite action."""
    seed = jnp.asarray(seed, jnp.int32)
    state = (jnp.int32(0), 2 + seed % 4, (seed // 4) % NUM_ACTIONS)  # t, limit, favourite
    return state, toy_obs(state)


def toy_obs(state):
    t, limit, fav = state
    return jnp.stack([t, limit, fav]).astype(jnp.float32) * jnp.float32(0.5)


def toy_step(state, action):
    t, limit, fav = state
    action = jnp.asarray(action, jnp.int32)
    # Multiples of 1/4: float32 and float64 sums agree exactly.
    reward = jnp.where(action == fav, 1.0, 0.25 * action).astype(jnp.float32)
    t = t + 1
    terminated = (action == fav) & (t >= 3)
    truncated = ~terminated & (t >= limit)
    new = (t, limit, fav)
    return new, toy_obs(new), reward, terminated, truncated


# ------------------------------------------------------------------ XLand-MiniGrid
def minigrid_functions(env_id="MiniGrid-EmptyRandom-5x5", **params):
    import xminigrid
    from xminigrid.types import StepType

    env, env_params = xminigrid.make(env_id, **params)

    def reset(seed):
        ts = env.reset(env_params, jax.random.PRNGKey(seed))
        return ts, ts.observation

    def step(ts, action):
        ts = env.step(env_params, ts, action)
        last = ts.step_type == StepType.LAST
        term = last & (ts.discount == 0)
        return ts, ts.observation, ts.reward, term, last & ~term

    return reset, step, int(env.num_actions(env_params)), env.observation_shape(env_params)


# ------------------------------------------------------------------ the gym-like wrapper
class FunctionalGymEnv:
    """A pure JAX env as the Gymnasium-style env today's workers step, one at a time."""

    def __init__(self, reset_fn, step_fn, num_actions, obs_shape, task=None, seed=0):
        del task, seed
        self._reset, self._step = reset_fn, step_fn  # jitted once for all rows
        self.action_space = spaces.Discrete(num_actions)
        self.observation_space = spaces.Box(-np.inf, np.inf, tuple(obs_shape), np.float32)
        self.state = None

    def reset(self, *, seed=None):
        self.state, obs = self._reset(jnp.int32(seed))
        return np.asarray(obs, np.float32), {}

    def step(self, action):
        self.state, obs, r, term, trunc = self._step(self.state, jnp.int32(action))
        return np.asarray(obs, np.float32), float(r), bool(term), bool(trunc), {}

    def close(self):
        pass


# ------------------------------------------------------------------ a tiny AD policy
def tiny_ad(obs_dim: int, num_actions: int, **options):
    agent = agents.get("ad")
    cfg = agent.Config.tiny()
    cfg = cfg.__class__(**{**cfg.__dict__, "model": cfg.model.replace(init_std=0.2),
                           **options})
    spec = base.DataSpec(obs_dim=obs_dim, act_dim=num_actions, discrete_actions=True)
    rng = np.random.default_rng(0)
    norm = Normalization(rng.normal(size=obs_dim).astype(np.float32),
                         rng.uniform(0.5, 2.0, obs_dim).astype(np.float32), reward_scale=0.5)
    model = agent.make_model(cfg, spec, rngs=nnx.Rngs(1))
    return model, agent.make_layout(cfg, spec, norm), spec


def python_episodes(env_fns, model, layout, spec, *, n, trials, seed, max_steps=None,
                    policy_cls=CachedPolicy, **options):
    reset_fn, step_fn, num_actions, obs_shape = env_fns
    factory = functools.partial(FunctionalGymEnv, jax.jit(reset_fn), jax.jit(step_fn),
                                num_actions, obs_shape)
    specs = [EnvSpec("jax-env", factory=factory) for _ in range(n)]
    policy = policy_cls(model, layout, spec, **options)
    with InProcessWorkers(n) as workers:
        res = run_seed(workers, policy, specs, seed=seed, trials=trials, max_steps=max_steps)
    return res


def episodes(res):
    return [(e.env_index, e.trial, e.status, e.episode_return, e.length, e.terminated,
             e.truncated, e.episode_seed) for e in res.episodes]


def jax_episodes(env_fns, model, layout, spec, *, n, trials, seed, num_steps, max_steps=None,
                 mesh=None, **options):
    init, step = functional_policy(model, layout, spec, mesh=mesh, **options)
    return jax_rollout(env_fns[0], env_fns[1], init, step, num_envs=n, num_steps=num_steps,
                       seed=seed, trials=trials, max_steps=max_steps, mesh=mesh)


TOY = (toy_reset, toy_step, NUM_ACTIONS, (3,))


TOY_OPTS = dict(context_steps=5, slide_steps=2, greedy=True)


@functools.lru_cache(maxsize=1)
def toy_case():
    """The tiny AD policy on the toy env through both paths: 4 rows x 4 trials of 2..5 steps
    in a 5-step context, so rows slide (2 steps at a time) at different steps, cross trial
    boundaries out of step and fall idle at different times."""
    parts = tiny_ad(3, NUM_ACTIONS)
    py = python_episodes(TOY, *parts, n=4, trials=4, seed=7, **TOY_OPTS)
    # In two compiled chunks of 10 steps (make_rollout_steps), as a progress bar would.
    init, step = functional_policy(*parts, **TOY_OPTS)
    start, advance = make_rollout_steps(toy_reset, toy_step, init, step, num_envs=4,
                                        num_steps=10, trials=4)
    ep_seeds, pol_seeds = rollout_seeds(7, 4, 4)
    state = advance(start(ep_seeds, pol_seeds))
    assert state.active.any()  # not done after 10 steps
    state = advance(state)
    assert not state.active.any()
    jx = seed_result(state.out, seed=7, episode_seeds=ep_seeds)
    return parts, py, jx


def test_toy_env_same_episodes_as_the_python_workers_with_sliding_context():
    parts, py, jx = toy_case()
    assert episodes(jx) == episodes(py)
    # Refilling one row per loop trip (rows that slide on the same step take several trips)
    # and all four in one trip play the same episodes.
    for refill_rows in (1, 4):
        again = jax_episodes(TOY, *parts, n=4, trials=4, seed=7, num_steps=20,
                             refill_rows=refill_rows, **TOY_OPTS)
        assert episodes(again) == episodes(py), refill_rows
    with pytest.raises(ValueError, match="refill_rows must be >= 1"):
        functional_policy(*parts, refill_rows=0, **TOY_OPTS)
    assert all(e.status == OK for e in jx.episodes)
    assert jx.env_steps == py.env_steps
    # The policy matters: the episodes are not all alike (ended by the action or the limit).
    assert len({e.episode_return for e in jx.episodes}) > 2
    assert {e.terminated for e in jx.episodes} == {True, False}
    # The report code consumes it unchanged.
    report = build_report([jx], config={"env_id": "toy"}, num_envs=4, trials=4)
    validate_report(report)


def test_previous_observation_tokens_same_episodes_as_the_python_workers():
    """``step_prev_obs``: the functional policy's STEP tokens carry the previous
    observation as the OnlineEncoder's do (the contexts slide across trials)."""
    parts = tiny_ad(3, NUM_ACTIONS, step_prev_obs=True)
    assert parts[1].step_prev_obs
    py = python_episodes(TOY, *parts, n=4, trials=4, seed=7, **TOY_OPTS)
    jx = jax_episodes(TOY, *parts, n=4, trials=4, seed=7, num_steps=20, **TOY_OPTS)
    assert episodes(jx) == episodes(py)
    assert len({e.episode_return for e in jx.episodes}) > 2


class SameKeyPolicy(CachedPolicy):
    """CachedPolicy drawing row i's n-th action as functional_policy does."""

    def reset(self, num_envs, *, seeds):
        super().reset(num_envs, seeds=seeds)
        self.seeds, self.count = list(seeds), np.zeros(num_envs, int)

    def act(self, obs, env_mask):
        self.mask = np.asarray(env_mask, bool)
        return super().act(obs, env_mask)

    def _actions(self, pred):
        out = np.zeros(len(pred), np.int64)
        for i in np.flatnonzero(self.mask):
            key = jax.random.fold_in(jax.random.PRNGKey(self.seeds[i]), self.count[i])
            out[i] = int(jax.random.categorical(key, jnp.asarray(pred[i]) / self.temperature))
            self.count[i] += 1
        return out


def test_sampled_actions_match_a_python_policy_drawing_the_same_keys():
    model, layout, spec = tiny_ad(3, NUM_ACTIONS)
    # At a sampling temperature of 0.5 on both paths (1, the default, is the xland tests').
    py = python_episodes(TOY, model, layout, spec, n=2, trials=3, seed=3, context_steps=4,
                         policy_cls=SameKeyPolicy, temperature=0.5)
    jx = jax_episodes(TOY, model, layout, spec, n=2, trials=3, seed=3, num_steps=15,
                      context_steps=4, greedy=False, temperature=0.5)
    assert episodes(jx) == episodes(py)


def test_minigrid_same_episodes_as_the_python_workers():
    fns = minigrid_functions(view_size=3, max_steps=9)
    obs_dim = int(np.prod(fns[3]))
    model, layout, spec = tiny_ad(obs_dim, fns[2])
    # max_steps=6 cuts episodes the env (limit 9) has not ended: the evaluator's truncation.
    opts = dict(context_steps=8, slide_steps=8, greedy=True)
    py = python_episodes(fns, model, layout, spec, n=2, trials=3, seed=1, max_steps=6, **opts)
    jx = jax_episodes(fns, model, layout, spec, n=2, trials=3, seed=1, num_steps=18,
                      max_steps=6, **opts)
    assert episodes(jx) == episodes(py)
    # Both rows slide together (6-step episodes, an 8-step window): one trip of one row each.
    one = jax_episodes(fns, model, layout, spec, n=2, trials=3, seed=1, num_steps=18,
                       max_steps=6, refill_rows=1, **opts)
    assert episodes(one) == episodes(py)
    assert len({e.episode_seed for e in jx.episodes}) == 6


def test_sharded_rows_over_two_devices_give_the_same_episodes():
    from rl_ring.sharding import make_mesh

    mesh = make_mesh("data=2", devices=jax.devices()[:2])
    parts, py, _ = toy_case()
    init, step = functional_policy(*parts, mesh=mesh, **TOY_OPTS)
    run = make_rollout(toy_reset, toy_step, init, step, num_envs=4, num_steps=20, trials=4,
                       mesh=mesh)
    ep_seeds, pol_seeds = rollout_seeds(7, 4, 4)
    out, state = run(ep_seeds, pol_seeds)
    # The KV cache is split over the envs: each device holds two rows.
    assert state.cache.k.sharding.spec[1] in ("data", ("data",), ("data", "fsdp"))
    assert {s.data.shape[1] for s in state.cache.k.addressable_shards} == {2}
    sharded = seed_result(out, seed=7, episode_seeds=ep_seeds)
    assert episodes(sharded) == episodes(py)
    with pytest.raises(ValueError, match="cannot be split"):
        make_rollout(toy_reset, toy_step, init, step, num_envs=3, num_steps=2, trials=1,
                     mesh=mesh)


def test_unfinished_episodes_are_not_run_and_the_report_skips_their_rows():
    # Row 0 finished trial 0 (return 1.5, 3 steps) and is 2 steps into trial 1; row 1
    # finished both trials.
    out = RolloutOutput(
        returns=jnp.array([[1.5, 0.0], [0.25, 2.0]]),
        lengths=jnp.array([[3, 2], [4, 1]], jnp.int32),
        terminated=jnp.array([[True, False], [False, True]]),
        truncated=jnp.array([[False, False], [True, False]]),
        finished=jnp.array([[True, False], [True, True]]),
        env_steps=jnp.int32(10),
    )
    res = seed_result(out, seed=4, episode_seeds=np.array([[11, 12], [13, 14]]), wall_s=2.0,
                      tasks=["a", "b"])
    assert episodes(res) == [
        (0, 0, OK, 1.5, 3, True, False, 11), (0, 1, NOT_RUN, None, 2, False, False, 12),
        (1, 0, OK, 0.25, 4, False, True, 13), (1, 1, OK, 2.0, 1, True, False, 14)]
    assert [e.task for e in res.episodes] == ["a", "a", "b", "b"]
    report = build_report([res], config={}, num_envs=2, trials=2)
    validate_report(report)
    assert report["summary"]["complete_rows"] == 1
    assert report["summary"]["return"]["last"]["mean"] == 2.0
    assert report["timing"]["steps_per_s"] == 5.0
    with pytest.raises(ValueError, match="episode_seeds has shape"):
        seed_result(out, seed=4, episode_seeds=np.zeros((2, 3), int))


# ------------------------------------------------------------------ per-row tasks: XLand rulesets
def report_episodes(report):
    """The report's episodes as :func:`episodes` tuples, with their tasks."""
    return [(e["env_index"], e["trial"], e["status"], e["return"], e["length"],
             e["terminated"], e["truncated"], e["episode_seed"], e["task"])
            for e in report["episodes"]]


def test_xland_row_rulesets_equal_the_python_workers_and_each_ruleset_alone(tmp_path,
                                                                            monkeypatch):
    from experiments import xland_ad as xa
    from rl_ring.data import xland as xd
    from rl_ring.eval import EvalConfig, evaluate

    # 80-step episodes: long enough that a tiny random AD, sampling, reaches goals.
    run = xa.tiny_run().replace(max_steps=80)
    model, layout, spec = tiny_ad(xd.obs_dim("onehot"), 6)
    # Sampled actions drawn from the same keys on both paths; a 24-step context sliding 8
    # steps at a time, across trial boundaries.
    policy = SameKeyPolicy(model, layout, spec, context_steps=24, slide_steps=8, greedy=False)
    # Held-out rulesets 4 (stand next to a square) and 6 (pick up a square); evaluate's
    # assign_tasks gives the three rows 4, 6, 4.
    tasks = xa.rulesets(run, "test", 2)
    cfg = EvalConfig(env=run.env, out=str(tmp_path / "workers"), trials=2, envs=3, seeds=1,
                     first_seed=1, task_split="test", progress=False)
    py = evaluate(cfg, make_env=functools.partial(xa.onehot_env, run.env, **xa.env_kwargs(run)),
                  tasks=tasks, policy=policy)
    fns, why = xa.jax_policy(policy)
    assert why is None
    monkeypatch.setattr(xa, "JAX_EVAL_CHUNK", 64)  # 160 steps: 3 compiled calls
    play = xa.jax_evaluator(run, fns, envs=3, trials=2)  # compiled once from here on
    rows = [4, 6, 4]
    mixed = play(1, rows)
    assert [(*e, r.task) for e, r in zip(episodes(mixed), mixed.episodes, strict=True)] \
        == report_episodes(py)
    assert [e.task for e in mixed.episodes] == [4, 4, 6, 6, 4, 4]
    # Each row plays the episodes of a rollout whose rows all have its ruleset.
    alone = {r: episodes(play(1, [r] * 3)) for r in (4, 6)}
    for i, r in enumerate(rows):
        assert episodes(mixed)[2 * i:2 * i + 2] == alone[r][2 * i:2 * i + 2]
    # The rulesets matter (goals reached, at other steps under the other ruleset).
    assert any(e.terminated for e in mixed.episodes) and alone[4] != alone[6]
    with pytest.raises(ValueError, match="one task per row"):
        play(1, [4, 6])
    # DPT's two tokens per step: the JAX rollout declines it (the experiment falls back).
    dpt = agents.get("dpt")
    dcfg = dpt.Config.tiny()
    dspec = base.DataSpec(obs_dim=4, act_dim=3, discrete_actions=True)
    dpolicy = CachedPolicy(dpt.make_model(dcfg, dspec, rngs=nnx.Rngs(0)),
                           dpt.make_layout(dcfg, dspec, Normalization.identity(4)), dspec,
                           context_steps=4)
    fns, why = xa.jax_policy(dpolicy)
    assert fns is None and "layout" in why
