"""Offline data: EpisodeStore, readers and writers (D4RL, ExoRL, Minari, XLand), samplers."""

from rl_ring.data.batch import Kind, TokenBatch
from rl_ring.data.d4rl import read_d4rl, write_d4rl
from rl_ring.data.exorl import read_exorl, write_exorl
from rl_ring.data.formats import DatasetError, detect_format, load
from rl_ring.data.minari import read_minari, write_minari
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import (
    BCSamplerConfig,
    ChainConfig,
    DPTSamplerConfig,
    DTSamplerConfig,
    HistoryConfig,
)
from rl_ring.data.scores import has_reference, normalized_score
from rl_ring.data.store import EpisodeStore, returns_to_go
from rl_ring.data.tokens import TokenLayout
from rl_ring.data.xland import XLandDataset, XLandGroup, XLandWriter, write_xland

__all__ = ["EpisodeStore", "Kind", "TokenBatch", "returns_to_go"]
__all__ += [
    "BCSamplerConfig",
    "ChainConfig",
    "DPTSamplerConfig",
    "DTSamplerConfig",
    "HistoryConfig",
    "Normalization",
    "TokenLayout",
]
__all__ += [
    "DatasetError",
    "detect_format",
    "has_reference",
    "load",
    "normalized_score",
    "read_d4rl",
    "read_exorl",
    "read_minari",
    "write_d4rl",
    "write_exorl",
    "write_minari",
    "write_xland",
    "XLandDataset",
    "XLandGroup",
    "XLandWriter",
]
