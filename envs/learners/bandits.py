"""Bandit source algorithms: UCB1 and Thompson sampling (Beta-Bernoulli).

Both treat every pull as one step of one arm-choice problem that persists across the
one-pull episodes of a history, so a history of ``E`` episodes is ``E`` pulls of learning.
"""

from __future__ import annotations

import numpy as np


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
