"""Ulysses (DeepSpeed) context parallelism: trade the sequence split for a head split.

Inside ``jax.shard_map`` over the sequence axis each of the ``n`` devices holds ``T/n``
tokens of every head. One all-to-all turns q/k/v from sequence-sharded
``[b, T/n, h, d]`` into head-sharded ``[b, T, h/n, d]``; each device then runs the
single-device blockwise kernel (:func:`rl_ring.attention.blockwise_attention`, so the
kernel chosen by ``AttentionOptions`` applies) over the whole sequence for its heads, and a
second all-to-all brings the output back to ``[b, T/n, h, d]``. The token info (global
positions, segment ids, validity) is all-gathered: it is small (``[b, T]`` per field).

Every device attends all ``T`` queries of its heads, so causal work is balanced whatever
the layout; a layout only reorders the sequence (masks use global positions), and under
zigzag the dispatcher caps chunks at ``T / 2n`` so chunk skipping works as for contiguous.

Heads: the query heads must divide by ``n``. The K/V heads are split too; when they do not
divide by ``n`` (grouped K/V with fewer K/V heads than devices) each K/V head is repeated
``r = n / gcd(kv_heads, n)`` times first, the fewest copies whose count ``n`` divides (``r``
always divides the group size when ``n`` divides the query heads); the repeat's gradient
sums the copies back. Gradients need no custom rule: the transpose of an all-to-all is
the reverse all-to-all, and the blockwise kernel has its own VJP.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from rl_ring.attention.blockwise import blockwise_attention
from rl_ring.attention.options import AttentionOptions, check_qkv, resolve_options
from rl_ring.attention.ring import axis_size, local_positions


def kv_repeats(heads: int, kv_heads: int, num_devices: int) -> int:
    """Copies of each K/V head so that the K/V heads split evenly over ``num_devices``.

    Raises:
        ValueError: the query heads do not divide by ``num_devices``.
    """
    if heads % num_devices != 0:
        raise ValueError(
            f"ulysses attention splits heads over the {num_devices} devices of the sequence "
            f"axis: the {heads} query heads (per device of any tensor axis) must be divisible "
            f"by {num_devices}; use impl='ring' or 'allgather', or a head count that "
            f"{num_devices} divides"
        )
    return num_devices // math.gcd(kv_heads, num_devices)


def seq_to_heads(x: jnp.ndarray, axis: str) -> jnp.ndarray:
    """``[b, T/n, h, d]`` sequence-sharded -> ``[b, T, h/n, d]`` head-sharded (layout order)."""
    return lax.all_to_all(x, axis, split_axis=2, concat_axis=1, tiled=True)


def heads_to_seq(x: jnp.ndarray, axis: str) -> jnp.ndarray:
    """Inverse of :func:`seq_to_heads`."""
    return lax.all_to_all(x, axis, split_axis=1, concat_axis=2, tiled=True)


def ulysses_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    causal: bool = False,
    segment_ids: jnp.ndarray | None = None,
    tokens_per_step: int = 1,
    positions: jnp.ndarray | None = None,
    kv_mask: jnp.ndarray | None = None,
    options: AttentionOptions | None = None,
    **option_overrides,
) -> jnp.ndarray:
    """Ulysses attention over this device's block; call inside ``jax.shard_map``.

    Same contract as :func:`rl_ring.attention.ring_attention` (local shards along
    ``options.axis_name``, global positions / segment ids / validity).

    Args:
        q: ``[batch, block, heads, head_dim]`` local queries; ``heads`` divisible by the
            axis size.
        k, v: ``[batch, block, kv_heads, head_dim]`` local keys / values.
        causal: (block-)causal mask from global positions.
        segment_ids: ``[batch, block]`` int segment ids of the local tokens.
        tokens_per_step: tokens of one step that see each other under ``causal``.
        positions: ``[batch, block]`` global positions of the local tokens (default: the
            contiguous layout).
        kv_mask: ``[batch, block]`` bool, False for padding keys.
        options: chunk sizes etc. for the blockwise kernel over the whole sequence.
        **option_overrides: fields of AttentionOptions to override.

    Returns:
        ``[batch, block, heads, head_dim]`` local output in the dtype of ``q``.

    Raises:
        ValueError: the query heads do not divide by the axis size, or not inside
            ``shard_map`` over the axis.
    """
    options = resolve_options(options, option_overrides)
    b, t, h, hk, _ = check_qkv(
        q, k, v, segment_ids=segment_ids, positions=positions, kv_mask=kv_mask,
        tokens_per_step=tokens_per_step,
    )
    axis = options.axis_name
    n = axis_size(axis, "ulysses_attention")
    reps = kv_repeats(h, hk, n)
    if reps > 1:
        k, v = jnp.repeat(k, reps, axis=2), jnp.repeat(v, reps, axis=2)
    if positions is None:
        positions = local_positions(b, t, axis)
    gather = lambda x: None if x is None else lax.all_gather(x, axis, axis=1, tiled=True)
    kv = seq_to_heads(jnp.stack([k, v], axis=1).reshape(b, 2 * t, *k.shape[2:]), axis)
    # [b, 2t, hk', d] -> [b, n*2t, hk'/n, d]: each source device's 2t rows are its k then v.
    kv = kv.reshape(b, n, 2, t, *kv.shape[2:])
    k_all = kv[:, :, 0].reshape(b, n * t, *kv.shape[4:])
    v_all = kv[:, :, 1].reshape(b, n * t, *kv.shape[4:])
    out = blockwise_attention(
        seq_to_heads(q, axis), k_all, v_all, causal=causal, segment_ids=gather(segment_ids),
        tokens_per_step=tokens_per_step, positions=gather(jnp.asarray(positions, jnp.int32)),
        kv_mask=gather(kv_mask), options=options,
    )
    return heads_to_seq(out, axis)
