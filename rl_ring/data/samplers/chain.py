"""Chain-of-hindsight sampling for the Agentic Transformer (AT).

A row is one *chain*: ``num_trajectories`` episodes of one task, sorted by return
ascending (ties by episode number), concatenated. Every trajectory's return-to-go is
relabelled to the chain's best return: at step ``t`` of trajectory ``j`` the RTG input is
``best - (reward trajectory j collected before t)``. The completion flag ``d`` is 1 at the
final step of each trajectory whose return equals the best (it reached the target) and 0
everywhere else. The action of every step is predicted from its STATE token.

Choices:

- ``loss_on="all"`` (default) trains on the actions of every trajectory of the chain: the
  worse trajectories, conditioned on a target they did not reach and on the still worse
  ones before them, are what teach the model to improve from one trial to the next, and
  they multiply the supervised tokens per row by ``num_trajectories``. ``"last"`` keeps
  only the final (best) trajectory's actions, i.e. imitation of the best given hindsight.
- Episodes longer than ``max_steps`` are cut to a window of ``max_steps`` steps (``window``:
  ``"random"`` start, ``"start"`` or ``"end"``). Returns, and so the relabelled target and
  the RTG at the window's first step, come from the *full* episode: the window is a view
  of an episode that really achieved that return. Timesteps are the true environment
  steps. The completion flag is set only if the window contains the episode's last step.
- Without replacement (default) the episodes of one chain are distinct; a task with fewer
  than ``num_trajectories`` episodes cannot supply a chain and is skipped with a warning
  (an error if no task can). With ``replace=True`` an episode may repeat inside a chain.
- Tasks are the distinct values of ``episode_extras[task_key]`` (the whole store is one
  task without it). A task is chosen per row in proportion to its number of episodes
  (``task_weighting="episodes"``) or uniformly (``"uniform"``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers.base import (
    Sampler,
    StepPlan,
    check_choice,
    check_positive,
    episode_returns_to_go,
    ranges,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import at_layout


@dataclass(frozen=True)
class ChainOptions:
    """What a chain of hindsight is made of (the AT agent's sampling options)."""

    num_trajectories: int = 4
    """Trajectories per chain (n)."""
    max_steps: int | None = None
    """Longer episodes are cut to a window of this many steps (None: never cut)."""
    window: str = "random"
    """Which window of a long episode: "random", "start" or "end"."""
    replace: bool = False
    """Allow an episode to appear more than once in a chain."""
    loss_on: str = "all"
    """Actions of "all" trajectories are targets, or only of the "last" (best) one."""
    reward_token: bool = True
    """Include the REWARD token (the paper's 4 tokens per step)."""
    done_token: bool = False
    """Put the completion flag in a separate DONE token instead of the reward token."""
    task_key: str = "task_id"
    """Per-episode extra grouping episodes into tasks (absent: one task)."""
    task_weighting: str = "episodes"
    """Choose a chain's task in proportion to its "episodes" or "uniform"ly."""


@dataclass(frozen=True)
class ChainConfig(ChainOptions):
    """Options of the chain-of-hindsight (AT) sampler: the chains', then the stream's."""

    batch_size: int = 8
    """Rows (chains) of the global batch."""
    pad_multiple: int = 1
    """Row length is padded to a multiple of this (sequence-mesh size x chunking)."""
    seed: int = 0
    """Seed of the batch stream."""


class ChainSampler(Sampler):
    """Chains of hindsight as TokenBatches (see the module docstring)."""

    name = "chain"

    def __init__(
        self,
        store: EpisodeStore,
        config: ChainConfig | None = None,
        *,
        norm: Normalization | None = None,
        host_id: int = 0,
        num_hosts: int = 1,
    ) -> None:
        cfg = config or ChainConfig()
        check_positive("num_trajectories", cfg.num_trajectories)
        if cfg.max_steps is not None:
            check_positive("max_steps", cfg.max_steps)
        check_choice("window", cfg.window, ("random", "start", "end"))
        check_choice("loss_on", cfg.loss_on, ("all", "last"))
        check_choice("task_weighting", cfg.task_weighting, ("episodes", "uniform"))
        if not cfg.reward_token and not cfg.done_token:
            warnings.warn(
                "ChainConfig: reward_token=False and done_token=False: the completion flag is "
                "not encoded",
                stacklevel=2,
            )
        norm = norm or Normalization.from_store(store)
        layout = at_layout(
            store.obs_dim,
            store.act_dim,
            store.discrete_actions,
            norm,
            reward_token=cfg.reward_token,
            done_token=cfg.done_token,
        )
        self.rtg_all = episode_returns_to_go(store)
        lengths = store.episode_lengths
        starts = store.episode_starts[:-1]
        # Returns as the RTG at each episode's first step, so "reward before t" is exactly 0
        # at t = 0 and the best trajectory keeps its own RTGs unchanged.
        self.returns = np.zeros(store.num_episodes, np.float64)
        self.returns[lengths > 0] = self.rtg_all[starts[lengths > 0]]

        nonempty = np.flatnonzero(lengths > 0)
        if cfg.task_key in store.episode_extras:
            task_of = np.asarray(store.episode_extras[cfg.task_key])[nonempty]
            labels, inverse = np.unique(task_of, return_inverse=True)
            groups = [nonempty[inverse == i] for i in range(len(labels))]
        else:
            labels, groups = np.asarray([0]), [nonempty]
        need = 1 if cfg.replace else cfg.num_trajectories
        keep = [i for i, g in enumerate(groups) if len(g) >= need]
        if not keep:
            sizes = {_label(labels[i]): len(g) for i, g in enumerate(groups)}
            raise ValueError(
                f"num_trajectories={cfg.num_trajectories} is more than any task can supply "
                f"without replacement (episodes per {cfg.task_key!r}: {sizes}); lower it or "
                "set replace=True"
            )
        if len(keep) < len(groups):
            skipped = [_label(labels[i]) for i in range(len(groups)) if i not in keep]
            warnings.warn(
                f"ChainSampler: tasks {skipped} have fewer than num_trajectories="
                f"{cfg.num_trajectories} episodes and are skipped",
                stacklevel=2,
            )
        self.task_labels = [labels[i] for i in keep]
        self.task_episodes = [groups[i] for i in keep]
        sizes = np.asarray([len(g) for g in self.task_episodes], np.float64)
        weights = sizes if cfg.task_weighting == "episodes" else np.ones_like(sizes)
        self.task_probs = weights / weights.sum()
        used = np.concatenate(self.task_episodes)
        longest = int(lengths[used].max())
        self.steps_per_trajectory = min(longest, cfg.max_steps or longest)
        super().__init__(
            store,
            cfg,
            layout,
            raw_steps=cfg.num_trajectories * self.steps_per_trajectory,
            host_id=host_id,
            num_hosts=num_hosts,
        )

    def _draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        cfg, b, n = self.config, self.batch_size, self.config.num_trajectories
        tasks = rng.choice(len(self.task_episodes), size=b, p=self.task_probs)
        episodes = np.empty((b, n), np.int64)
        for r in range(b):
            episodes[r] = rng.choice(self.task_episodes[tasks[r]], size=n, replace=cfg.replace)
        # Ascending return; ties broken by episode number so the order is deterministic.
        order = np.lexsort((episodes, self.returns[episodes]), axis=-1)
        episodes = np.take_along_axis(episodes, order, axis=-1)
        lengths = self.store.episode_lengths[episodes]
        width = np.minimum(lengths, self.steps_per_trajectory)
        slack = lengths - width
        u = rng.random((b, n))
        if cfg.window == "start":
            offset = np.zeros_like(slack)
        elif cfg.window == "end":
            offset = slack
        else:
            offset = np.minimum((u * (slack + 1)).astype(np.int64), slack)
        return {"task": tasks, "episodes": episodes, "offset": offset, "width": width}

    def _plan(self, specs: dict[str, np.ndarray], rows: np.ndarray) -> StepPlan:
        n = self.config.num_trajectories
        eps = specs["episodes"][rows]  # [R, n]
        offset, width = specs["offset"][rows], specs["width"][rows]
        ep_len = self.store.episode_lengths[eps]
        ret = self.returns[eps]
        best = ret.max(axis=1, keepdims=True)

        flat_w = width.reshape(-1)
        traj = np.repeat(np.arange(flat_w.size), flat_w)  # which (row, trajectory) per step
        idx = ranges(self.store.episode_starts[eps.reshape(-1)] + offset.reshape(-1), flat_w)
        local = np.arange(idx.size) - np.repeat(np.cumsum(flat_w) - flat_w, flat_w)
        timesteps = offset.reshape(-1)[traj] + local

        # RTG relabelled to the chain's best: best - (return - rtg) = best - reward before t.
        rtg = np.broadcast_to(best, eps.shape).reshape(-1)[traj] - (
            ret.reshape(-1)[traj] - self.rtg_all[idx]
        )
        reached = (ret == best) & (offset + width == ep_len)  # [R, n]
        last = local == flat_w[traj] - 1
        done = (last & reached.reshape(-1)[traj]).astype(np.float32)
        if self.config.loss_on == "all":
            loss = np.ones(idx.size, bool)
        else:
            loss = traj % n == n - 1
        return StepPlan(
            row_steps=width.sum(axis=1),
            idx=idx,
            timesteps=timesteps,
            segment=np.ones(idx.size, np.int32),
            loss=loss,
            rtg=rtg,
            done=done,
        )


def _label(x):
    return x.item() if isinstance(x, np.generic) else x
