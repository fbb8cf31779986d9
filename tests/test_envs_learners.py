"""Source learners: Q-learning, UCB / Thompson histories, and the JAX SAC update.

Oracles: hand-computed backups, plain-loop learning curves, a numpy re-implementation of the
SAC losses, the analytic density of a squashed Gaussian, and a tiny problem with a known
optimum.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from envs.learners import sac as S
from envs.learners.bandits import UCB1, Thompson
from envs.learners.history import collect_histories, learning_curve
from envs.learners.qlearning import QLearner, QLearningConfig


# ---------------------------------------------------------------------- Q-learning
def test_qlearning_backup_by_hand():
    cfg = QLearningConfig(lr=0.5, gamma=0.9, init_q=0.2)
    q = QLearner(5, episodes=10, config=cfg, seed=0)
    s, s2 = np.array([4.0, 4.0]), np.array([5.0, 4.0])
    q.values(s2)[:] = [0.0, 1.0, 3.0, 0.5, 0.0]
    q.update(s, 4, 1.0, s2, terminated=False, truncated=True)  # truncation still bootstraps
    assert q.values(s)[4] == pytest.approx(0.2 + 0.5 * (1.0 + 0.9 * 3.0 - 0.2))
    q.update(s, 1, 1.0, s2, terminated=True, truncated=False)  # termination does not
    assert q.values(s)[1] == pytest.approx(0.2 + 0.5 * (1.0 - 0.2))
    np.testing.assert_array_equal(q.values(s)[[0, 2, 3]], [0.2, 0.2, 0.2])


def test_qlearning_epsilon_schedule():
    q = QLearner(5, episodes=10, config=QLearningConfig(eps_decay_fraction=0.5), seed=0)
    eps = []
    for _ in range(10):
        eps.append(q.epsilon)
        q.end_episode()
    np.testing.assert_allclose(eps, [1.0, 0.81, 0.62, 0.43, 0.24, 0.05, 0.05, 0.05, 0.05, 0.05])


def test_darkroom_histories_improve_and_carry_extras():
    tasks = envs.task_split("darkroom", "train")[:8]
    store = collect_histories(
        "darkroom", "qlearning", tasks=tasks, episodes_per_history=100, seed=0
    )
    assert store.num_episodes == 800 and store.num_steps == 800 * 20
    ex = store.episode_extras
    np.testing.assert_array_equal(ex["history_id"], np.repeat(np.arange(8), 100))
    np.testing.assert_array_equal(ex["task_id"], np.repeat(tasks, 100))
    np.testing.assert_array_equal(ex["episode_in_history"], np.tile(np.arange(100), 8))
    assert ex["policy_noise"][0] == 1.0 and ex["policy_noise"][99] == pytest.approx(0.05)
    ret = store.episode_returns.reshape(8, 100)
    first, last = ret[:, :10].mean(axis=1), ret[:, -10:].mean(axis=1)
    # Every history improves; on average from near-random to most of the optimum.
    assert np.all(last > first)
    opt = np.array([envs.optimal_return("darkroom", t) for t in tasks])
    assert first.mean() < 2.0 and (last / opt).mean() > 0.6
    # learning_curve equals a plain loop over histories.
    mean, sem = learning_curve(store)
    np.testing.assert_allclose(mean, ret.mean(axis=0))
    np.testing.assert_allclose(sem, ret.std(axis=0, ddof=1) / np.sqrt(8))


def test_keydoor_histories_improve():
    tasks = envs.task_split("keydoor", "train")[:: 5056 // 6][:6]
    store = collect_histories("keydoor", "qlearning", tasks=tasks, episodes_per_history=200)
    ret = store.episode_returns.reshape(6, 200)
    assert ret[:, :20].mean() < 0.5 and ret[:, -20:].mean() > 1.5


@pytest.mark.parametrize("learner", ["ucb", "thompson"])
def test_bandit_learners_find_the_best_arm(learner):
    tasks = envs.task_split("bandit", "train")[:20]
    store = collect_histories("bandit", learner, tasks=tasks, episodes_per_history=300, seed=1)
    acts = store.actions.reshape(20, 300)
    best = np.array([np.argmax(envs.bandit.arm_means(t)) for t in tasks])[:, None]
    hit = acts == best
    assert hit[:, -100:].mean() > hit[:, :30].mean() + 0.2
    regret = np.array(
        [envs.bandit.arm_means(t).max() - envs.bandit.arm_means(t)[a] for t, a in
         zip(np.repeat(tasks, 300), store.actions, strict=True)]
    ).reshape(20, 300)  # fmt: skip
    assert regret[:, -100:].mean() < 0.5 * regret[:, :30].mean()


def test_ucb_pulls_every_arm_first_then_its_formula():
    ucb = UCB1(3, seed=0, c=1.0)
    first = []
    for _ in range(3):
        a = ucb.act(None)
        first.append(a)
        ucb.update(None, a, float(a == 2), None, True, False)
    assert sorted(first) == [0, 1, 2]
    # Means 0, 0, 1 with one pull each: arm 2 has the largest index.
    assert ucb.act(None) == 2
    th = Thompson(2, seed=0)
    th.update(None, 0, 1.0, None, True, False)
    np.testing.assert_array_equal(th.alpha, [2, 1])
    np.testing.assert_array_equal(th.beta, [1, 1])


def test_histories_are_reproducible():
    a = collect_histories("darkroom", "qlearning", tasks=[5, 75], episodes_per_history=20, seed=3)
    b = collect_histories("darkroom", "qlearning", tasks=[5, 75], episodes_per_history=20, seed=3)
    c = collect_histories("darkroom", "qlearning", tasks=[5, 75], episodes_per_history=20, seed=4)
    np.testing.assert_array_equal(a.actions, b.actions)
    np.testing.assert_array_equal(a.observations, b.observations)
    assert not np.array_equal(a.actions, c.actions)


# ---------------------------------------------------------------------- SAC
def _np_mlp(params, x):
    for layer in params[:-1]:
        x = np.maximum(x @ np.asarray(layer["w"]) + np.asarray(layer["b"]), 0.0)
    return x @ np.asarray(params[-1]["w"]) + np.asarray(params[-1]["b"])


def _tiny(hidden=16, **kw):
    cfg = S.SACConfig(hidden=hidden, depth=2, batch_size=8, **kw)
    sac = S.SAC(3, np.array([-1.0, 0.0]), np.array([1.0, 4.0]), cfg)
    state = sac.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = S.Batch(
        obs=rng.normal(size=(8, 3)).astype(np.float32),
        action=rng.uniform([-1, 0], [1, 4], size=(8, 2)).astype(np.float32),
        reward=rng.normal(size=8).astype(np.float32),
        next_obs=rng.normal(size=(8, 3)).astype(np.float32),
        terminal=(rng.random(8) < 0.3).astype(np.float32),
    )
    return sac, state, batch


def test_squashed_gaussian_log_prob_matches_change_of_variables():
    sac, state, batch = _tiny()
    key = jax.random.key(5)
    action, logp = S.sample_action(state.actor, batch.obs, key, sac.bounds)
    mean, log_std = (np.asarray(v, np.float64) for v in S.actor_dist(state.actor, batch.obs))
    low, high = np.array([-1.0, 0.0]), np.array([1.0, 4.0])
    a = np.asarray(action, np.float64)
    assert np.all(a > low) and np.all(a < high)
    half = (high - low) / 2
    y = (a - (high + low) / 2) / half
    u = np.arctanh(np.clip(y, -1 + 1e-7, 1 - 1e-7))
    std = np.exp(log_std)
    log_n = -0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    expected = np.sum(log_n - np.log(half * (1 - y**2)), axis=-1)
    np.testing.assert_allclose(np.asarray(logp), expected, rtol=1e-3, atol=1e-3)


def test_critic_loss_matches_numpy():
    sac, state, batch = _tiny()
    key = jax.random.key(9)
    loss = S.critic_loss(
        state.critic, state.target, state.actor, state.log_alpha, batch, key, 0.9, sac.bounds
    )
    # Same next actions (same key), then everything else in numpy.
    next_a, next_logp = S.sample_action(state.actor, batch.next_obs, key, sac.bounds)
    next_a, next_logp = np.asarray(next_a), np.asarray(next_logp)
    crit = [jax.tree.map(lambda x, i=i: x[i], state.critic) for i in range(2)]
    targ = [jax.tree.map(lambda x, i=i: x[i], state.target) for i in range(2)]
    alpha = float(np.exp(state.log_alpha))
    xn = np.concatenate([batch.next_obs, next_a], axis=1)
    qn = np.minimum(_np_mlp(targ[0], xn)[:, 0], _np_mlp(targ[1], xn)[:, 0])
    y = batch.reward + 0.9 * (1 - batch.terminal) * (qn - alpha * next_logp)
    x = np.concatenate([batch.obs, batch.action], axis=1)
    expected = np.mean([0.5 * np.mean((_np_mlp(c, x)[:, 0] - y) ** 2) for c in crit])
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_update_lowers_the_critic_loss_and_moves_targets_by_tau():
    sac, state, batch = _tiny(tau=0.01)
    key = jax.random.key(3)

    def loss(s):
        return float(
            S.critic_loss(s.critic, s.target, s.actor, s.log_alpha, batch, key, 0.99, sac.bounds)
        )

    before = loss(state)
    new, metrics = sac.update(state, batch, key)
    # Polyak target: target' = (1 - tau) target + tau critic'.
    for t_new, t_old, c_new in zip(
        jax.tree.leaves(new.target), jax.tree.leaves(state.target), jax.tree.leaves(new.critic),
        strict=True,
    ):  # fmt: skip
        np.testing.assert_allclose(t_new, 0.99 * t_old + 0.01 * c_new, rtol=1e-6, atol=1e-7)
    assert int(new.updates) == 1 and np.isfinite(float(metrics["critic_loss"]))
    batches = jax.tree.map(lambda x: jnp.stack([x] * 200), batch)
    trained, _ = sac.update_many(state, batches, key)
    # The targets and the policy move too, so the loss cannot reach 0; it must drop clearly.
    assert loss(trained) < 0.5 * before
    assert int(trained.updates) == 200


def test_sac_solves_a_one_step_continuous_bandit():
    """Reward -(a - 0.6)^2, every step terminal: the mean action must approach 0.6."""
    cfg = S.SACConfig(hidden=32, batch_size=64, lr=3e-3, init_temperature=0.01)
    sac = S.SAC(1, np.array([-1.0]), np.array([1.0]), cfg)
    state = sac.init(jax.random.key(1))
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, size=(300, 64, 1)).astype(np.float32)
    batches = S.Batch(
        obs=np.ones((300, 64, 1), np.float32),
        action=a,
        reward=-((a[..., 0] - 0.6) ** 2),
        next_obs=np.ones((300, 64, 1), np.float32),
        terminal=np.ones((300, 64), np.float32),
    )
    state, _ = sac.update_many(state, batches, jax.random.key(2))
    best = float(sac.act_deterministic(state.actor, np.ones((1, 1), np.float32))[0, 0])
    assert abs(best - 0.6) < 0.1
    # The learned critic ranks actions like the true reward does.
    q = S.q_values(state.critic, np.ones((3, 1), np.float32), np.array([[-0.8], [0.6], [0.0]]))
    assert float(q[0, 1]) > float(q[0, 2]) > float(q[0, 0])


def test_report_tiny_histories_writes_the_measured_curves(tmp_path):
    import json

    from envs import report

    report.histories(tmp_path, tiny=True, seed=0)
    saved = json.loads((tmp_path / "envs_histories.json").read_text())["curves"]
    store = collect_histories("darkroom", "qlearning", episodes_per_history=10, histories=4)
    mean, _ = learning_curve(store)
    np.testing.assert_allclose(saved["darkroom/qlearning"]["mean_return"], mean, atol=1e-4)
    assert saved["bandit/thompson"]["histories"] == 4
    assert (tmp_path / "envs_histories.png").stat().st_size > 1000
