"""Which environment each evaluation row runs, with which task and which seeds.

An :class:`EnvSpec` is a small picklable description (an id, an optional task, keyword
arguments, a factory) so that worker processes can build their own environments.
:func:`make_env` turns it into a Gymnasium-style environment:

- a ``factory`` passed in by the caller (``rl-ring eval`` gives the env registry's ``make``
  bound to the id, or the user's ``--env-factory``) is called as
  ``factory(task=..., seed=..., **kwargs)``;
- without one, ``env_id`` must be a Gymnasium id (``CartPole-v1``) and goes to
  ``gymnasium.make``.

The evaluation never looks an environment up by name itself: what builds it is passed in.

Seeds are derived, never chosen by position in a worker: row ``i`` of evaluation seed ``s``
is built with ``env_seed(s, i)`` and its trial ``k`` starts with
``env.reset(seed=episode_seed(s, i, k))``. Both are
``np.random.SeedSequence([s, i, k, tag]).generate_state(1)[0] % 2**31`` (tag 0 for episodes,
1 for the constructor, 2 for the policy row), so a result never depends on how rows were
spread over processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
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
    """The env's id (reports, errors); built by ``gymnasium.make`` when there is no factory."""
    task: Any = None
    """Task passed to the factory (e.g. a Dark Room goal); ``None`` for single-task envs."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the constructor (e.g. ``render_mode``)."""
    factory: Callable[..., Env] | None = None
    """Builds the env as ``factory(task=..., seed=..., **kwargs)``. Worker processes get it
    pickled, so it must be a module-level function or class (or a ``functools.partial`` of
    one); ``None``: ``env_id`` is a Gymnasium id."""


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


def headless_gl_default() -> None:
    """Uses EGL for MuJoCo rendering when there is no display, unless MUJOCO_GL is set.

    Must run before dm_control is imported (it picks its GL backend on import); without it a
    headless machine prints GLFW display warnings and cannot render videos.
    """
    if "DISPLAY" in os.environ or "MUJOCO_GL" in os.environ:
        return
    import ctypes.util

    # EGL renders offscreen where its library exists; elsewhere rendering is switched off
    # (physics, collection and relabelling need none; a video then fails with its reason).
    os.environ["MUJOCO_GL"] = "egl" if ctypes.util.find_library("EGL") else "disable"


def make_env(spec: EnvSpec, seed: int) -> Env:
    """Builds the environment described by ``spec`` (see module docstring for the order)."""
    if spec.factory is not None:
        return spec.factory(task=spec.task, seed=seed, **spec.kwargs)
    import gymnasium

    if spec.env_id not in gymnasium.registry:
        raise ValueError(
            f"env {spec.env_id!r}: not in gymnasium.registry, and no factory builds it "
            "(EnvSpec(factory=...); rl-ring eval passes the env registry's, or --env-factory)"
        )
    if spec.task is not None:
        raise ValueError(f"env {spec.env_id!r}: a Gymnasium env takes no task, got {spec.task!r}")
    env = gymnasium.make(spec.env_id, **spec.kwargs)
    env.action_space.seed(seed)
    return env


def assign_tasks(tasks: Sequence[Any], seed_index: int, num_envs: int) -> list[Any]:
    """Row ``i`` of the ``seed_index``-th seed gets ``tasks[(seed_index*num_envs + i) % len]``.

    Rows of successive seeds continue through the task list, so with enough seeds every
    held-out task is evaluated.
    """
    if not tasks:
        raise ValueError("assign_tasks: empty task list")
    n = len(tasks)
    return [tasks[(seed_index * num_envs + i) % n] for i in range(num_envs)]
