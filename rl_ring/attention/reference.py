"""Dense softmax attention: the oracle every other implementation is tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rl_ring.attention.masks import visible


def reference_attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    causal: bool = False,
    segment_ids: jnp.ndarray | None = None,
    tokens_per_step: int = 1,
    positions: jnp.ndarray | None = None,
    kv_mask: jnp.ndarray | None = None,
    scale: float | None = None,
) -> jnp.ndarray:
    """Dense attention with the shared mask semantics (see ``rl_ring.attention.masks``).

    Args:
        q: ``[batch, seq, heads, head_dim]``.
        k, v: ``[batch, seq, kv_heads, head_dim]``; ``heads`` must be a multiple of ``kv_heads``.
        causal: (block-)causal mask from global positions.
        segment_ids: ``[batch, seq]`` int; tokens attend only within their segment.
        tokens_per_step: tokens of one step that see each other under ``causal``.
        positions: ``[batch, seq]`` global positions (default ``arange(seq)``).
        kv_mask: ``[batch, seq]`` bool, False for padding keys.
        scale: softmax scale (default ``head_dim ** -0.5``).

    Returns:
        ``[batch, seq, heads, head_dim]`` in the dtype of ``q``; computed in float32.
    """
    b, t, h, d = q.shape
    hk = k.shape[2]
    group = h // hk
    scale = d**-0.5 if scale is None else scale
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    qf = q.astype(jnp.float32).reshape(b, t, hk, group, d)
    kf = k.astype(jnp.float32)
    vf = v.astype(jnp.float32)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qf, kf) * scale
    mask = visible(
        positions,
        positions,
        causal=causal,
        tokens_per_step=tokens_per_step,
        q_seg=segment_ids,
        k_seg=segment_ids,
        k_valid=kv_mask,
    )
    if mask is not None:
        mask = mask[:, :, None]  # [b, 1, 1, q, k] over (kv_heads, group)
        s = jnp.where(mask, s, -jnp.inf)
    m = jnp.max(s, axis=-1, keepdims=True)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    p = jnp.exp(s - m)
    if mask is not None:
        p = jnp.where(mask, p, 0.0)
    l = jnp.sum(p, axis=-1, keepdims=True)
    p = p / jnp.where(l == 0.0, 1.0, l)
    o = jnp.einsum("bhgqk,bkhd->bqhgd", p, vf)
    return o.reshape(b, t, h, d).astype(q.dtype)
