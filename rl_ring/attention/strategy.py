"""Which context-parallel strategy to run: the rule behind ``attention(impl="auto")``.

The rule, in order (``n`` devices on the sequence axis, ``L = T / n`` tokens per device):

1. ``n == 1``: ``"blockwise"`` (nothing to parallelise);
2. the query heads divide by ``n``: ``"ulysses"``. It was the fastest strategy at 4K and
   8K in every run and holds the least memory per device (each device attends one ``h/n``
   slice of heads over the whole sequence, with ``h/n``-head score blocks);
3. the gathered K/V of all-gather (``2 b T hk d`` in the input dtype forward, plus float32
   dK/dV of the same size backward) would exceed ``max_gathered_bytes``: ``"ring"``
   (its K/V memory stays ``T/n``);
4. ``L <= allgather_max_block`` (per backend): ``"allgather"``, else ``"ring"``.

Fitted on ``rl-ring bench attention --strategies-only --strategy-seq-lens 2048 4096 8192``
(8 fake CPU devices on 2 shared cores, causal fwd+bwd, zigzag, 8 heads of 16, batch 1; the
load average was 9-18, so timings are noisy), medians of 5 interleaved runs, ms (min):

| T | ring | allgather | ulysses |
|---|---|---|---|
| 2048 | 464 (184) | 367 (338) | 272 (237) |
| 4096 | 1656 (1476) | 1581 (1518) | 1064 (1013) |
| 8192 | 8536 (7901) | 9280 (8228) | 5270 (4460) |

Two more runs at T=2048 (3 repeats) measured ring 200 / 168, allgather 356 / 295, ulysses
287 / 220 ms: at 2K the ring and Ulysses are within noise of each other. Between ring and
all-gather the ring was as fast or faster at every size (all-gather's 5% lead at 4K by
medians is a 3% loss by minima), so on CPU ``allgather_max_block`` is 0: all-gather is never
picked. On GPU/TPU, where a block's compute takes microseconds and the ring's ``n - 1``
latency-bound hops weigh more, all-gather is picked up to 1024 tokens per device: that
threshold is NOT measured (no multi-device accelerator here); rerun the benchmark on real
devices and refit.
"""

from __future__ import annotations

STRATEGIES = ("ring", "allgather", "ulysses")
"""The context-parallel strategies ``choose_impl`` picks among."""

ALLGATHER_MAX_BLOCK = {"cpu": 0}
"""Per backend, the most tokens per device at which all-gather is chosen over the ring
(CPU: measured, never; other backends: :data:`ALLGATHER_MAX_BLOCK_ACCELERATOR`)."""
ALLGATHER_MAX_BLOCK_ACCELERATOR = 1024
"""All-gather's block limit on GPU/TPU: a starting point, not a measurement."""

MAX_GATHERED_BYTES = 1 << 30
"""Gathered K/V (forward, in the input dtype) plus their float32 gradients (backward) above
which all-gather is never chosen: 1 GiB per device per attention call."""


def gathered_kv_bytes(*, seq_len: int, kv_heads: int, head_dim: int, batch: int,
                      dtype_bytes: int) -> int:
    """Bytes all-gather attention holds for the whole sequence's K/V on every device:
    the gathered K and V (forward) and their float32 dK/dV before the reduce-scatter."""
    return 2 * batch * seq_len * kv_heads * head_dim * (dtype_bytes + 4)


def choose_impl(
    *,
    seq_len: int,
    num_devices: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    batch: int = 1,
    backend: str = "cpu",
    dtype_bytes: int = 4,
    candidates: tuple[str, ...] = STRATEGIES,
    allgather_max_block: int | None = None,
    max_gathered_bytes: int = MAX_GATHERED_BYTES,
) -> str:
    """The attention implementation for one call's sizes (see the module docstring).

    Args:
        seq_len: tokens T of the whole sequence.
        num_devices: devices n on the sequence axis.
        heads, kv_heads: query and K/V heads per device (after any tensor-axis split).
        head_dim: head dimension d.
        batch: sequences per device.
        backend: JAX backend name (picks the all-gather threshold).
        dtype_bytes: bytes per element of q/k/v.
        candidates: the strategies allowed (e.g. without ``"ulysses"`` to compare the other
            two, as the benchmark does).
        allgather_max_block: tokens per device up to which all-gather is preferred
            (default: :data:`ALLGATHER_MAX_BLOCK` for ``backend``).
        max_gathered_bytes: see :data:`MAX_GATHERED_BYTES`.

    Returns:
        ``"blockwise"``, ``"ring"``, ``"allgather"`` or ``"ulysses"``.

    Raises:
        ValueError: no strategy in ``candidates`` or an unknown one.
    """
    if allgather_max_block is None:
        allgather_max_block = ALLGATHER_MAX_BLOCK.get(backend, ALLGATHER_MAX_BLOCK_ACCELERATOR)
    unknown = sorted(set(candidates) - set(STRATEGIES))
    if unknown or not candidates:
        raise ValueError(f"choose_impl: candidates {candidates!r} must be a non-empty subset "
                         f"of {STRATEGIES}")
    if num_devices <= 1:
        return "blockwise"
    if "ulysses" in candidates and heads % num_devices == 0:
        return "ulysses"
    gathered = gathered_kv_bytes(seq_len=seq_len, kv_heads=kv_heads, head_dim=head_dim,
                                 batch=batch, dtype_bytes=dtype_bytes)
    fits = gathered <= max_gathered_bytes
    if "allgather" in candidates and (
        "ring" not in candidates or (fits and seq_len // num_devices <= allgather_max_block)
    ):
        return "allgather"
    if "ring" in candidates:
        return "ring"
    return "ulysses"
