"""The jitted training step: loss, gradients, clipping and the AdamW update, state donated."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from rl_ring.train.state import ModelParts, TrainState, replicated

LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """The jnp dtype for a compute-dtype name; ValueError naming the choices otherwise."""
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={name!r}: expected one of {sorted(COMPUTE_DTYPES)}")
    return COMPUTE_DTYPES[name]


def _cast_floats(tree, dtype):
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def make_step_fn(
    parts: ModelParts,
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    mesh: Mesh | None,
    dtype: str = "float32",
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The pure (un-jitted) step ``(state, tokens) -> (new_state, metrics)``.

    Parameters stay float32; with ``dtype="bfloat16"`` they are cast on entry to the loss, so
    the forward and backward run in bfloat16 and the gradients arrive back in float32.

    Metrics: ``loss``, ``grad_norm`` (before clipping), ``lr`` (the rate this update used)
    and whatever the loss function reports.
    """
    cdt = compute_dtype(dtype)

    def step(state: TrainState, tokens: dict[str, jax.Array]):
        key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)

        def loss_of(params):
            p = params if cdt == jnp.float32 else _cast_floats(params, cdt)
            model = parts.merge(p, state.rest)
            loss, metrics = loss_fn(model, tokens, mesh=mesh, rngs=nnx.Rngs(dropout=key))
            return loss.astype(jnp.float32), (metrics, parts.rest_of(model))

        (loss, (metrics, rest)), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out: dict[str, Any] = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        out.update(loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step))
        new_state = TrainState(
            step=state.step + 1, params=params, rest=rest, opt_state=opt_state, rng=state.rng
        )
        return new_state, out

    return step


def jit_step(
    step: Callable, state_shardings: TrainState, batch_shardings: dict, mesh: Mesh
) -> Callable:
    """Jits ``step`` with explicit shardings; the incoming state's buffers are donated.

    Inputs the loss never reads (e.g. ``target_ids`` for continuous actions) stay arguments
    of the executable: they are on the device anyway, and the compiled memory analysis then
    accounts for every buffer of the step.
    """
    return jax.jit(
        step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, replicated(mesh)),
        donate_argnums=(0,),
        keep_unused=True,
    )
