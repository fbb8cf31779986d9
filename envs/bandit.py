"""Multi-armed Bernoulli and Gaussian bandits as an in-context task family.

Each task is a vector of ``arms`` arm means, drawn by a generator seeded with
``(BANDIT_SEED, arms, task)`` (plus a family key for every family but the original
uniform-[0, 1) Bernoulli one), so task ``t`` means the same arms on every machine:

* Bernoulli (``distribution="bernoulli"``): success probabilities uniform in ``[low, high)``
  (default ``[0, 1)``); a pull pays 1 with the arm's probability, else 0.
* Gaussian (``distribution="gaussian"``): means ``N(0, mean_std**2)``; a pull pays the arm's
  mean plus ``N(0, noise_std**2)`` noise (known variance).

The hard families of the context-scaling experiment (:data:`HARD_BERNOULLI`,
:data:`HARD_GAUSSIAN`; registry ids ``bandit-hard`` and ``bandit-gauss``) have 20 arms with
small gaps, so that Thompson sampling still improves after 1,000 pulls (measured in
docs/reproductions.md, "Context scaling").

An episode is ``horizon`` pulls (default 1, the Algorithm Distillation set-up: one pull per
episode, a learning history is many consecutive one-pull episodes); it ends
with ``terminated=True`` because nothing follows the last pull. The observation is a
constant ``[0.0]``: everything an agent learns comes from its rewards.

There are ``NUM_TASKS`` (1000) tasks per arm count (``num_tasks`` for the hard families,
10,000); the fixed split holds out 20%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.incontext import InContextEnv
from envs.tasks import fixed_split

BANDIT_SEED = 20231003
NUM_TASKS = 1000
SPLIT_SEED = 2
TEST_FRACTION = 0.2


DISTRIBUTIONS = ("bernoulli", "gaussian")


@dataclass(frozen=True)
class BanditParams:
    """What defines a bandit family: arm count, reward distribution and how means are drawn."""

    arms: int = 5
    """Number of arms."""
    distribution: str = "bernoulli"
    """"bernoulli" (rewards 0/1) or "gaussian" (mean + N(0, noise_std**2))."""
    low: float = 0.0
    """Bernoulli: success probabilities are uniform in [low, high)."""
    high: float = 1.0
    """Bernoulli: upper end of the success probabilities."""
    mean_std: float = 1.0
    """Gaussian: arm means are N(0, mean_std**2)."""
    noise_std: float = 1.0
    """Gaussian: reward noise standard deviation (known to the Thompson sampler)."""
    num_tasks: int = NUM_TASKS
    """Task ids 0 .. num_tasks - 1."""

    def __post_init__(self) -> None:
        if self.arms < 2:
            raise ValueError(f"bandit: arms must be >= 2, got {self.arms}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"bandit: distribution must be one of {DISTRIBUTIONS}, "
                             f"got {self.distribution!r}")
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"bandit: need 0 <= low < high <= 1, got low={self.low}, "
                             f"high={self.high}")
        if self.mean_std <= 0 or self.noise_std <= 0:
            raise ValueError(f"bandit: mean_std and noise_std must be > 0, got "
                             f"{self.mean_std}, {self.noise_std}")
        if self.num_tasks < 1:
            raise ValueError(f"bandit: num_tasks must be >= 1, got {self.num_tasks}")

    @property
    def legacy(self) -> bool:
        """The original family (uniform [0, 1) Bernoulli), seeded without a family key."""
        return self.distribution == "bernoulli" and (self.low, self.high) == (0.0, 1.0)

    def seed(self, task: int) -> list[int]:
        """The seed sequence of ``task``'s arm means."""
        if self.legacy:
            return [BANDIT_SEED, self.arms, int(task)]
        key = 1 if self.distribution == "bernoulli" else 2
        return [BANDIT_SEED, self.arms, int(task), key]

    def means(self, task: int) -> np.ndarray:
        """Arm means of ``task``, ``[arms]`` float64."""
        if not 0 <= int(task) < self.num_tasks:
            raise ValueError(f"bandit: task must be in [0, {self.num_tasks}), got {task}")
        rng = np.random.default_rng(self.seed(task))
        if self.distribution == "bernoulli":
            return rng.uniform(self.low, self.high, size=self.arms)
        return self.mean_std * rng.standard_normal(self.arms)

    def means_of(self, tasks) -> np.ndarray:
        """Arm means of several tasks, ``[len(tasks), arms]``."""
        return np.stack([self.means(t) for t in tasks]) if len(tasks) else np.zeros(
            (0, self.arms))

    def rewards(self, means: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One pull's reward for each entry of ``means`` (the pulled arms' means)."""
        means = np.asarray(means, np.float64)
        if self.distribution == "bernoulli":
            return (rng.random(means.shape) < means).astype(np.float64)
        return means + self.noise_std * rng.standard_normal(means.shape)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The hard Bernoulli family (``bandit-hard``): 20 arms, success probabilities in [0.3, 0.7).
HARD_BERNOULLI = BanditParams(arms=20, low=0.3, high=0.7, num_tasks=10_000)
#: The hard Gaussian family (``bandit-gauss``): 20 arms, means N(0, 0.2^2), unit noise.
HARD_GAUSSIAN = BanditParams(arms=20, distribution="gaussian", mean_std=0.2, noise_std=1.0,
                             num_tasks=10_000)


def arm_means(task: int, *, arms: int = 5, **params) -> np.ndarray:
    """Arm means of ``task`` (success probabilities for Bernoulli), ``[arms]`` float64;
    ``params`` are the other :class:`BanditParams` fields."""
    return BanditParams(arms=arms, **params).means(task)


def task_split(split: str, *, num_tasks: int = NUM_TASKS) -> list[int]:
    """The fixed train / test (held-out) bandit tasks."""
    return fixed_split(range(num_tasks), split, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)


def optimal_return(task: int, *, arms: int = 5, horizon: int = 1, **params) -> float:
    """Expected return of always pulling the best arm."""
    return float(horizon * arm_means(task, arms=arms, **params).max())


class Bandit(InContextEnv):
    """A Bernoulli or Gaussian bandit task family as a Gymnasium env (discrete actions).

    ``params`` are the :class:`BanditParams` fields besides ``arms`` (``distribution``,
    ``low``, ``high``, ``mean_std``, ``noise_std``, ``num_tasks``)."""

    family = "bandit"

    def __init__(
        self,
        task: int | None = None,
        *,
        arms: int = 5,
        horizon: int = 1,
        render_mode: str | None = None,
        seed: int | None = None,
        **params,
    ) -> None:
        self.params = BanditParams(arms=arms, **params)
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
        return list(range(self.params.num_tasks))

    @property
    def means(self) -> np.ndarray:
        """Arm success probabilities of the current task (known after reset)."""
        return self._means.copy()

    def optimal_return(self, task: int | None = None) -> float:
        """Expected return of the best arm for ``task`` (default: the current task)."""
        task = self.task if task is None else task
        if task is None:
            raise ValueError("bandit: no task set; pass task= or reset() first")
        return float(self.horizon * self.params.means(task).max())

    def optimal_action(self, obs: np.ndarray | None = None) -> int:
        """The best arm of the current task (the lowest index among equal means); the
        observation carries nothing, so ``obs`` is ignored. Collectors record it next to
        every pull (``extras["optimal_actions"]``)."""
        del obs
        if self.task is None:
            raise ValueError("bandit: no task set; reset() first")
        return int(np.argmax(self.params.means(self.task)))

    def _reset_state(self) -> np.ndarray:
        self._means = self.params.means(self.task)
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
        if self.params.distribution == "bernoulli":
            reward = float(self.np_random.random() < self._means[a])
        else:
            reward = float(self._means[a] + self.params.noise_std * self.np_random.normal())
        self._t += 1
        self._last_arm = a
        terminated = self._t >= self.horizon
        self._done = terminated
        info = {"task": self.task, "regret": float(self._means.max() - self._means[a])}
        return np.zeros(1, dtype=np.float32), reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        # One bar per arm, height = success probability (Gaussian: mean, +-3 mean_std mapped
        # to the height); the last pulled arm is highlighted.
        h, w = 64, 16
        img = np.full((h, w * self.arms, 3), 30, dtype=np.uint8)
        heights = self._means
        if self.params.distribution == "gaussian":
            heights = np.clip(0.5 + self._means / (6 * self.params.mean_std), 0.0, 1.0)
        for i, p in enumerate(heights):
            top = h - int(round(p * (h - 1)))
            colour = (230, 200, 60) if i == self._last_arm else (90, 140, 220)
            img[top:, i * w + 2 : (i + 1) * w - 2] = colour
        return img
