"""The hard bandit families (bandit-hard, bandit-gauss) and their sources.

Oracles: arm means recomputed from their documented seed sequences, a Gaussian reward
recomputed from the env's seeded generator, posterior updates and UCB indices by hand.
"""

import numpy as np
import pytest

import envs
from envs import bandit
from envs.bandit import BANDIT_SEED, HARD_BERNOULLI, HARD_GAUSSIAN, BanditParams
from envs.learners import bandits as bl
from envs.learners.history import collect_histories, make_learner


def test_arm_means_follow_their_seed_sequences():
    # The original family is unchanged: uniform [0, 1) from (seed, arms, task).
    want = np.random.default_rng([BANDIT_SEED, 5, 17]).uniform(0.0, 1.0, 5)
    np.testing.assert_array_equal(bandit.arm_means(17, arms=5), want)
    hard = np.random.default_rng([BANDIT_SEED, 20, 17, 1]).uniform(0.3, 0.7, 20)
    np.testing.assert_array_equal(HARD_BERNOULLI.means(17), hard)
    gauss = 0.2 * np.random.default_rng([BANDIT_SEED, 20, 17, 2]).standard_normal(20)
    np.testing.assert_array_equal(HARD_GAUSSIAN.means(17), gauss)
    m = HARD_BERNOULLI.means_of(range(50))
    assert m.shape == (50, 20) and m.min() >= 0.3 and m.max() < 0.7
    assert envs.optimal_return("bandit-hard", 17) == pytest.approx(hard.max())
    assert envs.optimal_return("bandit-gauss", 17) == pytest.approx(gauss.max())
    test = envs.task_split("bandit-gauss", "test")
    assert len(test) == 2000 and not set(test) & set(envs.task_split("bandit-gauss", "train"))
    with pytest.raises(ValueError, match="task must be in"):
        HARD_GAUSSIAN.means(10_000)
    with pytest.raises(ValueError, match="distribution"):
        BanditParams(distribution="poisson")


def test_gaussian_env_pays_mean_plus_unit_noise():
    env = envs.make("bandit-gauss", task=3)
    env.reset(seed=5)
    _, r, term, trunc, info = env.step(np.int64(4))
    means = HARD_GAUSSIAN.means(3)
    assert r == pytest.approx(means[4] + np.random.default_rng(5).normal())
    assert term and not trunc and info["regret"] == pytest.approx(means.max() - means[4])
    assert env.action_space.n == 20


def test_thompson_posterior_updates_by_hand():
    beta = bl.Thompson(4, seed=0)
    for r in (1.0, 0.0, 1.0):
        beta.update(None, 2, r, None, True, False)
    assert beta.alpha.tolist() == [1, 1, 3, 1] and beta.beta.tolist() == [1, 1, 2, 1]
    g = bl.GaussianThompson(3, seed=0, prior_std=0.5, noise_std=2.0)
    g.update(None, 0, 1.0, None, True, False)
    g.update(None, 0, 3.0, None, True, False)
    # precision 1/0.25 + 2/4 = 4.5; mean (0 + (1 + 3)/4) / 4.5
    assert g.posterior_mean[0] == pytest.approx(1.0 / 4.5)
    assert g.posterior_std[0] == pytest.approx(1 / np.sqrt(4.5))
    assert g.posterior_mean[1] == 0.0 and g.posterior_std[1] == pytest.approx(0.5)
    # The batched learner makes the same updates, row by row.
    params = BanditParams(arms=3, distribution="gaussian", mean_std=0.5, noise_std=2.0)
    batch = bl.BatchThompson(params, 2, np.random.default_rng(0))
    batch.update(np.array([0, 1]), np.array([1.0, 5.0]))
    batch.update(np.array([0, 2]), np.array([3.0, 0.0]))
    assert batch.precision[0, 0] == pytest.approx(4.5)
    assert batch.weighted[0, 0] / batch.precision[0, 0] == pytest.approx(1.0 / 4.5)
    assert batch.weighted[1, 1] == pytest.approx(5.0 / 4.0)
    bern = bl.BatchThompson(BanditParams(arms=4), 1, np.random.default_rng(0))
    for r in (1.0, 0.0, 1.0):
        bern.update(np.array([2]), np.array([r]))
    assert bern.alpha[0].tolist() == [1, 1, 3, 1] and bern.beta[0].tolist() == [1, 1, 2, 1]


