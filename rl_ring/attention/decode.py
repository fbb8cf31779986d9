"""New query tokens against a preallocated key/value cache (KV-cached decoding).

A cache holds ``capacity`` slots per batch row. Row ``b`` has filled slots
``0 .. length[b]-1``; each slot remembers the global position of its token. A decode step
brings ``m`` new tokens per row, of which the first ``num_new[b]`` are real: they are
written to slots ``length[b] .. length[b] + num_new[b] - 1`` and then every new query
attends to the row's filled slots (the new ones included) under the causal rule of
``rl_ring.attention.masks`` on global positions, so the new tokens see each other causally.
Rows with ``num_new = 0`` write nothing (an idle evaluation row); their outputs are
meaningless and must be ignored. All shapes are fixed by ``(batch, m, capacity)``, so a
jitted decode step compiles once and never again as the context grows.

Layouts (the cache keeps the kernels' internal layout, so no step transposes it):

- cache keys and values ``[layers, batch, kv_heads, capacity, head_dim]`` (one buffer for
  all layers of a model; ``layer`` picks one);
- cache positions ``[batch, capacity]`` int32 and lengths ``[batch]`` int32;
- new queries ``[batch, m, heads, head_dim]``, new keys/values ``[batch, m, kv_heads,
  head_dim]`` as everywhere else in ``rl_ring.attention``.

The attention walks the cache chunk by chunk with the online softmax of ``chunks.py`` and
stops after the last chunk any row has filled, so a step costs time linear in the filled
length, not the capacity.

**Sequence-sharded cache.** With a mesh whose ``seq`` axis has ``n`` devices, slot ``s``
lives on device ``s // (capacity / n)``. Under ``jax.shard_map`` each device writes the
new keys/values whose slots it owns, attends the (replicated) new queries to its own slots,
and the partial results are merged by one log-sum-exp reduction across the axis
(``pmax`` of the log-sum-exps, then ``psum`` of the weighted outputs and weights): two small
collectives per layer and step, whatever ``n``. Batch rows are split over the mesh's
batch axes as in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from rl_ring.attention import chunks as C
from rl_ring.attention.blockwise import match_varying
from rl_ring.attention.masks import visible
from rl_ring.attention.options import default_chunk
from rl_ring.sharding import BATCH_AXES, SEQ


@dataclass(frozen=True)
class DecodeOptions:
    """Tuning knobs of cached attention (the semantics are fixed: causal on positions)."""

    k_chunk: int | None = None
    """Cache slots per chunk of the online softmax (None: the backend's default chunk,
    capped to a divisor of each device's share of the cache)."""
    scale: float | None = None
    """Softmax scale; None means ``head_dim ** -0.5``."""
    axis_name: str = SEQ
    """Mesh axis the cache is sharded over."""

    def __post_init__(self):
        if self.k_chunk is not None and (not isinstance(self.k_chunk, int) or self.k_chunk < 1):
            raise ValueError(f"DecodeOptions.k_chunk must be a positive int, got {self.k_chunk!r}")
        if self.scale is not None and not self.scale > 0:
            raise ValueError(f"DecodeOptions.scale must be positive, got {self.scale!r}")


# ----------------------------------------------------------------------------------------
# Slots of the new tokens.
# ----------------------------------------------------------------------------------------


def new_slots(length_b: jnp.ndarray, num_new_b: jnp.ndarray, m: int):
    """Cache slots of ``m`` new tokens per row and which of them are real.

    Args:
        length_b: ``[batch]`` filled slots before the step.
        num_new_b: ``[batch]`` real new tokens per row (``0 .. m``).
        m: new tokens per row in the step's arrays.

    Returns:
        ``(slots [batch, m] int32, write [batch, m] bool, new_length [batch] int32)``.
    """
    j = jnp.arange(m, dtype=jnp.int32)
    length_b = length_b.astype(jnp.int32)
    num_new_b = num_new_b.astype(jnp.int32)
    slots = length_b[:, None] + j[None, :]
    write = j[None, :] < num_new_b[:, None]
    return slots, write, length_b + num_new_b


def _scatter_slots(cache, new, slots, write, offset):
    """Writes ``new[b, j]`` into ``cache`` at local slot ``slots[b, j] - offset``.

    ``cache`` is ``[batch, capacity_local, ...]`` seen through ``idx`` on axis 1; slots
    outside this shard, and tokens that are not written, land on an out-of-range index
    and are dropped by the scatter.
    """
    cap = cache.shape[1]
    local = slots - offset
    keep = write & (local >= 0) & (local < cap)
    idx = jnp.where(keep, local, cap)
    rows = jnp.broadcast_to(jnp.arange(cache.shape[0])[:, None], idx.shape)
    return cache.at[rows, idx].set(new.astype(cache.dtype), mode="drop")


def write_positions(pos_bs, new_pos_bm, slots, write, *, offset=0):
    """Positions of the new tokens written into the cache's ``[batch, capacity]`` positions."""
    return _scatter_slots(pos_bs, new_pos_bm.astype(pos_bs.dtype), slots, write, offset)


def write_kv(cache_lbhsd, new_bmhd, slots, write, *, layer, offset=0):
    """New keys (or values) ``[batch, m, kv_heads, head_dim]`` written into layer ``layer``.

    Only the rows of layer ``layer`` are touched (a scatter into the whole buffer, so a
    donated cache is updated in place).
    """
    cap = cache_lbhsd.shape[3]
    local = slots - offset
    keep = write & (local >= 0) & (local < cap)
    idx = jnp.where(keep, local, cap)
    b = jnp.broadcast_to(jnp.arange(cache_lbhsd.shape[1])[:, None], idx.shape)
    lay = jnp.broadcast_to(jnp.asarray(layer, jnp.int32), idx.shape)
    # Advanced indices (layer, batch, slot) around the head slice: the indexed view is
    # [batch, m, kv_heads, head_dim], the layout of ``new``.
    return cache_lbhsd.at[lay, b, :, idx].set(new_bmhd.astype(cache_lbhsd.dtype), mode="drop")


# ----------------------------------------------------------------------------------------
# Attention of new queries to (this device's share of) the cache.
# ----------------------------------------------------------------------------------------


def chunk_for(capacity_local: int, k_chunk: int | None) -> int:
    """Largest divisor of ``capacity_local`` that is at most ``k_chunk`` (or the default)."""
    want = default_chunk() if k_chunk is None else k_chunk
    for c in range(min(want, capacity_local), 0, -1):
        if capacity_local % c == 0:
            return c
    return 1


def local_cache_attention(
    q_bmhd: jnp.ndarray,
    q_pos_bm: jnp.ndarray,
    cache_k: jnp.ndarray,
    cache_v: jnp.ndarray,
    cache_pos_bs: jnp.ndarray,
    new_length_b: jnp.ndarray,
    *,
    layer,
    offset=0,
    scale: float,
    k_chunk: int | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Online-softmax attention of new queries to one device's cache slots.

    Args:
        q_bmhd: ``[batch, m, heads, head_dim]`` new queries (rotary already applied).
        q_pos_bm: ``[batch, m]`` their global positions.
        cache_k, cache_v: ``[layers, batch, kv_heads, capacity_local, head_dim]``.
        cache_pos_bs: ``[batch, capacity_local]`` global positions of the slots.
        new_length_b: ``[batch]`` filled slots of the whole row after this step's writes.
        layer: which layer of the cache.
        offset: global index of this device's first slot.
        scale: softmax scale.
        k_chunk: slots per chunk (see :func:`chunk_for`).

    Returns:
        ``(out [batch, kv_heads, m * groups, head_dim] float32, lse [batch, kv_heads,
        m * groups])`` in the kernels' row layout (row ``t * groups + g``); rows that saw no
        slot have zero output and ``-inf`` log-sum-exp.
    """
    b, m, h, d = q_bmhd.shape
    hk, cap = cache_k.shape[2], cache_k.shape[3]
    groups = h // hk
    c = chunk_for(cap, k_chunk)
    q = q_bmhd.reshape(b, m, hk, groups, d).transpose(0, 2, 1, 3, 4).reshape(b, hk, m * groups, d)
    q = (q.astype(jnp.float32) * scale).astype(cache_k.dtype)
    local_fill = jnp.clip(new_length_b.astype(jnp.int32) - offset, 0, cap)
    num_chunks = (jnp.max(local_fill) + c - 1) // c
    layer = jnp.asarray(layer, jnp.int32)

    def body(i, state):
        start = i * c
        k = lax.dynamic_slice(cache_k, (layer, 0, 0, start, 0), (1, b, hk, c, d))[0]
        v = lax.dynamic_slice(cache_v, (layer, 0, 0, start, 0), (1, b, hk, c, d))[0]
        k_pos = lax.dynamic_slice_in_dim(cache_pos_bs, start, c, axis=1)
        filled = (start + jnp.arange(c, dtype=jnp.int32))[None, :] < local_fill[:, None]
        mask = visible(q_pos_bm, k_pos, causal=True, k_valid=filled)
        s = C.mask_scores(C.chunk_scores(q, k, 1.0), mask, groups)
        return C.online_update(state, s, v, maybe_empty=True)

    state = C.empty_state((b, hk, m * groups), d)
    state = jax.tree.map(lambda a: match_varying(a, q, cache_k, cache_pos_bs), state)
    state = lax.fori_loop(0, num_chunks, body, state)
    return C.finalize(state)


def merge_across(out, lse, axis_name: str):
    """Merges per-device partial attention over disjoint slots by log-sum-exp.

    Every device ends with the same ``(out, lse)``: attention over the union of the slots.
    """
    m = lax.pmax(lse, axis_name)
    m_off = jnp.where(m == C.NEG_INF, 0.0, m)
    w = jnp.exp(lse - m_off)  # 0 where this device saw nothing (lse = -inf)
    total = lax.psum(w, axis_name)
    num = lax.psum(w[..., None] * out, axis_name)
    seen = total > 0
    denom = jnp.where(seen, total, 1.0)
    return num / denom[..., None], jnp.where(seen, m_off + jnp.log(denom), C.NEG_INF)


def _to_bmhd(out, b, m, h, d):
    hk = out.shape[1]
    g = h // hk
    return out.reshape(b, hk, m, g, d).transpose(0, 2, 1, 3, 4).reshape(b, m, h, d)


# ----------------------------------------------------------------------------------------
# The entry point a model layer calls.
# ----------------------------------------------------------------------------------------


def cache_specs(mesh: Mesh, axis_name: str = SEQ) -> dict[str, PartitionSpec]:
    """PartitionSpecs of the cache buffers on ``mesh`` (batch over the batch axes, slots over
    ``axis_name``)."""
    batch = tuple(a for a in BATCH_AXES if a in mesh.axis_names and a != axis_name) or None
    seq = axis_name if axis_name in mesh.axis_names else None
    return {
        "kv": PartitionSpec(None, batch, None, seq, None),
        "positions": PartitionSpec(batch, seq),
        "length": PartitionSpec(batch),
        "new": PartitionSpec(batch, None, None, None),
        "new_tokens": PartitionSpec(batch, None),
    }


def decode_attention(
    q_bmhd: jnp.ndarray,
    k_bmhd: jnp.ndarray,
    v_bmhd: jnp.ndarray,
    q_pos_bm: jnp.ndarray,
    cache_k: jnp.ndarray,
    cache_v: jnp.ndarray,
    cache_pos_bs: jnp.ndarray,
    slots_bm: jnp.ndarray,
    write_bm: jnp.ndarray,
    new_length_b: jnp.ndarray,
    *,
    layer,
    mesh: Mesh | None = None,
    options: DecodeOptions | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Writes one layer's new keys/values into the cache and attends the new queries to it.

    ``cache_pos_bs`` must already hold the new tokens' positions (:func:`write_positions`,
    done once per step for all layers); ``slots_bm``, ``write_bm`` and ``new_length_b`` come
    from :func:`new_slots`.

    Args:
        q_bmhd: ``[batch, m, heads, head_dim]`` new queries.
        k_bmhd, v_bmhd: ``[batch, m, kv_heads, head_dim]`` new keys and values.
        q_pos_bm: ``[batch, m]`` global positions of the new tokens.
        cache_k, cache_v: ``[layers, batch, kv_heads, capacity, head_dim]`` (donate them).
        cache_pos_bs: ``[batch, capacity]`` int32 slot positions.
        slots_bm, write_bm, new_length_b: see :func:`new_slots`.
        layer: the layer's index into the cache.
        mesh: a mesh whose ``options.axis_name`` axis shards the cache slots (None: one
            device).
        options: :class:`DecodeOptions`.

    Returns:
        ``(out [batch, m, heads, head_dim] in q's dtype, cache_k, cache_v)``.
    """
    options = DecodeOptions() if options is None else options
    b, m, h, d = q_bmhd.shape
    scale = d**-0.5 if options.scale is None else options.scale
    axis = options.axis_name
    n = 1 if mesh is None or axis not in mesh.axis_names else int(mesh.shape[axis])
    merge = mesh is not None and axis in mesh.axis_names

    def local(q, k_new, v_new, q_pos, ck, cv, cpos, slots, write, new_len, layer):
        offset = 0
        if n > 1:
            offset = lax.axis_index(axis) * ck.shape[3]
        ck = write_kv(ck, k_new, slots, write, layer=layer, offset=offset)
        cv = write_kv(cv, v_new, slots, write, layer=layer, offset=offset)
        out, lse = local_cache_attention(
            q, q_pos, ck, cv, cpos, new_len, layer=layer, offset=offset, scale=scale,
            k_chunk=options.k_chunk,
        )
        if merge:  # also on a size-1 axis: it marks the output replicated over it
            out, _ = merge_across(out, lse, axis)
        return _to_bmhd(out, *q.shape).astype(q.dtype), ck, cv

    if mesh is None:
        return local(q_bmhd, k_bmhd, v_bmhd, q_pos_bm, cache_k, cache_v, cache_pos_bs,
                     slots_bm, write_bm, new_length_b, layer)
    specs = cache_specs(mesh, axis)
    tok, new = specs["new_tokens"], specs["new"]
    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(new, new, new, tok, specs["kv"], specs["kv"], specs["positions"], tok, tok,
                  specs["length"], PartitionSpec()),
        out_specs=(new, specs["kv"], specs["kv"]),
        check_vma=True,
    )
    # The layer index is an argument (not a closed-over tracer of the caller's layer scan).
    layer = jnp.asarray(layer, jnp.int32)
    return fn(q_bmhd, k_bmhd, v_bmhd, q_pos_bm, cache_k, cache_v, cache_pos_bs, slots_bm,
              write_bm, new_length_b, layer)


def sharded_write_positions(
    pos_bs: jnp.ndarray,
    new_pos_bm: jnp.ndarray,
    slots_bm: jnp.ndarray,
    write_bm: jnp.ndarray,
    *,
    mesh: Mesh | None = None,
    axis_name: str = SEQ,
) -> jnp.ndarray:
    """:func:`write_positions` on a cache whose slots are sharded over ``axis_name``."""
    if mesh is None:
        return write_positions(pos_bs, new_pos_bm, slots_bm, write_bm)
    n = int(mesh.shape[axis_name]) if axis_name in mesh.axis_names else 1
    specs = cache_specs(mesh, axis_name)

    def local(pos, new_pos, slots, write):
        offset = lax.axis_index(axis_name) * pos.shape[1] if n > 1 else 0
        return write_positions(pos, new_pos, slots, write, offset=offset)

    tok = specs["new_tokens"]
    return jax.shard_map(
        local, mesh=mesh, in_specs=(specs["positions"], tok, tok, tok),
        out_specs=specs["positions"], check_vma=True,
    )(pos_bs, new_pos_bm, slots_bm, write_bm)


def check_cache_shape(capacity: int, batch: int, mesh: Mesh | None, axis_name: str = SEQ):
    """Raises ValueError when the mesh cannot split a ``[batch, capacity]`` cache evenly."""
    if mesh is None:
        return
    n = int(mesh.shape[axis_name]) if axis_name in mesh.axis_names else 1
    if capacity % n:
        raise ValueError(
            f"KV cache capacity {capacity} is not divisible by the {n} devices of mesh axis "
            f"{axis_name!r}; choose a capacity that is a multiple of {n}"
        )
    batch_axes = [a for a in BATCH_AXES if a in mesh.axis_names and a != axis_name]
    nb = math.prod(int(mesh.shape[a]) for a in batch_axes)
    if batch % nb:
        raise ValueError(
            f"KV cache batch {batch} is not divisible by the {nb} devices of mesh axes "
            f"{tuple(batch_axes)}"
        )
