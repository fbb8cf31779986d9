"""Sequence-parallel ring attention, called inside ``jax.shard_map`` over the sequence axis.

Each of the ``n`` devices on the ring axis keeps its block of queries. Key/value blocks
(with their global positions, segment ids and validity) travel the ring: at each hop a
device sends the block it holds to its successor (``lax.ppermute``, issued before it
computes on that block, so the transfer overlaps the compute) and folds the block into
its online softmax with the blockwise kernel (``blockwise.block_forward``). After ``n - 1``
sends every device has seen every block; the last block is not sent on.

The backward (custom VJP) makes the same tour. Each device computes its block's
contribution to dq in place, and to dK/dV of the block it holds; dK/dV travel one hop
behind their K/V block, and a final hop brings every dK/dV back to the device that owns the
block. With ``overlap_grads`` (default) the partial sums arriving from the predecessor are
added after the local contribution is computed, so that transfer overlaps compute too;
without it the local contribution is added straight into the received sums, which keeps
two fewer float32 blocks alive but waits for them before computing.
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
    match_varying,
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


def _perm(n: int) -> list[tuple[int, int]]:
    return [(i, (i + 1) % n) for i in range(n)]


def pack_info(info: TokenInfo) -> jnp.ndarray:
    """Positions, segment ids and validity stacked into one int32 array (one transfer)."""
    fields = [f.astype(jnp.int32) for f in info if f is not None]
    return jnp.stack(fields)


def unpack_info(packed: jnp.ndarray, like: TokenInfo) -> TokenInfo:
    """Inverse of :func:`pack_info`; ``like`` says which fields are present."""
    fields, i = [], 0
    for name, f in zip(like._fields, like, strict=True):
        if f is None:
            fields.append(None)
            continue
        x = packed[i]
        fields.append(x.astype(bool) if name == "valid" else x)
        i += 1
    return TokenInfo(*fields)


def ring_forward(q, kv, q_info, k_info, cfg):
    """Forward over chunked local blocks; returns ``(out, lse, computed chunk pairs)``.

    ``kv`` is ``[2, nk, b, hk, k_chunk, d]``: keys and values stacked so that a hop is one
    transfer for K/V and one for their token info.
    """
    n, axis = cfg.axis_size, cfg.axis_name
    state, count = init_state(q, kv), zero_count(q, kv)
    q_in, q = q, scaled_queries(q, cfg)

    def fold(kv, info, state, count):
        k_info_here = unpack_info(info, k_info)
        return block_forward(q, kv[0], kv[1], q_info, k_info_here, state, count, cfg)

    def hop(_, carry):
        kv, info, state, count = carry
        nxt = lax.ppermute((kv, info), axis, _perm(n))  # in flight during this block's compute
        state, count = fold(kv, info, state, count)
        return (*nxt, state, count)

    info = pack_info(k_info)
    if n > 1:
        kv, info, state, count = lax.fori_loop(0, n - 1, hop, (kv, info, state, count))
    state, count = fold(kv, info, state, count)
    out, lse = C.finalize(state)
    return out.astype(q_in.dtype), lse, count


def ring_backward(q, kv, out, lse, do, q_info, k_info, cfg):
    """Backward over chunked local blocks; returns ``(dq, dkv, computed chunk pairs)``."""
    n, axis = cfg.axis_size, cfg.axis_name
    lse_b, delta = C.backward_lse(lse), output_delta(out, do)
    dq = zero_dq_t(q, kv)
    count = zero_count(q, kv)
    q_in, q = q, scaled_queries(q, cfg)

    def contribution(kv, info, dq, count, dkv=None):
        k_info_here = unpack_info(info, k_info)
        return block_backward(
            q, kv[0], kv[1], do, lse_b, delta, q_info, k_info_here, dq, count, cfg, dkv
        )

    info = pack_info(k_info)
    if n == 1:
        dq, dkv, count = contribution(kv, info, dq, count)
    else:
        nxt = lax.ppermute((kv, info), axis, _perm(n))
        dq, dkv, count = contribution(kv, info, dq, count)

        def hop(_, carry):
            (kv, info), dkv, dq, count = carry
            nxt = lax.ppermute((kv, info), axis, _perm(n))
            dkv_in = lax.ppermute(dkv, axis, _perm(n))
            if cfg.overlap_grads:
                dq, dkv_part, count = contribution(kv, info, dq, count)
                return nxt, dkv_in + dkv_part, dq, count
            dq, dkv, count = contribution(kv, info, dq, count, dkv_in)
            return nxt, dkv, dq, count

        (kv, info), dkv, dq, count = lax.fori_loop(1, n - 1, hop, (nxt, dkv, dq, count))
        dkv_in = lax.ppermute(dkv, axis, _perm(n))
        if cfg.overlap_grads:
            dq, dkv_part, count = contribution(kv, info, dq, count)
            dkv = dkv_in + dkv_part
        else:
            dq, dkv, count = contribution(kv, info, dq, count, dkv_in)
        # The block held after the last hop belongs to the successor: send its grads home.
        dkv = lax.ppermute(dkv, axis, _perm(n))
    return finish_dq(dq, cfg, q_in.dtype), dkv.astype(kv.dtype), count


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_chunked(q, kv, q_info, k_info, cfg):
    return ring_forward(q, kv, q_info, k_info, cfg)[0]


def _ring_chunked_fwd(q, kv, q_info, k_info, cfg):
    # Ties the masks' inputs to q/k/v: inside a scan over layers, JAX would otherwise hoist
    # the loop-invariant mask work out of the scan and store every chunk pair's mask at once
    # (a [T, T] buffer). The barrier is an identity; blockwise.py does the same.
    q, kv, q_info, k_info = lax.optimization_barrier((q, kv, q_info, k_info))
    out, lse, _ = ring_forward(q, kv, q_info, k_info, cfg)
    return out, (q, kv, out, lse, q_info, k_info)


def _ring_chunked_bwd(cfg, res, do):
    q, kv, out, lse, q_info, k_info = res
    dq, dkv, _ = ring_backward(q, kv, out, lse, do, q_info, k_info, cfg)
    return dq, dkv, None, None


_ring_chunked.defvjp(_ring_chunked_fwd, _ring_chunked_bwd)


# ----------------------------------------------------------------------------------------
# The ring with the fused Pallas kernels (AttentionOptions.kernel="pallas"): each hop is one
# pair_forward whose (out, lse) merges into the running result with chunks.combine; the
# backward calls pair_backward per hop with the final lse / delta.
# ----------------------------------------------------------------------------------------


def ring_forward_pallas(q, kv, q_info, k_info, spec: K.KernelSpec):
    """Forward over local ``[b, h, t, d]`` queries and ``kv`` ``[2, b, hk, t, d]``:
    ``(out float32, lse)``."""
    n, axis = spec.axis_size, spec.axis_name
    b, h, t, d = q.shape
    out = match_varying(jnp.zeros((b, h, t, d), jnp.float32), q, kv)
    lse = match_varying(jnp.full((b, h, t), -jnp.inf, jnp.float32), q, kv)

    def fold(kv, info, out, lse):
        o, l = K.forward(spec, q, kv[0], kv[1], q_info, unpack_info(info, k_info))
        return C.combine(out, lse, o, l)

    def hop(_, carry):
        kv, info, out, lse = carry
        nxt = lax.ppermute((kv, info), axis, _perm(n))  # in flight during this block's compute
        return (*nxt, *fold(kv, info, out, lse))

    info = pack_info(k_info)
    if n > 1:
        kv, info, out, lse = lax.fori_loop(0, n - 1, hop, (kv, info, out, lse))
    return fold(kv, info, out, lse)


def ring_backward_pallas(q, kv, out, lse, do, q_info, k_info, spec: K.KernelSpec):
    """Backward of :func:`ring_forward_pallas`: ``(dq, dkv)`` float32; dK/dV travel one hop
    behind their block and a last hop brings them home (as :func:`ring_backward`)."""
    n, axis = spec.axis_size, spec.axis_name
    delta = output_delta(out, do)
    dq = match_varying(jnp.zeros(q.shape, jnp.float32), q, kv, do)

    def contribution(kv, info, dq):
        dq_c, dk, dv = K.backward(
            spec, q, kv[0], kv[1], do, lse, delta, q_info, unpack_info(info, k_info)
        )
        return dq + dq_c, jnp.stack([dk, dv])

    info = pack_info(k_info)
    if n == 1:
        return contribution(kv, info, dq)
    nxt = lax.ppermute((kv, info), axis, _perm(n))
    dq, dkv = contribution(kv, info, dq)

    def hop(_, carry):
        (kv, info), dkv, dq = carry
        nxt = lax.ppermute((kv, info), axis, _perm(n))
        dkv_in = lax.ppermute(dkv, axis, _perm(n))
        dq, dkv_part = contribution(kv, info, dq)
        return nxt, dkv_in + dkv_part, dq

    (kv, info), dkv, dq = lax.fori_loop(1, n - 1, hop, (nxt, dkv, dq))
    dkv_in = lax.ppermute(dkv, axis, _perm(n))
    dq, dkv_part = contribution(kv, info, dq)
    # The block held after the last hop belongs to the successor: send its grads home.
    return dq, lax.ppermute(dkv_in + dkv_part, axis, _perm(n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _ring_pallas(q, kv, q_info, k_info, spec):
    return ring_forward_pallas(q, kv, q_info, k_info, spec)[0].astype(q.dtype)


def _ring_pallas_fwd(q, kv, q_info, k_info, spec):
    out, lse = ring_forward_pallas(q, kv, q_info, k_info, spec)
    out = out.astype(q.dtype)
    return out, (q, kv, out, lse, q_info, k_info)


def _ring_pallas_bwd(spec, res, do):
    q, kv, out, lse, q_info, k_info = res
    dq, dkv = ring_backward_pallas(q, kv, out, lse, do, q_info, k_info, spec)
    return dq.astype(q.dtype), dkv.astype(kv.dtype), None, None


_ring_pallas.defvjp(_ring_pallas_fwd, _ring_pallas_bwd)


def local_positions(batch: int, block: int, axis_name: str) -> jnp.ndarray:
    """Contiguous-layout global positions ``[batch, block]`` of this device's tokens."""
    start = lax.axis_index(axis_name) * block
    return jnp.broadcast_to(start + jnp.arange(block, dtype=jnp.int32), (batch, block))


