"""Fused attention of one (query block, key block) pair for GPUs (Pallas, Triton lowering).

Three ``pallas_call`` kernels, FlashAttention-2 style (written for rl_ring's mask semantics;
the public design reference is ``jax.experimental.pallas.ops.gpu.attention``):

- **forward** (:func:`pair_forward`), grid ``(batch, heads, q_tiles)``: a program keeps its
  query tile in registers and runs the float32 online softmax (base 2: the scale carries
  ``log2 e``) over the key tiles it must visit; it writes the normalised output and the
  natural log-sum-exp (``-inf`` and zeros for rows that see no key).
- **dq**, grid ``(batch, heads, q_tiles)``, loops over the same key tiles; **dk/dv**, grid
  ``(batch, kv_heads, k_tiles)``, loops over the query tiles that see the key tile and, for
  each, over the ``groups`` query heads sharing the K/V head, so dK/dV come out summed over
  the group. Both recompute ``p = exp(s - lse)`` from the log-sum-exp of the *full*
  attention (a ring calls :func:`pair_backward` once per hop) and use
  ``delta = sum(dO * O)``.

Tile skipping: outside the kernels (XLA) a ``[b, q_tiles, k_tiles]`` SKIP / FULL / PARTIAL
table is built from per-tile ranges of steps, segments and validity
(:func:`rl_ring.attention.kernels.common.tile_kinds`: ranges, not the diagonal, so any
permutation of positions works) and compacted into per-tile visit lists
(:func:`~rl_ring.attention.kernels.common.visit_lists`). A kernel reads its list and runs
two loops of dynamic length: over its FULL tiles without any mask, then over its PARTIAL
tiles with the exact mask built from the 1-D tile vectors. A skipped tile costs neither a
load nor a FLOP.

Shapes Triton needs: tiles of at least 16 tokens, powers of two; head_dim zero-padded to a
power of two >= 16 (exact: zero columns add nothing to q.k and come back as zero columns);
ragged lengths padded to tile multiples (padded keys invalid, padded queries dropped).
Matmul operands stay in the input dtype (bf16 / fp16: ``p`` and ``dS`` rounded before their
matmuls, as in ``chunks.py``); float32 inputs use full-precision float32 dots (no TF32).
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from rl_ring.attention.kernels.common import (
    MaskInputs,
    next_pow2,
    out_struct,
    pad_axis,
    prepare_mask_inputs,
    tile_kinds,
    tile_visible,
    visit_lists,
)

_F32 = jnp.float32
_LOG2E = math.log2(math.e)
_LN2 = math.log(2.0)
MIN_TILE = 16
DEFAULT_BLOCK_FWD = 128
DEFAULT_BLOCK_BWD = 64


def _tile(requested: int | None, length: int, default: int) -> int:
    """Tile length: a power of two >= 16, at most the (rounded-up) block length."""
    tile = default if requested is None else int(requested)
    if tile < MIN_TILE or next_pow2(tile) != tile:
        raise ValueError(f"triton attention: tile {tile} must be a power of two >= {MIN_TILE}")
    return min(tile, max(MIN_TILE, next_pow2(length)))


def _dot(a, b, *, trans_a=False, trans_b=False):
    """float32-accumulating tile matmul (float32 operands without TF32)."""
    precision = lax.Precision.HIGHEST if a.dtype == _F32 else None
    return plgpu.dot(a, b, trans_a=trans_a, trans_b=trans_b, precision=precision).astype(_F32)


def _params(d_pad: int, block: int) -> plgpu.CompilerParams:
    return plgpu.CompilerParams(num_warps=4 if d_pad <= 64 and block <= 64 else 8, num_stages=2)


class _Prepared:
    """Padded operands, mask inputs and visit tables of one call."""

    def __init__(self, q, k, v, q_pos, k_pos, q_seg, k_seg, k_valid, *, causal,
                 tokens_per_step, block_q, block_k):
        b, h, tq, d = q.shape
        hk, tk = k.shape[1], k.shape[2]
        if h % hk != 0 or k.shape != v.shape or k.shape[0] != b or k.shape[3] != d:
            raise ValueError(
                f"triton attention: q {q.shape} and k/v {k.shape}/{v.shape} must be [b, h, t, d] "
                "with heads a multiple of kv heads"
            )
        self.b, self.h, self.hk, self.tq, self.tk, self.d = b, h, hk, tq, tk, d
        self.groups = h // hk
        self.bq, self.bk = block_q, block_k
        self.d_pad = max(MIN_TILE, next_pow2(d))
        self.tq_pad = -(-tq // block_q) * block_q
        self.tk_pad = -(-tk // block_k) * block_k
        self.nq, self.nk = self.tq_pad // block_q, self.tk_pad // block_k
        self.mask = prepare_mask_inputs(
            q_pos, k_pos, q_seg, k_seg, k_valid, causal=causal, tokens_per_step=tokens_per_step,
            tq_pad=self.tq_pad, tk_pad=self.tk_pad,
        )
        if self.mask.masked:
            self.kinds = tile_kinds(self.mask, block_q, block_k, self.nq)
        else:
            self.kinds = jnp.ones((b, self.nq, self.nk), jnp.int32)  # all FULL

    def q_like(self, x, value=0):
        x = pad_axis(x, 3, self.d_pad)
        return pad_axis(x, 2, self.tq_pad, value=value)

    def k_like(self, x):
        return pad_axis(pad_axis(x, 3, self.d_pad), 2, self.tk_pad)

    def rows(self, x, value):
        """``[b, h, tq]`` float32 row statistic padded to ``tq_pad`` with ``value``."""
        return pad_axis(jnp.asarray(x, _F32), 2, self.tq_pad, value=value)


def _mask_operands(m: MaskInputs, q_spec, k_spec):
    """The present mask vectors as (arrays, specs, presence flags)."""
    arrays, specs = [], []
    for x, spec in ((m.q_step, q_spec), (m.k_step, k_spec), (m.q_seg, q_spec),
                    (m.k_seg, k_spec), (m.k_valid, k_spec)):
        if x is not None:
            arrays.append(x)
            specs.append(spec)
    flags = tuple(x is not None for x in m)
    return arrays, specs, flags


def _split_masks(refs, flags):
    it = iter(refs)
    out = [next(it) if f else None for f in flags]
    return out, list(it)


def _load_masks(mask_refs, q_slice, k_slice):
    """Tile vectors of the present mask inputs (queries at ``q_slice``, keys at ``k_slice``)."""
    qs, ks, qg, kg, kv = mask_refs
    load_q = lambda r: None if r is None else r[q_slice]
    load_k = lambda r: None if r is None else r[k_slice]
    return load_q(qs), load_k(ks), load_q(qg), load_k(kg), load_k(kv)


# ----------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------


def _visit(lst_ref, body, carry, masked: bool):
    """Runs ``body(j, carry, masked)`` over the FULL tiles of the visit list (no mask), then
    over its PARTIAL tiles (masked); see ``common.visit_lists``."""
    n_full, n_partial = lst_ref[0], lst_ref[1]
    carry = lax.fori_loop(0, n_full, lambda i, c: body(lst_ref[i + 2], c, False), carry)
    if masked:
        carry = lax.fori_loop(
            n_full, n_full + n_partial, lambda i, c: body(lst_ref[i + 2], c, True), carry
        )
    return carry


def _fwd_kernel(lst_ref, q_ref, k_ref, v_ref, *refs, flags, bq, bk, scale2):
    mask_refs, (o_ref, lse_ref) = _split_masks(refs, flags)
    q = q_ref[...]
    q_all = pl.ds(0, bq)
    d_pad = q.shape[-1]

    def body(j, carry, masked):
        acc, m, l = carry
        k_sl = pl.ds(pl.multiple_of(j * bk, bk), bk)
        k, v = k_ref[k_sl, :], v_ref[k_sl, :]
        s = _dot(q, k, trans_b=True) * scale2
        if masked:
            s = jnp.where(tile_visible(*_load_masks(mask_refs, q_all, k_sl)), s, -jnp.inf)
        m_new = jnp.maximum(m, s.max(axis=1))
        m_off = jnp.where(m_new == -jnp.inf, 0.0, m_new)
        p = jnp.exp2(s - m_off[:, None])
        corr = jnp.exp2(m - m_off)
        l = l * corr + p.sum(axis=1)
        acc = acc * corr[:, None] + _dot(p.astype(v.dtype), v)
        return acc, m_new, l

    init = (jnp.zeros((bq, d_pad), _F32), jnp.full((bq,), -jnp.inf, _F32), jnp.zeros((bq,), _F32))
    acc, m, l = _visit(lst_ref, body, init, any(flags))
    seen = l > 0.0
    l_safe = jnp.where(seen, l, 1.0)
    o_ref[...] = acc / l_safe[:, None]
    lse_ref[...] = jnp.where(seen, (m + jnp.log2(l_safe)) * _LN2, -jnp.inf)


def pair_forward(
    q, k, v, q_pos, k_pos, q_seg, k_seg, k_valid, *, causal, tokens_per_step, scale,
    block_q=None, block_k=None, interpret=False,
):
    """Attention of a query block over a key block: ``(out, lse)``.

    Args:
        q: ``[b, h, tq, d]``; k, v: ``[b, hk, tk, d]`` (``h % hk == 0``; query head ``i`` uses
            K/V head ``i // (h // hk)``); float32, bfloat16 or float16.
        q_pos, k_pos: ``[b, tq]`` / ``[b, tk]`` int global positions.
        q_seg, k_seg: ``[b, t]`` int segment ids or None; k_valid: ``[b, tk]`` bool or None.
        causal, tokens_per_step: the (block-)causal rule (``rl_ring.attention.masks``).
        scale: softmax scale.
        block_q, block_k: tile lengths (powers of two >= 16; default 128, clamped to the
            rounded-up lengths).
        interpret: run the kernel in the Pallas interpreter (any backend, e.g. CPU).

    Returns:
        ``out [b, h, tq, d]`` float32 normalised and ``lse [b, h, tq]`` float32; a row that
        sees no key gets zeros and ``-inf``.
    """
    bq = _tile(block_q, q.shape[2], DEFAULT_BLOCK_FWD)
    bk = _tile(block_k, k.shape[2], DEFAULT_BLOCK_FWD)
    pp = _Prepared(q, k, v, q_pos, k_pos, q_seg, k_seg, k_valid, causal=causal,
                   tokens_per_step=tokens_per_step, block_q=bq, block_k=bk)
    lists = visit_lists(pp.kinds)  # [b, nq, nk + 2]
    g, dp = pp.groups, pp.d_pad
    q_tile = pl.BlockSpec((None, None, bq, dp), lambda bi, hi, i: (bi, hi, i, 0))
    kv_full = pl.BlockSpec(
        (None, None, pp.tk_pad, dp), lambda bi, hi, i: (bi, lax.div(hi, g), 0, 0)
    )
    arrays, specs, flags = _mask_operands(
        pp.mask, pl.BlockSpec((None, bq), lambda bi, hi, i: (bi, i)),
        pl.BlockSpec((None, pp.tk_pad), lambda bi, hi, i: (bi, 0)),
    )
    kernel = functools.partial(_fwd_kernel, flags=flags, bq=bq, bk=bk, scale2=scale * _LOG2E)
    out, lse = pl.pallas_call(
        kernel,
        grid=(pp.b, pp.h, pp.nq),
        in_specs=[pl.BlockSpec((None, None, pp.nk + 2), lambda bi, hi, i: (bi, i, 0)),
                  q_tile, kv_full, kv_full, *specs],
        out_specs=[q_tile, pl.BlockSpec((None, None, bq), lambda bi, hi, i: (bi, hi, i))],
        out_shape=[out_struct((pp.b, pp.h, pp.tq_pad, dp), _F32, q, k, v, pp.kinds),
                   out_struct((pp.b, pp.h, pp.tq_pad), _F32, q, k, v, pp.kinds)],
        compiler_params=_params(dp, bq),
        interpret=interpret,
        name="rl_ring_attention_fwd",
    )(lists, pp.q_like(q), pp.k_like(k), pp.k_like(v), *arrays)
    return out[:, :, : pp.tq, : pp.d], lse[:, :, : pp.tq]


# ----------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------


def _dq_kernel(lst_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, flags, bq, bk,
               scale, scale2):
    mask_refs, (dq_ref,) = _split_masks(refs, flags)
    q, do = q_ref[...], do_ref[...]
    lse2, delta = lse_ref[...] * _LOG2E, delta_ref[...]
    q_all = pl.ds(0, bq)

    def body(j, dq, masked):
        k_sl = pl.ds(pl.multiple_of(j * bk, bk), bk)
        k, v = k_ref[k_sl, :], v_ref[k_sl, :]
        s = _dot(q, k, trans_b=True) * scale2
        if masked:
            s = jnp.where(tile_visible(*_load_masks(mask_refs, q_all, k_sl)), s, -jnp.inf)
        p = jnp.exp2(s - lse2[:, None])
        dp = _dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None])
        return dq + _dot(ds.astype(k.dtype), k)

    dq = _visit(lst_ref, body, jnp.zeros(q.shape, _F32), any(flags))
    dq_ref[...] = dq * scale


def _dkv_kernel(lst_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs, flags, bq, bk,
                groups, scale, scale2):
    mask_refs, (dk_ref, dv_ref) = _split_masks(refs, flags)
    k, v = k_ref[...], v_ref[...]
    k_all = pl.ds(0, bk)

    def q_tile(i, carry, masked):
        q_sl = pl.ds(pl.multiple_of(i * bq, bq), bq)
        vis_t = None
        if masked:
            vis_t = tile_visible(*_load_masks(mask_refs, q_sl, k_all), transposed=True)

        def head(gi, carry):
            dk, dv = carry
            q, do = q_ref[gi, q_sl, :], do_ref[gi, q_sl, :]
            lse2, delta = lse_ref[gi, q_sl] * _LOG2E, delta_ref[gi, q_sl]
            s_t = _dot(k, q, trans_b=True) * scale2  # [bk, bq]
            if vis_t is not None:
                s_t = jnp.where(vis_t, s_t, -jnp.inf)
            p_t = jnp.exp2(s_t - lse2[None, :])
            dv = dv + _dot(p_t.astype(do.dtype), do)
            dp_t = _dot(v, do, trans_b=True)
            ds_t = p_t * (dp_t - delta[None, :])
            return dk + _dot(ds_t.astype(q.dtype), q), dv

        return lax.fori_loop(0, groups, head, carry)

    zeros = jnp.zeros(k.shape, _F32)
    dk, dv = _visit(lst_ref, q_tile, (zeros, zeros), any(flags))
    dk_ref[...] = dk * scale
    dv_ref[...] = dv


def pair_backward(
    q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg, k_valid, *, causal, tokens_per_step,
    scale, block_q=None, block_k=None, interpret=False,
):
    """Gradients of one (query block, key block) pair given the full attention's statistics.

    Args:
        q, k, v, q_pos .. k_valid, causal, tokens_per_step, scale: as :func:`pair_forward`.
        do: ``[b, h, tq, d]`` output cotangent.
        lse: ``[b, h, tq]`` float32 log-sum-exp of the *full* attention (all key blocks);
            rows with ``-inf`` (no visible key anywhere) contribute nothing.
        delta: ``[b, h, tq]`` float32 ``sum(do * out, -1)`` of the full attention.
        block_q, block_k: tile lengths (default 64).
        interpret: run in the Pallas interpreter.

    Returns:
        ``dq [b, h, tq, d]``, ``dk, dv [b, hk, tk, d]`` float32 (dk/dv summed over the query
        heads of each group).
    """
    bq = _tile(block_q, q.shape[2], DEFAULT_BLOCK_BWD)
    bk = _tile(block_k, k.shape[2], DEFAULT_BLOCK_BWD)
    pp = _Prepared(q, k, v, q_pos, k_pos, q_seg, k_seg, k_valid, causal=causal,
                   tokens_per_step=tokens_per_step, block_q=bq, block_k=bk)
    g, dp = pp.groups, pp.d_pad
    lse = jnp.asarray(lse, _F32)
    lse = pp.rows(jnp.where(lse == -jnp.inf, jnp.inf, lse), jnp.inf)  # p = 0 on empty rows
    delta = pp.rows(delta, 0.0)
    qp, dop = pp.q_like(q), pp.q_like(jnp.asarray(do, q.dtype))
    kp, vp = pp.k_like(k), pp.k_like(v)
    scales = dict(scale=scale, scale2=scale * _LOG2E)

    # dq: grid over (batch, head, query tile), visiting key tiles.
    q_tile = pl.BlockSpec((None, None, bq, dp), lambda bi, hi, i: (bi, hi, i, 0))
    row_tile = pl.BlockSpec((None, None, bq), lambda bi, hi, i: (bi, hi, i))
    kv_full = pl.BlockSpec(
        (None, None, pp.tk_pad, dp), lambda bi, hi, i: (bi, lax.div(hi, g), 0, 0)
    )
    arrays, specs, flags = _mask_operands(
        pp.mask, pl.BlockSpec((None, bq), lambda bi, hi, i: (bi, i)),
        pl.BlockSpec((None, pp.tk_pad), lambda bi, hi, i: (bi, 0)),
    )
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, flags=flags, bq=bq, bk=bk, **scales),
        grid=(pp.b, pp.h, pp.nq),
        in_specs=[pl.BlockSpec((None, None, pp.nk + 2), lambda bi, hi, i: (bi, i, 0)),
                  q_tile, kv_full, kv_full, q_tile, row_tile, row_tile, *specs],
        out_specs=q_tile,
        out_shape=out_struct((pp.b, pp.h, pp.tq_pad, dp), _F32, qp, kp, dop, lse, pp.kinds),
        compiler_params=_params(dp, bq),
        interpret=interpret,
        name="rl_ring_attention_dq",
    )(visit_lists(pp.kinds), qp, kp, vp, dop, lse, delta, *arrays)

    # dk/dv: grid over (batch, kv head, key tile), visiting query tiles and the group's heads.
    k_tile = pl.BlockSpec((None, None, bk, dp), lambda bi, hi, j: (bi, hi, j, 0))
    q_group = pl.BlockSpec((None, g, pp.tq_pad, dp), lambda bi, hi, j: (bi, hi, 0, 0))
    row_group = pl.BlockSpec((None, g, pp.tq_pad), lambda bi, hi, j: (bi, hi, 0))
    arrays, specs, flags = _mask_operands(
        pp.mask, pl.BlockSpec((None, pp.tq_pad), lambda bi, hi, j: (bi, 0)),
        pl.BlockSpec((None, bk), lambda bi, hi, j: (bi, j)),
    )
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, flags=flags, bq=bq, bk=bk, groups=g, **scales),
        grid=(pp.b, pp.hk, pp.nk),
        in_specs=[pl.BlockSpec((None, None, pp.nq + 2), lambda bi, hi, j: (bi, j, 0)),
                  q_group, k_tile, k_tile, q_group, row_group, row_group, *specs],
        out_specs=[k_tile, k_tile],
        out_shape=[out_struct((pp.b, pp.hk, pp.tk_pad, dp), _F32, qp, kp, dop, lse, pp.kinds)] * 2,
        compiler_params=_params(dp, bk),
        interpret=interpret,
        name="rl_ring_attention_dkv",
    )(visit_lists(jnp.swapaxes(pp.kinds, 1, 2)), qp, kp, vp, dop, lse, delta, *arrays)
    d, tq, tk = pp.d, pp.tq, pp.tk
    return dq[:, :, :tq, :d], dk[:, :, :tk, :d], dv[:, :, :tk, :d]
