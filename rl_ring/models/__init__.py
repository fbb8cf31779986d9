"""The trajectory transformer shared by every agent, its loss, its parameter placement and its
KV-cached decoding."""

from rl_ring.models.config import ModelConfig, default_token_features
from rl_ring.models.decode import Decoder, KVCache, decode, init_cache, prefill
from rl_ring.models.losses import action_loss, model_action_loss
from rl_ring.models.placement import param_specs, shard_model
from rl_ring.models.transformer import TrajectoryTransformer, check_tokens, model_factory

__all__ = [
    "Decoder",
    "KVCache",
    "ModelConfig",
    "TrajectoryTransformer",
    "action_loss",
    "model_action_loss",
    "model_factory",
    "check_tokens",
    "decode",
    "default_token_features",
    "init_cache",
    "param_specs",
    "prefill",
    "shard_model",
]