def ring_attention(
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
    """Ring attention over this device's block; call inside ``jax.shard_map``.

    All arrays are this device's shards along the sequence axis (``options.axis_name``,
    default ``seq``). ``positions``, ``segment_ids`` and ``kv_mask`` describe the local
    tokens with *global* values; they travel with the K/V blocks, so the mask is right
    whatever the layout. Works under ``check_vma=True``.

    Args:
        q: ``[batch, block, heads, head_dim]`` local queries.
        k, v: ``[batch, block, kv_heads, head_dim]`` local keys / values.
        causal: (block-)causal mask from global positions.
        segment_ids: ``[batch, block]`` int segment ids of the local tokens.
        tokens_per_step: tokens of one step that see each other under ``causal``.
        positions: ``[batch, block]`` global positions of the local tokens (default: the
            contiguous layout, ``axis_index * block + arange(block)``).
        kv_mask: ``[batch, block]`` bool, False for padding keys.
        options: chunk sizes etc. (:class:`AttentionOptions`);
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
    n = axis_size(axis, "ring_attention")
    if positions is None:
        positions = local_positions(b, t, axis)
    info = token_info(b, t, segment_ids=segment_ids, positions=positions, kv_mask=kv_mask)
    if K.resolve_kernel(options.kernel) == "pallas":
        spec = K.kernel_spec(
            q, causal=causal, tokens_per_step=tokens_per_step, options=options,
            axis_name=axis, axis_size=n,
        )
        K.check_interpretable(spec, q, "ring_attention")
        hf = K.heads_first
        return hf(_ring_pallas(hf(q), jnp.stack([hf(k), hf(v)]), info, info, spec))
    cfg = kernel_config(
        q, k, causal=causal, tokens_per_step=tokens_per_step, options=options,
        axis_name=axis, axis_size=n,
    )
    qc, q_info = prepare_queries(q, info, chunk_len(options.q_chunk, t), hk)
    kc, vc, k_info = prepare_keys(k, v, info, chunk_len(options.k_chunk, t))
    out = _ring_chunked(qc, jnp.stack([kc, vc]), q_info, k_info, cfg)
    return from_chunks(out, h)[:, :t]


def axis_size(axis: str, who: str) -> int:
    """Size of the manual mesh axis ``axis`` (the ring, all-gather and Ulysses all run inside
    ``shard_map`` over it); a clear error naming ``who`` outside it."""
    try:
        return int(lax.axis_size(axis))
    except NameError as e:  # unbound axis name: not inside shard_map over it
        raise ValueError(
            f"{who} must run inside jax.shard_map over the mesh axis {axis!r} (or use "
            f"attention(..., impl=..., mesh=...)): {e}"
        ) from None
