"""Which environment each evaluation row runs, with which task and which seeds.

An :class:`EnvSpec` is a small picklable description (an id, an optional task, keyword
arguments, an optional ``"module:callable"`` factory) so that worker processes can build
their own environments. :func:`make_env` turns it into a Gymnasium-style environment:

- an explicit ``factory`` is imported and called with ``(task=..., seed=..., **kwargs)``;
- an rl_ring id goes to ``envs.make(env_id, task=..., seed=..., **kwargs)``
  (``dmc:cartpole-swingup``, ``gym:Hopper-v5``, ``darkroom``, ...);
- an id the registry does not know is handed to ``gymnasium.make`` (``CartPole-v1``).

Seeds are derived, never chosen by position in a worker: row ``i`` of evaluation seed ``s``
is built with ``env_seed(s, i)`` and its trial ``k`` starts with
``env.reset(seed=episode_seed(s, i, k))``. Both are
``np.random.SeedSequence([s, i, k, tag]).generate_state(1)[0] % 2**31`` (tag 0 for episodes,
1 for the constructor, 2 for the policy row), so a result never depends on how rows were
spread over processes.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

_EPISODE_TAG, _ENV_TAG, _POLICY_TAG = 0, 1, 2


class Env(Protocol):
    """The environment interface the evaluator drives (Gymnasium's)."""

    action_space: Any
    observation_space: Any

    def reset(self, *, seed: int | None = None) -> tuple[Any, dict]: ...

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class EnvSpec:
    """A picklable recipe for one evaluation environment."""

    env_id: str
    """Registry id (``envs.make``) or Gymnasium id."""
    task: Any = None
    """Task passed to ``envs.make`` (e.g. a Dark Room goal); ``None`` for single-task envs."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the constructor (e.g. ``render_mode``)."""
    factory: str | None = None
    """Optional ``"module:callable"`` used instead of the registries."""


def _derive(seed: int, env_index: int, trial: int, tag: int) -> int:
    for name, value in (("seed", seed), ("env_index", env_index), ("trial", trial)):
        if int(value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    state = np.random.SeedSequence([int(seed), int(env_index), int(trial), tag]).generate_state(1)
    return int(state[0] % 2**31)


def episode_seed(seed: int, env_index: int, trial: int) -> int:
    """Seed passed to ``env.reset`` at the start of trial ``trial`` of row ``env_index``."""
    return _derive(seed, env_index, trial, _EPISODE_TAG)


def env_seed(seed: int, env_index: int) -> int:
    """Seed passed to the environment constructor of row ``env_index``."""
    return _derive(seed, env_index, 0, _ENV_TAG)


def policy_seed(seed: int, env_index: int) -> int:
    """Seed of the policy's random stream for row ``env_index`` (sampling, exploration)."""
    return _derive(seed, env_index, 0, _POLICY_TAG)


def _registry():
    """The project's env registry, or None while it is not importable/has no ``make``."""
    try:
        mod = importlib.import_module("envs")
    except ImportError:
        return None
    return mod if hasattr(mod, "make") else None


def _unknown_id_error() -> type[BaseException]:
    reg = _registry()
    err = getattr(reg, "UnknownEnvError", None) if reg is not None else None
    return err if isinstance(err, type) else _NeverRaised


class _NeverRaised(Exception):
    """Stands in for the registry's unknown-id error while there is no registry."""


def headless_gl_default() -> None:
    """Uses EGL for MuJoCo rendering when there is no display, unless MUJOCO_GL is set.

    Must run before dm_control is imported (it picks its GL backend on import); without it a
    headless machine prints GLFW display warnings and cannot render videos.
    """
    if "DISPLAY" not in os.environ:
        os.environ.setdefault("MUJOCO_GL", "egl")


def import_callable(path: str):
    """Imports ``"package.module:name"``; errors name the path."""
    module, sep, name = path.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"factory {path!r}: expected 'module:callable'")
    try:
        obj = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"factory {path!r}: cannot import ({err})") from None
    return obj


def make_env(spec: EnvSpec, seed: int) -> Env:
    """Builds the environment described by ``spec`` (see module docstring for the order)."""
    if spec.factory is not None:
        return import_callable(spec.factory)(task=spec.task, seed=seed, **spec.kwargs)
    reg = _registry()
    if reg is not None:
        try:
            return reg.make(spec.env_id, task=spec.task, seed=seed, **spec.kwargs)
        except _unknown_id_error() as err:
            registry_error = str(err)
    else:
        registry_error = "the rl_ring env registry (envs.make) is not available"
    import gymnasium

    if spec.env_id not in gymnasium.registry:
        raise ValueError(
            f"env {spec.env_id!r}: not in the rl_ring registry ({registry_error}) "
            "nor in gymnasium.registry"
        )
    if spec.task is not None:
        raise ValueError(f"env {spec.env_id!r}: a Gymnasium env takes no task, got {spec.task!r}")
    env = gymnasium.make(spec.env_id, **spec.kwargs)
    env.action_space.seed(seed)
    return env


def env_tasks(env_id: str, split: str | None) -> list[Any]:
    """Tasks to evaluate on: ``envs.task_split(env_id, split)``, or ``[None]`` if single-task.

    Args:
        env_id: the environment id.
        split: ``"train"``, ``"test"`` or ``None`` (no task: single-task environments).
    """
    if split is None:
        return [None]
    if split not in ("train", "test"):
        raise ValueError(f"task split must be 'train', 'test' or None, got {split!r}")
    reg = _registry()
    task_split = getattr(reg, "task_split", None) if reg is not None else None
    if task_split is None:
        return [None]
    try:
        tasks = list(task_split(env_id, split))
    except ValueError:  # single-task env (or unknown id, which make_env reports clearly)
        return [None]
    return tasks or [None]


def assign_tasks(tasks: Sequence[Any], seed_index: int, num_envs: int) -> list[Any]:
    """Row ``i`` of the ``seed_index``-th seed gets ``tasks[(seed_index*num_envs + i) % len]``.

    Rows of successive seeds continue through the task list, so with enough seeds every
    held-out task is evaluated.
    """
    if not tasks:
        raise ValueError("assign_tasks: empty task list")
    n = len(tasks)
    return [tasks[(seed_index * num_envs + i) % n] for i in range(num_envs)]
