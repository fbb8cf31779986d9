"""Single-device memory-efficient attention: chunk pairs, online softmax, custom VJP.

The query block is cut into query chunks and the key block into key chunks. For every
(query chunk, key chunk) pair the mask inputs decide, before any arithmetic, whether the
pair is skipped (nothing visible: no FLOPs), computed without a mask (everything visible)
or computed with a mask built from global positions (see ``masks.pair_kinds``). The
forward keeps only float32 online-softmax accumulators per query chunk; the backward
(custom VJP) recomputes the probabilities from the saved output and log-sum-exp, so no
``seq x seq`` array ever exists.

:func:`block_forward` and :func:`block_backward` fold one key block into one query block;
ring attention (ring.py) calls exactly these for each K/V block that reaches a device.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax

from rl_ring.attention import chunks as C
from rl_ring.attention import kernels as K
from rl_ring.attention.masks import FULL, PARTIAL, SKIP, TokenInfo, pair_kinds, summarize_chunks
from rl_ring.attention.masks import chunk_visible as _chunk_visible
from rl_ring.attention.options import (
    AttentionOptions,
    check_qkv,
    even_chunk,
    resolve_options,
)

_F32 = jnp.float32


@dataclass(frozen=True)
class KernelConfig:
    """Static description of one kernel call (hashable: it is a custom_vjp static argument)."""

    causal: bool
    """(Block-)causal rule on global positions."""
    tokens_per_step: int
    """Tokens of one step that see each other under ``causal``."""
    scale: float
    """Softmax scale."""
    groups: int
    """Query heads per K/V head."""
    skip_chunks: bool
    """Whether chunk pairs are classified (skip / full / partial) or all computed masked."""
    prescale: bool = True
    """Multiply q by ``scale`` once up front (exact: float32 inputs or a power-of-two scale)
    instead of multiplying every score block (a full extra pass over each block)."""
    axis_name: str | None = None
    """Ring axis (ring.py only)."""
    axis_size: int = 1
    """Devices on the ring axis (ring.py only)."""
    overlap_grads: bool = True
    """Ring backward: overlap the dK/dV transfer with compute (ring.py only)."""

    @property
    def score_scale(self) -> float:
        """Factor the kernels apply to q.k (1 when q is pre-scaled)."""
        return 1.0 if self.prescale else self.scale

    @property
    def dq_scale(self) -> float:
        """Factor from the gradient of the (pre-scaled) query operand to dq."""
        return self.scale if self.prescale else 1.0

    @property
    def mask_kwargs(self) -> dict:
        return {"causal": self.causal, "tokens_per_step": self.tokens_per_step}

    def has_mask(self, q_info: TokenInfo, k_info: TokenInfo) -> bool:
        return self.causal or q_info.seg is not None or k_info.valid is not None


# ----------------------------------------------------------------------------------------
# Internal layout: [num_chunks, batch, kv_heads, chunk * groups, head_dim].
# ----------------------------------------------------------------------------------------


def to_chunks(x: jnp.ndarray, chunk: int, kv_heads: int) -> jnp.ndarray:
    """``[b, t, h, d]`` -> ``[t/chunk, b, kv_heads, chunk * h/kv_heads, d]`` (t % chunk == 0)."""
    b, t, h, d = x.shape
    g = h // kv_heads
    x = x.reshape(b, t // chunk, chunk, kv_heads, g, d)
    return x.transpose(1, 0, 3, 2, 4, 5).reshape(t // chunk, b, kv_heads, chunk * g, d)


def from_chunks(x: jnp.ndarray, heads: int) -> jnp.ndarray:
    """Inverse of :func:`to_chunks`: ``[n, b, kv_heads, chunk*g, d]`` -> ``[b, n*chunk, h, d]``."""
    n, b, hk, rows, d = x.shape
    g = heads // hk
    x = x.reshape(n, b, hk, rows // g, g, d).transpose(1, 0, 3, 2, 4, 5)
    return x.reshape(b, n * (rows // g), heads, d)


def info_to_chunks(info: TokenInfo, chunk: int) -> TokenInfo:
    """``[b, t]`` token info -> ``[t/chunk, b, chunk]``."""

    def split(a):
        b, t = a.shape
        return a.reshape(b, t // chunk, chunk).transpose(1, 0, 2)

    return jax.tree.map(split, info)


def _pad_seq(x: jnp.ndarray, length: int, mode: str = "constant") -> jnp.ndarray:
    if x.shape[1] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, length - x.shape[1])
    return jnp.pad(x, pad, mode=mode)


def chunk_len(requested: int | None, length: int) -> int:
    """Chunk length actually used: the request clamped to the block length, or (None) the
    block split evenly into chunks of at most the backend default."""
    if requested is None:
        return even_chunk(length)
    return max(1, min(requested, length))


def prepare_queries(q: jnp.ndarray, info: TokenInfo, chunk: int, kv_heads: int):
    """Pads the block to a multiple of ``chunk`` and chunks it (padded queries repeat the
    last token's position and segment so they never widen a chunk's ranges; their outputs
    are dropped)."""
    t = q.shape[1]
    tp = -(-t // chunk) * chunk
    q = _pad_seq(q, tp)
    seg = None if info.seg is None else _pad_seq(info.seg, tp, "edge")
    info = TokenInfo(_pad_seq(info.pos, tp, "edge"), seg)
    return to_chunks(q, chunk, kv_heads), info_to_chunks(info, chunk)


def prepare_keys(k: jnp.ndarray, v: jnp.ndarray, info: TokenInfo, chunk: int):
    """Pads keys/values to a multiple of ``chunk`` (padding keys marked invalid) and chunks them."""
    t, hk = k.shape[1], k.shape[2]
    tp = -(-t // chunk) * chunk
    valid = info.valid
    if tp != t:
        if valid is None:
            valid = match_varying(jnp.ones(info.pos.shape, bool), info.pos)
        valid = _pad_seq(valid, tp)  # pads with False
    info = TokenInfo(
        _pad_seq(info.pos, tp, "edge"),
        None if info.seg is None else _pad_seq(info.seg, tp, "edge"),
        None if valid is None else valid.astype(bool),
    )
    kc = to_chunks(_pad_seq(k, tp), chunk, hk)
    vc = to_chunks(_pad_seq(v, tp), chunk, hk)
    return kc, vc, info_to_chunks(info, chunk)


# ----------------------------------------------------------------------------------------
# Zeros that carry the same "varying over mesh axes" type as the arrays they combine with,
# so loop carries type-check under shard_map(check_vma=True).
# ----------------------------------------------------------------------------------------


def _varying_axes(x) -> frozenset:
    aval = jax.typeof(x)
    mat = getattr(aval, "manual_axis_type", None)
    if mat is not None:
        return frozenset(mat.varying)
    return frozenset(getattr(aval, "vma", ()))


def match_varying(x: jnp.ndarray, *refs) -> jnp.ndarray:
    """``x`` marked varying over every mesh axis any of ``refs`` varies over."""
    want = frozenset().union(*(_varying_axes(r) for r in jax.tree.leaves(refs)))
    missing = want - _varying_axes(x)
    if missing:
        x = lax.pcast(x, tuple(sorted(missing)), to="varying")
    return x


def init_state(q: jnp.ndarray, k: jnp.ndarray) -> C.SoftmaxState:
    """Empty online-softmax state for chunked queries ``q`` ``[nq, b, h, rows, d]``."""
    state = C.empty_state(q.shape[:-1], q.shape[-1])
    return jax.tree.map(lambda a: match_varying(a, q, k), state)


def zero_count(*refs) -> jnp.ndarray:
    """A chunk-pair counter (int32 scalar) typed like ``refs``."""
    return match_varying(jnp.zeros((), jnp.int32), *refs)


# ----------------------------------------------------------------------------------------
# One query block against one key block.
# ----------------------------------------------------------------------------------------


def block_kinds(q_info: TokenInfo, k_info: TokenInfo, cfg: KernelConfig) -> jnp.ndarray | None:
    """``[nq, nk]`` SKIP/FULL/PARTIAL per chunk pair; None when every pair is FULL."""
    if not cfg.has_mask(q_info, k_info):
        return None
    nq, nk = q_info.pos.shape[0], k_info.pos.shape[0]
    if not cfg.skip_chunks:
        return jnp.full((nq, nk), PARTIAL, jnp.int32)
    qs = summarize_chunks(q_info, cfg.tokens_per_step)
    ks = summarize_chunks(k_info, cfg.tokens_per_step)
    return pair_kinds(qs, ks, causal=cfg.causal)


def _index(tree, i):
    return jax.tree.map(lambda a: lax.dynamic_index_in_dim(a, i, keepdims=False), tree)


def _update(tree, values, i):
    return jax.tree.map(lambda a, x: lax.dynamic_update_index_in_dim(a, x, i, 0), tree, values)


def _switch(kinds, i, j, skip, full, partial, *operands):
    """Runs the branch of pair (i, j): skip, full (no mask) or partial (mask)."""
    if kinds is None:
        return full(*operands)
    branches = [None, None, None]
    branches[SKIP], branches[FULL], branches[PARTIAL] = skip, full, partial
    return lax.switch(kinds[i, j], branches, *operands)


def block_forward(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    q_info: TokenInfo,
    k_info: TokenInfo,
    state: C.SoftmaxState,
    count: jnp.ndarray,
    cfg: KernelConfig,
) -> tuple[C.SoftmaxState, jnp.ndarray]:
    """Folds one key/value block into the online-softmax state of one query block.

    Args:
        q: ``[nq, b, hk, q_chunk * groups, d]`` chunked queries from :func:`scaled_queries`.
        k, v: ``[nk, b, hk, k_chunk, d]`` chunked keys / values.
        q_info: ``[nq, b, q_chunk]`` query positions / segments.
        k_info: ``[nk, b, k_chunk]`` key positions / segments / validity.
        state: ``[nq, b, hk, rows(, d)]`` float32 running state.
        count: int32 number of chunk pairs computed so far (skipped pairs add nothing).
        cfg: static kernel configuration.

    Returns:
        The updated state and count.
    """
    kinds = block_kinds(q_info, k_info, cfg)

    def q_step(i, carry):
        state, count = carry
        qi, qi_info, st = _index(q, i), _index(q_info, i), _index(state, i)

        def k_step(j, c):
            kj, vj = _index(k, j), _index(v, j)

            def full(st, n):
                s = C.chunk_scores(qi, kj, cfg.score_scale)
                # Every score is finite here, so no row can be empty after this update.
                return C.online_update(st, s, vj, maybe_empty=False), n + 1

            def partial(st, n):
                mask = _chunk_visible(qi_info, _index(k_info, j), **cfg.mask_kwargs)
                s = C.mask_scores(C.chunk_scores(qi, kj, cfg.score_scale), mask, cfg.groups)
                return C.online_update(st, s, vj, maybe_empty=True), n + 1

            return _switch(kinds, i, j, lambda st, n: (st, n), full, partial, *c)

        st, count = lax.fori_loop(0, k.shape[0], k_step, (st, count))
        return _update(state, st, i), count

    return lax.fori_loop(0, q.shape[0], q_step, (state, count))


def block_backward(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    do: jnp.ndarray,
    lse: jnp.ndarray,
    delta: jnp.ndarray,
    q_info: TokenInfo,
    k_info: TokenInfo,
    dq_t: jnp.ndarray,
    count: jnp.ndarray,
    cfg: KernelConfig,
    dkv: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Gradient contributions of one key/value block to one query block.

    Args:
        q: ``[nq, b, hk, rows, d]`` chunked queries from :func:`scaled_queries`.
        k, v: ``[nk, b, hk, k_chunk, d]``.
        do: ``[nq, b, hk, rows, d]`` chunked output cotangents.
        lse: ``[nq, b, hk, rows]`` from :func:`rl_ring.attention.chunks.backward_lse`.
        delta: ``[nq, b, hk, rows]`` float32 ``sum(do * out, -1)``.
        q_info, k_info: chunked token info as in :func:`block_forward`.
        dq_t: ``[nq, b, hk, d, rows]`` float32 running query gradient, transposed and not
            yet scaled (see :func:`finish_dq`); added to.
        count: int32 chunk pairs computed so far.
        cfg: static kernel configuration.
        dkv: ``[2, nk, b, hk, k_chunk, d]`` float32 stacked dK and dV to add this block's
            contribution to (default zeros).

    Returns:
        ``(dq_t, dkv, count)`` with ``dkv`` ``[2, nk, b, hk, k_chunk, d]`` float32.
    """
    kinds = block_kinds(q_info, k_info, cfg)
    if dkv is None:
        dkv = match_varying(jnp.zeros((2, *k.shape), _F32), q, k, dq_t)

    def k_step(j, carry):
        dq_t, dkv, count = carry
        kj, vj, kj_info = _index(k, j), _index(v, j), _index(k_info, j)
        kj_t = jnp.swapaxes(kj, 2, 3)

        def q_step(i, c):
            dq_t, dkj, dvj, n = c

            def run(mask_t, dqi, dkj, dvj, n):
                dq_c, dk_c, dv_c = C.chunk_backward_t(
                    _index(q, i), kj, kj_t, vj, _index(do, i), _index(lse, i), _index(delta, i),
                    mask_t, scale=cfg.score_scale, groups=cfg.groups,
                )
                return dqi + dq_c, dkj + dk_c, dvj + dv_c, n + 1

            def partial(*c):
                mask = _chunk_visible(_index(q_info, i), kj_info, **cfg.mask_kwargs)
                return run(jnp.swapaxes(mask, 2, 3), *c)

            # Only this chunk's slices go through the switch: a large carried buffer passed
            # through a conditional is copied on every call.
            dqi, dkj, dvj, n = _switch(
                kinds, i, j, lambda *c: c, lambda *c: run(None, *c), partial,
                _index(dq_t, i), dkj, dvj, n,
            )
            return lax.dynamic_update_index_in_dim(dq_t, dqi, i, 0), dkj, dvj, n

        dkv_j = lax.dynamic_index_in_dim(dkv, j, axis=1, keepdims=False)
        start = (dq_t, dkv_j[0], dkv_j[1], count)
        dq_t, dkj, dvj, count = lax.fori_loop(0, q.shape[0], q_step, start)
        dkv = lax.dynamic_update_index_in_dim(dkv, jnp.stack([dkj, dvj]), j, 1)
        return dq_t, dkv, count

    return lax.fori_loop(0, k.shape[0], k_step, (dq_t, dkv, count))


