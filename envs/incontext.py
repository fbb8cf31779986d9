"""Base class of the in-context tasks: a family of small MDPs indexed by an integer task id.

An in-context agent is meant to discover the task (the goal cell, the key and door, the
arm means) from rewards within its context, so the task is never part of the observation.
The task is chosen at construction (``task=``), changed with :meth:`set_task`, or passed per
episode with ``reset(options={"task": t})``; with no task set, every reset draws one
uniformly from all task ids with the env's seeded generator.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np


class InContextEnv(gym.Env):
    """A task family. Subclasses define :meth:`task_ids`, ``_reset_state`` and ``step``."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}

    #: Name used in error messages.
    family: str = "in-context env"

    def __init__(self, task: int | None, *, seed: int | None, render_mode: str | None) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"{self.family}: render_mode must be one of {self.metadata['render_modes']} "
                f"or None, got {render_mode!r}"
            )
        self.render_mode = render_mode
        self._valid_tasks = frozenset(self.task_ids())
        self._fixed_task: int | None = None
        self.task: int | None = None
        if task is not None:
            self.set_task(task)
        # The first reset() without a seed uses the construction seed, so make(..., seed=s)
        # followed by reset() is reproducible.
        self._pending_seed = seed
        self._done = True

    def task_ids(self) -> list[int]:
        """Every valid task id of this family, in a fixed order."""
        raise NotImplementedError

    def set_task(self, task: int | None) -> None:
        """Fixes the task for the following episodes (None: draw one at each reset)."""
        if task is not None:
            task = int(task)
            if task not in self._valid_tasks:
                ids = sorted(self._valid_tasks)
                raise ValueError(
                    f"{self.family}: task {task} is not a valid task id "
                    f"({len(ids)} ids from {ids[0]} to {ids[-1]}; see task_ids())"
                )
        self._fixed_task = task
        self.task = task

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is None and self._pending_seed is not None:
            seed = self._pending_seed
        self._pending_seed = None
        super().reset(seed=seed)
        options = dict(options or {})
        if "task" in options:
            self.set_task(options.pop("task"))
        if options:
            raise ValueError(f"{self.family}: unknown reset options {sorted(options)}")
        if self._fixed_task is None:
            ids = sorted(self._valid_tasks)
            self.task = int(ids[int(self.np_random.integers(len(ids)))])
        else:
            self.task = self._fixed_task
        self._done = False
        obs = self._reset_state()
        return obs, {"task": self.task}

    def _reset_state(self) -> np.ndarray:
        raise NotImplementedError

    def _check_running(self) -> None:
        if self._done:
            raise RuntimeError(f"{self.family}: step() called before reset() or after the end")
