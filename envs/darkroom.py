"""Dark Room: find an unseen goal cell in an empty square room.

The agent starts in the centre of a ``size x size`` room (9 x 9) and acts for
``episode_length`` steps (20) with the five grid actions of :mod:`envs.gridworld`. It only
observes its own position, ``(x, y)`` as float32 numbers in ``[0, size - 1]``; the goal
cell is the task and must be inferred from rewards.

Reward conventions (both documented in ``docs/envs.md``):

* ``darkroom`` (default): the reward of step ``t`` is 1 when the agent stands on the goal
  while it acts, i.e. when the observed cell ``o_t`` is the goal. An optimal agent walks
  the ``d`` moves to the goal and stays: return ``episode_length - d``; averaged over the
  80 non-centre goals of the 9 x 9 room this is exactly 15.5.
* ``reward_on_arrival=True``: the reward of step ``t`` is 1 when the cell reached by the
  step is the goal; the optimal return is ``episode_length - d + 1`` (mean 16.5).
* ``darkroom-hard`` (``hard=True``, 17 x 17): reward 1 only the first time the agent
  reaches the goal; the optimal return is 1 for every goal.

Task ids are cell ids ``y * size + x`` of the goal; the centre (the start) is not a goal, so
a 9 x 9 room has 80 tasks. The fixed split holds out 20% of the goals (16 of 80).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs import gridworld as gw
from envs.incontext import InContextEnv
from envs.tasks import fixed_split

SPLIT_SEED = 0
TEST_FRACTION = 0.2


def goal_ids(size: int = 9) -> list[int]:
    """Task ids of a room: every cell id except the centre."""
    c = gw.cell_id(*gw.centre(size), size)
    return [i for i in range(size * size) if i != c]


def task_split(split: str, *, size: int = 9) -> list[int]:
    """The fixed train / test (held-out) goals of a ``size x size`` room."""
    return fixed_split(goal_ids(size), split, test_fraction=TEST_FRACTION, seed=SPLIT_SEED)


def optimal_return(
    task: int,
    *,
    size: int = 9,
    episode_length: int = 20,
    hard: bool = False,
    reward_on_arrival: bool = False,
) -> float:
    """Highest achievable return for goal ``task`` (walk straight there, then stay)."""
    if int(task) not in set(goal_ids(size)):
        raise ValueError(f"darkroom: task {task} is not a goal of a {size}x{size} room")
    d = gw.manhattan(gw.centre(size), gw.cell_xy(task, size))
    if hard:
        return 1.0 if d <= episode_length else 0.0
    on_goal_steps = episode_length - d + (1 if reward_on_arrival else 0)
    return float(max(0, on_goal_steps))


def label_targets(tasks, observations, *, size: int = 9) -> np.ndarray:
    """``[N, 2]`` the cell a shortest-path label at each step heads for: the goal of
    ``tasks[i]``, from observations ``[N, 2]`` (the cells; unused beyond their count)."""
    tasks = np.asarray(tasks, np.int64)
    if len(tasks) != len(observations):
        raise ValueError(f"darkroom: {len(tasks)} tasks for {len(observations)} observations")
    return np.stack([tasks % size, tasks // size], axis=1)


class DarkRoom(InContextEnv):
    """The Dark Room task family as a Gymnasium env (discrete actions, 2 float observations)."""

    family = "darkroom"

    def __init__(
        self,
        task: int | None = None,
        *,
        size: int = 9,
        episode_length: int = 20,
        hard: bool = False,
        reward_on_arrival: bool = False,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        if size < 3 or size % 2 == 0:
            raise ValueError(f"darkroom: size must be an odd number >= 3, got {size}")
        if episode_length < 1:
            raise ValueError(f"darkroom: episode_length must be >= 1, got {episode_length}")
        self.size = size
        self.episode_length = episode_length
        self.hard = hard
        self.reward_on_arrival = reward_on_arrival or hard
        self.observation_space = spaces.Box(0.0, float(size - 1), shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(gw.NUM_ACTIONS)
        self._pos = gw.centre(size)
        self._goal = gw.centre(size)
        self._t = 0
        self._reached = False
        super().__init__(task, seed=seed, render_mode=render_mode)

    def task_ids(self) -> list[int]:
        return goal_ids(self.size)

    @property
    def goal(self) -> tuple[int, int]:
        """``(x, y)`` of the current goal (known after reset)."""
        return self._goal

    def optimal_return(self, task: int | None = None) -> float:
        """Optimal return of ``task`` (default: the current task) under this env's rules."""
        task = self.task if task is None else task
        if task is None:
            raise ValueError("darkroom: no task set; pass task= or reset() first")
        return optimal_return(
            task,
            size=self.size,
            episode_length=self.episode_length,
            hard=self.hard,
            reward_on_arrival=self.reward_on_arrival,
        )

    def optimal_action(self, obs: np.ndarray) -> int:
        """A shortest-path action from the observed cell ``obs = (x, y)`` to the goal of the
        current task (x first, then y; the no-op on the goal, where staying is optimal under
        every reward convention). Collectors record it next to every logged action."""
        if self.task is None:
            raise ValueError("darkroom: no task set; reset() first")
        return gw.step_towards(_cell(obs, 2, self.family), gw.cell_xy(self.task, self.size))

    def label_targets(self, tasks, observations) -> np.ndarray:
        """:func:`label_targets` of this room's size: the cell a shortest-path label heads
        for at each of ``observations`` (row ``i`` on task ``tasks[i]``)."""
        return label_targets(tasks, observations, size=self.size)

    def _obs(self) -> np.ndarray:
        return np.array(self._pos, dtype=np.float32)

    def _reset_state(self) -> np.ndarray:
        self._goal = gw.cell_xy(self.task, self.size)
        self._pos = gw.centre(self.size)
        self._t = 0
        self._reached = False
        return self._obs()

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._check_running()
        a = gw.check_action(action, self.family)
        before = self._pos
        self._pos = gw.move(self._pos, a, self.size)
        if self.hard:
            reward = 1.0 if (self._pos == self._goal and not self._reached) else 0.0
            self._reached = self._reached or self._pos == self._goal
        elif self.reward_on_arrival:
            reward = 1.0 if self._pos == self._goal else 0.0
        else:
            reward = 1.0 if before == self._goal else 0.0
        self._t += 1
        truncated = self._t >= self.episode_length
        self._done = truncated
        return self._obs(), reward, False, truncated, {"task": self.task}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        marks = [(self._goal, (40, 160, 40)), (self._pos, (230, 230, 230))]
        return gw.render_grid(self.size, marks)


def _cell(obs, dim: int, family: str) -> tuple[int, int]:
    """``(x, y)`` of an observation whose first two entries are the cell."""
    o = np.asarray(obs, np.float64).reshape(-1)
    if o.shape != (dim,):
        raise ValueError(f"{family}: observation must have {dim} entries, got shape "
                         f"{np.shape(obs)}")
    return int(round(o[0])), int(round(o[1]))
