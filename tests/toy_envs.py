"""Tiny deterministic environments and a scripted in-context learner for checking evaluation.

Their returns can be worked out by hand, so the evaluator's tests compare against exact
numbers; they are also a quick way to see ``rl-ring eval`` wiring work end to end
(``EnvSpec(..., factory="toy_envs:CountdownEnv")`` with ``tests/`` on the Python path: pytest
puts it there, and spawned worker processes inherit the parent's path).

- :class:`CountdownEnv`: an episode lasts ``1 + reset_seed % 7`` steps unless fixed; the
  reward of step ``t`` (0-based) with action ``a`` is ``(t + 1) * (a + 1)``. It can be told
  to raise at a given step of a given episode.
- :class:`BanditEnv`: one-step episodes, the task is the paying arm (reward 1, else 0).
- :class:`ArmSearchPolicy`: plays arm 0, 1, 2, ... in successive trials until one pays,
  then keeps playing it: trial ``k`` of a row whose paying arm is ``b`` returns
  ``1 if k >= b else 0`` -- an in-context learner whose learning curve is known exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces


class ToyEnvError(RuntimeError):
    """The failure a :class:`CountdownEnv` was told to raise."""


class CountdownEnv:
    """Episodes of seed-dependent length with action-dependent rewards (see module doc).

    Args:
        task: unused (single task); accepted for the registry's signature.
        seed: constructor seed (unused: lengths depend on the reset seed only).
        length: fixed episode length instead of ``1 + reset_seed % 7``.
        fail_episode: 0-based index (counted from construction) of the episode that fails.
        fail_step: 0-based step of that episode at which ``step`` raises.
    """

    def __init__(self, task=None, seed: int = 0, *, length: int | None = None,
                 fail_episode: int | None = None, fail_step: int = 0):
        del task, seed
        self.observation_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.fixed_length = length
        self.fail_episode, self.fail_step = fail_episode, fail_step
        self.episodes = -1
        self.t = 0
        self.length = 0

    @staticmethod
    def episode_length(reset_seed: int) -> int:
        """Length of an episode started with ``reset(seed=reset_seed)`` (when not fixed)."""
        return 1 + int(reset_seed) % 7

    def _obs(self) -> np.ndarray:
        return np.array([self.t, self.length - self.t, self.length], dtype=np.float32)

    def reset(self, *, seed: int | None = None):
        if seed is None:
            raise ValueError("CountdownEnv.reset needs a seed (lengths derive from it)")
        self.episodes += 1
        self.t = 0
        self.length = self.fixed_length or self.episode_length(seed)
        return self._obs(), {}

    def step(self, action):
        if self.episodes == self.fail_episode and self.t == self.fail_step:
            raise ToyEnvError(f"toy env failure at episode {self.episodes} step {self.t}")
        reward = float((self.t + 1) * (int(action) + 1))
        self.t += 1
        return self._obs(), reward, self.t >= self.length, False, {}

    def render(self) -> np.ndarray:
        """A 4x4 RGB frame whose red channel is the step counter."""
        frame = np.zeros((4, 4, 3), dtype=np.uint8)
        frame[..., 0] = min(self.t * 20, 255)
        return frame

    def close(self) -> None:
        pass


class BanditEnv:
    """One-step episodes; arm ``task`` pays 1, every other arm 0."""

    def __init__(self, task: int = 0, seed: int = 0, *, num_arms: int = 4):
        del seed
        if not 0 <= int(task) < num_arms:
            raise ValueError(f"BanditEnv: task (paying arm) {task} not in [0, {num_arms})")
        self.task = int(task)
        self.observation_space = spaces.Box(0.0, 0.0, (1,), np.float32)
        self.action_space = spaces.Discrete(num_arms)

    def reset(self, *, seed: int | None = None):
        del seed
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action):
        return np.zeros(1, dtype=np.float32), float(int(action) == self.task), True, False, {}

    def close(self) -> None:
        pass


class ArmSearchPolicy:
    """Tries arms in order across trials, keeps the first that paid (module docstring)."""

    def __init__(self, action_space=None):
        del action_space
        self.next_arm = np.zeros(0, dtype=np.int64)
        self.found = np.zeros(0, dtype=bool)
        self.last = np.zeros(0, dtype=np.int64)

    def reset(self, num_envs: int, *, seeds: Sequence[int]) -> None:
        del seeds
        self.next_arm = np.zeros(num_envs, dtype=np.int64)
        self.found = np.zeros(num_envs, dtype=bool)
        self.last = np.zeros(num_envs, dtype=np.int64)

    def begin_trial(self, env_mask: np.ndarray) -> None:
        del env_mask  # the context (what was tried, what paid) is kept on purpose

    def act(self, obs: np.ndarray, env_mask: np.ndarray) -> np.ndarray:
        del obs
        self.last = np.where(env_mask, self.next_arm, self.last)
        return self.last.copy()

    def observe(self, reward, terminated, truncated, env_mask, *, actions=None) -> None:
        del terminated, truncated
        if actions is not None:
            self.last = np.where(env_mask, actions, self.last)
        paid = env_mask & (np.asarray(reward) > 0)
        self.found |= paid
        self.next_arm = np.where(env_mask & ~self.found, self.last + 1, self.next_arm)
        self.next_arm = np.where(paid, self.last, self.next_arm)
