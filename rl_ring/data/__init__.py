"""Offline data: EpisodeStore, readers and writers (D4RL, ExoRL, Minari), samplers."""

from rl_ring.data.batch import Kind, TokenBatch
from rl_ring.data.store import EpisodeStore, returns_to_go

__all__ = ["EpisodeStore", "Kind", "TokenBatch", "returns_to_go"]
