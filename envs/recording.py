"""Running one episode and recording it in the EpisodeStore conventions.

Row ``t`` of a recorded episode is ``(observations[t], actions[t], rewards[t])``; the
observation after the step is ``next_observations[t]``; ``terminals[t]`` / ``timeouts[t]``
say how the episode ended after row ``t``. dm_control envs (those whose ``info`` carries
``"physics"``) add ``physics`` (state at observation time), ``next_physics`` (state after the
step) and ``discount``; Gymnasium MuJoCo envs add ``infos/qpos`` and ``infos/qvel`` at
observation time, as D4RL stores them. Envs that know the optimal action of a state (the
in-context families' ``optimal_action(obs)``: a bandit's best arm, a grid's shortest-path
move) add ``optimal_actions``: row ``t`` is the optimal action at ``observations[t]``, next
to the logged ``actions[t]`` (the labels of the Decision-Pretrained Transformer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

#: ``learn(obs, action, reward, next_obs, terminated, truncated)``: a learner's per-step hook.
LearnFn = Callable[[np.ndarray, Any, float, np.ndarray, bool, bool], None]


def episode_seed(seed: int, index: int, tag: int = 0) -> int:
    """Seed of episode ``index`` of a collection run seeded ``seed`` (``tag`` separates streams:
    0 for env resets, 1 for policy noise, 2 for learners)."""
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    state = np.random.SeedSequence([int(seed), int(index), int(tag)]).generate_state(1)
    return int(state[0] % 2**31)


def _mujoco_data(env: gym.Env):
    data = getattr(env.unwrapped, "data", None)
    return data if data is not None and hasattr(data, "qpos") and hasattr(data, "qvel") else None


def run_episode(
    env: gym.Env,
    act: Callable[[np.ndarray], Any],
    *,
    seed: int | None,
    options: dict[str, Any] | None = None,
    learn: LearnFn | None = None,
) -> dict[str, np.ndarray]:
    """Runs ``act`` in ``env`` from ``reset(seed=seed)`` to the end of the episode.

    Args:
        env: a Gymnasium env that ends its episodes (time limit or termination).
        act: ``obs -> action``.
        seed: reset seed.
        options: reset options (e.g. ``{"task": t}``).
        learn: called after every step with the transition (online learners).

    Returns:
        Per-step arrays of the episode (see the module docstring), ready for
        ``EpisodeStore.from_episodes``.
    """
    obs, info = env.reset(seed=seed, options=options)
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    mj = _mujoco_data(env)
    rows: dict[str, list] = {
        k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")
    }
    rows["next_observations"] = []
    with_physics = "physics" in info
    if with_physics:
        rows.update(physics=[], next_physics=[], discount=[])
        physics = info["physics"]
    if mj is not None:
        rows.update({"infos/qpos": [], "infos/qvel": []})
    optimal = getattr(env.unwrapped, "optimal_action", None)
    if optimal is not None:
        rows["optimal_actions"] = []
    while True:
        if mj is not None:
            rows["infos/qpos"].append(np.array(mj.qpos, dtype=np.float64))
            rows["infos/qvel"].append(np.array(mj.qvel, dtype=np.float64))
        if optimal is not None:  # before the step: the label of the observed state
            rows["optimal_actions"].append(int(optimal(obs)))
        action = act(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        rows["observations"].append(np.asarray(obs, dtype=np.float32))
        rows["actions"].append(int(action) if discrete else np.asarray(action, np.float32))
        rows["rewards"].append(float(reward))
        rows["terminals"].append(bool(terminated))
        rows["timeouts"].append(bool(truncated and not terminated))
        rows["next_observations"].append(np.asarray(next_obs, dtype=np.float32))
        if with_physics:
            rows["physics"].append(physics)
            physics = info["physics"]
            rows["next_physics"].append(physics)
            rows["discount"].append(float(info["discount"]))
        if learn is not None:
            learn(obs, action, float(reward), next_obs, bool(terminated), bool(truncated))
        if terminated or truncated:
            break
        obs = next_obs
    out = {k: np.asarray(v) for k, v in rows.items()}
    out["actions"] = out["actions"].astype(np.int64 if discrete else np.float32)
    out["rewards"] = out["rewards"].astype(np.float32)
    if optimal is not None:
        out["optimal_actions"] = out["optimal_actions"].astype(np.int64)
    if with_physics:
        out["discount"] = out["discount"].astype(np.float32)
    return out
