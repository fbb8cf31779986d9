"""Token orderings that balance causal attention work over the devices of a ring.

With a causal mask and the contiguous order, the device holding the end of the sequence
attends to every key block while the first device attends only to its own: the slowest
device does about twice the average work. Permuting the tokens before the model (and
back after) fixes that:

- ``contiguous``: device ``d`` of ``n`` holds tokens ``[d*T/n, (d+1)*T/n)``;
- ``zigzag``: the sequence is cut into ``2n`` equal chunks and device ``d`` holds chunks
  ``d`` and ``2n-1-d`` (one early, one late chunk), so every device does the same causal
  work and each of its two halves is still a contiguous run of positions (chunk skipping
  keeps working);
- ``striped``: device ``d`` holds tokens ``d, d+n, d+2n, ...``; balanced too, but each of
  a device's ``c`` chunks spans ``1/c`` of the whole sequence, so few chunk pairs can be
  skipped (with 2 chunks per device, 1 in 4) and causal attention costs close to
  non-causal in kernels that skip by chunk, as these do.

Masks are always evaluated on the original positions (``layout_positions``), so a layout
changes where tokens live, never what they see. ``permute`` works on any
``[batch, seq, ...]`` array (numpy or JAX), so the loader applies it to every field of a
TokenBatch alike.
"""

from __future__ import annotations

import numpy as np

LAYOUTS = ("contiguous", "zigzag", "striped")
"""Every token layout; the model config, the loader and the attention dispatcher use this list."""


def pad_multiple(num_shards: int, layout: str = "contiguous") -> int:
    """The multiple a sequence length must be to split over ``num_shards`` devices in ``layout``.

    ``num_shards`` for contiguous and striped; ``2 * num_shards`` for zigzag (two chunks per
    device) on more than one device. On one device every layout is the identity order, so
    any length splits: zigzag needs no even length there.

    Raises:
        ValueError: an unknown layout or a shard count below 1.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is not one of {LAYOUTS}")
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    return 2 * num_shards if layout == "zigzag" and num_shards > 1 else num_shards


def check_layout(layout: str, seq_len: int, num_shards: int) -> None:
    """Raises ValueError when ``layout`` is unknown or cannot split ``seq_len`` tokens.

    Args:
        layout: one of :data:`LAYOUTS`.
        seq_len: sequence length (all shards together).
        num_shards: number of devices on the sequence axis.
    """
    parts = pad_multiple(num_shards, layout)
    if seq_len % parts != 0:
        raise ValueError(
            f"layout={layout!r} with num_shards={num_shards} needs the sequence length to be a "
            f"multiple of {parts}, got seq_len={seq_len} (pad the sequence to a multiple of "
            f"{parts})"
        )


def layout_positions(seq_len: int, num_shards: int, layout: str = "contiguous") -> np.ndarray:
    """Original positions of the tokens in the order ``layout`` lays them out.

    Args:
        seq_len: sequence length T.
        num_shards: number of devices n on the sequence axis.
        layout: one of :data:`LAYOUTS`.

    Returns:
        int32 ``[T]``: entry ``i`` is the original position of the token placed at index
        ``i``; device ``d`` holds indices ``[d*T/n, (d+1)*T/n)``.
    """
    check_layout(layout, seq_len, num_shards)
    idx = np.arange(seq_len, dtype=np.int32)
    if layout == "contiguous" or num_shards == 1:
        return idx
    if layout == "zigzag":
        chunks = idx.reshape(2 * num_shards, -1)
        order = [c for d in range(num_shards) for c in (d, 2 * num_shards - 1 - d)]
        return chunks[order].reshape(-1)
    return idx.reshape(-1, num_shards).T.reshape(-1)  # striped


def _take(x, index: np.ndarray, axis: int):
    if isinstance(x, np.ndarray):
        return np.take(x, index, axis=axis)
    import jax.numpy as jnp

    return jnp.take(x, jnp.asarray(index), axis=axis)


def _check_axis(x, axis: int, what: str) -> int:
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{what}: axis={axis} is out of range for an array of shape {x.shape}")
    return axis % x.ndim


def permute(x, num_shards: int, layout: str = "contiguous", axis: int = 1):
    """Reorders ``x`` along ``axis`` from the original token order into ``layout``.

    Args:
        x: numpy or JAX array, e.g. ``[batch, seq, ...]``.
        num_shards: number of devices on the sequence axis.
        layout: one of :data:`LAYOUTS`.
        axis: the sequence axis.

    Returns:
        ``x`` with ``x_out[..., i, ...] = x[..., layout_positions(...)[i], ...]``.
    """
    axis = _check_axis(x, axis, "permute")
    return _take(x, layout_positions(x.shape[axis], num_shards, layout), axis)


def unpermute(x, num_shards: int, layout: str = "contiguous", axis: int = 1):
    """Inverse of :func:`permute`: brings ``x`` back to the original token order."""
    axis = _check_axis(x, axis, "unpermute")
    inverse = np.argsort(layout_positions(x.shape[axis], num_shards, layout)).astype(np.int32)
    return _take(x, inverse, axis)


def block_work(
    seq_len: int,
    num_shards: int,
    layout: str = "contiguous",
    chunk: int = 512,
    causal: bool = True,
    tokens_per_step: int = 1,
) -> np.ndarray:
    """Chunk pairs each device computes in ring attention (the kernels' own skip rule).

    Each device attends its query block to every key block of the ring, chunk pair by
    chunk pair, skipping the pairs that :func:`rl_ring.attention.masks.pair_kinds` marks
    empty; this counts the pairs that are not skipped.

    Args:
        seq_len: sequence length T.
        num_shards: number of devices n.
        layout: one of :data:`LAYOUTS`.
        chunk: query and key chunk length (clamped to the block length ``T/n``).
        causal: causal mask (without it, every pair is computed).
        tokens_per_step: tokens of one step that see each other under ``causal``.

    Returns:
        int64 ``[n]`` computed chunk pairs per device.
    """
    from rl_ring.attention.masks import SKIP, TokenInfo, pair_kinds, summarize_chunks

    pos = layout_positions(seq_len, num_shards, layout)
    block = seq_len // num_shards
    chunk = min(chunk, block)
    if block % chunk != 0:
        raise ValueError(f"block_work: chunk={chunk} must divide the block length {block}")
    # [num_chunks, batch=1, chunk], chunks in layout order, device d owns a contiguous range.
    chunks = TokenInfo(pos.reshape(-1, 1, chunk))
    summary = summarize_chunks(chunks, tokens_per_step)
    kinds = np.asarray(pair_kinds(summary, summary, causal=causal))
    per_device = (kinds != SKIP).reshape(num_shards, block // chunk, -1)
    return per_device.sum(axis=(1, 2)).astype(np.int64)
