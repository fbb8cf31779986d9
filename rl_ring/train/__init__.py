"""Training: the sharded loop over a Recipe, train state, optimiser, orbax checkpoints, metrics.

``run(recipe, cfg)`` trains whatever model, loss and sampler a :class:`Recipe` bundles; it
never knows which agent it runs (``agents.run.train(cfg)`` builds the recipe of an agent).
``restore_model(workdir, make_model)`` and ``checkpoint_meta(workdir)`` read a run back.
"""

from rl_ring.train.checkpoint import Checkpointer, checkpoint_meta, restore_model
from rl_ring.train.config import TrainConfig
from rl_ring.train.loop import NonFiniteError, TrainResult, run
from rl_ring.train.optim import OptimConfig
from rl_ring.train.recipe import Recipe

__all__ = [
    "Checkpointer",
    "NonFiniteError",
    "OptimConfig",
    "Recipe",
    "TrainConfig",
    "TrainResult",
    "checkpoint_meta",
    "restore_model",
    "run",
]