def scaled_queries(q: jnp.ndarray, cfg: KernelConfig) -> jnp.ndarray:
    """``q * scale`` when the config pre-scales queries (see ``KernelConfig.prescale``)."""
    if not cfg.prescale or cfg.scale == 1.0:
        return q
    return (q.astype(_F32) * cfg.scale).astype(q.dtype)


def zero_dq_t(q: jnp.ndarray, *refs) -> jnp.ndarray:
    """Zero transposed query-gradient accumulator ``[nq, b, hk, d, rows]`` (float32)."""
    shape = (*q.shape[:-2], q.shape[-1], q.shape[-2])
    return match_varying(jnp.zeros(shape, _F32), q, *refs)


def finish_dq(dq_t: jnp.ndarray, cfg: KernelConfig, dtype) -> jnp.ndarray:
    """``[nq, b, hk, d, rows]`` accumulator -> dq ``[nq, b, hk, rows, d]`` in ``dtype``."""
    dq = jnp.swapaxes(dq_t, -1, -2)
    if cfg.dq_scale != 1.0:
        dq = dq * cfg.dq_scale
    return dq.astype(dtype)


def output_delta(out: jnp.ndarray, do: jnp.ndarray) -> jnp.ndarray:
    """``sum(do * out, -1)`` in float32: the softmax backward's row correction."""
    return jnp.sum(do.astype(_F32) * out.astype(_F32), axis=-1)


