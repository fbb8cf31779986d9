"""Tabular Q-learning with decaying epsilon-greedy exploration.

States are the env's observations rounded to integers (grid positions, the has-key flag),
so any small discrete-state env works. The table starts mildly optimistic (``init_q``), so
greedy steps also explore untried actions; epsilon decays linearly from
``eps_start`` to ``eps_end`` over the first ``eps_decay_fraction`` of a history. A time-limit
truncation bootstraps (the state still has a future); only a termination does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QLearningConfig:
    """Hyperparameters of the tabular Q-learner."""

    lr: float = 0.5
    """Step size of the temporal-difference update."""
    gamma: float = 0.9
    """Discount factor."""
    init_q: float = 1.0
    """Initial value of every table entry; above the value of unrewarded moves, it makes the
    greedy policy try untried actions (without it some far goals are never found in 100
    episodes)."""
    eps_start: float = 1.0
    """Exploration probability at the start of a history."""
    eps_end: float = 0.05
    """Exploration probability after the decay."""
    eps_decay_fraction: float = 0.5
    """Fraction of the history's episodes over which epsilon decays linearly."""


class QLearner:
    """One tabular Q-learner: ``act`` / ``update`` per step, ``end_episode`` per episode.

    Args:
        num_actions: size of the discrete action space.
        episodes: length of the history in episodes (sets the epsilon schedule).
        config: hyperparameters.
        seed: seed of the exploration stream.
    """

    def __init__(self, num_actions: int, episodes: int, config: QLearningConfig, seed: int) -> None:
        if episodes < 1:
            raise ValueError(f"QLearner: episodes must be >= 1, got {episodes}")
        self.num_actions = num_actions
        self.episodes = episodes
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.q: dict[tuple[int, ...], np.ndarray] = {}
        self.episode = 0

    @property
    def epsilon(self) -> float:
        """Exploration probability of the current episode."""
        c = self.config
        horizon = max(1.0, c.eps_decay_fraction * self.episodes)
        frac = min(1.0, self.episode / horizon)
        return c.eps_start + frac * (c.eps_end - c.eps_start)

    def values(self, obs: np.ndarray) -> np.ndarray:
        """The table row of ``obs`` (created optimistic on first visit)."""
        key = tuple(int(v) for v in np.rint(np.asarray(obs, dtype=np.float64)))
        row = self.q.get(key)
        if row is None:
            row = np.full(self.num_actions, self.config.init_q, dtype=np.float64)
            self.q[key] = row
        return row

    def act(self, obs: np.ndarray) -> int:
        """Epsilon-greedy action; ties among greedy actions are broken at random."""
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.num_actions))
        q = self.values(obs)
        best = np.flatnonzero(q == q.max())
        return int(best[self.rng.integers(len(best))])

    def update(self, obs, action, reward, next_obs, terminated, truncated) -> None:
        """One Q-learning backup of the transition."""
        del truncated  # a time limit does not end the state's future: bootstrap anyway
        target = reward
        if not terminated:
            target += self.config.gamma * float(self.values(next_obs).max())
        row = self.values(obs)
        row[action] += self.config.lr * (target - row[action])

    def end_episode(self) -> None:
        self.episode += 1
