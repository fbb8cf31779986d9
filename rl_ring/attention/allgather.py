"""All-gather context parallelism: every device gathers the whole K/V, keeps its own queries.

The scheme of Llama 3 and MaxText's context parallelism. Inside ``jax.shard_map`` over the
sequence axis each of the ``n`` devices holds a block of ``T/n`` queries, keys and values.
It all-gathers the K/V blocks (and their token info: global positions, segment ids,
validity) over the axis and attends its local queries to the whole sequence with the
blockwise kernel (``blockwise.block_forward``), so the masks see global positions whatever
the layout. Under a causal mask, a zigzag (or striped) layout balances the work as it does
for the ring: with chunk skipping a contiguous device ``d`` computes ``d + 1`` blocks.

Against the ring: one collective instead of ``n - 1`` hops (less latency, nothing to
pipeline), but the gathered K/V (``2 T kv_heads head_dim`` elements) lives on every device,
so memory grows with ``T`` rather than ``T/n``; with grouped K/V heads that copy is small.

Gradients (custom VJP): the forward saves only the *local* K/V block; the backward gathers
K/V again, computes float32 dK/dV for the whole sequence, and reduce-scatters them
(``lax.psum_scatter``) so that each device receives the sum over all query blocks for its
own block. JAX's autodiff of ``all_gather`` would do the same reduce-scatter, but would keep
the gathered K/V as a residual of every layer until the backward and sum the partial dK/dV
in the input dtype; recomputing the gather costs one more all-gather in the backward.

Overlap of the gather with compute is left to XLA: the gather is issued once, up front, and
on GPU/TPU the asynchronous collective can run under independent work the scheduler finds
(e.g. the query projection); it is not split into pieces here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from rl_ring.attention import chunks as C
from rl_ring.attention import kernels as K
from rl_ring.attention.blockwise import (
    block_backward,
    block_forward,
    chunk_len,
    finish_dq,
    from_chunks,
    init_state,
    kernel_config,
    output_delta,
    prepare_keys,
    prepare_queries,
    scaled_queries,
    token_info,
    zero_count,
    zero_dq_t,
)
from rl_ring.attention.masks import TokenInfo
from rl_ring.attention.options import AttentionOptions, check_qkv, resolve_options
from rl_ring.attention.ring import axis_size, local_positions, pack_info, unpack_info


def gather_kv(kv: jnp.ndarray, k_info: TokenInfo, axis: str) -> tuple[jnp.ndarray, TokenInfo]:
    """All-gathers chunked K/V ``[2, nk, b, hk, k_chunk, d]`` and their token info
    ``[nk, b, k_chunk]`` along the chunk axis: ``n * nk`` chunks in device order.

    Each device's block is chunked (and padded) before the gather, so no chunk straddles
    two devices' blocks and a padded tail stays marked invalid.
    """
    kv_all = lax.all_gather(kv, axis, axis=1, tiled=True)
    packed = lax.all_gather(pack_info(k_info), axis, axis=1, tiled=True)
    return kv_all, unpack_info(packed, k_info)


def allgather_forward(q, kv, q_info, k_info, cfg):
    """Forward over chunked local blocks; returns ``(out, lse, computed chunk pairs)``."""
    kv_all, info_all = gather_kv(kv, k_info, cfg.axis_name)
    state, count = init_state(q, kv_all), zero_count(q, kv_all)
    state, count = block_forward(
        scaled_queries(q, cfg), kv_all[0], kv_all[1], q_info, info_all, state, count, cfg
    )
    out, lse = C.finalize(state)
    return out.astype(q.dtype), lse, count


def allgather_backward(q, kv, out, lse, do, q_info, k_info, cfg):
    """Backward over chunked local blocks; returns ``(dq, dkv of the local block, count)``."""
    kv_all, info_all = gather_kv(kv, k_info, cfg.axis_name)
    dq_t, dkv_all, count = block_backward(
        scaled_queries(q, cfg), kv_all[0], kv_all[1], do, C.backward_lse(lse),
        output_delta(out, do), q_info, info_all, zero_dq_t(q, kv_all), zero_count(q, kv_all),
        cfg,
    )
    # Every device holds partial dK/dV for the whole sequence: sum them, keep our block.
    dkv = lax.psum_scatter(dkv_all, cfg.axis_name, scatter_dimension=1, tiled=True)
    return finish_dq(dq_t, cfg, q.dtype), dkv.astype(kv.dtype), count


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _allgather_chunked(q, kv, q_info, k_info, cfg):
    return allgather_forward(q, kv, q_info, k_info, cfg)[0]


def _allgather_chunked_fwd(q, kv, q_info, k_info, cfg):
    # As in ring.py: ties the masks' inputs to q/k/v so that a scan over layers cannot hoist
    # every chunk pair's mask out of the loop.
    q, kv, q_info, k_info = lax.optimization_barrier((q, kv, q_info, k_info))
    out, lse, _ = allgather_forward(q, kv, q_info, k_info, cfg)
    return out, (q, kv, out, lse, q_info, k_info)


def _allgather_chunked_bwd(cfg, res, do):
    q, kv, out, lse, q_info, k_info = res
    dq, dkv, _ = allgather_backward(q, kv, out, lse, do, q_info, k_info, cfg)
    return dq, dkv, None, None


_allgather_chunked.defvjp(_allgather_chunked_fwd, _allgather_chunked_bwd)


# ----------------------------------------------------------------------------------------
# The same with the fused Pallas kernels (AttentionOptions.kernel="pallas"): the local
# queries against the gathered K/V in one pair call (the kernels take tq != tk).
# ----------------------------------------------------------------------------------------


def _gather_pallas(kv: jnp.ndarray, k_info: TokenInfo, axis: str):
    """``[2, b, hk, t, d]`` K/V and ``[b, t]`` info gathered along the sequence axis."""
    kv_all = lax.all_gather(kv, axis, axis=3, tiled=True)
    info_all = TokenInfo(*(
        None if a is None else lax.all_gather(a, axis, axis=1, tiled=True) for a in k_info
    ))
    return kv_all, info_all


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _allgather_pallas(q, kv, q_info, k_info, spec):
    kv_all, info_all = _gather_pallas(kv, k_info, spec.axis_name)
    return K.forward(spec, q, kv_all[0], kv_all[1], q_info, info_all)[0].astype(q.dtype)


def _allgather_pallas_fwd(q, kv, q_info, k_info, spec):
    kv_all, info_all = _gather_pallas(kv, k_info, spec.axis_name)
    out, lse = K.forward(spec, q, kv_all[0], kv_all[1], q_info, info_all)
    out = out.astype(q.dtype)
    return out, (q, kv, out, lse, q_info, k_info)


def _allgather_pallas_bwd(spec, res, do):
    q, kv, out, lse, q_info, k_info = res
    kv_all, info_all = _gather_pallas(kv, k_info, spec.axis_name)
    dq, dk, dv = K.backward(
        spec, q, kv_all[0], kv_all[1], do, lse, output_delta(out, do), q_info, info_all
    )
    # Every device holds partial dK/dV for the whole sequence: sum them, keep our block.
    dkv = lax.psum_scatter(jnp.stack([dk, dv]), spec.axis_name, scatter_dimension=3, tiled=True)
    return dq.astype(q.dtype), dkv.astype(kv.dtype), None, None


_allgather_pallas.defvjp(_allgather_pallas_fwd, _allgather_pallas_bwd)


def allgather_attention(
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
    """All-gather attention over this device's block; call inside ``jax.shard_map``.

    Same contract as :func:`rl_ring.attention.ring_attention`: every array is this device's
    shard along ``options.axis_name`` (default ``seq``), ``positions``/``segment_ids``/
    ``kv_mask`` carry *global* values, and the call works under ``check_vma=True``.

    Args:
        q: ``[batch, block, heads, head_dim]`` local queries.
        k, v: ``[batch, block, kv_heads, head_dim]`` local keys / values.
        causal: (block-)causal mask from global positions.
        segment_ids: ``[batch, block]`` int segment ids of the local tokens.
        tokens_per_step: tokens of one step that see each other under ``causal``.
        positions: ``[batch, block]`` global positions of the local tokens (default: the
            contiguous layout, ``axis_index * block + arange(block)``).
        kv_mask: ``[batch, block]`` bool, False for padding keys.
        options: chunk sizes etc. (:class:`AttentionOptions`); ``k_chunk`` splits each
            device's block (chunks never straddle two blocks).
        **option_overrides: fields of AttentionOptions to override.

    Returns:
        ``[batch, block, heads, head_dim]`` local output in the dtype of ``q``.
    """
    options = resolve_options(options, option_overrides)
    b, t, h, hk, _ = check_qkv(
        q, k, v, segment_ids=segment_ids, positions=positions, kv_mask=kv_mask,
        tokens_per_step=tokens_per_step,
    )
    axis = options.axis_name
    n = axis_size(axis, "allgather_attention")
    if positions is None:
        positions = local_positions(b, t, axis)
    info = token_info(b, t, segment_ids=segment_ids, positions=positions, kv_mask=kv_mask)
    if K.resolve_kernel(options.kernel) == "pallas":
        spec = K.kernel_spec(
            q, causal=causal, tokens_per_step=tokens_per_step, options=options,
            axis_name=axis, axis_size=n,
        )
        K.check_interpretable(spec, q, "allgather_attention")
        hf = K.heads_first
        kv = jnp.stack([hf(k), hf(v)])
        return hf(_allgather_pallas(hf(q), kv, info, info, spec))
    cfg = kernel_config(
        q, k, causal=causal, tokens_per_step=tokens_per_step, options=options,
        axis_name=axis, axis_size=n,
    )
    qc, q_info = prepare_queries(q, info, chunk_len(options.q_chunk, t), hk)
    kc, vc, k_info = prepare_keys(k, v, info, chunk_len(options.k_chunk, t))
    out = _allgather_chunked(qc, jnp.stack([kc, vc]), q_info, k_info, cfg)
    return from_chunks(out, h)[:, :t]
