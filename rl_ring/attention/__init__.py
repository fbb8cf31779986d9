"""Attention for rl_ring: one signature, one mask semantics, several implementations.

``attention(q, k, v, impl=...)`` is the seam the model calls. ``impl`` picks:
- ``"reference"``: dense softmax attention (the oracle; O(seq^2) memory);
- ``"blockwise"``: single-device, memory-efficient (chunk pairs, online softmax, custom VJP);
- ``"ring"``: sequence-parallel over the mesh's ``seq`` axis (K/V blocks travel the ring);
- ``"allgather"``: sequence-parallel, every device gathers the whole K/V (``allgather.py``);
- ``"ulysses"``: sequence-parallel by an all-to-all to a head split (``ulysses.py``);
- ``"auto"``: one of the above by :func:`rl_ring.attention.strategy.choose_impl`.

Tensors are ``[batch, seq, heads, head_dim]``; k/v may have fewer heads (grouped K/V).
Masks come from global token positions (see ``masks.py``). ``layout`` picks how the ring
spreads tokens over devices for causal load balance (see ``layout.py``): by default the
inputs are in their natural order and the dispatcher permutes and unpermutes them itself, so
every layout gives the same numbers; ``permuted_inputs=True`` is the fast path for callers
that keep their tokens permuted (the training loader permutes each batch once).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from rl_ring.attention import kernels as K
from rl_ring.attention.allgather import allgather_attention
from rl_ring.attention.blockwise import blockwise_attention
from rl_ring.attention.chunks import attend_chunk, chunk_backward, combine
from rl_ring.attention.layout import (
    LAYOUTS,
    block_work,
    check_layout,
    layout_positions,
    permute,
    unpermute,
)
from rl_ring.attention.options import (
    AttentionOptions,
    check_qkv,
    default_chunk,
    resolve_options,
    with_chunk_cap,
)
from rl_ring.attention.reference import reference_attention
from rl_ring.attention.ring import ring_attention
from rl_ring.attention.strategy import choose_impl
from rl_ring.attention.ulysses import ulysses_attention
from rl_ring.sharding import BATCH_AXES, TENSOR, make_mesh

# The context-parallel strategies: each runs inside shard_map over the sequence axis.
SHARDED = {"ring": ring_attention, "allgather": allgather_attention,
           "ulysses": ulysses_attention}
IMPLS = ("reference", "blockwise", *SHARDED, "auto")


def attention(
    q: jnp.ndarray,
    k: jnp.ndarray,
    v: jnp.ndarray,
    *,
    impl: str = "reference",
    mesh: Mesh | None = None,
    causal: bool = False,
    segment_ids: jnp.ndarray | None = None,
    tokens_per_step: int = 1,
    layout: str = "contiguous",
    permuted_inputs: bool = False,
    positions: jnp.ndarray | None = None,
    kv_mask: jnp.ndarray | None = None,
    options: AttentionOptions | None = None,
    **option_overrides,
) -> jnp.ndarray:
    """Attention over ``[batch, seq, heads, head_dim]`` tensors, by the chosen implementation.

    Works eagerly and inside ``jit`` (with inputs sharded or not). For the sequence-parallel
    impls (``"ring"``, ``"allgather"``, ``"ulysses"``) the call wraps ``jax.shard_map``
    itself: batch over the mesh's (data, fsdp) axes, sequence over ``seq``, heads over
    ``tensor`` when both head counts divide by its size (else heads are replicated over it).
    Called inside a ``shard_map`` that is already manual over ``seq``, it takes the arrays
    as local shards and runs the strategy directly.

    Args:
        q: ``[batch, seq, heads, head_dim]``.
        k, v: ``[batch, seq, kv_heads, head_dim]`` with ``heads % kv_heads == 0``.
        impl: ``"reference"``, ``"blockwise"``, ``"ring"``, ``"allgather"``, ``"ulysses"``
            or ``"auto"`` (:func:`~rl_ring.attention.strategy.choose_impl` on the sizes and
            the ``seq`` axis size: the mesh's, or the enclosing ``shard_map``'s; without
            either, one device: ``"blockwise"``).
        mesh: mesh for the sequence-parallel impls (default: every device on the ``seq``
            axis); for the others only its ``seq`` size is used, as the shard count of
            ``layout``.
        causal: (block-)causal mask on global positions.
        segment_ids: ``[batch, seq]`` int; tokens attend only within their segment.
        tokens_per_step: tokens of one environment step that see each other under ``causal``.
        layout: ``"contiguous"``, ``"zigzag"`` or ``"striped"``: how the sequence-parallel
            impls place tokens on devices (see ``rl_ring.attention.layout``). With
            natural-order inputs (the default) the result does not depend on it; only the
            work balance does (``"ulysses"``, balanced anyway, then skips the permutation).
        permuted_inputs: the fast path: q/k/v, ``segment_ids``, ``kv_mask`` and
            ``positions`` are already in ``layout`` order (``layout.permute``), and the
            output comes back in that order. Inside a ``shard_map`` over the sequence axis a
            non-contiguous layout needs it (local shards cannot be permuted globally).
        positions: ``[batch, seq]`` int global positions (original order) of the tokens, in
            the order the inputs are given. Default: ``0 .. seq-1``, or with
            ``permuted_inputs`` ``layout_positions(seq, num_shards, layout)`` where the shard
            count is the mesh's ``seq`` size, else ``options.num_shards``.
        kv_mask: ``[batch, seq]`` bool, False for padding keys.
        options: :class:`AttentionOptions` (chunk sizes, scale, shard count, ring axis).
        **option_overrides: fields of AttentionOptions, e.g. ``q_chunk=256``.

    Returns:
        ``[batch, seq, heads, head_dim]`` in the dtype of ``q`` (float32 accumulation).

    Raises:
        ValueError: bad shapes, an unknown impl or layout, a mesh without the sequence axis,
            a sequence length that the shard count does not divide, or (``"ulysses"``) query
            heads that the shard count does not divide.
    """
    options = resolve_options(options, option_overrides)
    if impl not in IMPLS:
        raise ValueError(f"attention: impl={impl!r} is not one of {IMPLS}")
    b, t, h, hk, _ = check_qkv(
        q, k, v, segment_ids=segment_ids, positions=positions, kv_mask=kv_mask,
        tokens_per_step=tokens_per_step,
    )
    if layout not in LAYOUTS:
        raise ValueError(f"attention: layout={layout!r} is not one of {LAYOUTS}")
    if impl == "auto":
        impl = _auto_impl(q, k, mesh, options)
    semantics = dict(
        causal=causal, segment_ids=segment_ids, tokens_per_step=tokens_per_step, kv_mask=kv_mask
    )
    if impl in SHARDED:
        if layout != "contiguous" and not permuted_inputs:
            if impl == "ulysses":
                # Every device attends the whole sequence of its heads: the work is balanced
                # in any order, so natural-order inputs run as they are.
                layout = "contiguous"
            else:
                return _sharded_natural(impl, q, k, v, mesh, layout, positions, options,
                                        semantics)
        return _sharded(impl, q, k, v, mesh, layout, positions, options, semantics)
    if not permuted_inputs:
        layout = "contiguous"  # one device: the order changes nothing but the chunking
    n = _shard_count(mesh, options, layout, have_positions=positions is not None)
    if positions is None:
        positions = _default_positions(b, t, layout, n)
    options = _zigzag_chunk_cap(options, layout, t, n)
    if impl == "reference":
        return reference_attention(q, k, v, positions=positions, scale=options.scale, **semantics)
    return blockwise_attention(q, k, v, positions=positions, options=options, **semantics)


def _auto_impl(q, k, mesh: Mesh | None, options: AttentionOptions) -> str:
    """The impl ``choose_impl`` picks for these shapes on the sequence axis in use."""
    b, t, h, d = q.shape
    hk = k.shape[2]
    axis = options.axis_name
    if axis in _manual_axes():
        n = int(lax.axis_size(axis))
        t = t * n  # local shards: the whole sequence is n blocks
    elif mesh is not None:
        _check_mesh(mesh, axis)
        n = int(mesh.shape[axis])
        n_tensor = int(mesh.shape[TENSOR]) if TENSOR in mesh.axis_names and TENSOR != axis else 1
        if n_tensor > 1 and h % n_tensor == 0 and hk % n_tensor == 0:
            h, hk = h // n_tensor, hk // n_tensor  # the heads of one device's shard_map
        n_batch = math.prod(int(mesh.shape[a]) for a in BATCH_AXES
                            if a in mesh.axis_names and a != axis)
        b = max(1, b // n_batch)
    else:
        n = 1
    return choose_impl(seq_len=t, num_devices=n, heads=h, kv_heads=hk, head_dim=d, batch=b,
                       backend=jax.default_backend(), dtype_bytes=jnp.dtype(q.dtype).itemsize)


def _shard_count(
    mesh: Mesh | None, options: AttentionOptions, layout: str, have_positions: bool = False
) -> int:
    """Shard count that defines ``layout``: from the options, the mesh, or 1 when the caller
    gives the tokens' positions itself (then the layout only tunes chunking)."""
    if layout not in LAYOUTS:
        raise ValueError(f"attention: layout={layout!r} is not one of {LAYOUTS}")
    if options.num_shards is not None:
        return options.num_shards
    if mesh is not None:
        _check_mesh(mesh, options.axis_name)
        return int(mesh.shape[options.axis_name])
    if layout != "contiguous" and not have_positions:
        raise ValueError(
            f"attention: layout={layout!r} without a mesh needs the shard count that defines it: "
            f"pass positions=, mesh= or num_shards= (AttentionOptions.num_shards)"
        )
    return 1


