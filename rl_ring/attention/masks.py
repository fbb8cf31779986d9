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

from typing import NamedTuple

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


# ----------------------------------------------------------------------------------------
# Chunk-level view of the same rules: which (query chunk, key chunk) pairs need any work.
# ----------------------------------------------------------------------------------------

# Kinds of a (query chunk, key chunk) pair, used as ``lax.switch`` branch indices.
SKIP = 0  # no query of the chunk sees any key of the chunk: no FLOPs at all
FULL = 1  # every query sees every key: no mask is built
PARTIAL = 2  # some entries are masked: the mask is built from positions


class TokenInfo(NamedTuple):
    """Per-token mask inputs of a block of tokens (positions always global).

    Attributes:
        pos: ``[..., batch, len]`` int32 global positions in the original token order.
        seg: ``[..., batch, len]`` int32 segment ids, or None (one segment).
        valid: ``[..., batch, len]`` bool, False for padding keys, or None (all real).
    """

    pos: jnp.ndarray
    seg: jnp.ndarray | None = None
    valid: jnp.ndarray | None = None


class ChunkSummary(NamedTuple):
    """Ranges of the mask inputs over each chunk of a block: ``[num_chunks, batch]`` each."""

    step_min: jnp.ndarray
    step_max: jnp.ndarray
    seg_min: jnp.ndarray | None
    seg_max: jnp.ndarray | None
    any_valid: jnp.ndarray | None
    all_valid: jnp.ndarray | None


def summarize_chunks(info: TokenInfo, tokens_per_step: int = 1) -> ChunkSummary:
    """Summarises chunked token info ``[num_chunks, batch, chunk]`` into per-chunk ranges.

    Steps (``pos // tokens_per_step``) are monotone in positions, so the range of steps of a
    chunk bounds what the causal rule can make visible, whatever order the tokens are in.
    """
    step = info.pos // tokens_per_step if tokens_per_step > 1 else info.pos
    seg_min = seg_max = any_valid = all_valid = None
    if info.seg is not None:
        seg_min, seg_max = info.seg.min(-1), info.seg.max(-1)
    if info.valid is not None:
        any_valid, all_valid = info.valid.any(-1), info.valid.all(-1)
    return ChunkSummary(step.min(-1), step.max(-1), seg_min, seg_max, any_valid, all_valid)


def pair_kinds(q: ChunkSummary, k: ChunkSummary, *, causal: bool) -> jnp.ndarray:
    """Classifies every (query chunk, key chunk) pair as SKIP, FULL or PARTIAL.

    SKIP is decided from necessary conditions for visibility (so a skipped pair is certainly
    all masked) and FULL from sufficient ones (so a FULL pair certainly needs no mask); every
    other pair is PARTIAL and builds its exact mask. A pair is computed for the whole batch,
    so it is skipped only when it is empty for every batch row, and FULL only when it is full
    for every row.

    Args:
        q: summary of ``num_q`` query chunks (``[num_q, batch]`` fields).
        k: summary of ``num_k`` key chunks (``[num_k, batch]`` fields).
        causal: whether the (block-)causal rule applies.

    Returns:
        int32 ``[num_q, num_k]`` of SKIP / FULL / PARTIAL.
    """
    some = jnp.ones((q.step_min.shape[0], k.step_min.shape[0], q.step_min.shape[1]), bool)
    every = some
    if causal:
        some = some & (k.step_min[None] <= q.step_max[:, None])
        every = every & (k.step_max[None] <= q.step_min[:, None])
    if q.seg_min is not None and k.seg_min is not None:
        overlap = (k.seg_min[None] <= q.seg_max[:, None]) & (q.seg_min[:, None] <= k.seg_max[None])
        some = some & overlap
        single = (q.seg_min == q.seg_max)[:, None] & (k.seg_min == k.seg_max)[None]
        every = every & single & (q.seg_min[:, None] == k.seg_min[None])
    if k.any_valid is not None:
        some = some & k.any_valid[None]
        every = every & k.all_valid[None]
    some, every = some.any(-1), every.all(-1)
    return jnp.where(some, jnp.where(every, FULL, PARTIAL), SKIP).astype(jnp.int32)


def chunk_visible(q: TokenInfo, k: TokenInfo, *, causal: bool, tokens_per_step: int = 1):
    """Exact visibility ``[batch, 1, q_len, k_len]`` of one chunk pair (None: all visible)."""
    return visible(
        q.pos, k.pos, causal=causal, tokens_per_step=tokens_per_step,
        q_seg=q.seg, k_seg=k.seg, k_valid=k.valid,
    )
