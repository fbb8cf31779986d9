"""The trajectory transformer shared by every agent, its loss and its parameter placement."""

from rl_ring.models.config import ModelConfig, default_token_features
from rl_ring.models.losses import action_loss
from rl_ring.models.partition import param_shardings, param_specs, shard_model
from rl_ring.models.transformer import TrajectoryTransformer, check_tokens

__all__ = [
    "ModelConfig",
    "TrajectoryTransformer",
    "action_loss",
    "check_tokens",
    "default_token_features",
    "param_shardings",
    "param_specs",
    "shard_model",
]
