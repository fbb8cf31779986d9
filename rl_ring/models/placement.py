"""Parameter placement: the logical axes the layers declare, and the one table mapping them to
mesh axes.

Every parameter of the trajectory transformer is created with the *logical* names of its axes
(``embed``, ``heads``, ``mlp``, ...; :func:`logical_init` / :func:`param`, stored as the
``out_sharding`` metadata of the ``nnx.Param``, as ``nnx.with_partitioning`` does). Only
:data:`RULES` turns those names into mesh axes (``rl_ring.sharding``), so renaming or adding a
layer cannot silently change or drop its placement: a parameter that declares no logical axes,
or names one the table lacks, is an error naming it. Scanned layers carry a leading ``layers``
axis, added by the ``nnx.vmap`` that stacks them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
from flax import nnx, traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rl_ring import sharding

# Logical axes of the model's parameters.
LAYERS = "layers"
"""The stacked-layer axis of scanned blocks."""
EMBED = "embed"
"""Model width on the residual side of a layer's weight matrix."""
HEADS = "heads"
"""Attention heads times head size (query, key, value projections)."""
MLP = "mlp"
"""Hidden width of the feed-forward block."""
RESIDUAL = "residual"
"""Model width of a bias added back to the residual stream."""
NORM = "norm"
"""Model width of a norm's scale and bias."""
FEATURES = "features"
"""Input features of one token kind."""
VOCAB = "vocab"
"""Rows of an embedding table (token kinds, timesteps)."""
IO_EMBED = "io_embed"
"""Model width at the two ends of the model: token embeddings and the action head."""
ACTION = "action"
"""Action size (or number of actions) of the action head."""

Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

# Weight matrices of the layers split their residual-side features over fsdp and their
# heads / FFN hidden over tensor; the second matmul of each pair is transposed, so activations
# between the two stay tensor-sharded. Embedding tables, per-kind input maps, the action head
# and vectors are small and stay replicated: a table sharded over its feature axis makes every
# lookup's output feature-sharded, which GSPMD can only turn into the batch/sequence sharding
# of activations by replicating it ("involuntary full rematerialization").
RULES: tuple[tuple[str, str | None], ...] = (
    (LAYERS, None),
    (EMBED, sharding.FSDP),
    (HEADS, sharding.TENSOR),
    (MLP, sharding.TENSOR),
    (RESIDUAL, None),
    (NORM, None),
    (FEATURES, None),
    (VOCAB, None),
    (IO_EMBED, None),
    (ACTION, None),
)


def logical_init(init: Callable, *axes: str) -> Callable:
    """``init`` whose parameter declares the logical ``axes`` (one name per array axis).

    Sharding is never applied at creation (``eager_sharding=False``): the model builds on
    one device without a mesh, and the trainer places parameters by :data:`RULES`.
    """
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def param(value: jax.Array, *axes: str) -> nnx.Param:
    """An ``nnx.Param`` holding ``value`` whose axes have the logical names ``axes``."""
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def param_specs(model_or_state, mesh: Mesh | None = None, *, rules: Rules = RULES) -> dict:
    """PartitionSpec of every parameter, as a pure nested dict (``nnx.to_pure_dict`` shape).

    Args:
        model_or_state: an NNX model, or the (abstract) ``nnx.State`` of its parameters with
            their metadata (what ``rl_ring.train.state.build_state`` passes).
        mesh: the mesh the specs are for; an axis whose size the mesh axis does not divide is
            left replicated. None keeps the table's mesh axes as they are.
        rules: ``(logical axis, mesh axis or None)`` pairs (default :data:`RULES`).

    Raises:
        ValueError: naming every parameter that declares no logical axes, names one the
            rules lack, or declares a different number of axes than it has.
    """
    if isinstance(model_or_state, nnx.Module):
        state = nnx.state(model_or_state, nnx.Param)
    elif isinstance(model_or_state, nnx.State):
        state = model_or_state
    else:
        raise TypeError(
            "param_specs needs an NNX model or the nnx.State of its parameters (the logical "
            f"axes are Variable metadata), got {type(model_or_state).__name__}"
        )
    table = dict(rules)
    problems: list[str] = []
    flat = {}
    for path, var in nnx.to_flat_state(state):
        if not isinstance(var, nnx.Param):
            continue
        name = "/".join(str(k) for k in path)
        shape = tuple(var.get_value().shape)
        axes = var.get_metadata().get("out_sharding")
        if not axes:
            problems.append(f"{name} {shape} declares no logical axes")
        elif len(axes) != len(shape):
            problems.append(f"{name} {shape} declares {len(axes)} logical axes {tuple(axes)}")
        elif unknown := [a for a in axes if a is not None and a not in table]:
            problems.append(f"{name} {shape} has logical axes {unknown} that no rule maps")
        else:
            spec = PartitionSpec(*(None if a is None else table[a] for a in axes))
            flat[path] = sharding.fit_spec(spec, shape, mesh)
    if problems:
        raise ValueError(
            "no placement rule matches these parameters (declare logical axes with "
            "rl_ring.models.placement.param / logical_init, mapped in placement.RULES): "
            + "; ".join(problems)
        )
    return traverse_util.unflatten_dict(flat)


def shard_model(model: nnx.Module, mesh: Mesh, *, rules: Rules = RULES) -> nnx.Module:
    """Places every parameter of ``model`` on ``mesh`` by the rules (in place).

    Returns:
        The same model, for chaining.
    """
    state = nnx.state(model, nnx.Param)
    specs = param_specs(state, mesh, rules=rules)
    shardings = jax.tree.map(
        lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )
    nnx.replace_by_pure_dict(state, jax.device_put(nnx.to_pure_dict(state), shardings))
    nnx.update(model, state)
    return model
