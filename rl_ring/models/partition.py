"""Parameter placement for the trajectory transformer on a device mesh.

The rules live in ``rl_ring.sharding.MODEL_RULES``; this module applies them to a model's
state. A parameter that no rule matches is an error naming it.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from rl_ring import sharding


def param_specs(model: nnx.Module, mesh: Mesh | None = None, *, rules=None):
    """PartitionSpec of every variable of ``model``, as a tree shaped like ``nnx.state(model)``.

    Args:
        model: the model (e.g. a :class:`~rl_ring.models.TrajectoryTransformer`).
        mesh: the mesh the specs are meant for; an axis that the mesh axis does not divide
            is left replicated. None keeps the rules' specs as written.
        rules: partition rules (default ``rl_ring.sharding.MODEL_RULES``).

    Raises:
        ValueError: naming every variable that no rule matches.
    """
    rules = sharding.MODEL_RULES if rules is None else rules
    return sharding.match_partition_rules(rules, nnx.state(model), mesh=mesh)


def param_shardings(model: nnx.Module, mesh: Mesh, *, rules=None):
    """``NamedSharding`` of every variable of ``model`` (tree shaped like ``nnx.state(model)``)."""
    specs = param_specs(model, mesh, rules=rules)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


def shard_model(model: nnx.Module, mesh: Mesh, *, rules=None) -> nnx.Module:
    """Places every variable of ``model`` on ``mesh`` by the partition rules (in place).

    Returns:
        The same model, for chaining.
    """
    state = nnx.state(model)
    shardings = param_shardings(model, mesh, rules=rules)
    nnx.update(model, jax.device_put(state, shardings))
    return model
