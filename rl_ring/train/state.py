"""The train state as a plain pytree, and the bridge between it and an NNX model.

The trainer never keeps a live NNX module between steps: the model is split once into a
graph definition and two *pure* nested dicts of arrays (parameters, and every other model
variable), which is what the optimiser updates, what the partition rules shard and what
orbax writes. Inside the jitted step the module is rebuilt from them.

PRNG keys held by the model (e.g. a dropout stream) are stored as raw ``uint32`` key data,
so a checkpoint holds nothing but ordinary arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
ParamSpecsFn = Callable[[nnx.State, Mesh], PyTree]
"""``(abstract parameter State, mesh) -> PartitionSpecs`` shaped like the pure parameter dict.

The State holds the model's ``nnx.Param`` variables (shapes, dtypes and metadata such as the
logical axes their layers declare), so placement rules can read what the layers say.
"""


@jax.tree_util.register_dataclass
@dataclass
class TrainState:
    """Everything a training step reads and writes.

    Attributes:
        step: int32 scalar, the number of optimiser updates applied so far.
        params: pure nested dict of the model's ``nnx.Param`` arrays (float32).
        rest: pure nested dict of the model's other variables, PRNG keys as raw key data.
        opt_state: the optax state of ``params``.
        rng: ``uint32[2]`` raw key data of the training PRNG (dropout keys derive from it and
            the step, so a resumed run draws the same keys).
    """

    step: jax.Array
    params: PyTree
    rest: PyTree
    opt_state: PyTree
    rng: jax.Array


def _abstract(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), x.dtype), tree)


def _is_key(x) -> bool:
    return jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


@dataclass(frozen=True)
class ModelParts:
    """The static half of a split NNX model: graph definition and abstract variable templates."""

    graphdef: Any
    params_template: nnx.State
    rest_template: nnx.State
    key_impls: PyTree  # per rest leaf: the PRNG impl name for key leaves, None otherwise

    @classmethod
    def split(cls, model: nnx.Module) -> tuple[ModelParts, PyTree, PyTree]:
        """Splits ``model`` into (parts, pure params, pure rest with raw keys)."""
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        key_impls = jax.tree.map(
            lambda x: jax.random.key_impl(x) if _is_key(x) else None, nnx.to_pure_dict(rest)
        )
        parts = cls(graphdef, _abstract(params), _abstract(rest), key_impls)
        return parts, nnx.to_pure_dict(params), parts.raw_rest(nnx.to_pure_dict(rest))

    def raw_rest(self, rest: PyTree) -> PyTree:
        """Replaces typed PRNG keys by their raw ``uint32`` key data."""
        return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, rest)

    def _typed_rest(self, rest_raw: PyTree) -> PyTree:
        def wrap(x, impl):
            return x if impl is None else jax.random.wrap_key_data(x, impl=impl)

        return jax.tree.map(wrap, rest_raw, self.key_impls, is_leaf=lambda x: x is None)

    def merge(self, params: PyTree, rest_raw: PyTree) -> nnx.Module:
        """Rebuilds the module from pure dicts (works on tracers inside jit)."""
        p = jax.tree.map(lambda x: x, self.params_template)
        nnx.replace_by_pure_dict(p, params)
        r = jax.tree.map(lambda x: x, self.rest_template)
        if nnx.to_pure_dict(r):
            nnx.replace_by_pure_dict(r, self._typed_rest(rest_raw))
        return nnx.merge(self.graphdef, p, r)

    def rest_of(self, model: nnx.Module) -> PyTree:
        """The model's current non-parameter variables as a pure dict with raw keys."""
        _, _, rest = nnx.split(model, nnx.Param, ...)
        return self.raw_rest(nnx.to_pure_dict(rest))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def replicate_all(params: nnx.State, mesh: Mesh) -> PyTree:
    """A ``param_specs`` function that replicates every parameter."""
    return jax.tree.map(lambda _: PartitionSpec(), nnx.to_pure_dict(params))


def state_shardings(
    abstract_state: TrainState, param_specs: PyTree, tx: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """NamedShardings for every leaf of a train state.

    Parameters follow ``param_specs``; optimiser moments mirror their parameter's sharding
    (found through ``optax.tree_map_params``); everything else is replicated.
    """
    rep = replicated(mesh)
    p_sh = jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))
    o_sh = optax.tree_map_params(
        tx,
        lambda _, s: s,
        abstract_state.opt_state,
        p_sh,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )
    return TrainState(
        step=rep,
        params=p_sh,
        rest=jax.tree.map(lambda _: rep, abstract_state.rest),
        opt_state=o_sh,
        rng=rep,
    )


def init_fn(
    make_model: Callable[[nnx.Rngs], nnx.Module], tx: optax.GradientTransformation, seed: int
) -> tuple[Callable[[], TrainState], dict[str, ModelParts]]:
    """A function building the initial state, and a dict that receives the model parts.

    Call the function under ``jax.jit`` or ``jax.eval_shape``; tracing it fills
    ``parts["parts"]`` with the static half of the split model.
    """
    parts: dict[str, ModelParts] = {}

    def init() -> TrainState:
        model = make_model(nnx.Rngs(seed))
        parts["parts"], params, rest = ModelParts.split(model)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            rest=rest,
            opt_state=tx.init(params),
            # A stream distinct from the one that initialised the parameters.
            rng=jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 0x7A1)),
        )

    return init, parts


def build_state(
    make_model: Callable[[nnx.Rngs], nnx.Module],
    tx: optax.GradientTransformation,
    seed: int,
    mesh: Mesh,
    param_specs_fn: ParamSpecsFn = replicate_all,
    *,
    materialize: bool = True,
) -> tuple[TrainState, TrainState, ModelParts]:
    """Initial train state placed on ``mesh``, its shardings and the model parts.

    With ``materialize=False`` the returned state is abstract (``jax.ShapeDtypeStruct`` with
    shardings): nothing is allocated, which is what ``rl-ring plan`` compiles against.
    """
    init, parts = init_fn(make_model, tx, seed)
    abstract_state = jax.eval_shape(init)
    specs = param_specs_fn(parts["parts"].params_template, mesh)
    shardings = state_shardings(abstract_state, specs, tx, mesh)
    if not materialize:
        state = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state,
            shardings,
        )
        return state, shardings, parts["parts"]
    # Built directly in its sharded layout: no device ever holds the whole unsharded model.
    state = jax.jit(init, out_shardings=shardings)()
    return state, shardings, parts["parts"]


def tree_bytes(tree: PyTree, *, per_device: bool = True) -> int:
    """Bytes of a tree of (abstract) arrays; per device uses each leaf's shard shape."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shape = leaf.shape
        sh = getattr(leaf, "sharding", None)
        if per_device and sh is not None:
            shape = sh.shard_shape(shape)
        n = 1
        for d in shape:
            n *= int(d)
        total += n * jnp.dtype(leaf.dtype).itemsize
    return total