def test_thompson_with_the_family_prior_samples_truncated_posteriors():
    # Two arms, means uniform in [0.5, 1): arm 0 seen once paying 1 (Beta(2, 1), density
    # x / 0.375 on [0.5, 1]), arm 1 unseen (uniform, CDF 2 (x - 0.5)). P(arm 0's draw is the
    # larger) = int_0.5^1 (x / 0.375) 2 (x - 0.5) dx = 5/9; Beta(1, 1) priors give 2/3.
    params = BanditParams(arms=2, low=0.5, high=1.0)
    learner = bl.BATCH_LEARNERS["thompson-prior"](params, 20_000, np.random.default_rng(0))
    plain = bl.BatchThompson(params, 20_000, np.random.default_rng(0))
    for agent in (learner, plain):
        agent.update(np.zeros(20_000, np.int64), np.ones(20_000))
    assert (learner.act() == 0).mean() == pytest.approx(5 / 9, abs=0.012)
    assert (plain.act() == 0).mean() == pytest.approx(2 / 3, abs=0.012)
    # The Gaussian family's Thompson sampling already uses the family's prior.
    g = bl.play(HARD_GAUSSIAN, HARD_GAUSSIAN.means_of(range(3)), "thompson-prior", 20, seed=0)
    h = bl.play(HARD_GAUSSIAN, HARD_GAUSSIAN.means_of(range(3)), "thompson", 20, seed=0)
    np.testing.assert_array_equal(g["arms"], h["arms"])


def test_ucb_index_by_hand():
    ucb = bl.BatchUCB1(BanditParams(arms=3), 1, np.random.default_rng(0))
    for arm, r in ((0, 1.0), (0, 0.0), (1, 1.0)):
        ucb.update(np.array([arm]), np.array([r]))
    idx = ucb.index()[0]
    # t = 3: arm 0 mean 0.5 + sqrt(2 ln 3 / 2); arm 1 1 + sqrt(2 ln 3); arm 2 untried.
    assert idx[0] == pytest.approx(0.5 + np.sqrt(np.log(3.0)))
    assert idx[1] == pytest.approx(1.0 + np.sqrt(2 * np.log(3.0)))
    assert idx[2] == np.inf and ucb.act()[0] == 2
    single = bl.UCB1(3, seed=0)
    for arm, r in ((0, 1.0), (0, 0.0), (1, 1.0), (2, 0.0)):
        single.update(None, arm, r, None, True, False)
    assert single.act(None) == 1  # 1 + sqrt(2 ln 4) beats 0.5 + sqrt(ln 4) and 0 + ...
    # Gaussian rewards scale the bonus by the noise (sub-Gaussian UCB).
    assert bl.BatchUCB1(HARD_GAUSSIAN, 1, np.random.default_rng(0)).c == 1.0
    assert bl.learner_for("ucb", 20, 0, BanditParams(arms=20, distribution="gaussian",
                                                     noise_std=3.0)).c == 3.0


def test_learners_follow_the_family():
    assert isinstance(make_learner("thompson", 20, 10, 0, env_id="bandit-gauss"),
                      bl.GaussianThompson)
    assert isinstance(make_learner("thompson", 20, 10, 0, env_id="bandit-hard"), bl.Thompson)
    assert isinstance(make_learner("thompson", 5, 10, 0, env_id="bandit"), bl.Thompson)
    store = collect_histories("bandit-gauss", "thompson", tasks=[0, 1], episodes_per_history=5)
    assert store.num_episodes == 10 and not set(np.unique(store.rewards)) <= {0.0, 1.0}


def test_play_regret_and_thompson_beats_random():
    means = HARD_BERNOULLI.means_of(range(40))
    out = bl.play(HARD_BERNOULLI, means, "thompson", 400, seed=0)
    chosen = np.take_along_axis(means, out["arms"], axis=1)
    np.testing.assert_allclose(out["regret"], means.max(1, keepdims=True) - chosen)
    assert set(np.unique(out["rewards"])) <= {0.0, 1.0}
    rand = bl.play(HARD_BERNOULLI, means, "random", 400, seed=0)["regret"]
    ts = out["regret"]
    # Random's per-pull regret is the mean gap (~0.18); Thompson learns within 400 pulls.
    assert rand.mean() == pytest.approx((means.max(1) - means.mean(1)).mean(), rel=0.1)
    assert ts[:, 200:].mean() < ts[:, :100].mean() < rand.mean()
    with pytest.raises(ValueError, match="unknown bandit learner"):
        bl.play(HARD_BERNOULLI, means, "greedy", 3, seed=0)


def test_bandit_histories_store():
    store = bl.bandit_histories("bandit-hard", HARD_BERNOULLI, [5, 9, 5], "ucb", 30, seed=1)
    store.validate()
    assert store.num_episodes == 90 and store.num_steps == 90
    assert store.episode_extras["history_id"].tolist() == [0] * 30 + [1] * 30 + [2] * 30
    assert store.episode_extras["task_id"][30:60].tolist() == [9] * 30
    assert store.episode_extras["episode_in_history"][:3].tolist() == [0, 1, 2]
    assert store.extras["optimal_actions"][0] == np.argmax(HARD_BERNOULLI.means(5))
    # UCB1 pulls each of the 20 arms once first.
    assert sorted(store.actions[:20].tolist()) == list(range(20))
