"""Learning histories: a source learner trained from scratch on one task, every episode kept.

History ``h`` runs on task ``tasks[h % len(tasks)]`` with a fresh learner, for
``episodes_per_history`` consecutive episodes. Every episode carries the per-episode extras
``history_id``, ``task_id``, ``episode_in_history`` and ``policy_noise`` (the learner's
exploration level during that episode), which is what Algorithm Distillation's samplers need
to cut contexts out of one history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from envs.learners.bandits import learner_for
from envs.learners.grid import NoiseSchedule, NoisyOracle, PosteriorSampling
from envs.learners.qlearning import QLearner, QLearningConfig
from envs.recording import episode_seed, run_episode
from envs.registry import make, space_dict, task_split
from rl_ring.data import EpisodeStore

LEARNERS = ("qlearning", "ucb", "thompson", "noisy_oracle", "posterior", "optimistic")
SHADOWS = ("posterior-aligned", "optimistic-aligned")
"""Grid learners that only label another policy's moves (DAgger's shadows,
:mod:`envs.learners.dagger`): :class:`envs.learners.grid.PosteriorSampling` with
``aligned=True``."""
POSTERIOR_LEARNERS = ("posterior", "optimistic", *SHADOWS)
"""The names :class:`envs.learners.grid.PosteriorSampling` plays."""


class Learner(Protocol):
    epsilon: float

    def act(self, obs: np.ndarray) -> int: ...

    def update(self, obs, action, reward, next_obs, terminated, truncated) -> None: ...

    def end_episode(self) -> None: ...


def make_learner(
    name: str,
    num_actions: int,
    episodes: int,
    seed: int,
    qlearning: QLearningConfig | None = None,
    *,
    env_id: str | None = None,
    task: int | None = None,
    noise: NoiseSchedule | None = None,
    memory: int = 0,
) -> Learner:
    """A fresh source learner by name (see :data:`LEARNERS`; or a shadow, :data:`SHADOWS`).

    ``noisy_oracle`` and :data:`POSTERIOR_LEARNERS` (:mod:`envs.learners.grid`) need
    ``env_id``; the oracle also the ``task``. ``noise`` is their random-action schedule
    (default: the oracle's 1 -> 0 over half the history, none for the other two).
    ``memory`` (episodes, 0: all): posterior sampling that forgets older episodes.
    """
    if memory and name not in POSTERIOR_LEARNERS:
        raise ValueError(f"learner {name!r}: memory={memory} is for posterior sampling "
                         f"(posterior, optimistic and their aligned shadows)")
    if name == "qlearning":
        return QLearner(num_actions, episodes, qlearning or QLearningConfig(), seed)
    if name in ("ucb", "thompson"):
        # The family's reward distribution picks Beta-Bernoulli or Gaussian Thompson sampling.
        params = _bandit_params(env_id, num_actions)
        return learner_for(name, num_actions, seed, params)
    if name in ("noisy_oracle", *POSTERIOR_LEARNERS) and env_id is None:
        raise ValueError(f"learner {name!r} needs env_id")
    if name == "noisy_oracle":
        if task is None:
            raise ValueError("learner 'noisy_oracle' knows its task: pass task=")
        return NoisyOracle(env_id, task, num_actions, episodes, seed, noise)
    if name in POSTERIOR_LEARNERS:
        return PosteriorSampling(env_id, num_actions, episodes, seed, noise,
                                 nearest=name.startswith("optimistic"),
                                 aligned=name in SHADOWS, memory=memory)
    raise ValueError(f"unknown learner {name!r}; expected one of {LEARNERS + SHADOWS}")


def _bandit_params(env_id: str | None, num_actions: int):
    """The :class:`envs.bandit.BanditParams` of a bandit env id (default: Bernoulli arms)."""
    from envs.bandit import BanditParams
    from envs.registry import IN_CONTEXT

    family = IN_CONTEXT.get(env_id) if env_id else None
    kwargs = dict(family.kwargs) if family is not None else {}
    kwargs.setdefault("arms", num_actions)
    return BanditParams(**kwargs)


def collect_histories(
    env_id: str,
    learner: str,
    *,
    tasks: str | Sequence[int] = "train",
    episodes_per_history: int = 100,
    histories: int | None = None,
    seed: int = 0,
    qlearning: QLearningConfig | None = None,
    progress: Callable[[int], None] | None = None,
    noise: NoiseSchedule | None = None,
) -> EpisodeStore:
    """Learning histories of ``learner`` on the tasks of an in-context env.

    Args:
        env_id: an in-context family ("darkroom", "keydoor", "bandit", ...).
        learner: one of :data:`LEARNERS`.
        tasks: a split name ("train", "test", "all") or explicit task ids.
        episodes_per_history: episodes of each history.
        histories: number of histories (default: one per task).
        seed: run seed; history ``h`` derives its env and learner seeds from it.
        qlearning: Q-learning hyperparameters.
        progress: called with the number of episodes just finished (a progress bar).
        noise: random-action schedule of the grid learners (``noisy_oracle``, ``posterior``,
            ``optimistic``).

    Returns:
        The episodes of all histories, history after history, with per-episode extras
        ``history_id``, ``task_id``, ``episode_in_history``, ``policy_noise``; the grid
        learners (which know which action they chose before their noise) add the per-step
        extra ``intended_actions``, equal to ``actions`` on the steps without noise.
    """
    task_ids = task_split(env_id, tasks) if isinstance(tasks, str) else [int(t) for t in tasks]
    if not task_ids:
        raise ValueError(f"{env_id}: no tasks to collect histories on")
    if episodes_per_history < 1:
        raise ValueError(f"episodes_per_history must be >= 1, got {episodes_per_history}")
    n_hist = len(task_ids) if histories is None else int(histories)
    if n_hist < 1:
        raise ValueError(f"histories must be >= 1, got {n_hist}")
    episodes, extras = [], {k: [] for k in ("history_id", "task_id", "episode_in_history")}
    extras["policy_noise"] = []
    env = make(env_id)
    try:
        for h in range(n_hist):
            task = task_ids[h % len(task_ids)]
            agent = make_learner(
                learner,
                env.action_space.n,
                episodes_per_history,
                episode_seed(seed, h, tag=2),
                qlearning,
                env_id=env_id,
                task=task,
                noise=noise,
            )
            records_intent = hasattr(agent, "intended")  # the grid learners
            for e in range(episodes_per_history):
                eps = float(agent.epsilon)
                intended: list[int] = []
                act = agent.act
                if records_intent:
                    def act(obs, agent=agent, intended=intended):
                        action = agent.act(obs)
                        intended.append(agent.intended)
                        return action
                ep = run_episode(
                    env,
                    act,
                    seed=episode_seed(seed, h * episodes_per_history + e),
                    options={"task": task},
                    learn=agent.update,
                )
                if records_intent:
                    ep["intended_actions"] = np.asarray(intended, np.int64)
                agent.end_episode()
                episodes.append(ep)
                for key, value in (
                    ("history_id", h),
                    ("task_id", task),
                    ("episode_in_history", e),
                    ("policy_noise", eps),
                ):
                    extras[key].append(value)
                if progress is not None:
                    progress(1)
    finally:
        env.close()
    ep_extras = {k: np.asarray(v, dtype=np.int64) for k, v in extras.items() if k != "policy_noise"}
    ep_extras["policy_noise"] = np.asarray(extras["policy_noise"], dtype=np.float32)
    return EpisodeStore.from_episodes(
        episodes,
        episode_extras=ep_extras,
        metadata={
            "env_id": env_id,
            "policy": learner,
            "seed": seed,
            "action_space": space_dict(env.action_space),
            "observation_space": space_dict(env.observation_space),
            "episodes_per_history": episodes_per_history,
            "histories": n_hist,
            **({} if noise is None else {"noise": dataclasses.asdict(noise)}),
        },
    )


def learning_curve(store: EpisodeStore) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard error of the return at each ``episode_in_history`` over histories.

    Returns:
        ``(mean [E], sem [E])`` float64 with ``E`` the longest history.
    """
    if "episode_in_history" not in store.episode_extras:
        raise ValueError("learning_curve: the store has no 'episode_in_history' episode extra")
    idx = np.asarray(store.episode_extras["episode_in_history"], dtype=np.int64)
    ret = store.episode_returns
    n = int(idx.max()) + 1
    count = np.bincount(idx, minlength=n).astype(np.float64)
    mean = np.bincount(idx, weights=ret, minlength=n) / count
    sq = np.bincount(idx, weights=ret**2, minlength=n) / count
    sem = np.sqrt(np.maximum(sq - mean**2, 0.0) / np.maximum(count - 1, 1))
    return mean, sem


def source_learning_curve(
    env_id: str = "darkroom",
    learner: str = "qlearning",
    *,
    tasks: str | Sequence[int] = "train",
    episodes_per_history: int = 100,
    seed: int = 0,
    qlearning: QLearningConfig | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The source learner's learning curve (mean return vs episode) on an in-context family.

    Runs one history per task and returns :func:`learning_curve` of it: the curve the
    Algorithm Distillation reproduction plots next to the distilled agent's in-context curve.
    """
    store = collect_histories(
        env_id,
        learner,
        tasks=tasks,
        episodes_per_history=episodes_per_history,
        seed=seed,
        qlearning=qlearning,
    )
    return learning_curve(store)
