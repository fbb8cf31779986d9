"""Key-to-Door: pick up an unseen key, then reach an unseen door.

The agent starts in the centre of a ``size x size`` room (9 x 9) and has ``episode_length``
steps (50) with the five grid actions of :mod:`envs.gridworld`. Rewards are given on
arrival: 1 the first time the agent steps onto the key cell, then 1 when it steps onto the
door cell while holding the key, which ends the episode (``terminated``). Walking over the
door without the key does nothing. The optimal return is 2 for every task of the 9 x 9
room (the longest route, centre -> key -> door, is 8 + 16 = 24 moves < 50).

Observation: ``(x, y, has_key)`` as float32. Task id: ``key_cell * size**2 + door_cell``
with key and door distinct cells, neither the centre: 80 * 79 = 6320 tasks in a 9 x 9 room.
The fixed split holds out 20% of the (key, door) pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs import gridworld as gw
from envs.incontext import InContextEnv
from envs.tasks import fixed_split

SPLIT_SEED = 1
TEST_FRACTION = 0.2


def task_id(key: tuple[int, int], door: tuple[int, int], *, size: int = 9) -> int:
    """Task id of a (key, door) pair of cells."""
    return gw.cell_id(*key, size) * size * size + gw.cell_id(*door, size)


def key_door(task: int, *, size: int = 9) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((key_x, key_y), (door_x, door_y))`` of a task id."""
    key, door = divmod(int(task), size * size)
    return gw.cell_xy(key, size), gw.cell_xy(door, size)


def all_task_ids(size: int = 9) -> list[int]:
    """Every (key, door) pair of distinct non-centre cells, ordered by key then door."""
    c = gw.cell_id(*gw.centre(size), size)
    cells = [i for i in range(size * size) if i != c]
    return [k * size * size + d for k in cells for d in cells if k != d]


def task_split(split: str, *, size: int = 9) -> list[int]:
    """The fixed train / test (held-out) (key, door) tasks."""
    return fixed_split(all_task_ids(size), split, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)


def optimal_return(task: int, *, size: int = 9, episode_length: int = 50) -> float:
    """Highest achievable return: key then door along shortest paths, if time allows."""
    key, door = key_door(task, size=size)
    to_key = gw.manhattan(gw.centre(size), key)
    if to_key > episode_length:
        return 0.0
    return 2.0 if to_key + gw.manhattan(key, door) <= episode_length else 1.0


def label_targets(tasks, observations, *, size: int = 9) -> np.ndarray:
    """``[N, 2]`` the cell a shortest-path label at each step heads for: the key of
    ``tasks[i]`` while ``observations[i] = (x, y, has_key)`` does not hold it, else the door."""
    tasks, obs = np.asarray(tasks, np.int64), np.asarray(observations, np.float64)
    if obs.ndim != 2 or obs.shape[1] != 3 or len(tasks) != len(obs):
        raise ValueError(f"keydoor: {len(tasks)} tasks and observations of shape {obs.shape}; "
                         "expected one (x, y, has_key) row per task")
    key, door = np.divmod(tasks, size * size)
    cell = np.where(obs[:, 2] > 0.5, door, key)
    return np.stack([cell % size, cell // size], axis=1)


class KeyDoor(InContextEnv):
    """The Key-to-Door task family as a Gymnasium env (discrete actions, 3 float observations)."""

    family = "keydoor"

    def __init__(
        self,
        task: int | None = None,
        *,
        size: int = 9,
        episode_length: int = 50,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"keydoor: size must be an odd number >= 3, got {size}")
        if episode_length < 1:
            raise ValueError(f"keydoor: episode_length must be >= 1, got {episode_length}")
        self.size = size
        self.episode_length = episode_length
        high = np.array([size - 1, size - 1, 1], dtype=np.float32)
        self.observation_space = spaces.Box(np.zeros(3, np.float32), high, dtype=np.float32)
        self.action_space = spaces.Discrete(gw.NUM_ACTIONS)
        self._pos = gw.centre(size)
        self._key = self._door = gw.centre(size)
        self._has_key = False
        self._t = 0
        super().__init__(task, seed=seed, render_mode=render_mode)

    def task_ids(self) -> list[int]:
        return all_task_ids(self.size)

    def optimal_return(self, task: int | None = None) -> float:
        """Optimal return of ``task`` (default: the current task)."""
        task = self.task if task is None else task
        if task is None:
            raise ValueError("keydoor: no task set; pass task= or reset() first")
        return optimal_return(task, size=self.size, episode_length=self.episode_length)

    def optimal_action(self, obs: np.ndarray) -> int:
        """A shortest-path action from ``obs = (x, y, has_key)``: towards the key while it is
        not held, then towards the door (x first, then y). Collectors record it next to
        every logged action."""
        if self.task is None:
            raise ValueError("keydoor: no task set; reset() first")
        o = np.asarray(obs, np.float64).reshape(-1)
        if o.shape != (3,):
            raise ValueError(f"keydoor: observation must be (x, y, has_key), got shape "
                             f"{np.shape(obs)}")
        key, door = key_door(self.task, size=self.size)
        return gw.step_towards((int(round(o[0])), int(round(o[1]))), door if o[2] > 0.5 else key)

    def label_targets(self, tasks, observations) -> np.ndarray:
        """:func:`label_targets` of this room's size: the cell a shortest-path label heads
        for at each of ``observations`` (row ``i`` on task ``tasks[i]``)."""
        return label_targets(tasks, observations, size=self.size)

    def _obs(self) -> np.ndarray:
        return np.array([self._pos[0], self._pos[1], float(self._has_key)], dtype=np.float32)

    def _reset_state(self) -> np.ndarray:
        self._key, self._door = key_door(self.task, size=self.size)
        self._pos = gw.centre(self.size)
        self._has_key = False
        self._t = 0
        return self._obs()

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._check_running()
        a = gw.check_action(action, self.family)
        self._pos = gw.move(self._pos, a, self.size)
        reward, terminated = 0.0, False
        if not self._has_key and self._pos == self._key:
            self._has_key = True
            reward = 1.0
        elif self._has_key and self._pos == self._door:
            reward, terminated = 1.0, True
        self._t += 1
        truncated = not terminated and self._t >= self.episode_length
        self._done = terminated or truncated
        return self._obs(), reward, terminated, truncated, {"task": self.task}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        marks = [(self._door, (160, 90, 40))]
        if not self._has_key:
            marks.append((self._key, (220, 200, 40)))
        marks.append((self._pos, (230, 230, 230)))
        return gw.render_grid(self.size, marks)
