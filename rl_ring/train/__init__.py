"""Training: the sharded loop, train state, optimiser, orbax checkpoints, metrics.

``train(cfg)`` trains an agent on a dataset; ``load_checkpoint(workdir)`` gives evaluation
the trained model; ``run(recipe, cfg)`` is the agent-agnostic loop underneath.
"""

from rl_ring.train.api import (
    LoadedCheckpoint,
    agent_recipe,
    checkpoint_meta,
    load_checkpoint,
    resolve_config,
    saved_config,
    train,
)
from rl_ring.train.config import TrainConfig
from rl_ring.train.loop import NonFiniteError, TrainResult, run
from rl_ring.train.optim import OptimConfig
from rl_ring.train.recipe import Recipe

__all__ = [
    "LoadedCheckpoint",
    "NonFiniteError",
    "OptimConfig",
    "Recipe",
    "TrainConfig",
    "TrainResult",
    "agent_recipe",
    "checkpoint_meta",
    "load_checkpoint",
    "resolve_config",
    "run",
    "saved_config",
    "train",
]
