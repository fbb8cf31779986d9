"""Helpers shared by the fused attention kernels (Pallas Triton and Pallas Mosaic TPU).

Two halves:

- **outside the kernels** (plain XLA, run once per call): mask inputs turned into what the
  kernels want. Positions become *steps* (``pos // tokens_per_step``) so that no kernel
  divides; ragged lengths are padded to tile multiples (padded keys invalid, padded queries
  repeating the last token's step and segment so they never widen a tile's ranges); and a
  per-batch-row table classifies every (query tile, key tile) pair as SKIP / FULL / PARTIAL
  from per-tile ranges (:func:`tile_kinds`). Ranges, not the diagonal: positions may be any
  permutation (zigzag / striped layouts), and the steps of a tile bound what the causal rule
  can make visible whatever their order. :func:`visit_lists` compacts the table into, per
  tile, the counts and indices of the FULL and the PARTIAL tiles it must visit, so a kernel
  loops only over those, building masks only for the PARTIAL ones.
- **inside the kernels**: :func:`tile_visible`, the exact mask of one tile pair from 1-D
  vectors of steps / segments / validity (jnp ops only, so it lowers with both Triton and
  Mosaic).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rl_ring.attention.masks import FULL, PARTIAL, SKIP

__all__ = [
    "FULL",
    "PARTIAL",
    "SKIP",
    "MaskInputs",
    "next_pow2",
    "out_struct",
    "pad_axis",
    "prepare_mask_inputs",
    "tile_kinds",
    "tile_visible",
    "visit_lists",
]


def next_pow2(n: int) -> int:
    """Smallest power of two ``>= n`` (``n >= 1``)."""
    return 1 << max(0, int(n) - 1).bit_length()


def pad_axis(x: jnp.ndarray, axis: int, length: int, mode: str = "constant", value=0):
    """``x`` padded at the end of ``axis`` to ``length`` (unchanged when already that long)."""
    if x.shape[axis] == length:
        return x
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, length - x.shape[axis])
    if mode == "edge":
        return jnp.pad(x, pad, mode="edge")
    return jnp.pad(x, pad, constant_values=value)


def out_struct(shape, dtype, *refs) -> jax.ShapeDtypeStruct:
    """A ``pallas_call`` output shape that varies over every mesh axis any of ``refs`` varies
    over (what ``shard_map(check_vma=True)`` requires of a kernel's outputs)."""
    mats = [getattr(jax.typeof(r), "manual_axis_type", None) for r in jax.tree.leaves(refs)]
    mats = [m for m in mats if m is not None]
    if not mats:
        return jax.ShapeDtypeStruct(shape, dtype)
    varying = frozenset().union(*(m.varying for m in mats))
    return jax.ShapeDtypeStruct(shape, dtype, manual_axis_type=mats[0].update(varying=varying))


class MaskInputs(NamedTuple):
    """Per-token mask inputs of a padded (query block, key block) pair, all ``[b, t_pad]``.

    ``q_step`` / ``k_step`` are int32 ``pos // tokens_per_step`` (None when not causal);
    ``q_seg`` / ``k_seg`` int32 segment ids (None: one segment); ``k_valid`` int32 1 / 0
    (None: every key real; always set when the keys were padded).
    """

    q_step: jnp.ndarray | None
    k_step: jnp.ndarray | None
    q_seg: jnp.ndarray | None
    k_seg: jnp.ndarray | None
    k_valid: jnp.ndarray | None

    @property
    def masked(self) -> bool:
        """Whether any entry can be masked (else every tile pair is FULL)."""
        return self.q_step is not None or self.q_seg is not None or self.k_valid is not None


def prepare_mask_inputs(
    q_pos, k_pos, q_seg, k_seg, k_valid, *, causal: bool, tokens_per_step: int,
    tq_pad: int, tk_pad: int,
) -> MaskInputs:
    """Steps / segments / validity padded to ``tq_pad`` / ``tk_pad`` tokens (see module doc).

    Segment ids count only when both ``q_seg`` and ``k_seg`` are given (as in
    ``masks.visible``).
    """
    tk = k_pos.shape[1]
    q_step = k_step = None
    if causal:
        qs, ks = jnp.asarray(q_pos, jnp.int32), jnp.asarray(k_pos, jnp.int32)
        if tokens_per_step > 1:
            qs, ks = qs // tokens_per_step, ks // tokens_per_step
        q_step, k_step = pad_axis(qs, 1, tq_pad, "edge"), pad_axis(ks, 1, tk_pad, "edge")
    if q_seg is None or k_seg is None:
        q_seg = k_seg = None
    else:
        q_seg = pad_axis(jnp.asarray(q_seg, jnp.int32), 1, tq_pad, "edge")
        k_seg = pad_axis(jnp.asarray(k_seg, jnp.int32), 1, tk_pad, "edge")
    if k_valid is None and tk_pad != tk:
        k_valid = jnp.ones(k_pos.shape, jnp.int32)
    if k_valid is not None:
        k_valid = pad_axis(jnp.asarray(k_valid).astype(jnp.int32), 1, tk_pad)  # pads with 0
    return MaskInputs(q_step, k_step, q_seg, k_seg, k_valid)


def _ranges(x: jnp.ndarray, block: int):
    b, t = x.shape
    x = x.reshape(b, t // block, block)
    return x.min(-1), x.max(-1)


def tile_kinds(m: MaskInputs, block_q: int, block_k: int, num_q_tiles: int) -> jnp.ndarray:
    """SKIP / FULL / PARTIAL of every (batch row, query tile, key tile): int32 ``[b, nq, nk]``.

    SKIP comes from necessary conditions for visibility (a skipped tile is certainly empty),
    FULL from sufficient ones (a FULL tile certainly needs no mask); all else is PARTIAL.
    Lengths must already be multiples of the tiles (:func:`prepare_mask_inputs`);
    ``num_q_tiles`` is the padded query length over ``block_q``.
    """
    present = [x for x in m if x is not None]
    if not present:
        raise ValueError("tile_kinds: no mask inputs (every tile is FULL)")
    b, nq = present[0].shape[0], num_q_tiles
    kref = next(x for x in (m.k_step, m.k_seg, m.k_valid) if x is not None)
    nk = kref.shape[1] // block_k
    some = jnp.ones((b, nq, nk), bool)
    every = some
    if m.q_step is not None:
        qmin, qmax = _ranges(m.q_step, block_q)
        kmin, kmax = _ranges(m.k_step, block_k)
        some = some & (kmin[:, None, :] <= qmax[:, :, None])
        every = every & (kmax[:, None, :] <= qmin[:, :, None])
    if m.q_seg is not None:
        qmin, qmax = _ranges(m.q_seg, block_q)
        kmin, kmax = _ranges(m.k_seg, block_k)
        some = some & (kmin[:, None, :] <= qmax[:, :, None])
        some = some & (qmin[:, :, None] <= kmax[:, None, :])
        single = (qmin == qmax)[:, :, None] & (kmin == kmax)[:, None, :]
        every = every & single & (qmin[:, :, None] == kmin[:, None, :])
    if m.k_valid is not None:
        vmin, vmax = _ranges(m.k_valid, block_k)
        some = some & (vmax > 0)[:, None, :]
        every = every & (vmin > 0)[:, None, :]
    return jnp.where(some, jnp.where(every, FULL, PARTIAL), SKIP).astype(jnp.int32)


def visit_lists(kinds: jnp.ndarray) -> jnp.ndarray:
    """Per row of ``kinds`` ``[b, n, m]``, the tiles to visit: int32 ``[b, n, m + 2]``.

    Entry 0 is the count ``f`` of FULL tiles, entry 1 the count ``p`` of PARTIAL ones;
    entries ``2 .. 2+f`` are the FULL tiles' indices and ``2+f .. 2+f+p`` the PARTIAL ones'
    (each in increasing order; the rest are the skipped tiles). A kernel runs one loop
    without a mask over the first group and one with the mask over the second. Transpose
    ``kinds`` to get the lists of the other operand (the dK/dV kernel visits query tiles).
    """
    m = kinds.shape[-1]
    idx = jnp.arange(m, dtype=jnp.int32)
    rank = jnp.where(kinds == FULL, 0, jnp.where(kinds == PARTIAL, 1, 2))
    order = jnp.argsort(rank * m + idx, axis=-1).astype(jnp.int32)
    n_full = (kinds == FULL).sum(-1, dtype=jnp.int32)
    n_partial = (kinds == PARTIAL).sum(-1, dtype=jnp.int32)
    return jnp.concatenate([n_full[..., None], n_partial[..., None], order], axis=-1)


def tile_visible(q_step, k_step, q_seg, k_seg, k_valid, *, transposed: bool = False):
    """Exact visibility of one tile pair from 1-D tile vectors (None entries are absent).

    Returns ``[bq, bk]`` bool (``[bk, bq]`` when ``transposed``), or None when nothing masks.
    Usable inside Pallas kernels (Triton and Mosaic) as well as in XLA.
    """

    def outer(qv, kv, op):
        if transposed:
            return op(qv[None, :], kv[:, None])
        return op(qv[:, None], kv[None, :])

    mask = None
    if q_step is not None:
        mask = outer(q_step, k_step, lambda a, b: b <= a)
    if q_seg is not None:
        same = outer(q_seg, k_seg, lambda a, b: a == b)
        mask = same if mask is None else mask & same
    if k_valid is not None:
        real = (k_valid[:, None] if transposed else k_valid[None, :]) > 0
        mask = real if mask is None else mask & real
    return mask
