"""Sequence samplers: EpisodeStore -> TokenBatch, one per agent's token layout.

- :class:`ChainSampler` (``ChainConfig``): chains of hindsight for the Agentic Transformer.
- :class:`DTSampler` (``DTSamplerConfig``): K-step windows for the Decision Transformer.
- :class:`BCSampler` (``BCSamplerConfig``): K-step windows of the top x% episodes (filtered BC).
- :class:`HistorySampler` (``HistoryConfig``): learning-history windows for Algorithm
  Distillation.
- :class:`DPTSampler` (``DPTSamplerConfig``): in-context datasets with optimal-action labels for
  the Decision-Pretrained Transformer.

All are deterministic functions of ``(seed, step)``, shard the global batch over hosts by
rows, resume from ``state_dict()``, and iterate (``next_batch()``, ``iter()``,
``prefetch()``). Each config is an options class (``ChainOptions``, ``WindowOptions``,
``TopWindowOptions``, ``HistoryOptions``, ``DPTOptions``: what a sequence is made of,
inherited by the agent's Config) plus the stream's ``batch_size``, ``pad_multiple`` and
``seed``. See ``docs/samplers.md``.
"""

from __future__ import annotations

from rl_ring.data.samplers.base import (
    Prefetcher,
    Sampler,
    StepPlan,
    label_array,
    ranges,
    sampler_factory,
)
from rl_ring.data.samplers.chain import ChainConfig, ChainOptions, ChainSampler
from rl_ring.data.samplers.dpt import DPTOptions, DPTSampler, DPTSamplerConfig
from rl_ring.data.samplers.histories import HistoryConfig, HistoryOptions, HistorySampler
from rl_ring.data.samplers.windows import (
    BCSampler,
    BCSamplerConfig,
    DTSampler,
    DTSamplerConfig,
    TopWindowOptions,
    WindowOptions,
    WindowSampler,
    top_percent_episodes,
)

SamplerConfig = ChainConfig | DTSamplerConfig | BCSamplerConfig | HistoryConfig | DPTSamplerConfig


__all__ = [
    "BCSampler",
    "BCSamplerConfig",
    "ChainConfig",
    "ChainOptions",
    "ChainSampler",
    "DPTSamplerConfig",
    "DPTOptions",
    "DPTSampler",
    "DTSampler",
    "DTSamplerConfig",
    "HistoryConfig",
    "HistoryOptions",
    "HistorySampler",
    "Prefetcher",
    "Sampler",
    "SamplerConfig",
    "StepPlan",
    "TopWindowOptions",
    "WindowOptions",
    "WindowSampler",
    "label_array",
    "ranges",
    "sampler_factory",
    "top_percent_episodes",
]
