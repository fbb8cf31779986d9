"""Mask semantics shared by every attention implementation.

Masks are never materialised for the whole sequence: each implementation calls
:func:`visible` on the positions / segment ids of the query block and key block it is
working on. All positions are *global* positions in the original (contiguous) token order,
so a permuted layout or a sharded sequence changes nothing.

A key is visible to a query when all of these hold:
- ``causal``: ``k_pos // tokens_per_step <= q_pos // tokens_per_step`` (with
  ``tokens_per_step == 1`` this is the usual causal mask; larger values make the tokens of
  one environment step see each other: block-causal);
- ``segment_ids`` given: the two tokens have the same segment id (packed sequences);
- ``kv_mask`` given: the key is not padding (``kv_mask`` True).

A query that sees no key at all gets an output of zeros (and a log-sum-exp of -inf).
"""

from __future__ import annotations

import jax.numpy as jnp


def visible(
    q_pos: jnp.ndarray,
    k_pos: jnp.ndarray,
    *,
    causal: bool,
    tokens_per_step: int = 1,
    q_seg: jnp.ndarray | None = None,
    k_seg: jnp.ndarray | None = None,
    k_valid: jnp.ndarray | None = None,
) -> jnp.ndarray | None:
    """Boolean visibility ``[batch, 1, q_len, k_len]`` for one query block and one key block.

    Args:
        q_pos: ``[batch, q_len]`` global positions of the queries.
        k_pos: ``[batch, k_len]`` global positions of the keys.
        causal: apply the (block-)causal rule.
        tokens_per_step: tokens of one step that see each other under ``causal``.
        q_seg: ``[batch, q_len]`` segment ids of the queries (with ``k_seg``).
        k_seg: ``[batch, k_len]`` segment ids of the keys.
        k_valid: ``[batch, k_len]`` True for real keys, False for padding.

    Returns:
        The mask, or None when nothing is masked.
    """
    mask = None

    def _and(a, b):
        return b if a is None else a & b

    if causal:
        if tokens_per_step > 1:
            qs, ks = q_pos // tokens_per_step, k_pos // tokens_per_step
        else:
            qs, ks = q_pos, k_pos
        mask = _and(mask, ks[:, None, None, :] <= qs[:, None, :, None])
    if q_seg is not None and k_seg is not None:
        mask = _and(mask, q_seg[:, None, :, None] == k_seg[:, None, None, :])
    if k_valid is not None:
        mask = _and(mask, k_valid[:, None, None, :].astype(bool))
    return mask
