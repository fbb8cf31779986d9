"""Fused attention of one (query block, key block) pair for TPU (Pallas Mosaic TPU).

Three ``pallas_call`` kernels, FlashAttention-2 style, each over one batch row and one head
per grid step, with the shared mask semantics of :mod:`rl_ring.attention.masks`:

- **forward** (:func:`pair_forward`), grid ``(batch, heads, q_tiles, k_tiles)``, the k-tile
  axis ``"arbitrary"`` (sequential), the others ``"parallel"``. VMEM scratch holds the
  float32 online softmax of the query tile: running max ``m`` and denominator ``l`` (lane
  replicated, ``[block_q, 128]``) and the unnormalised output ``acc`` ``[block_q, d]``. The
  last k tile writes the normalised output and the log-sum-exp.
- **dq** (grid as the forward, dq accumulated in a ``[block_q, d]`` scratch) and **dk/dv**,
  grid ``(batch, kv_heads, k_tiles, groups, q_tiles)``: the ``groups`` query heads that share
  a K/V head and all query tiles are the two sequential axes, so dK/dV of a key tile are
  summed over the group in VMEM and written once. Both recompute ``p = exp(s - lse)`` from
  the saved log-sum-exp of the *full* attention and use ``delta = sum(dO * O)``.

Skipping. Positions are arbitrary global positions (zigzag/striped layouts), so the kernels
do not assume a diagonal. Outside the kernels (in XLA) every (batch row, q tile, k tile) is
classified SKIP / FULL / PARTIAL from per-tile ranges of steps (``pos // tokens_per_step``),
segment ids and key validity (:func:`rl_ring.attention.masks.pair_kinds`, applied per batch
row). One int32 table per kernel, ``fetch_index * 4 + kind``, flattened to 1-D, is passed by
scalar prefetch (``pltpu.PrefetchScalarGridSpec``, it lives in SMEM: ``4 * batch * q_tiles *
k_tiles`` bytes, 16 KiB per batch row at T=32768 with 512 tiles). In the kernel ``pl.when``
runs the unmasked body for FULL, the masked body for PARTIAL and nothing for SKIP; the block
index maps read the same table, and a skipped pair maps its K/V (dk/dv kernel: Q/dO) blocks
to the last computed tile (or the next one to compute), so the pipeline issues no DMA for it.

Masks inside a PARTIAL tile are built from lane-replicated query info ``[t, 128]`` (step,
segment) and sublane-replicated key info ``[8, t]`` (step with padding/invalid keys set to
``INT32_MAX``, segment, validity when not causal), the layouts Mosaic handles without
relayouts (as in ``jax.experimental.pallas.ops.tpu.flash_attention``). Ragged lengths are
padded outside the kernels to tile multiples: padded keys are invalid, padded queries are
dropped (their log-sum-exp is set to +inf in the backward so they contribute nothing).

Numerics: scores, softmax state and all accumulators are float32; matmul operands stay in
the input dtype (bf16: ``p`` and ``dS`` are rounded to bf16 before their matmuls), float32
matmuls use ``Precision.HIGHEST``. float16 inputs are cast to float32 (exact; Mosaic's f16
matmul support is not relied on). Measured against the dense reference in interpret mode
(``tests/test_attention_kernels_tpu.py``, tolerances from ``tests/attention_oracle.py``):
float32 within 1e-5, bfloat16 within 1e-2 (max-norm relative).

Layout costs: the log-sum-exp leaves the forward kernel lane-replicated ``[b, h, tq, 128]``
(sliced outside), and the backward takes lse/delta broadcast the same way: ``512 * b * h *
tq`` bytes each, the price of keeping every in-kernel vector in its native layout.

Block sizes: multiples of 128 (default: ``min(512, t rounded up to 128)``); head_dim must
be below 128 or a multiple of it.

Checked without a TPU (JAX 0.10.2): (1) interpret mode on CPU against the dense oracle,
forward and gradients; (2) Pallas -> Mosaic lowering, ``jax.jit(f).trace(...).lower(
lowering_platforms=("tpu",))``, works on a CPU-only machine (also inside
``shard_map(check_vma=True)``); it stops before Mosaic's own compiler (vector layouts, VMEM
budget), which lives in libtpu; (3) with the ``libtpu`` package importable (no TPU needed),
full deviceless compilation for a compile-only TPU device from
``jax.experimental.topologies.get_topology_desc`` succeeds for TPU v4, v5e, v5p and v6e at
T=4096 and 32768, d=64 and 128, bf16 and f32, tiles 512 (libtpu 0.0.42.1; 1024-tiles
compile too; 4096-tiles in f32 exceed VMEM, 150 of 128 MiB). Speed is unmeasured.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rl_ring.attention.kernels.common import out_struct, pad_axis
from rl_ring.attention.masks import FULL, PARTIAL, TokenInfo, pair_kinds, summarize_chunks

NUM_LANES = 128
NUM_SUBLANES = 8
DEFAULT_BLOCK = 512
_INT_MAX = jnp.iinfo(jnp.int32).max
_F32 = jnp.float32
_NT = (((1,), (1,)), ((), ()))  # [m, d] x [n, d] -> [m, n]


# ----------------------------------------------------------------------------------------
# XLA-side preparation: padding, per-token mask info, per-tile pair tables.
# ----------------------------------------------------------------------------------------


def _block(requested: int | None, length: int, name: str) -> int:
    if requested is None:
        return min(DEFAULT_BLOCK, -(-length // NUM_LANES) * NUM_LANES)
    if requested <= 0 or requested % NUM_LANES:
        raise ValueError(f"{name} must be a positive multiple of {NUM_LANES}, found {requested}")
    return requested


def _compute_dtype(*xs):
    dtype = jnp.result_type(*xs)
    # Mosaic's float16 matmuls are not relied on; float32 holds float16 exactly.
    return _F32 if dtype == jnp.float16 else dtype


class _Prepared:
    """Padded mask inputs and pair tables shared by the forward and backward kernels."""

    def __init__(self, q_pos, k_pos, q_seg, k_seg, k_valid, *, causal, tps, bq, bk, tq, tk):
        if (q_seg is None) != (k_seg is None):
            raise ValueError(
                "q_seg and k_seg must be given together, found "
                f"q_seg {'None' if q_seg is None else q_seg.shape}, "
                f"k_seg {'None' if k_seg is None else k_seg.shape}"
            )
        b = q_pos.shape[0]
        self.tq_p, self.tk_p = -(-tq // bq) * bq, -(-tk // bk) * bk
        self.nq, self.nk = self.tq_p // bq, self.tk_p // bk
        ragged_k = self.tk_p != tk
        if ragged_k and k_valid is None:
            k_valid = jnp.ones((b, tk), bool)
        # Padded tokens repeat the last real one, so the tile ranges stay tight.
        q_pos = pad_axis(q_pos.astype(jnp.int32), 1, self.tq_p, "edge")
        k_pos = pad_axis(k_pos.astype(jnp.int32), 1, self.tk_p, "edge")
        if q_seg is not None:
            q_seg = pad_axis(q_seg.astype(jnp.int32), 1, self.tq_p, "edge")
            k_seg = pad_axis(k_seg.astype(jnp.int32), 1, self.tk_p, "edge")
        if k_valid is not None:
            k_valid = pad_axis(k_valid.astype(bool), 1, self.tk_p, value=False)

        # Per-(batch row, q tile, k tile) kinds; pair_kinds reduces over its batch axis, so
        # it is applied per row (a row of size 1).
        def tiles(x, blk):
            return None if x is None else x.reshape(b, -1, blk).transpose(1, 0, 2)[:, :, None]

        qs = summarize_chunks(TokenInfo(tiles(q_pos, bq), tiles(q_seg, bq)), tps)
        k_tiles = TokenInfo(tiles(k_pos, bk), tiles(k_seg, bk), tiles(k_valid, bk))
        ks = summarize_chunks(k_tiles, tps)
        per_row = jax.vmap(lambda a, c: pair_kinds(a, c, causal=causal), in_axes=(1, 1))
        kinds = per_row(qs, ks)  # [b, nq, nk]
        self.kinds = kinds
        self.fwd_table = _table(kinds)  # fetch k tiles along k
        self.dkv_table = _table(kinds.transpose(0, 2, 1))  # fetch q tiles along q

        step = (lambda p: p // tps) if tps > 1 else (lambda p: p)
        self.q_info, self.k_info = [], []  # lane-replicated [b, tq, 128] / [b, 8, tk]
        if causal:
            self.q_info.append(_lanes(step(q_pos)))
            k_step = step(k_pos)
            if k_valid is not None:
                k_step = jnp.where(k_valid, k_step, _INT_MAX)
            self.k_info.append(_sublanes(k_step))
        if q_seg is not None:
            self.q_info.append(_lanes(q_seg))
            self.k_info.append(_sublanes(k_seg))
        self.has_valid = not causal and k_valid is not None
        if self.has_valid:
            self.k_info.append(_sublanes(k_valid.astype(jnp.int32)))
        self.causal, self.has_seg = causal, q_seg is not None


def _lanes(x):
    return jnp.broadcast_to(x[:, :, None], (*x.shape, NUM_LANES))


def _sublanes(x):
    return jnp.broadcast_to(x[:, None, :], (x.shape[0], NUM_SUBLANES, x.shape[1]))


def _table(kinds: jnp.ndarray) -> jnp.ndarray:
    """``fetch * 4 + kind`` flattened, for ``kinds [b, n_outer, n_inner]``.

    ``fetch`` is the inner tile to hold in VMEM at each step: the tile itself when it is
    computed, else the last computed one of the row (or the row's first, before any), so
    that a skipped step keeps the block index of its neighbour and costs no DMA.
    """
    n = kinds.shape[-1]
    active = kinds != 0
    idx = jnp.where(active, jnp.arange(n, dtype=jnp.int32), -1)
    last = lax.cummax(idx, axis=2)
    first = jnp.argmax(active, axis=-1).astype(jnp.int32)[..., None]
    fetch = jnp.where(last >= 0, last, first)
    return (fetch * 4 + kinds).reshape(-1).astype(jnp.int32)


# ----------------------------------------------------------------------------------------
# In-kernel pieces.
# ----------------------------------------------------------------------------------------


def _lane_tile(x, width):
    """``[rows, 128]`` lane-replicated -> ``[rows, width]``."""
    return x if width == NUM_LANES else jnp.tile(x, (1, width // NUM_LANES))


def _to_dim(x, d):
    """``[rows, 128]`` lane-replicated -> ``[rows, d]``."""
    if d <= NUM_LANES:
        return x[:, :d]
    return jnp.tile(x, (1, d // NUM_LANES))


def _mask(q_refs, k_refs, prep_flags, bk):
    """Visibility ``[bq, bk]`` (or broadcastable) of a PARTIAL tile pair."""
    causal, has_seg, has_valid = prep_flags
    mask = None
    qi = ki = 0
    if causal:
        mask = k_refs[ki][0:1, :] <= _lane_tile(q_refs[qi][...], bk)
        qi, ki = qi + 1, ki + 1
    if has_seg:
        eq = k_refs[ki][0:1, :] == _lane_tile(q_refs[qi][...], bk)
        mask = eq if mask is None else mask & eq
        qi, ki = qi + 1, ki + 1
    if has_valid:
        ok = k_refs[ki][0:1, :] != 0
        mask = ok if mask is None else mask & ok
    return mask


def _scores(q, k, scale, precision):
    s = lax.dot_general(q, k, _NT, preferred_element_type=_F32, precision=precision)
    return s if scale == 1.0 else s * scale


def _precision(dtype):
    return lax.Precision.HIGHEST if dtype == _F32 else None


def _unpack_refs(refs, n_q_info, n_k_info):
    q_info, rest = refs[:n_q_info], refs[n_q_info:]
    return q_info, rest[:n_k_info], rest[n_k_info:]


def _fwd_kernel(table_ref, q_ref, k_ref, v_ref, *refs, n_q_info, n_k_info, flags, scale):
    q_info, k_info, (o_ref, lse_ref, m_ref, l_ref, acc_ref) = _unpack_refs(
        refs, n_q_info, n_k_info
    )
    bi, qi, ki = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    nq, nk = pl.num_programs(2), pl.num_programs(3)
    kind = table_ref[(bi * nq + qi) * nk + ki] & 3
    bk, d = k_ref.shape
    precision = _precision(q_ref.dtype)

    @pl.when(ki == 0)
    def _init():
        m_ref[...] = jnp.full(m_ref.shape, -jnp.inf, _F32)
        l_ref[...] = jnp.zeros(l_ref.shape, _F32)
        acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

    def body(masked: bool):
        v = v_ref[...]
        s = _scores(q_ref[...], k_ref[...], scale, precision)
        if masked:
            s = jnp.where(_mask(q_info, k_info, flags, bk), s, -jnp.inf)
        m_prev = m_ref[...]
        m_new = jnp.maximum(m_prev, s.max(axis=1, keepdims=True))  # [bq, 128]
        # A row that has seen no key keeps m = -inf: offset it by 0 (exp(-inf - -inf) = nan).
        m_off = jnp.where(m_new == -jnp.inf, 0.0, m_new) if masked else m_new
        p = jnp.exp(s - _lane_tile(m_off, bk))
        corr = jnp.exp(m_prev - m_off)
        l_ref[...] = corr * l_ref[...] + p.sum(axis=1, keepdims=True)
        pv = lax.dot(p.astype(v.dtype), v, preferred_element_type=_F32, precision=precision)
        acc_ref[...] = acc_ref[...] * _to_dim(corr, d) + pv
        m_ref[...] = m_new

    @pl.when(kind == FULL)
    def _full():
        body(False)

    @pl.when(kind == PARTIAL)
    def _partial():
        body(True)

    @pl.when(ki == nk - 1)
    def _finish():
        l = l_ref[...]
        seen = l > 0.0
        safe_l = jnp.where(seen, l, 1.0)
        o_ref[...] = acc_ref[...] / _to_dim(safe_l, d)
        lse_ref[...] = jnp.where(seen, m_ref[...] + jnp.log(safe_l), -jnp.inf)


def _dq_kernel(
    table_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
    n_q_info, n_k_info, flags, scale,
):
    q_info, k_info, (dq_ref, acc_ref) = _unpack_refs(refs, n_q_info, n_k_info)
    bi, qi, ki = pl.program_id(0), pl.program_id(2), pl.program_id(3)
    nq, nk = pl.num_programs(2), pl.num_programs(3)
    kind = table_ref[(bi * nq + qi) * nk + ki] & 3
    bk = k_ref.shape[0]
    precision = _precision(q_ref.dtype)

    @pl.when(ki == 0)
    def _init():
        acc_ref[...] = jnp.zeros(acc_ref.shape, _F32)

    def body(masked: bool):
        k, v, do = k_ref[...], v_ref[...], do_ref[...]
        s = _scores(q_ref[...], k, scale, precision)
        if masked:
            s = jnp.where(_mask(q_info, k_info, flags, bk), s, -jnp.inf)
        p = jnp.exp(s - _lane_tile(lse_ref[...], bk))
        dp = lax.dot_general(do, v, _NT, preferred_element_type=_F32, precision=precision)
        ds = p * (dp - _lane_tile(delta_ref[...], bk))
        acc_ref[...] += lax.dot(
            ds.astype(k.dtype), k, preferred_element_type=_F32, precision=precision
        )

    @pl.when(kind == FULL)
    def _full():
        body(False)

    @pl.when(kind == PARTIAL)
    def _partial():
        body(True)

    @pl.when(ki == nk - 1)
    def _finish():
        dq_ref[...] = acc_ref[...] * scale


def _dkv_kernel(
    table_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, *refs,
    n_q_info, n_k_info, flags, scale,
):
    q_info, k_info, (dk_ref, dv_ref, dk_acc, dv_acc) = _unpack_refs(refs, n_q_info, n_k_info)
    bi, ki, gi, qi = pl.program_id(0), pl.program_id(2), pl.program_id(3), pl.program_id(4)
    nk, ng, nq = pl.num_programs(2), pl.num_programs(3), pl.num_programs(4)
    kind = table_ref[(bi * nk + ki) * nq + qi] & 3
    bk = k_ref.shape[0]
    precision = _precision(q_ref.dtype)

    @pl.when((gi == 0) & (qi == 0))
    def _init():
        dk_acc[...] = jnp.zeros(dk_acc.shape, _F32)
        dv_acc[...] = jnp.zeros(dv_acc.shape, _F32)

    def body(masked: bool):
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s = _scores(q, k, scale, precision)
        if masked:
            s = jnp.where(_mask(q_info, k_info, flags, bk), s, -jnp.inf)
        p = jnp.exp(s - _lane_tile(lse_ref[...], bk))  # [bq, bk]
        dv_acc[...] += lax.dot(
            p.T.astype(do.dtype), do, preferred_element_type=_F32, precision=precision
        )
        dp = lax.dot_general(do, v, _NT, preferred_element_type=_F32, precision=precision)
        ds = p * (dp - _lane_tile(delta_ref[...], bk))
        dk_acc[...] += lax.dot(
            ds.T.astype(q.dtype), q, preferred_element_type=_F32, precision=precision
        )

    @pl.when(kind == FULL)
    def _full():
        body(False)

    @pl.when(kind == PARTIAL)
    def _partial():
        body(True)

    @pl.when((gi == ng - 1) & (qi == nq - 1))
    def _finish():
        dk_ref[...] = dk_acc[...] * scale
        dv_ref[...] = dv_acc[...]


# ----------------------------------------------------------------------------------------
# Public functions.
# ----------------------------------------------------------------------------------------


def _interpret_arg(interpret, *refs):
    """What ``pallas_call(interpret=...)`` gets.

    True is Pallas's generic interpreter (a jitted scan over the grid, fast to compile),
    except inside ``shard_map(check_vma=True)`` with device-varying inputs: there its index
    maps fail to slice the (varying) scalar-prefetch table with the (non-varying) grid
    indices, so the TPU interpreter is used. A ``pltpu.InterpretParams`` selects the TPU
    interpreter (simulates SMEM/VMEM, NaN-filled scratch, raises on out-of-bounds reads;
    about 2x slower to compile).
    """
    if interpret is True:
        mats = [getattr(jax.typeof(r), "manual_axis_type", None) for r in jax.tree.leaves(refs)]
        if any(m is not None and m.varying for m in mats):
            return pltpu.InterpretParams()
    return interpret


def _check(q, k, v, q_pos, k_pos):
    if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
        raise ValueError(
            f"expected q [b, h, tq, d] and k, v [b, hk, tk, d]; found q {q.shape}, "
            f"k {k.shape}, v {v.shape}"
        )
    b, h, tq, d = q.shape
    if k.shape[0] != b or k.shape[3] != d or h % k.shape[1]:
        raise ValueError(
            f"k/v {k.shape} do not match q {q.shape} (same batch and head_dim, heads a "
            "multiple of kv_heads)"
        )
    if q_pos.shape != (b, tq) or k_pos.shape != (b, k.shape[2]):
        raise ValueError(
            f"q_pos {q_pos.shape} / k_pos {k_pos.shape} must be [b, tq] = {(b, tq)} / "
            f"[b, tk] = {(b, k.shape[2])}"
        )
    if d > NUM_LANES and d % NUM_LANES:
        raise ValueError(f"head_dim must be <= {NUM_LANES} or a multiple of it, found {d}")


def _info_specs(prep: _Prepared, bq: int, bk: int, q_tile, k_tile):
    """BlockSpecs of the lane-/sublane-replicated mask info for given tile-index maps."""
    q_specs = [pl.BlockSpec((None, bq, NUM_LANES), q_tile) for _ in prep.q_info]
    k_specs = [pl.BlockSpec((None, NUM_SUBLANES, bk), k_tile) for _ in prep.k_info]
    return q_specs, k_specs


def pair_forward(
    q, k, v, q_pos, k_pos, q_seg, k_seg, k_valid, *, causal, tokens_per_step, scale,
    block_q=None, block_k=None, interpret=False,
):
    """Attention of one query block against one key block: normalised output and lse.

    Args:
        q: ``[b, h, tq, d]`` queries (float32, bfloat16 or float16).
        k, v: ``[b, hk, tk, d]``; query head ``i`` uses K/V head ``i // (h // hk)``.
        q_pos, k_pos: ``[b, tq]`` / ``[b, tk]`` int32 global positions.
        q_seg, k_seg: ``[b, tq]`` / ``[b, tk]`` int32 segment ids, or both None.
        k_valid: ``[b, tk]`` bool (False: padding key), or None.
        causal, tokens_per_step: the (block-)causal rule on ``pos // tokens_per_step``.
        scale: softmax scale applied to the scores.
        block_q, block_k: tile lengths (multiples of 128; default min(512, padded length)).
        interpret: run on CPU in interpret mode: True for Pallas's generic interpreter,
            a ``pltpu.InterpretParams`` for the TPU interpreter.

    Returns:
        ``out [b, h, tq, d]`` float32 and ``lse [b, h, tq]`` float32; a query that sees no
        key gets zeros and ``-inf``.
    """
    _check(q, k, v, q_pos, k_pos)
    b, h, tq, d = q.shape
    hk, tk = k.shape[1], k.shape[2]
    group = h // hk
    bq, bk = _block(block_q, tq, "block_q"), _block(block_k, tk, "block_k")
    prep = _Prepared(
        q_pos, k_pos, q_seg, k_seg, k_valid, causal=causal, tps=tokens_per_step,
        bq=bq, bk=bk, tq=tq, tk=tk,
    )
    dtype = _compute_dtype(q, k, v)
    qp = pad_axis(q.astype(dtype), 2, prep.tq_p)
    kp = pad_axis(k.astype(dtype), 2, prep.tk_p)
    vp = pad_axis(v.astype(dtype), 2, prep.tk_p)
    nq, nk = prep.nq, prep.nk
    # Outputs vary over every mesh axis an input varies over (shard_map(check_vma=True)).
    vma_refs = (q, k, v, q_pos, k_pos, q_seg, k_seg, k_valid)

    def fetch_k(bi, qi, ki, table):
        return table[(bi * nq + qi) * nk + ki] >> 2

    def q_map(bi, hi, qi, ki, table):
        return bi, hi, qi, 0

    def kv_map(bi, hi, qi, ki, table):
        return bi, lax.div(hi, group), fetch_k(bi, qi, ki, table), 0

    q_specs, k_specs = _info_specs(
        prep, bq, bk,
        lambda bi, hi, qi, ki, table: (bi, qi, 0),
        lambda bi, hi, qi, ki, table: (bi, 0, fetch_k(bi, qi, ki, table)),
    )
    kernel = functools.partial(
        _fwd_kernel, n_q_info=len(prep.q_info), n_k_info=len(prep.k_info),
        flags=(prep.causal, prep.has_seg, prep.has_valid), scale=float(scale),
    )
    out, lse = pl.pallas_call(
        kernel,
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, h, nq, nk),
            in_specs=[
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                *q_specs,
                *k_specs,
            ],
            out_specs=[
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, bq, NUM_LANES), q_map),
            ],
            scratch_shapes=[
                pltpu.VMEM((bq, NUM_LANES), _F32),
                pltpu.VMEM((bq, NUM_LANES), _F32),
                pltpu.VMEM((bq, d), _F32),
            ],
        ),
        out_shape=[
            out_struct((b, h, prep.tq_p, d), _F32, *vma_refs),
            out_struct((b, h, prep.tq_p, NUM_LANES), _F32, *vma_refs),
        ],
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=_interpret_arg(interpret, *vma_refs),
        name="rl_ring_pair_forward",
    )(prep.fwd_table, qp, kp, vp, *prep.q_info, *prep.k_info)
    return out[:, :, :tq], lse[:, :, :tq, 0]


def pair_backward(
    q, k, v, do, lse, delta, q_pos, k_pos, q_seg, k_seg, k_valid, *, causal,
    tokens_per_step, scale, block_q=None, block_k=None, interpret=False,
):
    """Gradients of one (query block, key block) pair, given the full attention's lse/delta.

    Args:
        q, k, v, q_pos, k_pos, q_seg, k_seg, k_valid, causal, tokens_per_step, scale,
            block_q, block_k, interpret: as in :func:`pair_forward`.
        do: ``[b, h, tq, d]`` cotangent of the (full) attention output.
        lse: ``[b, h, tq]`` log-sum-exp of the full attention (over every key block);
            rows with ``-inf`` (no visible key anywhere) contribute nothing.
        delta: ``[b, h, tq]`` ``sum(do * out, -1)`` of the full attention output.

    Returns:
        ``dq [b, h, tq, d]``, ``dk, dv [b, hk, tk, d]``, float32; dk/dv are summed over the
        query heads of each K/V head.
    """
    _check(q, k, v, q_pos, k_pos)
    b, h, tq, d = q.shape
    hk, tk = k.shape[1], k.shape[2]
    group = h // hk
    if do.shape != q.shape or lse.shape != (b, h, tq) or delta.shape != (b, h, tq):
        raise ValueError(
            f"expected do {q.shape}, lse and delta {(b, h, tq)}; found do {do.shape}, "
            f"lse {lse.shape}, delta {delta.shape}"
        )
    bq, bk = _block(block_q, tq, "block_q"), _block(block_k, tk, "block_k")
    prep = _Prepared(
        q_pos, k_pos, q_seg, k_seg, k_valid, causal=causal, tps=tokens_per_step,
        bq=bq, bk=bk, tq=tq, tk=tk,
    )
    dtype = _compute_dtype(q, k, v, do)
    qp = pad_axis(q.astype(dtype), 2, prep.tq_p)
    dop = pad_axis(do.astype(dtype), 2, prep.tq_p)
    kp = pad_axis(k.astype(dtype), 2, prep.tk_p)
    vp = pad_axis(v.astype(dtype), 2, prep.tk_p)
    # lse = +inf makes p = exp(s - lse) = 0 for rows that see nothing and padded rows.
    lse = jnp.where(lse == -jnp.inf, jnp.inf, lse.astype(_F32))
    lse_l = pad_axis(_lanes4(lse), 2, prep.tq_p, value=jnp.inf)
    delta_l = pad_axis(_lanes4(delta.astype(_F32)), 2, prep.tq_p)
    nq, nk = prep.nq, prep.nk
    n_info = dict(n_q_info=len(prep.q_info), n_k_info=len(prep.k_info))
    flags = (prep.causal, prep.has_seg, prep.has_valid)
    operands = (qp, kp, vp, dop, lse_l, delta_l, *prep.q_info, *prep.k_info)
    vma_refs = (*operands, q_pos, k_pos, q_seg, k_seg, k_valid)

    # dq: grid (b, h, q tiles, k tiles), k tiles sequential.
    def fetch_k(bi, qi, ki, table):
        return table[(bi * nq + qi) * nk + ki] >> 2

    def q_map(bi, hi, qi, ki, table):
        return bi, hi, qi, 0

    def kv_map(bi, hi, qi, ki, table):
        return bi, lax.div(hi, group), fetch_k(bi, qi, ki, table), 0

    q_specs, k_specs = _info_specs(
        prep, bq, bk,
        lambda bi, hi, qi, ki, table: (bi, qi, 0),
        lambda bi, hi, qi, ki, table: (bi, 0, fetch_k(bi, qi, ki, table)),
    )
    row_spec = pl.BlockSpec((None, None, bq, NUM_LANES), q_map)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, flags=flags, scale=float(scale), **n_info),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, h, nq, nk),
            in_specs=[
                pl.BlockSpec((None, None, bq, d), q_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bk, d), kv_map),
                pl.BlockSpec((None, None, bq, d), q_map),
                row_spec,
                row_spec,
                *q_specs,
                *k_specs,
            ],
            out_specs=pl.BlockSpec((None, None, bq, d), q_map),
            scratch_shapes=[pltpu.VMEM((bq, d), _F32)],
        ),
        out_shape=out_struct((b, h, prep.tq_p, d), _F32, *vma_refs),
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")
        ),
        interpret=_interpret_arg(interpret, *vma_refs),
        name="rl_ring_pair_backward_dq",
    )(prep.fwd_table, *operands)

    # dk/dv: grid (b, kv heads, k tiles, group heads, q tiles), the last two sequential.
    def fetch_q(bi, ki, qi, table):
        return table[(bi * nk + ki) * nq + qi] >> 2

    def qh_map(bi, hki, ki, gi, qi, table):
        return bi, hki * group + gi, fetch_q(bi, ki, qi, table), 0

    def k_map(bi, hki, ki, gi, qi, table):
        return bi, hki, ki, 0

    q_specs, k_specs = _info_specs(
        prep, bq, bk,
        lambda bi, hki, ki, gi, qi, table: (bi, fetch_q(bi, ki, qi, table), 0),
        lambda bi, hki, ki, gi, qi, table: (bi, 0, ki),
    )
    row_spec = pl.BlockSpec((None, None, bq, NUM_LANES), qh_map)
    kv_spec = pl.BlockSpec((None, None, bk, d), k_map)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, flags=flags, scale=float(scale), **n_info),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=1,
            grid=(b, hk, nk, group, nq),
            in_specs=[
                pl.BlockSpec((None, None, bq, d), qh_map),
                kv_spec,
                kv_spec,
                pl.BlockSpec((None, None, bq, d), qh_map),
                row_spec,
                row_spec,
                *q_specs,
                *k_specs,
            ],
            out_specs=[kv_spec, kv_spec],
            scratch_shapes=[pltpu.VMEM((bk, d), _F32), pltpu.VMEM((bk, d), _F32)],
        ),
        out_shape=[out_struct((b, hk, prep.tk_p, d), _F32, *vma_refs)] * 2,
        compiler_params=pltpu.CompilerParams(
            dimension_semantics=("parallel", "parallel", "parallel", "arbitrary", "arbitrary")
        ),
        interpret=_interpret_arg(interpret, *vma_refs),
        name="rl_ring_pair_backward_dkv",
    )(prep.dkv_table, *operands)
    return dq[:, :, :tq], dk[:, :, :tk], dv[:, :, :tk]


def _lanes4(x):
    """``[b, h, t]`` -> lane-replicated ``[b, h, t, 128]``."""
    return jnp.broadcast_to(x[..., None], (*x.shape, NUM_LANES))