# ----------------------------------------------------------------------------------------
# Blockwise attention (one block of queries against one block of keys, with custom VJP).
# ----------------------------------------------------------------------------------------


def _forward(q, k, v, q_info, k_info, cfg):
    state, count = block_forward(
        scaled_queries(q, cfg), k, v, q_info, k_info, init_state(q, k), zero_count(q, k), cfg
    )
    out, lse = C.finalize(state)
    return out.astype(q.dtype), lse, count


def _backward(q, k, v, out, lse, do, q_info, k_info, cfg):
    dq_t, dkv, count = block_backward(
        scaled_queries(q, cfg), k, v, do, C.backward_lse(lse), output_delta(out, do),
        q_info, k_info, zero_dq_t(q, k), zero_count(q, k), cfg,
    )
    return finish_dq(dq_t, cfg, q.dtype), dkv[0].astype(k.dtype), dkv[1].astype(v.dtype), count


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _blockwise_chunked(q, k, v, q_info, k_info, cfg):
    return _forward(q, k, v, q_info, k_info, cfg)[0]


def _blockwise_chunked_fwd(q, k, v, q_info, k_info, cfg):
    # Ties the masks' inputs to q/k/v: inside a scan over layers, JAX would otherwise hoist
    # the loop-invariant mask work out of the scan and store every chunk pair's mask at once
    # (a [T, T] buffer). The barrier is an identity.
    q, k, v, q_info, k_info = lax.optimization_barrier((q, k, v, q_info, k_info))
    out, lse, _ = _forward(q, k, v, q_info, k_info, cfg)
    return out, (q, k, v, out, lse, q_info, k_info)