def _zigzag_chunk_cap(options: AttentionOptions, layout: str, t: int, n: int):
    """Unset chunk lengths at most ``t / 2n`` under zigzag, so that no chunk straddles the two
    contiguous halves a device holds (a straddling chunk spans most of the sequence and can
    never be skipped under a causal mask)."""
    if layout != "zigzag" or n < 2 or t % (2 * n) != 0:
        return options
    return with_chunk_cap(options, t // (2 * n))


def _default_positions(b: int, t: int, layout: str, num_shards: int) -> jnp.ndarray:
    pos = jnp.asarray(layout_positions(t, num_shards, layout))
    return jnp.broadcast_to(pos, (b, t))


def _check_mesh(mesh: Mesh, axis: str) -> None:
    if axis not in mesh.axis_names:
        raise ValueError(
            f"attention: mesh has axes {tuple(mesh.axis_names)} but no {axis!r} axis to run "
            f"sequence-parallel attention over (build it with rl_ring.sharding.make_mesh)"
        )


def _manual_axes() -> frozenset:
    try:
        return frozenset(jax.sharding.get_abstract_mesh().manual_axes)
    except AttributeError:  # no abstract mesh API: never inside shard_map as far as we know
        return frozenset()


def _sharded_natural(impl, q, k, v, mesh, layout, positions, options, semantics):
    """A sequence-parallel impl over natural-order inputs: permute into ``layout``, run,
    unpermute."""
    axis = options.axis_name
    if axis in _manual_axes():
        raise ValueError(
            f"attention(impl={impl!r}, layout={layout!r}) inside shard_map over {axis!r}: the "
            "arrays are local shards and cannot be permuted here; permute the global arrays "
            "with rl_ring.attention.layout.permute before shard_map and pass "
            "permuted_inputs=True (or use layout='contiguous')"
        )
    mesh = make_mesh() if mesh is None else mesh
    _check_mesh(mesh, axis)
    n = int(mesh.shape[axis])
    b, t = q.shape[:2]
    check_layout(layout, t, n)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    perm = lambda x: None if x is None else permute(x, n, layout)
    semantics = {**semantics, "segment_ids": perm(semantics["segment_ids"]),
                 "kv_mask": perm(semantics["kv_mask"])}
    out = _sharded(impl, perm(q), perm(k), perm(v), mesh, layout, perm(positions), options,
                   semantics)
    return unpermute(out, n, layout)


def _sharded(impl, q, k, v, mesh, layout, positions, options, semantics):
    """Runs ``SHARDED[impl]`` on local shards: directly inside ``shard_map`` over the
    sequence axis, else wrapped in one over ``mesh``."""
    local_fn = SHARDED[impl]
    b, t, h, d = q.shape
    hk = k.shape[2]
    axis = options.axis_name
    if axis in _manual_axes():
        # Already inside shard_map over the sequence axis: the arrays are this device's shards.
        n = int(lax.axis_size(axis))
        options = _zigzag_chunk_cap(options, layout, t * n, n)
        if positions is None:
            check_layout(layout, t * n, n)
            pos = jnp.asarray(layout_positions(t * n, n, layout))
            pos = lax.dynamic_slice_in_dim(pos, lax.axis_index(axis) * t, t)
            positions = jnp.broadcast_to(pos, (b, t))
        return local_fn(q, k, v, positions=positions, options=options, **semantics)

    mesh = make_mesh() if mesh is None else mesh
    _check_mesh(mesh, axis)
    n = int(mesh.shape[axis])
    if t % n != 0:
        raise ValueError(
            f"attention(impl={impl!r}): sequence length {t} of q {q.shape} is not divisible by "
            f"the {n} devices of mesh axis {axis!r}; pad the sequence to a multiple of {n}"
        )
    check_layout(layout, t, n)
    if positions is None:
        positions = _default_positions(b, t, layout, n)
    options = _zigzag_chunk_cap(options, layout, t, n)
    batch_axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names and a != axis)
    n_batch = math.prod(int(mesh.shape[a]) for a in batch_axes)
    if b % n_batch != 0:
        raise ValueError(
            f"attention(impl={impl!r}): batch {b} of q {q.shape} is not divisible by the "
            f"{n_batch} devices of mesh axes {batch_axes}"
        )
    n_tensor = int(mesh.shape[TENSOR]) if TENSOR in mesh.axis_names and TENSOR != axis else 1
    head_axis = TENSOR if n_tensor > 1 and h % n_tensor == 0 and hk % n_tensor == 0 else None
    qkv_spec = PartitionSpec(batch_axes or None, axis, head_axis, None)
    tok_spec = PartitionSpec(batch_axes or None, axis)

    names = [name for name in ("segment_ids", "kv_mask") if semantics[name] is not None]
    args = [q, k, v, positions] + [semantics[name] for name in names]
    static = {key: val for key, val in semantics.items() if key not in names}

    def local(q, k, v, positions, *masks):
        given = dict(zip(names, masks, strict=True))
        return local_fn(q, k, v, positions=positions, options=options, **static, **given)

    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(qkv_spec,) * 3 + (tok_spec,) * (1 + len(names)),
        # JAX's Pallas interpreter cannot index operands typed as varying over mesh axes
        # (kernels.check_interpretable): interpreted kernels run without the type check.
        out_specs=qkv_spec, check_vma=not K.interpreted(options),
    )
    return fn(*args)


__all__ = [
    "IMPLS",
    "LAYOUTS",
    "SHARDED",
    "AttentionOptions",
    "allgather_attention",
    "attend_chunk",
    "attention",
    "block_work",
    "blockwise_attention",
    "choose_impl",
    "chunk_backward",
    "combine",
    "default_chunk",
    "layout_positions",
    "permute",
    "reference_attention",
    "ring_attention",
    "ulysses_attention",
    "unpermute",
]
