"""Bandit source algorithms: UCB1 and Thompson sampling (Beta-Bernoulli, and Gaussian with
known noise variance).

All treat every pull as one step of one arm-choice problem that persists across the
one-pull episodes of a history, so a history of ``E`` episodes is ``E`` pulls of learning.

:class:`UCB1`, :class:`Thompson` and :class:`GaussianThompson` are one-history learners (the
``Learner`` protocol of :mod:`envs.learners.history`, used by ``rl-ring collect``).
:class:`BatchThompson` and :class:`BatchUCB1` run the same rules for ``B`` independent
histories at once (numpy arrays ``[B, arms]``), and :func:`play` / :func:`bandit_histories`
use them to play thousands of pulls on hundreds of bandits in seconds (the context-scaling
experiment's sources and baselines). ``"thompson-prior"`` is Thompson sampling that knows
the family's prior (Bernoulli: means uniform in ``[low, high)``, so Beta posteriors
truncated to that range; Gaussian: the same as ``"thompson"``, which already uses it):
posterior sampling, the online policy a perfectly trained DPT plays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from envs.bandit import BanditParams


class UCB1:
    """UCB1: pull every arm once, then ``argmax mean + c * sqrt(2 ln t / n)``."""

    def __init__(self, num_actions: int, seed: int, c: float = 1.0) -> None:
        self.num_actions = num_actions
        self.c = c
        self.rng = np.random.default_rng(seed)
        self.counts = np.zeros(num_actions)
        self.sums = np.zeros(num_actions)

    @property
    def epsilon(self) -> float:
        """Exploration bonus scale (recorded as the history's ``policy_noise``)."""
        return self.c

    def act(self, obs: np.ndarray) -> int:
        del obs
        untried = np.flatnonzero(self.counts == 0)
        if len(untried):
            return int(untried[self.rng.integers(len(untried))])
        t = self.counts.sum()
        score = self.sums / self.counts + self.c * np.sqrt(2.0 * np.log(t) / self.counts)
        best = np.flatnonzero(score == score.max())
        return int(best[self.rng.integers(len(best))])

    def update(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        self.counts[action] += 1
        self.sums[action] += reward

    def end_episode(self) -> None:
        pass


class Thompson:
    """Thompson sampling with a Beta(1, 1) prior on every arm's success probability."""

    def __init__(self, num_actions: int, seed: int) -> None:
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)
        self.alpha = np.ones(num_actions)
        self.beta = np.ones(num_actions)

    @property
    def epsilon(self) -> float:
        """Thompson sampling has no exploration knob; recorded as 0."""
        return 0.0

    def act(self, obs: np.ndarray) -> int:
        del obs
        return int(np.argmax(self.rng.beta(self.alpha, self.beta)))

    def update(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        self.alpha[action] += reward
        self.beta[action] += 1.0 - reward

    def end_episode(self) -> None:
        pass


class GaussianThompson:
    """Thompson sampling for Gaussian rewards of known standard deviation ``noise_std``, with
    a ``N(prior_mean, prior_std**2)`` prior on every arm's mean (conjugate updates:
    precision ``1/prior_std**2 + n/noise_std**2``, mean ``(prior_mean/prior_std**2 +
    sum(r)/noise_std**2) / precision``)."""

    def __init__(self, num_actions: int, seed: int, *, prior_mean: float = 0.0,
                 prior_std: float = 1.0, noise_std: float = 1.0) -> None:
        if prior_std <= 0 or noise_std <= 0:
            raise ValueError(f"GaussianThompson: prior_std and noise_std must be > 0, got "
                             f"{prior_std}, {noise_std}")
        self.num_actions = num_actions
        self.noise_std = float(noise_std)
        self.rng = np.random.default_rng(seed)
        self.precision = np.full(num_actions, 1.0 / prior_std**2)
        self.weighted = np.full(num_actions, prior_mean / prior_std**2)

    @property
    def epsilon(self) -> float:
        """Thompson sampling has no exploration knob; recorded as 0."""
        return 0.0

    @property
    def posterior_mean(self) -> np.ndarray:
        return self.weighted / self.precision

    @property
    def posterior_std(self) -> np.ndarray:
        return 1.0 / np.sqrt(self.precision)

    def act(self, obs: np.ndarray) -> int:
        del obs
        return int(np.argmax(self.rng.normal(self.posterior_mean, self.posterior_std)))

    def update(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        self.precision[action] += 1.0 / self.noise_std**2
        self.weighted[action] += reward / self.noise_std**2

    def end_episode(self) -> None:
        pass


def learner_for(name: str, num_actions: int, seed: int, params: BanditParams | None = None):
    """The one-history bandit learner ``name`` ("ucb" or "thompson") suited to a family:
    Beta-Bernoulli or Gaussian Thompson sampling; UCB1 with its bonus scaled by the Gaussian
    noise (``c = noise_std``, the sub-Gaussian UCB) or 1 for Bernoulli rewards."""
    params = params or BanditParams(arms=num_actions)
    gaussian = params.distribution == "gaussian"
    if name == "ucb":
        return UCB1(num_actions, seed, c=params.noise_std if gaussian else 1.0)
    if name == "thompson":
        if gaussian:
            return GaussianThompson(num_actions, seed, prior_std=params.mean_std,
                                    noise_std=params.noise_std)
        return Thompson(num_actions, seed)
    raise ValueError(f"unknown bandit learner {name!r}; expected 'ucb' or 'thompson'")


# ---------------------------------------------------------------------- batched learners
def truncated_beta(alpha: np.ndarray, beta: np.ndarray, low: float, high: float,
                   samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` draws of Beta(alpha, beta) restricted to ``[low, high]`` (inverse CDF),
    ``[samples, *alpha.shape]``: the posterior of a Bernoulli mean under a uniform prior on
    that range."""
    from scipy.special import betainc, betaincinv

    f_lo, f_hi = betainc(alpha, beta, low), betainc(alpha, beta, high)
    u = f_lo + (f_hi - f_lo) * rng.random((samples, *np.shape(alpha)))
    # Where the posterior's mass in the range underflows, u sits at a bound: clip.
    return np.clip(betaincinv(alpha, beta, u), low, high)


def posterior_draws(alpha: np.ndarray, beta: np.ndarray, samples: int,
                    rng: np.random.Generator,
                    support: tuple[float, float] | None = None) -> np.ndarray:
    """``samples`` draws of each Beta(alpha, beta) posterior, ``[samples, *alpha.shape]``:
    under a Beta(1, 1) prior (``support`` None), or a uniform prior on ``support`` (the
    Beta truncated to it, :func:`truncated_beta`)."""
    if support is None:
        return rng.beta(alpha, beta, size=(samples, *np.shape(alpha)))
    return truncated_beta(alpha, beta, *support, samples, rng)


class BatchThompson:
    """Thompson sampling on ``B`` independent histories at once (Beta(1, 1) priors for
    Bernoulli rewards, the family's ``N(0, mean_std**2)`` prior and known noise for Gaussian
    ones); row ``b`` follows the same rule as :class:`Thompson` / :class:`GaussianThompson`.
    ``family_prior``: Bernoulli posteriors under the family's uniform prior on
    ``[low, high)`` instead (truncated Betas)."""

    def __init__(self, params: BanditParams, batch: int, rng: np.random.Generator,
                 family_prior: bool = False) -> None:
        self.params, self.rng = params, rng
        k = params.arms
        self.support = (params.low, params.high) if family_prior else None
        if params.distribution == "bernoulli":
            self.alpha, self.beta = np.ones((batch, k)), np.ones((batch, k))
        else:
            self.precision = np.full((batch, k), 1.0 / params.mean_std**2)
            self.weighted = np.zeros((batch, k))

    def act(self) -> np.ndarray:
        if self.params.distribution == "bernoulli":
            draws = posterior_draws(self.alpha, self.beta, 1, self.rng, self.support)
            return np.argmax(draws[0], axis=1)
        mean, std = self.weighted / self.precision, 1.0 / np.sqrt(self.precision)
        return np.argmax(self.rng.normal(mean, std), axis=1)

    def update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        rows = np.arange(len(arms))
        if self.params.distribution == "bernoulli":
            self.alpha[rows, arms] += rewards
            self.beta[rows, arms] += 1.0 - rewards
        else:
            var = self.params.noise_std**2
            self.precision[rows, arms] += 1.0 / var
            self.weighted[rows, arms] += rewards / var


class BatchUCB1:
    """UCB1 on ``B`` histories at once: untried arms first (uniformly among them), then
    ``argmax mean + c * sqrt(2 ln t / n)``, ties broken uniformly; ``c`` as :func:`learner_for`
    chooses it."""

    def __init__(self, params: BanditParams, batch: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.c = params.noise_std if params.distribution == "gaussian" else 1.0
        self.counts = np.zeros((batch, params.arms))
        self.sums = np.zeros((batch, params.arms))

    def index(self) -> np.ndarray:
        """The UCB index of every arm, ``[B, arms]`` (+inf for untried arms)."""
        n = np.maximum(self.counts, 1.0)
        t = np.maximum(self.counts.sum(axis=1, keepdims=True), 1.0)
        score = self.sums / n + self.c * np.sqrt(2.0 * np.log(t) / n)
        return np.where(self.counts == 0, np.inf, score)

    def act(self) -> np.ndarray:
        score = self.index()
        top = score == score.max(axis=1, keepdims=True)
        return np.argmax(top * (1.0 + self.rng.random(score.shape)), axis=1)

    def update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        rows = np.arange(len(arms))
        self.counts[rows, arms] += 1
        self.sums[rows, arms] += rewards


class BatchRandom:
    """Uniformly random arms (the random baseline)."""

    def __init__(self, params: BanditParams, batch: int, rng: np.random.Generator) -> None:
        self.arms, self.batch, self.rng = params.arms, batch, rng

    def act(self) -> np.ndarray:
        return self.rng.integers(self.arms, size=self.batch)

    def update(self, arms: np.ndarray, rewards: np.ndarray) -> None:
        del arms, rewards


def _thompson_prior(params: BanditParams, batch: int, rng: np.random.Generator):
    return BatchThompson(params, batch, rng, family_prior=True)


BATCH_LEARNERS = {"thompson": BatchThompson, "thompson-prior": _thompson_prior,
                  "ucb": BatchUCB1, "random": BatchRandom}


def play(params: BanditParams, means: np.ndarray, learner: str, pulls: int,
         seed: int) -> dict[str, np.ndarray]:
    """Plays ``learner`` ("thompson", "thompson-prior", "ucb", "random") for ``pulls`` pulls
    on each bandit of ``means`` ``[B, arms]``, every row an independent history.

    Returns:
        ``arms``, ``rewards`` and ``regret`` (expected, best mean minus the pulled arm's
        mean), each ``[B, pulls]``.
    """
    if learner not in BATCH_LEARNERS:
        raise ValueError(f"unknown bandit learner {learner!r}; expected one of "
                         f"{sorted(BATCH_LEARNERS)}")
    means = np.asarray(means, np.float64)
    b = means.shape[0]
    rng = np.random.default_rng([seed, 7])
    env_rng = np.random.default_rng([seed, 11])
    agent = BATCH_LEARNERS[learner](params, b, rng)
    rows = np.arange(b)
    arms = np.zeros((b, pulls), np.int64)
    rewards = np.zeros((b, pulls))
    for t in range(pulls):
        a = agent.act()
        r = params.rewards(means[rows, a], env_rng)
        agent.update(a, r)
        arms[:, t], rewards[:, t] = a, r
    regret = means.max(axis=1, keepdims=True) - np.take_along_axis(means, arms, axis=1)
    return {"arms": arms, "rewards": rewards, "regret": regret}


def bandit_histories(env_id: str, params: BanditParams, tasks, learner: str, pulls: int,
                     seed: int, observation_space: dict[str, Any] | None = None):
    """Learning histories of ``learner`` on the bandits ``tasks`` (one history per entry, the
    same task may repeat), as an EpisodeStore of one-pull episodes with the extras
    :func:`envs.learners.history.collect_histories` writes (``history_id``, ``task_id``,
    ``episode_in_history``, ``policy_noise``) plus ``optimal_actions`` (the best arm, per
    pull). The batched learners of this module play all histories at once; the random
    streams differ from ``collect_histories``' per-episode seeding, the distribution does not.
    """
    from rl_ring.data import EpisodeStore

    tasks = np.asarray(tasks, np.int64)
    means = params.means_of(tasks.tolist())
    out = play(params, means, learner, pulls, seed)
    h, n = len(tasks), len(tasks) * pulls
    best = np.repeat(np.argmax(means, axis=1), pulls)
    return EpisodeStore(
        observations=np.zeros((n, 1), np.float32),
        actions=out["arms"].reshape(-1),
        rewards=out["rewards"].reshape(-1).astype(np.float32),
        terminals=np.ones(n, bool),
        timeouts=np.zeros(n, bool),
        episode_starts=np.arange(n + 1, dtype=np.int64),
        extras={"optimal_actions": best.astype(np.int64)},
        episode_extras={
            "history_id": np.repeat(np.arange(h, dtype=np.int64), pulls),
            "task_id": np.repeat(tasks, pulls),
            "episode_in_history": np.tile(np.arange(pulls, dtype=np.int64), h),
            "policy_noise": np.zeros(n, np.float32),
        },
        metadata={
            "env_id": env_id, "policy": learner, "seed": seed,
            "action_space": {"type": "discrete", "n": params.arms},
            "observation_space": observation_space or {"type": "box", "low": [0.0],
                                                       "high": [1.0]},
            "episodes_per_history": pulls, "histories": h, "bandit": params.to_dict(),
            "collector": "envs.learners.bandits.bandit_histories",
        },
    )
