"""Attention for rl_ring: one signature, one mask semantics, three implementations.

``attention(q, k, v, impl=...)`` is the seam the model calls. ``impl`` picks:
- ``"reference"``: dense softmax attention (the oracle);
- ``"blockwise"``: single-device, memory-efficient (not yet landed);
- ``"ring"``: sequence-parallel over a mesh axis (not yet landed).
"""

from __future__ import annotations

import jax.numpy as jnp

from rl_ring.attention.reference import reference_attention

IMPLS = ("reference", "blockwise", "ring")


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    impl: str = "reference",
    mesh=None,
    causal: bool = False,
    segment_ids: jnp.ndarray | None = None,
    tokens_per_step: int = 1,
    layout: str = "contiguous",
    positions: jnp.ndarray | None = None,
    kv_mask: jnp.ndarray | None = None,
    **options,
) -> jnp.ndarray:
    """Attention over ``[batch, seq, heads, head_dim]`` tensors (see module docstring)."""
    if impl != "reference":
        raise NotImplementedError(f"impl={impl!r} has not landed yet")
    return reference_attention(
        q, k, v, causal=causal, segment_ids=segment_ids, tokens_per_step=tokens_per_step,
        positions=positions, kv_mask=kv_mask,
    )


__all__ = ["attention", "reference_attention", "IMPLS"]
