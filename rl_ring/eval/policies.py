"""Which policy an evaluation runs: ``random``, ``scripted:<name>`` or a checkpoint.

Each resolves to a *policy factory* ``(action_space) -> Policy``, called by the evaluator
once the environments exist (so a policy can size itself to their spaces).

- ``random``: :class:`rl_ring.eval.policy.RandomPolicy`, one random stream per row.
- ``scripted`` / ``scripted:<name>``: the env registry's scripted controller for env
  ``name`` (default: the evaluated env), ``envs.scripted.make_policy``, one per row
  (:class:`ScriptedPolicy`).
- a checkpoint directory: ``agents.eval_policy_from_checkpoint(checkpoint_dir,
  action_space=...)`` builds the trained agent behind the same protocol (its KV cache has
  one row per evaluation row). That hook belongs to the agents package; until it exists the
  error says so. ``--policy recompute`` with a checkpoint asks the hook for the policy that
  recomputes the whole context every step (``cached=False``, the oracle of the cache).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rl_ring.eval.policy import Policy, RandomPolicy, action_template

CHECKPOINT_HOOK = ("agents", "eval_policy_from_checkpoint")


class ScriptedPolicy:
    """The env registry's scripted controller of env ``name``, one instance per row.

    Row ``i`` gets ``envs.scripted.make_policy(name, action_space=..., noise=...,
    seed=seeds[i], task=tasks[i])``: its own noise stream and, for grid oracles, its own
    task. An oracle knows the task, so this is an upper baseline, not an in-context learner.
    """

    def __init__(self, name: str, action_space: Any, *, noise: float = 0.0):
        try:
            self._make = importlib.import_module("envs.scripted").make_policy
        except (ImportError, AttributeError) as err:
            raise ValueError(f"--policy scripted:{name}: envs.scripted.make_policy is not "
                             f"available ({err})") from None
        self.name, self.action_space, self.noise = name, action_space, noise
        self._tasks: list[Any] | None = None
        self._rows: list[Callable[[Any], Any]] = []

    def set_tasks(self, tasks: list[Any]) -> None:
        """Privileged hook (see :mod:`rl_ring.eval.policy`): each row's task, before reset."""
        self._tasks = list(tasks)

    def reset(self, num_envs: int, *, seeds) -> None:
        tasks = self._tasks if self._tasks is not None else [None] * num_envs
        self._rows = [
            self._make(self.name, action_space=self.action_space, noise=self.noise,
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

    def observe(self, reward, terminated, truncated, env_mask) -> None:
        del reward, terminated, truncated, env_mask


def _from_checkpoint(checkpoint: str, *, recompute: bool = False) -> Callable[[Any], Policy]:
    ckpt = Path(checkpoint)
    if not (ckpt / "checkpoints").is_dir():
        found = "no such directory" if not ckpt.exists() else "no checkpoints/ directory inside"
        raise ValueError(
            f"--checkpoint {checkpoint}: expected a training work directory holding "
            f"checkpoints/ (as written by rl-ring train), found {found}"
        )
    module, name = CHECKPOINT_HOOK
    try:
        hook = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise NotImplementedError(
            f"--checkpoint {checkpoint}: evaluating a trained agent needs "
            f"{module}.{name}(checkpoint_dir, action_space=...) -> Policy, which has not "
            "landed yet; use --policy random meanwhile"
        ) from None

    def factory(action_space: Any) -> Policy:
        if recompute:
            return hook(checkpoint, action_space=action_space, cached=False)
        return hook(checkpoint, action_space=action_space)

    return factory


def policy_factory(
    policy: str, checkpoint: str | None = None, *, env_id: str | None = None, noise: float = 0.0
) -> Callable[[Any], Policy]:
    """Resolves ``--policy`` / ``--checkpoint`` into ``(action_space) -> Policy``.

    ``scripted`` alone means ``scripted:<env_id>``; ``noise`` is the scripted policy's noise.

    Raises:
        ValueError: an unknown policy name, or both a checkpoint and a non-default policy.
    """
    if checkpoint is not None:
        if policy not in ("checkpoint", "random", "recompute"):
            raise ValueError(f"--checkpoint {checkpoint} and --policy {policy}: give one of them "
                             "(with a checkpoint, --policy may only be 'recompute')")
        return _from_checkpoint(checkpoint, recompute=policy == "recompute")
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
