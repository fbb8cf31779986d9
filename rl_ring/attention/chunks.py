"""Attention math for one (query chunk, key chunk) pair: the kernels' building blocks.

Everything here works in the kernels' internal layout, where a query chunk is
``[batch, kv_heads, rows, head_dim]`` with ``rows = chunk * groups``: the ``groups`` query
heads that share one K/V head are folded into the row axis (row ``t * groups + g`` is token
``t`` of group head ``g``), so grouped K/V heads are never repeated in memory and every
product is one batched matmul over ``(batch, kv_heads)``. Key and value chunks are
``[batch, kv_heads, chunk, head_dim]``; masks are ``[batch, 1, q_chunk, k_chunk]`` (shared by
the heads and groups).

The online softmax keeps, per query row, the running maximum ``m``, the running
denominator ``l`` and the unnormalised output ``acc``, all in float32 whatever the input
dtype. A row that has seen no visible key has ``m = -inf``, ``l = 0``; its output is zero
and its log-sum-exp ``-inf``.

Public pieces (blockwise.py, ring.py and decode use the same functions):
:func:`chunk_scores`, :func:`mask_scores`, :func:`online_update`, :func:`finalize`,
:func:`attend_chunk` (output and log-sum-exp of one pair), :func:`combine` (merge two
partial results by log-sum-exp), :func:`chunk_backward` and its transposed-orientation
form :func:`chunk_backward_t` that the kernels use.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

NEG_INF = -jnp.inf
_F32 = jnp.float32
# dot_general dimension numbers over [b, h, rows, d] operands, batched on (b, h).
_QK = (((3,), (3,)), ((0, 1), (0, 1)))  # [b,h,M,d] x [b,h,K,d] -> [b,h,M,K]
_PV = (((3,), (2,)), ((0, 1), (0, 1)))  # [b,h,M,K] x [b,h,K,d] -> [b,h,M,d]
_TN = (((2,), (2,)), ((0, 1), (0, 1)))  # [b,h,M,K] x [b,h,M,d] -> [b,h,K,d]


class SoftmaxState(NamedTuple):
    """Running online-softmax state of a query chunk (float32).

    Attributes:
        acc: ``[..., rows, head_dim]`` unnormalised output.
        m: ``[..., rows]`` running maximum of the scores (``-inf`` before any visible key).
        l: ``[..., rows]`` running sum of ``exp(score - m)``.
    """

    acc: jnp.ndarray
    m: jnp.ndarray
    l: jnp.ndarray


def empty_state(rows_shape: tuple[int, ...], head_dim: int) -> SoftmaxState:
    """State of query rows that have not seen any key yet."""
    return SoftmaxState(
        jnp.zeros((*rows_shape, head_dim), _F32),
        jnp.full(rows_shape, NEG_INF, _F32),
        jnp.zeros(rows_shape, _F32),
    )


def chunk_scores(q: jnp.ndarray, k: jnp.ndarray, scale: float) -> jnp.ndarray:
    """Scaled scores ``[b, h, rows, k_chunk]`` in float32 (inputs in their own dtype).

    ``scale`` 1 (queries pre-scaled) saves a full pass over the score block."""
    s = lax.dot_general(q, k, _QK, preferred_element_type=_F32)
    return s if scale == 1.0 else s * scale


def mask_scores(s: jnp.ndarray, mask: jnp.ndarray, groups: int) -> jnp.ndarray:
    """Sets masked scores to ``-inf``.

    Args:
        s: ``[b, h, q_chunk * groups, k_chunk]`` scores.
        mask: ``[b, 1, q_chunk, k_chunk]`` bool, True where visible.
        groups: query heads per K/V head (folded into the rows of ``s``).
    """
    b, h, rows, kc = s.shape
    s5 = s.reshape(b, h, rows // groups, groups, kc)
    return jnp.where(mask[:, :, :, None, :], s5, NEG_INF).reshape(b, h, rows, kc)


def online_update(
    state: SoftmaxState, s: jnp.ndarray, v: jnp.ndarray, *, maybe_empty: bool
) -> SoftmaxState:
    """Folds one chunk of scores and its values into the online softmax.

    Args:
        state: running state of the query rows.
        s: ``[b, h, rows, k_chunk]`` float32 scores, ``-inf`` where masked.
        v: ``[b, h, k_chunk, head_dim]`` values.
        maybe_empty: whether some row of ``s`` may be all ``-inf`` (a masked chunk); when
            False (an unmasked chunk) the guards against ``-inf - -inf`` are left out.

    Returns:
        The updated state.
    """
    m_new = jnp.maximum(state.m, s.max(-1))
    # Rows that have seen nothing keep m = -inf; use 0 as their offset so that exp gives 0
    # instead of exp(-inf - -inf) = nan.
    m_off = jnp.where(m_new == NEG_INF, 0.0, m_new) if maybe_empty else m_new
    p = jnp.exp(s - m_off[..., None])
    corr = jnp.exp(state.m - m_off)
    l = state.l * corr + p.sum(-1)
    pv = lax.dot_general(p.astype(v.dtype), v, _PV, preferred_element_type=_F32)
    return SoftmaxState(state.acc * corr[..., None] + pv, m_new, l)


def finalize(state: SoftmaxState) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Normalised output (float32) and log-sum-exp of a finished state (zeros / -inf if empty)."""
    seen = state.l > 0
    out = state.acc / jnp.where(seen, state.l, 1.0)[..., None]
    lse = jnp.where(seen, state.m + jnp.log(jnp.where(seen, state.l, 1.0)), NEG_INF)
    return out, lse


