"""Windows of K steps within one episode: Decision Transformer and filtered BC (BC-x%).

A window starts at a step drawn uniformly over all steps of the eligible episodes (so an
episode is chosen in proportion to its length) and runs for ``context_steps`` steps or
until the episode ends, whichever is first: windows never cross an episode boundary, and
windows that start near an episode's end are shorter than K. Every step of a window is a
target (its action is predicted from its STATE token).

Short windows are *right*-padded: the window's tokens come first and padding (``valid``
False, never in the loss) fills the rest of its slot. Under a causal mask with the padding
masked as keys this gives each real token exactly the context that left padding gives,
and it lets several windows share one row: with ``pack > 1`` a row holds ``pack`` windows
back to back, each its own segment (``segment_ids`` 1..pack, padding 0), so that short
contexts fill a long sequence-parallel row instead of one row each.

DT tokens are (RTG, STATE, ACTION) with the undiscounted return-to-go of
:func:`rl_ring.data.returns_to_go`. Filtered BC keeps the top ``top_percent`` % of
episodes by return, ``ceil(top_percent / 100 * num_episodes)`` of them (at least one),
ties broken towards the lower episode number, and uses (STATE, ACTION) or STATE tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers.base import (
    Sampler,
    StepPlan,
    check_positive,
    episode_returns_to_go,
    ranges,
)
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, bc_layout, dt_layout


@dataclass(frozen=True)
class WindowOptions:
    """What a Decision Transformer window is made of (the DT agent's sampling options)."""

    context_steps: int = 20
    """Steps per window (K)."""
    pack: int = 1
    """Windows per row, each its own segment."""


@dataclass(frozen=True)
class TopWindowOptions(WindowOptions):
    """What a filtered-BC window is made of (the BC agent's sampling options); a
    ``context_steps`` of 1 gives plain per-state behaviour cloning."""

    top_percent: float = 10.0
    """Keep the episodes whose return is in the top x percent (by count of episodes)."""
    state_only: bool = False
    """STATE tokens only (no ACTION inputs)."""


@dataclass(frozen=True)
class DTSamplerConfig(WindowOptions):
    """Options of the Decision Transformer window sampler: the windows', then the stream's."""

    batch_size: int = 64
    """Rows of the global batch."""
    pad_multiple: int = 1
    """Row length is padded to a multiple of this (sequence-mesh size x chunking)."""
    seed: int = 0
    """Seed of the batch stream."""


@dataclass(frozen=True)
class BCSamplerConfig(TopWindowOptions):
    """Options of the filtered behaviour-cloning (BC-x%) window sampler: the windows', then
    the stream's."""

    batch_size: int = 64
    """Rows of the global batch."""
    pad_multiple: int = 1
    """Row length is padded to a multiple of this (sequence-mesh size x chunking)."""
    seed: int = 0
    """Seed of the batch stream."""


def top_percent_episodes(returns: np.ndarray, percent: float) -> np.ndarray:
    """Episode numbers of the top ``percent`` % by return, best first.

    Keeps ``ceil(percent / 100 * E)`` episodes (at least one); among equal returns the lower
    episode number ranks higher, so the choice is deterministic.
    """
    returns = np.asarray(returns, np.float64)
    if not 0 < percent <= 100:
        raise ValueError(f"top_percent must be in (0, 100], got {percent!r}")
    if returns.size == 0:
        raise ValueError("top_percent_episodes: no episodes")
    # A small slack so that e.g. 10% of 30 episodes is exactly 3, not 4 by rounding error.
    count = max(1, math.ceil(percent / 100.0 * returns.size - 1e-9))
    order = np.lexsort((np.arange(returns.size), -returns))
    return order[:count]


class WindowSampler(Sampler):
    """Windows of K steps from a subset of episodes, encoded with a given layout."""

    name = "windows"

    def __init__(
        self,
        store: EpisodeStore,
        config: DTSamplerConfig | BCSamplerConfig,
        layout: TokenLayout,
        episodes: np.ndarray,
        *,
        host_id: int = 0,
        num_hosts: int = 1,
    ) -> None:
        check_positive("context_steps", config.context_steps)
        check_positive("pack", config.pack)
        lengths = store.episode_lengths
        episodes = np.asarray(episodes, np.int64)
        episodes = episodes[lengths[episodes] > 0]
        if episodes.size == 0:
            raise ValueError(f"{self.name}: no non-empty episodes to sample from")
        longest = int(lengths[episodes].max())
        if config.context_steps > longest:
            raise ValueError(
                f"context_steps={config.context_steps} is larger than every episode sampled "
                f"from (the longest of {episodes.size} has {longest} steps)"
            )
        self.episodes = episodes
        self.rtg_all = episode_returns_to_go(store) if "rtg" in layout.required_fields() else None
        # Cumulative step counts of the eligible episodes: a uniform step -> (episode, offset).
        self._cum = np.cumsum(lengths[episodes])
        super().__init__(
            store,
            config,
            layout,
            raw_steps=config.pack * config.context_steps,
            host_id=host_id,
            num_hosts=num_hosts,
        )

    def _draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        b, p = self.batch_size, self.config.pack
        flat = rng.integers(0, int(self._cum[-1]), size=(b, p))
        which = np.searchsorted(self._cum, flat, side="right")
        offset = flat - (self._cum[which] - self.store.episode_lengths[self.episodes[which]])
        return {"episode": self.episodes[which], "offset": offset}

    def _plan(self, specs: dict[str, np.ndarray], rows: np.ndarray) -> StepPlan:
        k_steps = self.config.context_steps
        eps, offset = specs["episode"][rows], specs["offset"][rows]  # [R, pack]
        width = np.minimum(k_steps, self.store.episode_lengths[eps] - offset)
        flat_w = width.reshape(-1)
        idx = ranges(self.store.episode_starts[eps.reshape(-1)] + offset.reshape(-1), flat_w)
        win = np.repeat(np.arange(flat_w.size), flat_w)
        local = np.arange(idx.size) - np.repeat(np.cumsum(flat_w) - flat_w, flat_w)
        segment = win % self.config.pack + 1
        return StepPlan(
            row_steps=width.sum(axis=1),
            idx=idx,
            timesteps=offset.reshape(-1)[win] + local,
            segment=segment,
            loss=np.ones(idx.size, bool),
            rtg=None if self.rtg_all is None else self.rtg_all[idx],
            done=np.zeros(idx.size, np.float32),
        )


class DTSampler(WindowSampler):
    """Decision Transformer windows: (RTG, STATE, ACTION) over every episode."""

    name = "dt"

    def __init__(
        self,
        store: EpisodeStore,
        config: DTSamplerConfig | None = None,
        *,
        norm: Normalization | None = None,
        host_id: int = 0,
        num_hosts: int = 1,
    ) -> None:
        config = config or DTSamplerConfig()
        norm = norm or Normalization.from_store(store)
        layout = dt_layout(store.obs_dim, store.act_dim, store.discrete_actions, norm)
        super().__init__(
            store,
            config,
            layout,
            np.arange(store.num_episodes),
            host_id=host_id,
            num_hosts=num_hosts,
        )


class BCSampler(WindowSampler):
    """Filtered behaviour cloning: windows over the top ``top_percent`` % of episodes."""

    name = "bc"

    def __init__(
        self,
        store: EpisodeStore,
        config: BCSamplerConfig | None = None,
        *,
        norm: Normalization | None = None,
        host_id: int = 0,
        num_hosts: int = 1,
    ) -> None:
        config = config or BCSamplerConfig()
        norm = norm or Normalization.from_store(store)
        layout = bc_layout(
            store.obs_dim, store.act_dim, store.discrete_actions, norm, state_only=config.state_only
        )
        self.selected = top_percent_episodes(store.episode_returns, config.top_percent)
        super().__init__(
            store,
            config,
            layout,
            np.sort(self.selected),
            host_id=host_id,
            num_hosts=num_hosts,
        )
