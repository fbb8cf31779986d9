"""Helpers for checking the model: one tolerance table and synthetic token batches.

Tests of the model, the agents, the trainer and the evaluator compare numbers against an
oracle with the tolerances here, so a tolerance is set once per dtype and never loosened
locally to make a test pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rl_ring.data.batch import Kind

# (rtol, atol) per dtype for two computations of the same function that differ only in
# summation order (sharding, chunking, a permuted layout).
TOLERANCES: dict[str, tuple[float, float]] = {
    "float32": (2e-5, 2e-6),
    "bfloat16": (2e-2, 2e-2),
    "float16": (5e-3, 5e-3),
}


def tolerance(dtype="float32") -> tuple[float, float]:
    """``(rtol, atol)`` for comparing two evaluations of one function in ``dtype``."""
    return TOLERANCES[jnp.dtype(dtype).name]


def assert_trees_close(actual, expected, *, dtype="float32", what: str = "") -> None:
    """Asserts two pytrees of arrays match leaf by leaf within :func:`tolerance`.

    Gradients are compared relative to the largest magnitude of each expected leaf as well,
    so a leaf that is tiny everywhere is not held to an absolute tolerance meant for O(1)
    values.

    Raises:
        AssertionError: naming the first leaf path that differs and by how much.
    """
    rtol, atol = tolerance(dtype)
    flat_a = jax.tree_util.tree_leaves_with_path(actual)
    flat_e = jax.tree_util.tree_leaves_with_path(expected)
    if [p for p, _ in flat_a] != [p for p, _ in flat_e]:
        raise AssertionError(f"{what}: trees have different structure")
    for (path, a), (_, e) in zip(flat_a, flat_e, strict=True):
        a = np.asarray(a, np.float64)
        e = np.asarray(e, np.float64)
        if a.shape != e.shape:
            where = f"{what}{jax.tree_util.keystr(path)}"
            raise AssertionError(f"{where}: shape {a.shape} != {e.shape}")
        scale = float(np.max(np.abs(e))) if e.size else 0.0
        np.testing.assert_allclose(
            a, e, rtol=rtol, atol=atol + rtol * scale,
            err_msg=f"{what}{jax.tree_util.keystr(path)}",
        )


def random_tokens(
    kinds: tuple[Kind, ...],
    widths: dict[Kind, int],
    *,
    batch: int,
    seq: int,
    act_dim: int,
    discrete: bool = False,
    max_timestep: int = 50,
    num_segments: int = 1,
    pad: int = 0,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A random but well-formed token batch in contiguous order.

    Steps repeat ``kinds``; every token of kind STATE or STEP carries a loss weight and a
    random target. ``num_segments`` packs that many segments per row; the last ``pad``
    tokens of each row are padding (invalid, no loss).

    Returns:
        The ``TokenBatch`` fields as a dict of numpy arrays ``[batch, seq, ...]``.
    """
    rng = np.random.default_rng(seed)
    k = len(kinds)
    kind = np.tile(np.asarray(kinds, np.int32), -(-seq // k))[:seq]
    kind = np.broadcast_to(kind, (batch, seq)).copy()
    feat = max(widths.values())
    values = np.zeros((batch, seq, feat), np.float32)
    for kd, w in widths.items():
        sel = kind == int(kd)
        values[sel, :w] = rng.normal(size=(int(sel.sum()), w)).astype(np.float32)
    positions = np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy()
    step = positions // k
    seg_len = -(-seq // num_segments)
    segment_ids = (positions // seg_len).astype(np.int32)
    timesteps = (step - (positions // seg_len) * (seg_len // k)) % (max_timestep + 5)
    valid = np.ones((batch, seq), bool)
    if pad:
        valid[:, seq - pad :] = False
    predict = np.isin(kind, [int(Kind.STATE), int(Kind.STEP)])
    loss_mask = (predict & valid).astype(np.float32)
    target = rng.normal(size=(batch, seq, act_dim)).astype(np.float32)
    target_ids = rng.integers(0, act_dim, size=(batch, seq)).astype(np.int32)
    if discrete:
        target[:] = 0.0
    else:
        target_ids[:] = 0
    kind[~valid] = 0
    values[~valid] = 0.0
    return dict(
        kind=kind,
        values=values,
        positions=positions,
        timesteps=timesteps.astype(np.int32),
        segment_ids=segment_ids,
        valid=valid,
        target=target * loss_mask[..., None],
        target_ids=target_ids * (loss_mask > 0),
        loss_mask=loss_mask,
    )