def _blockwise_chunked_bwd(cfg, res, do):
    q, k, v, out, lse, q_info, k_info = res
    dq, dk, dv, _ = _backward(q, k, v, out, lse, do, q_info, k_info, cfg)
    return dq, dk, dv, None, None


_blockwise_chunked.defvjp(_blockwise_chunked_fwd, _blockwise_chunked_bwd)


# ----------------------------------------------------------------------------------------
# The same with the fused Pallas kernels (AttentionOptions.kernel="pallas"): one pair call.
# ----------------------------------------------------------------------------------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pallas_attention(q, k, v, info, spec):
    """``[b, h, t, d]`` attention by the fused kernels; saves only out and lse for the VJP."""
    return K.forward(spec, q, k, v, info, info)[0].astype(q.dtype)


def _pallas_attention_fwd(q, k, v, info, spec):
    out, lse = K.forward(spec, q, k, v, info, info)
    out = out.astype(q.dtype)
    return out, (q, k, v, out, lse, info)


def _pallas_attention_bwd(spec, res, do):
    q, k, v, out, lse, info = res
    dq, dk, dv = K.backward(spec, q, k, v, do, lse, output_delta(out, do), info, info)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_pallas_attention.defvjp(_pallas_attention_fwd, _pallas_attention_bwd)


