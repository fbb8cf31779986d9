"""Rollout workers against a hand-written single-environment loop, and failure handling."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from toy_envs import CountdownEnv

from rl_ring.eval.env_spec import EnvSpec, env_seed, episode_seed, make_env, policy_seed
from rl_ring.eval.policy import RandomPolicy, RowPolicy
from rl_ring.eval.rollout import FAILED, NOT_RUN, OK, run_seed
from rl_ring.eval.workers import InProcessWorkers, SubprocessWorkers, make_workers

COUNTDOWN = CountdownEnv  # a picklable factory: subprocess workers unpickle it


def plain_loop(spec, seed, env_index, trials, choose, max_steps=None):
    """The oracle: one environment, one episode after another, no batching."""
    env = make_env(spec, env_seed(seed, env_index))
    out = []
    for k in range(trials):
        obs, _ = env.reset(seed=episode_seed(seed, env_index, k))
        ret, n = 0.0, 0
        while True:
            obs, r, term, trunc, _ = env.step(choose(obs))
            ret += float(r)
            n += 1
            if term or trunc or (max_steps is not None and n >= max_steps):
                break
        out.append((ret, n))
    env.close()
    return out


def returns_of(result):
    return {(e.env_index, e.trial): (e.episode_return, e.length) for e in result.episodes}


class CountingPolicy:
    """Wraps a policy and records the mask of every act call."""

    def __init__(self, inner, on_act=None):
        self.inner, self.masks, self.on_act = inner, [], on_act

    def reset(self, num_envs, *, seeds):
        self.inner.reset(num_envs, seeds=seeds)

    def begin_trial(self, env_mask):
        self.inner.begin_trial(env_mask)

    def act(self, obs, env_mask):
        self.masks.append(env_mask.copy())
        if self.on_act is not None:
            self.on_act(len(self.masks))
        return self.inner.act(obs, env_mask)

    def observe(self, reward, terminated, truncated, env_mask, *, actions=None):
        self.inner.observe(reward, terminated, truncated, env_mask, actions=actions)


@pytest.mark.parametrize("mode", ["inprocess", "subprocess"])
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_random_policy_matches_plain_loop(mode, env_id):
    n, trials, seed = 3, 2, 5
    specs = [EnvSpec(env_id)] * n
    with make_workers(n, mode, num_workers=2) as workers:
        res = run_seed(workers, RandomPolicy, specs, seed=seed, trials=trials,
                       max_steps=60 if env_id == "Pendulum-v1" else None)
    got = returns_of(res)
    for i in range(n):
        rng = np.random.default_rng(policy_seed(seed, i))
        sampler = RandomPolicy(make_env(specs[i], 0).action_space)
        want = plain_loop(specs[i], seed, i, trials,
                          lambda obs, s=sampler, g=rng: s.sample(g),
                          max_steps=60 if env_id == "Pendulum-v1" else None)
        for k in range(trials):
            assert got[(i, k)] == want[k], (i, k)
    assert all(e.status == OK for e in res.episodes)
    assert res.env_steps == sum(length for _, length in got.values())


def test_scripted_policy_and_evaluator_cut_match_plain_loop():
    """A pole balancer outlives max_steps: the evaluator cuts and resets the env itself."""
    n, trials, seed, cap = 4, 3, 1, 40
    balance = lambda obs: int(obs[2] + 0.5 * obs[3] > 0)  # noqa: E731
    spec = EnvSpec("CartPole-v1")
    with InProcessWorkers(n) as workers:
        policy = RowPolicy(balance, make_env(spec, 0).action_space)
        res = run_seed(workers, policy, [spec] * n, seed=seed, trials=trials, max_steps=cap)
    got = returns_of(res)
    for i in range(n):
        want = plain_loop(spec, seed, i, trials, balance, max_steps=cap)
        assert [got[(i, k)] for k in range(trials)] == want
    cut = [e for e in res.episodes if e.length == cap]
    assert cut and all(e.truncated and not e.terminated for e in cut)


def test_early_finishing_rows_one_act_per_step():
    """Rows with different episode lengths: each step makes one act call over exactly the
    rows that still have steps left, and every row's episodes have the hand-computed
    lengths and returns (action 0: reward t + 1 at step t)."""
    n, trials, seed = 5, 3, 2
    specs = [EnvSpec("countdown", factory=COUNTDOWN)] * n
    zero = CountingPolicy(RowPolicy(lambda obs: 0, CountdownEnv().action_space))
    with InProcessWorkers(n) as workers:
        res = run_seed(workers, zero, specs, seed=seed, trials=trials)
    lengths = np.array([[CountdownEnv.episode_length(episode_seed(seed, i, k))
                         for k in range(trials)] for i in range(n)])
    assert len(set(lengths.sum(1))) > 1, "the test needs rows of different total lengths"
    for e in res.episodes:
        length = lengths[e.env_index, e.trial]
        assert (e.length, e.episode_return) == (length, length * (length + 1) / 2)
        assert e.terminated and not e.truncated
    total = lengths.sum(1)
    assert len(zero.masks) == total.max()
    for t, mask in enumerate(zero.masks):
        np.testing.assert_array_equal(mask, total > t)


@pytest.mark.parametrize("mode", ["inprocess", "subprocess"])
def test_env_raising_mid_episode_fails_only_its_row(mode):
    n, trials, seed = 4, 3, 0
    good = EnvSpec("countdown", factory=COUNTDOWN)
    bad = EnvSpec("countdown", factory=COUNTDOWN,
                  kwargs={"length": 4, "fail_episode": 1, "fail_step": 2})
    specs = [good, bad, good, good]
    one = RowPolicy(lambda obs: 1, CountdownEnv().action_space)
    with make_workers(n, mode, num_workers=2) as workers:
        res = run_seed(workers, one, specs, seed=seed, trials=trials)
    by = {(e.env_index, e.trial): e for e in res.episodes}
    assert len(by) == n * trials
    assert by[(1, 0)].status == OK and by[(1, 0)].episode_return == 2 * (1 + 2 + 3 + 4)
    failed = by[(1, 1)]
    assert failed.status == FAILED and failed.length == 2 and failed.episode_return is None
    assert "ToyEnvError" in failed.error and "episode 1 step 2" in failed.error
    assert by[(1, 2)].status == NOT_RUN
    for i in (0, 2, 3):
        want = plain_loop(good, seed, i, trials, lambda obs: 1)
        assert [(by[(i, k)].episode_return, by[(i, k)].length) for k in range(trials)] == want


def _no_such_env(**kwargs):
    raise LookupError("NoSuchEnv: this factory cannot build anything")


def test_env_that_cannot_be_built_fails_its_row():
    specs = [EnvSpec("countdown", factory=COUNTDOWN),
             EnvSpec("countdown", factory=_no_such_env)]
    with InProcessWorkers(2) as workers:
        res = run_seed(workers, RandomPolicy, specs, seed=0, trials=2)
    by = {(e.env_index, e.trial): e for e in res.episodes}
    assert by[(0, 0)].status == by[(0, 1)].status == OK
    assert by[(1, 0)].status == FAILED and "NoSuchEnv" in by[(1, 0)].error
    assert by[(1, 1)].status == NOT_RUN


def test_killed_worker_fails_its_rows_others_complete_and_restart():
    n, trials, seed = 4, 2, 3
    spec = EnvSpec("countdown", factory=COUNTDOWN, kwargs={"length": 6})
    workers = SubprocessWorkers(n, 2, start_method="spawn", timeout_s=60)
    try:
        victim = workers.pids[1]
        killer = CountingPolicy(
            RowPolicy(lambda obs: 0, CountdownEnv().action_space),
            on_act=lambda calls: os.kill(victim, signal.SIGKILL) if calls == 3 else None,
        )
        res = run_seed(workers, killer, [spec] * n, seed=seed, trials=trials)
        by = {(e.env_index, e.trial): e for e in res.episodes}
        for i in (0, 1):  # worker 0's rows
            assert [by[(i, k)].episode_return for k in range(trials)] == [21.0, 21.0]
        for i in (2, 3):  # worker 1's rows died during their third step
            assert by[(i, 0)].status == FAILED and by[(i, 0)].length == 2
            assert "died" in by[(i, 0)].error and "exit code -9" in by[(i, 0)].error
            assert by[(i, 1)].status == NOT_RUN
        # the next seed gets a fresh worker and completes everywhere
        res2 = run_seed(workers, RowPolicy(lambda obs: 0, CountdownEnv().action_space),
                        [spec] * n, seed=seed + 1, trials=trials)
        assert all(e.status == OK and e.episode_return == 21.0 for e in res2.episodes)
        assert workers.pids[1] != victim
    finally:
        workers.close()


@pytest.mark.parametrize("env_id, task", [("darkroom", 10), ("dmc:cartpole-swingup", None)])
def test_registry_envs_match_plain_loop_in_worker_processes(env_id, task):
    from envs.evaluation import env_factory

    n, trials, seed, cap = 2, 2, 4, 25
    spec = EnvSpec(env_id, task=task, factory=env_factory(env_id))  # pickled to the workers
    with SubprocessWorkers(n, 2) as workers:
        res = run_seed(workers, RandomPolicy, [spec] * n, seed=seed, trials=trials, max_steps=cap)
    got = returns_of(res)
    space = make_env(spec, 0).action_space
    for i in range(n):
        rng = np.random.default_rng(policy_seed(seed, i))
        want = plain_loop(spec, seed, i, trials, lambda obs, g=rng: RandomPolicy(space).sample(g),
                          max_steps=cap)
        assert [got[(i, k)] for k in range(trials)] == want
