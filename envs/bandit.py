"""Multi-armed Bernoulli bandits as an in-context task family.

Each task is a vector of ``arms`` success probabilities, drawn uniformly from ``[0, 1)`` by a
generator seeded with ``(BANDIT_SEED, arms, task)``, so task ``t`` means the same arms on
every machine. An episode is ``horizon`` pulls (default 1, the Algorithm Distillation set-up:
one pull per episode, a learning history is many consecutive one-pull episodes); it ends
with ``terminated=True`` because nothing follows the last pull. The observation is a
constant ``[0.0]``: everything an agent learns comes from its rewards.

There are ``NUM_TASKS`` (1000) tasks per arm count; the fixed split holds out 20%.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs.incontext import InContextEnv
from envs.tasks import fixed_split

BANDIT_SEED = 20231003
NUM_TASKS = 1000
SPLIT_SEED = 2
TEST_FRACTION = 0.2


def arm_means(task: int, *, arms: int = 5) -> np.ndarray:
    """Success probability of each arm of ``task``, ``[arms]`` float64."""
    if not 0 <= int(task) < NUM_TASKS:
        raise ValueError(f"bandit: task must be in [0, {NUM_TASKS}), got {task}")
    return np.random.default_rng([BANDIT_SEED, arms, int(task)]).uniform(0.0, 1.0, size=arms)


def task_split(split: str) -> list[int]:
    """The fixed train / test (held-out) bandit tasks."""
    return fixed_split(range(NUM_TASKS), split, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)


def optimal_return(task: int, *, arms: int = 5, horizon: int = 1) -> float:
    """Expected return of always pulling the best arm."""
    return float(horizon * arm_means(task, arms=arms).max())


class Bandit(InContextEnv):
    """A Bernoulli bandit task family as a Gymnasium env (discrete actions)."""

    family = "bandit"

    def __init__(
        self,
        task: int | None = None,
        *,
        arms: int = 5,
        horizon: int = 1,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        if arms < 2:
            raise ValueError(f"bandit: arms must be >= 2, got {arms}")
        if horizon < 1:
            raise ValueError(f"bandit: horizon must be >= 1, got {horizon}")
        self.arms = arms
        self.horizon = horizon
        self.episode_length = horizon
        # The observation is always 0; a non-degenerate box keeps space checkers quiet.
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(arms)
        self._means = np.zeros(arms)
        self._t = 0
        self._last_arm: int | None = None
        super().__init__(task, seed=seed, render_mode=render_mode)

    def task_ids(self) -> list[int]:
        return list(range(NUM_TASKS))

    @property
    def means(self) -> np.ndarray:
        """Arm success probabilities of the current task (known after reset)."""
        return self._means.copy()

    def optimal_return(self, task: int | None = None) -> float:
        """Expected return of the best arm for ``task`` (default: the current task)."""
        task = self.task if task is None else task
        if task is None:
            raise ValueError("bandit: no task set; pass task= or reset() first")
        return optimal_return(task, arms=self.arms, horizon=self.horizon)

    def _reset_state(self) -> np.ndarray:
        self._means = arm_means(self.task, arms=self.arms)
        self._t = 0
        self._last_arm = None
        return np.zeros(1, dtype=np.float32)

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._check_running()
        a = np.asarray(action)
        if a.shape not in ((), (1,)) or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"bandit: action must be an integer arm index, got {action!r}")
        a = int(a.reshape(()))
        if not 0 <= a < self.arms:
            raise ValueError(f"bandit: arm must be in [0, {self.arms}), got {a}")
        reward = float(self.np_random.random() < self._means[a])
        self._t += 1
        self._last_arm = a
        terminated = self._t >= self.horizon
        self._done = terminated
        info = {"task": self.task, "regret": float(self._means.max() - self._means[a])}
        return np.zeros(1, dtype=np.float32), reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        # One bar per arm, height = success probability; the last pulled arm is highlighted.
        h, w = 64, 16
        img = np.full((h, w * self.arms, 3), 30, dtype=np.uint8)
        for i, p in enumerate(self._means):
            top = h - int(round(p * (h - 1)))
            colour = (230, 200, 60) if i == self._last_arm else (90, 140, 220)
            img[top:, i * w + 2 : (i + 1) * w - 2] = colour
        return img
