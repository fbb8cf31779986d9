"""Sequence samplers: EpisodeStore -> TokenBatch, one per agent's token layout.

- :class:`ChainSampler` (``ChainConfig``): chains of hindsight for the Agentic Transformer.
- :class:`DTSampler` (``DTConfig``): K-step windows for the Decision Transformer.
- :class:`BCSampler` (``BCConfig``): K-step windows of the top x% episodes (filtered BC).
- :class:`HistorySampler` (``HistoryConfig``): learning-history windows for Algorithm
  Distillation.

All are deterministic functions of ``(seed, step)``, shard the global batch over hosts by
rows, resume from ``state_dict()``, and iterate (``next_batch()``, ``iter()``,
``prefetch()``). See ``docs/samplers.md``.
"""

from __future__ import annotations

from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers.base import Prefetcher, Sampler, StepPlan, ranges
from rl_ring.data.samplers.chain import ChainConfig, ChainSampler
from rl_ring.data.samplers.histories import HistoryConfig, HistorySampler
from rl_ring.data.samplers.windows import (
    BCConfig,
    BCSampler,
    DTConfig,
    DTSampler,
    WindowSampler,
    top_percent_episodes,
)
from rl_ring.data.store import EpisodeStore

SamplerConfig = ChainConfig | DTConfig | BCConfig | HistoryConfig

_BY_CONFIG = {
    ChainConfig: ChainSampler,
    DTConfig: DTSampler,
    BCConfig: BCSampler,
    HistoryConfig: HistorySampler,
}


def make_sampler(
    store: EpisodeStore,
    config: SamplerConfig,
    *,
    norm: Normalization | None = None,
    host_id: int = 0,
    num_hosts: int = 1,
) -> Sampler:
    """The sampler for a config (its type picks the sampler)."""
    cls = _BY_CONFIG.get(type(config))
    if cls is None:
        raise ValueError(
            f"make_sampler: config of type {type(config).__name__} is not one of "
            f"{[c.__name__ for c in _BY_CONFIG]}"
        )
    return cls(store, config, norm=norm, host_id=host_id, num_hosts=num_hosts)


__all__ = [
    "BCConfig",
    "BCSampler",
    "ChainConfig",
    "ChainSampler",
    "DTConfig",
    "DTSampler",
    "HistoryConfig",
    "HistorySampler",
    "Prefetcher",
    "Sampler",
    "SamplerConfig",
    "StepPlan",
    "WindowSampler",
    "make_sampler",
    "ranges",
    "top_percent_episodes",
]
