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
)
from envs.scripted import make_policy, scripted_envs

__all__ = [
    "EnvInfo",
    "UnknownEnvError",
    "env_info",
    "list_envs",
    "make",
    "make_policy",
    "optimal_return",
    "scripted_envs",
    "space_dict",
    "task_split",
]
