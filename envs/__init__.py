"""Environments of rl_ring: one registry for dm_control (ExoRL layout), Gymnasium MuJoCo and
the in-context task families (Dark Room, Key-to-Door, bandits), plus the behaviour policies
and source learners the collectors (``rl-ring collect``) use.

    import envs
    env = envs.make("darkroom", task=envs.task_split("darkroom", "test")[0], seed=0)
    obs, info = env.reset()
"""

from envs.registry import (
    EnvInfo,
    UnknownEnvError,
    env_info,
    list_envs,
    make,
    optimal_return,
    space_dict,
    task_split,
    task_subset,
)
from envs.scripted import make_policy, scripted_envs


def source_learning_curve(*args, **kwargs):
    """The source learner's learning curve, ``(mean, sem)`` per episode of a history.

    See :func:`envs.learners.history.source_learning_curve` (imported on first use).
    """
    from envs.learners.history import source_learning_curve as curve

    return curve(*args, **kwargs)


def load_dataset(path, *, task: str | None = None, **options):
    """``rl_ring.data.load`` with the reward relabeller wired in: ``task=`` relabels an ExoRL
    buffer for any task of its domain. See :func:`envs.relabel.load_dataset`."""
    from envs.relabel import load_dataset as load

    return load(path, task=task, **options)


__all__ = [
    "EnvInfo",
    "UnknownEnvError",
    "env_info",
    "list_envs",
    "load_dataset",
    "make",
    "make_policy",
    "optimal_return",
    "scripted_envs",
    "source_learning_curve",
    "space_dict",
    "task_split",
    "task_subset",
]
