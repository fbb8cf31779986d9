"""The env registry wired into ``rl_ring.eval``: env factories, task lists, scripted policies.

``rl_ring.eval`` never looks an env up by name; what it needs is passed in::

    from envs.evaluation import baseline_policy, env_factory, eval_tasks
    from rl_ring.eval import EvalConfig, evaluate

    cfg = EvalConfig(env="darkroom", out="runs/eval", policy="scripted")
    report = evaluate(cfg, make_env=env_factory(cfg.env),
                      tasks=eval_tasks(cfg.env, cfg.task_split, cfg.num_tasks),
                      policy=baseline_policy(cfg.policy, cfg.env, noise=cfg.policy_noise))

(``rl-ring eval`` does exactly this, plus trained checkpoints from ``agents``.)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from envs.registry import UnknownEnvError, _parse, make, task_split, task_subset
from envs.scripted import make_policy
from rl_ring.eval.policy import Policy, RandomPolicy, action_template


def env_factory(env_id: str) -> Callable[..., Any] | None:
    """``make(env_id, task=..., seed=..., **kwargs)`` as a picklable factory for registry ids;
    ``None`` for a plain Gymnasium id (``CartPole-v1``, which ``rl_ring.eval`` builds itself).

    Raises:
        ValueError: an id neither the registry nor Gymnasium knows (with close matches).
    """
    try:
        _parse(env_id)
    except UnknownEnvError as err:
        import gymnasium

        if env_id in gymnasium.registry:
            return None
        raise ValueError(f"env {env_id!r}: not in the rl_ring registry ({err}) "
                         "nor in gymnasium.registry") from None
    return functools.partial(make, env_id)


def episode_steps(env_id: str) -> int | None:
    """An episode's length (its time limit) in the registry or Gymnasium, if it has one."""
    try:
        _parse(env_id)
    except UnknownEnvError:
        import gymnasium

        spec = gymnasium.registry.get(env_id)
        return None if spec is None else spec.max_episode_steps
    from envs.registry import env_info

    return env_info(env_id).max_episode_steps


def eval_tasks(env_id: str, split: str | None, num_tasks: int = 0) -> list[Any]:
    """The tasks evaluation rows cycle through: ``task_split(env_id, split)`` for an in-context
    family, ``[None]`` for a single-task env, an id the registry does not know, or no split.

    Args:
        env_id: the environment id.
        split: ``"train"``, ``"test"``, or ``None`` / ``"none"`` (no task: single-task envs),
            as ``EvalConfig.task_split`` holds it.
        num_tasks: only the first ``num_tasks`` tasks of the split's fixed shuffle, sorted
            (:func:`envs.registry.task_subset`, the subset the experiments' ``--eval-tasks``
            plays); 0: the whole split in its order.

    Raises:
        ValueError: a bad split, or ``num_tasks`` < 0, larger than the split, or given for
            an env without tasks.
    """
    if num_tasks < 0:
        raise ValueError(f"--num-tasks {num_tasks}: expected >= 0 (0: every task of the split)")
    if split is None or split == "none":
        if num_tasks:
            raise ValueError(f"--num-tasks {num_tasks} with --task-split none: a subset of "
                             f"tasks needs a split (train or test)")
        return [None]
    if split not in ("train", "test"):
        raise ValueError(f"task split must be 'train', 'test' or None, got {split!r}")
    try:
        family, _ = _parse(env_id)
    except (UnknownEnvError, TypeError):
        family = None
    if family != "in-context":
        if num_tasks:
            raise ValueError(f"--num-tasks {num_tasks}: {env_id} has no tasks to choose from "
                             f"(only the in-context families have)")
        return [None]
    if num_tasks:
        return task_subset(env_id, split, num_tasks)
    return list(task_split(env_id, split)) or [None]


class ScriptedPolicy:
    """The env registry's scripted controller of env ``name``, one instance per row.

    Row ``i`` gets ``make_policy(name, action_space=..., noise=..., seed=seeds[i],
    task=tasks[i])``: its own noise stream and, for grid oracles, its own task. An oracle
    knows the task, so this is an upper baseline, not an in-context learner.
    """

    def __init__(self, name: str, action_space: Any, *, noise: float = 0.0):
        self.name, self.action_space, self.noise = name, action_space, noise
        self._tasks: list[Any] | None = None
        self._rows: list[Callable[[Any], Any]] = []

    def set_tasks(self, tasks: list[Any]) -> None:
        """Privileged hook (see :mod:`rl_ring.eval.policy`): each row's task, before reset."""
        self._tasks = list(tasks)

    def reset(self, num_envs: int, *, seeds) -> None:
        tasks = self._tasks if self._tasks is not None else [None] * num_envs
        self._rows = [
            make_policy(self.name, action_space=self.action_space, noise=self.noise,
                        seed=int(seeds[i]), task=tasks[i])
            for i in range(num_envs)
        ]

    def begin_trial(self, env_mask) -> None:
        del env_mask

    def act(self, obs, env_mask):
        out = action_template(self.action_space, len(self._rows))
        for i in np.flatnonzero(env_mask):
            out[i] = self._rows[i](obs[i])
        return out

    def observe(self, reward, terminated, truncated, env_mask, *, actions=None) -> None:
        del reward, terminated, truncated, env_mask, actions


def baseline_policy(policy: str, env_id: str | None = None, *,
                    noise: float = 0.0) -> Callable[[Any], Policy]:
    """``--policy`` without a checkpoint as ``(action_space) -> Policy``: ``random``, or
    ``scripted`` / ``scripted:<env id>`` (``scripted`` alone means the evaluated env's).

    Raises:
        ValueError: any other name.
    """
    if policy == "random":
        return RandomPolicy
    if policy == "scripted" and env_id is not None:
        policy = f"scripted:{env_id}"
    if policy.startswith("scripted:") and len(policy) > len("scripted:"):
        name = policy.split(":", 1)[1]
        return lambda action_space: ScriptedPolicy(name, action_space, noise=noise)
    raise ValueError(
        f"--policy {policy!r}: expected 'random', 'scripted:<name>' or a --checkpoint DIR"
    )
