"""Offline data: EpisodeStore, readers and writers (D4RL, ExoRL, Minari), samplers."""

from rl_ring.data.batch import Kind, TokenBatch
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import (
    BCConfig,
    ChainConfig,
    DTConfig,
    HistoryConfig,
    make_sampler,
)
from rl_ring.data.store import EpisodeStore, returns_to_go
from rl_ring.data.tokens import TokenLayout

__all__ = ["EpisodeStore", "Kind", "TokenBatch", "returns_to_go"]
__all__ += [
    "BCConfig",
    "ChainConfig",
    "DTConfig",
    "HistoryConfig",
    "Normalization",
    "TokenLayout",
    "make_sampler",
]