def token_info(b, t, *, segment_ids=None, positions=None, kv_mask=None) -> TokenInfo:
    """TokenInfo ``[b, t]`` from the public keyword arguments (positions default arange)."""
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return TokenInfo(
        jnp.asarray(positions, jnp.int32),
        None if segment_ids is None else jnp.asarray(segment_ids, jnp.int32),
        None if kv_mask is None else jnp.asarray(kv_mask, bool),
    )


def kernel_config(q, k, *, causal, tokens_per_step, options: AttentionOptions, **ring):
    """Static kernel configuration of a call (ring fields passed through)."""
    d = q.shape[-1]
    scale = float(options.scale if options.scale is not None else d**-0.5)
    # Pre-scaling q rounds it once more unless it is float32 or the scale a power of two.
    exact = jnp.dtype(q.dtype) == jnp.float32 or math.log2(scale).is_integer()
    return KernelConfig(
        causal=bool(causal), tokens_per_step=int(tokens_per_step), scale=scale,
        groups=q.shape[2] // k.shape[2], skip_chunks=options.skip_chunks, prescale=exact,
        overlap_grads=options.overlap_grads, **ring,
    )


def blockwise_attention(
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
    """Memory-efficient attention on one device, same semantics as ``reference_attention``.

    Args:
        q: ``[batch, seq, heads, head_dim]``.
        k, v: ``[batch, seq, kv_heads, head_dim]``; ``heads`` a multiple of ``kv_heads``.
        causal: (block-)causal mask from global positions.
        segment_ids: ``[batch, seq]`` int; tokens attend only within their segment.
        tokens_per_step: tokens of one step that see each other under ``causal``.
        positions: ``[batch, seq]`` global positions of the tokens (default ``arange(seq)``).
        kv_mask: ``[batch, seq]`` bool, False for padding keys.
        options: chunk sizes, scale etc. (:class:`AttentionOptions`);
        **option_overrides: fields of AttentionOptions to override, e.g. ``q_chunk=256``.

    Returns:
        ``[batch, seq, heads, head_dim]`` in the dtype of ``q`` (accumulated in float32).
    """
    options = resolve_options(options, option_overrides)
    b, t, h, hk, _ = check_qkv(
        q, k, v, segment_ids=segment_ids, positions=positions, kv_mask=kv_mask,
        tokens_per_step=tokens_per_step,
    )
    info = token_info(b, t, segment_ids=segment_ids, positions=positions, kv_mask=kv_mask)
    if K.resolve_kernel(options.kernel) == "pallas":
        spec = K.kernel_spec(q, causal=causal, tokens_per_step=tokens_per_step, options=options)
        hf = K.heads_first
        return hf(_pallas_attention(hf(q), hf(k), hf(v), info, spec))
    cfg = kernel_config(q, k, causal=causal, tokens_per_step=tokens_per_step, options=options)
    qc, q_info = prepare_queries(q, info, chunk_len(options.q_chunk, t), hk)
    kc, vc, k_info = prepare_keys(k, v, info, chunk_len(options.k_chunk, t))
    out = _blockwise_chunked(qc, kc, vc, q_info, k_info, cfg)
    return from_chunks(out, h)[:, :t]