def attend_chunk(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    mask: jnp.ndarray | None,
    *,
    scale: float,
    groups: int = 1,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Output and log-sum-exp of query rows against one key chunk.

    Args:
        q: ``[b, h, rows, d]`` queries (``rows = q_chunk * groups``).
        k, v: ``[b, h, k_chunk, d]``.
        mask: ``[b, 1, q_chunk, k_chunk]`` bool visibility, or None.
        scale: softmax scale.
        groups: query heads per K/V head.

    Returns:
        ``(out [b, h, rows, d] float32, lse [b, h, rows] float32)``; merge several with
        :func:`combine`.
    """
    s = chunk_scores(q, k, scale)
    if mask is not None:
        s = mask_scores(s, mask, groups)
    state = empty_state(s.shape[:-1], q.shape[-1])
    return finalize(online_update(state, s, v, maybe_empty=mask is not None))


def combine(
    out_a: jnp.ndarray, lse_a: jnp.ndarray, out_b: jnp.ndarray, lse_b: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Merges two normalised partial results over disjoint key sets by their log-sum-exp.

    Args:
        out_a, out_b: ``[..., d]`` normalised outputs (zeros where the part saw no key).
        lse_a, lse_b: ``[...]`` log-sum-exps (``-inf`` where the part saw no key).

    Returns:
        ``(out, lse)`` of attention over the union of the two key sets.
    """
    m = jnp.maximum(lse_a, lse_b)
    m_off = jnp.where(m == NEG_INF, 0.0, m)
    wa, wb = jnp.exp(lse_a - m_off), jnp.exp(lse_b - m_off)
    total = wa + wb
    seen = total > 0
    denom = jnp.where(seen, total, 1.0)
    out = (wa[..., None] * out_a + wb[..., None] * out_b) / denom[..., None]
    lse = jnp.where(seen, m_off + jnp.log(denom), NEG_INF)
    return out, lse


def backward_lse(lse: jnp.ndarray) -> jnp.ndarray:
    """Log-sum-exp as the backward wants it: rows that saw no key get +inf (so p = 0)."""
    return jnp.where(lse == NEG_INF, jnp.inf, lse)


def chunk_backward_t(
    q: jnp.ndarray,
    k: jnp.ndarray,
    k_t: jnp.ndarray,
    v: jnp.ndarray,
    do: jnp.ndarray,
    lse: jnp.ndarray,
    delta: jnp.ndarray,
    mask_t: jnp.ndarray | None,
    *,
    scale: float,
    groups: int = 1,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Gradient contributions of one chunk pair, computed in the transposed orientation.

    Working on ``S^T = K Q^T`` (keys as rows) makes all five products plain
    ``[m, k] x [k, n]`` matmuls, including ``dQ^T = K^T dS^T``; on CPU the alternative
    forms that contract over the leading axis of an operand run at about half the rate.

    Args:
        q: ``[b, h, rows, d]`` queries (already multiplied by the softmax scale when
            ``scale`` is 1, see ``blockwise``).
        k: ``[b, h, k_chunk, d]`` keys and ``k_t`` the same as ``[b, h, d, k_chunk]``.
        v: ``[b, h, k_chunk, d]``.
        do: ``[b, h, rows, d]`` output cotangent.
        lse: ``[b, h, rows]`` float32 from :func:`backward_lse` (of the scaled scores).
        delta: ``[b, h, rows]`` float32 ``sum(do * out, -1)``.
        mask_t: ``[b, 1, k_chunk, q_chunk]`` bool visibility (transposed), or None.
        scale: factor applied to the scores (1 when ``q`` is pre-scaled).
        groups: query heads per K/V head (folded into the rows).

    Returns:
        ``(dq_t [b,h,d,rows], dk [b,h,k_chunk,d], dv [b,h,k_chunk,d])`` in float32, where
        ``dq_t`` is the gradient with respect to the scores' query operand, transposed and
        not yet multiplied by ``scale``.
    """
    s_t = lax.dot_general(k, q, _QK, preferred_element_type=_F32)  # [b, h, K, M]
    if scale != 1.0:
        s_t = s_t * scale
    if mask_t is not None:
        b, h, kc, rows = s_t.shape
        s5 = s_t.reshape(b, h, kc, rows // groups, groups)
        s_t = jnp.where(mask_t[..., None], s5, NEG_INF).reshape(b, h, kc, rows)
    p_t = jnp.exp(s_t - lse[:, :, None, :])
    dv = lax.dot_general(p_t.astype(do.dtype), do, _PV, preferred_element_type=_F32)
    dp_t = lax.dot_general(v, do, _QK, preferred_element_type=_F32)
    ds_t = p_t * (dp_t - delta[:, :, None, :])
    if scale != 1.0:
        ds_t = ds_t * scale
    ds_t = ds_t.astype(q.dtype)
    dk = lax.dot_general(ds_t, q, _PV, preferred_element_type=_F32)
    dq_t = lax.dot_general(k_t, ds_t, _PV, preferred_element_type=_F32)
    return dq_t, dk, dv


def chunk_backward(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    do: jnp.ndarray,
    lse: jnp.ndarray,
    delta: jnp.ndarray,
    mask: jnp.ndarray | None,
    *,
    scale: float,
    groups: int = 1,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Gradient contributions of one (query chunk, key chunk) pair.

    The probabilities are recomputed from the saved log-sum-exp, so nothing of size
    ``rows x k_chunk`` is kept from the forward.

    Args:
        q: ``[b, h, rows, d]`` queries; ``k``, ``v``: ``[b, h, k_chunk, d]``.
        do: ``[b, h, rows, d]`` output cotangent.
        lse: ``[b, h, rows]`` float32 from :func:`backward_lse`.
        delta: ``[b, h, rows]`` float32 ``sum(do * out, -1)``.
        mask: ``[b, 1, q_chunk, k_chunk]`` bool visibility, or None.
        scale: softmax scale.
        groups: query heads per K/V head.

    Returns:
        ``(dq [b,h,rows,d], dk [b,h,k_chunk,d], dv [b,h,k_chunk,d])`` in float32.
    """
    mask_t = None if mask is None else jnp.swapaxes(mask, 2, 3)
    dq_t, dk, dv = chunk_backward_t(
        q, k, jnp.swapaxes(k, 2, 3), v, do, lse, delta, mask_t, scale=scale, groups=groups
    )
    return jnp.swapaxes(dq_t, 2, 3), dk, dv
