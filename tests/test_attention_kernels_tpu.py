"""The Pallas TPU pair kernel (rl_ring.attention.kernels.tpu) against the dense oracle.

Correctness runs on CPU in interpret mode: ``interpret=True`` is Pallas's generic
interpreter (the kernel body over the grid, scalar prefetch included, as one jitted scan);
one float32 case uses the TPU interpreter ``pltpu.InterpretParams()``, which also
simulates SMEM/VMEM, starts scratch as NaN and raises on out-of-bounds reads. Shapes
are tiny but cross tiles: T=256 with 128-token tiles gives 2 x 2 tile pairs per head, some
skipped, some full, some partial. Lowering for TPU (Pallas -> Mosaic MLIR) is checked at
benchmark shapes on a CPU-only machine; Mosaic's own compilation (layouts, VMEM) needs
libtpu (no TPU): that test runs when libtpu is importable or RL_RING_LIBTPU_PATH names a
folder holding it, else it is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import assert_close, make_qkv, reference_vjp, segments
from jax.experimental.pallas import tpu as pltpu

from rl_ring.attention.kernels import tpu
from rl_ring.attention.layout import layout_positions
from rl_ring.attention.masks import FULL, PARTIAL, SKIP, visible

BLOCK = 128


def _bhtd(x):
    return jnp.swapaxes(x, 1, 2)


def lax_slice(x, start, stop, axis):
    return jax.lax.slice_in_dim(x, int(start), int(stop), axis=axis)


def _dense_lse(q, k, *, scale, mask):
    """Log-sum-exp ``[b, h, tq]`` of the dense masked scores (``-inf`` for empty rows)."""
    b, t, h, d = q.shape
    hk = k.shape[2]
    qf = q.astype(jnp.float32).reshape(b, t, hk, h // hk, d)
    s = jnp.einsum("bqhgd,bkhd->bhgqk", qf, k.astype(jnp.float32)) * scale
    if mask is not None:
        s = jnp.where(mask[:, :, None], s, -jnp.inf)
    return jax.nn.logsumexp(s, axis=-1).reshape(b, h, t)


def _inputs(b, t, h, hk, d, dtype, *, seed=0, layout="contiguous", seg_cuts=None, pad=None):
    """q, k, v, ct ``[b, t, h, d]`` and the mask inputs (positions permuted by layout)."""
    q, k, v, ct = make_qkv(seed, b, t, h, hk, d, dtype)
    pos = jnp.asarray(np.broadcast_to(layout_positions(t, 2, layout), (b, t)).astype(np.int32))
    seg = None if seg_cuts is None else segments(b, t, seg_cuts)
    valid = None
    if pad is not None:
        valid = np.ones((b, t), bool)
        for row, idx in enumerate(pad):
            valid[row, idx] = False
        valid = jnp.asarray(valid)
    return q, k, v, ct, pos, seg, valid


def _check_pair(q, k, v, ct, pos, seg, valid, *, causal, tps, what, key_blocks=1,
                interpret=True):
    """Forward (out, lse) and backward (dq, dk, dv) of the kernel vs the dense oracle.

    With ``key_blocks > 1`` the keys are split into that many pair calls: outputs are merged
    by log-sum-exp and the backward of each pair gets the full attention's lse/delta, as the
    blockwise/ring callers do.
    """
    dtype = q.dtype
    d = q.shape[-1]
    scale = d**-0.5
    ref_kw = dict(causal=causal, tokens_per_step=tps, scale=scale)

    @jax.jit
    def oracle(q, k, v, ct, pos, seg, valid):
        kw = dict(ref_kw, segment_ids=seg, positions=pos, kv_mask=valid)
        mask = visible(pos, pos, causal=causal, tokens_per_step=tps, q_seg=seg, k_seg=seg,
                       k_valid=valid)
        return reference_vjp(q, k, v, ct, **kw), _dense_lse(q, k, scale=scale, mask=mask)

    (want_out, (want_dq, want_dk, want_dv)), want_lse = oracle(q, k, v, ct, pos, seg, valid)

    kw = dict(causal=causal, tokens_per_step=tps, scale=scale, block_q=BLOCK, block_k=BLOCK,
              interpret=interpret)
    qh, kh, vh, cth = (_bhtd(x) for x in (q, k, v, ct))
    t = k.shape[1]
    cuts = np.linspace(0, t, key_blocks + 1).astype(int)

    def key_slice(x, i, axis):
        return None if x is None else lax_slice(x, cuts[i], cuts[i + 1], axis)

    fwd = jax.jit(lambda *a: tpu.pair_forward(*a, **kw))
    parts = [
        fwd(qh, key_slice(kh, i, 2), key_slice(vh, i, 2), pos, key_slice(pos, i, 1), seg,
            key_slice(seg, i, 1), key_slice(valid, i, 1))
        for i in range(key_blocks)
    ]
    lse = jnp.stack([p[1] for p in parts])
    lse_all = jax.nn.logsumexp(lse, axis=0)
    safe = jnp.where(jnp.isfinite(lse_all), lse_all, 0.0)
    out = sum(p[0] * jnp.exp(p[1] - safe)[..., None] for p in parts)

    assert out.dtype == jnp.float32 and lse_all.dtype == jnp.float32
    assert_close(_bhtd(out), want_out, dtype, f"{what} output")
    empty = ~np.isfinite(np.asarray(want_lse))
    np.testing.assert_array_equal(~np.isfinite(np.asarray(lse_all)), empty, f"{what} empty rows")
    assert_close(jnp.where(empty, 0.0, lse_all), jnp.where(empty, 0.0, want_lse), dtype,
                 f"{what} lse")

    # lse/delta of the full attention, computed from the oracle.
    delta = jnp.sum(_bhtd(want_out) * cth.astype(jnp.float32), axis=-1)
    bwd = jax.jit(lambda *a: tpu.pair_backward(*a, **kw))
    dq = 0.0
    dks, dvs = [], []
    for i in range(key_blocks):
        dqi, dki, dvi = bwd(qh, key_slice(kh, i, 2), key_slice(vh, i, 2), cth, want_lse, delta,
                            pos, key_slice(pos, i, 1), seg, key_slice(seg, i, 1),
                            key_slice(valid, i, 1))
        dq = dq + dqi
        dks.append(dki)
        dvs.append(dvi)
    dk, dv = jnp.concatenate(dks, axis=2), jnp.concatenate(dvs, axis=2)
    for name, got, want in (("dq", dq, want_dq), ("dk", dk, want_dk), ("dv", dv, want_dv)):
        assert got.dtype == jnp.float32, f"{what} {name} dtype {got.dtype}"
        assert_close(_bhtd(got), want, dtype, f"{what} {name}")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_block_causal_segments_padding_zigzag(dtype):
    # Everything at once: zigzag-permuted positions, tokens_per_step=3, two segments per
    # row, padding keys, GQA 4 -> 2, batch 2. Row 1 pads keys 0..2 (step 0): its queries
    # 0..2 see no key at all (zero output and gradients, lse -inf). float32 runs in the
    # TPU interpreter (scratch starts as NaN, out-of-bounds reads raise), bfloat16 in the
    # faster generic one.
    args = _inputs(2, 256, 4, 2, 128, dtype, layout="zigzag", seg_cuts=[[100], [40]],
                   pad=[[5, 200, 201], [0, 1, 2, 130]])
    _, _, _, _, pos, seg, valid = args
    mask = visible(pos, pos, causal=True, tokens_per_step=3, q_seg=seg, k_seg=seg,
                   k_valid=valid)
    assert int((~mask.any(-1)).sum()) == 3  # the 3 empty query rows are really there
    interpret = pltpu.InterpretParams() if dtype == jnp.float32 else True
    _check_pair(*args, causal=True, tps=3, what=f"block-causal {jnp.dtype(dtype)}",
                interpret=interpret)


def test_ragged_noncausal_padding_d64():
    # 200 tokens padded to 256 inside the kernel call; head_dim 64 (below a lane width).
    args = _inputs(1, 200, 2, 2, 64, jnp.float32, seg_cuts=[[70]], pad=[[3, 150]])
    _check_pair(*args, causal=False, tps=1, what="ragged non-causal")


def test_causal_two_key_blocks_merge_to_full_attention():
    # The pair contract: key blocks attended separately, merged by lse, backward with the
    # full lse/delta: the sum equals full attention (causal, zigzag positions, GQA 2 -> 1,
    # 2 key blocks of 128 against 2 query tiles: skipped, full and partial pairs).
    args = _inputs(1, 256, 2, 1, 128, jnp.float32, layout="zigzag")
    _check_pair(*args, causal=True, tps=1, what="two key blocks", key_blocks=2)


def test_tile_kinds_follow_positions():
    # Causal, contiguous 512 tokens in 128-tiles: lower triangle FULL, diagonal PARTIAL,
    # upper SKIP; the fetch index of a skipped pair repeats the last computed tile.
    pos = jnp.arange(512, dtype=jnp.int32)[None]

    @jax.jit
    def tables(pos):
        prep = tpu._Prepared(pos, pos, None, None, None, causal=True, tps=1, bq=128, bk=128,
                             tq=512, tk=512)
        return prep.kinds, prep.fwd_table, prep.dkv_table

    kinds, fwd_table, dkv_table = tables(pos)
    kinds = np.asarray(kinds[0])
    want = np.where(np.tri(4, k=-1, dtype=bool), FULL, SKIP)
    np.fill_diagonal(want, PARTIAL)
    np.testing.assert_array_equal(kinds, want)
    table = np.asarray(fwd_table).reshape(4, 4)
    np.testing.assert_array_equal(table & 3, want)
    np.testing.assert_array_equal(table >> 2, np.minimum.outer(np.arange(4), np.arange(4)))
    # dk/dv kernel: for key tile j, query tiles i < j are skipped and fetch tile j first.
    dkv = np.asarray(dkv_table).reshape(4, 4)
    np.testing.assert_array_equal(dkv & 3, want.T)
    np.testing.assert_array_equal(dkv >> 2, np.maximum.outer(np.arange(4), np.arange(4)))


@pytest.mark.parametrize("t", [4096, 32768])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("causal", [True, False])
def test_lowers_for_tpu(t, d, causal):
    # Pallas -> Mosaic lowering at benchmark shapes (bf16, 512 tiles, segments, padding)
    # from a CPU-only machine: every kernel lowers to a tpu_custom_call.
    b, h, hk = 1, 8, 4
    s = jax.ShapeDtypeStruct
    q, kv = s((b, h, t, d), jnp.bfloat16), s((b, hk, t, d), jnp.bfloat16)
    pos, valid, row = s((b, t), jnp.int32), s((b, t), jnp.bool_), s((b, h, t), jnp.float32)
    kw = dict(causal=causal, tokens_per_step=1, scale=d**-0.5, block_q=512, block_k=512)

    def fwd(q, k, v, p, sg, ok):
        return tpu.pair_forward(q, k, v, p, p, sg, sg, ok, **kw)

    def bwd(q, k, v, do, lse, delta, p, sg, ok):
        return tpu.pair_backward(q, k, v, do, lse, delta, p, p, sg, sg, ok, **kw)

    low_f = jax.jit(fwd).trace(q, kv, kv, pos, pos, valid).lower(lowering_platforms=("tpu",))
    low_b = jax.jit(bwd).trace(q, kv, kv, q, row, row, pos, pos, valid).lower(
        lowering_platforms=("tpu",)
    )
    assert low_f.as_text().count("tpu_custom_call") == 1
    assert low_b.as_text().count("tpu_custom_call") == 2


_AOT_SCRIPT = r"""
import jax, jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import SingleDeviceSharding
from rl_ring.attention.kernels import tpu

topo = topologies.get_topology_desc(topology_name="v5e:1x1", platform="tpu",
                                    chip_config_name="default",
                                    chips_per_host_bounds=(1, 1, 1), num_slices=1)
sh = SingleDeviceSharding(topo.devices[0])
b, h, hk, t, d = 1, 8, 4, 32768, 128
S = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt, sharding=sh)
q, kv = S((b, h, t, d), jnp.bfloat16), S((b, hk, t, d), jnp.bfloat16)
pos, ok, row = S((b, t), jnp.int32), S((b, t), jnp.bool_), S((b, h, t), jnp.float32)
kw = dict(causal=True, tokens_per_step=1, scale=d**-0.5, block_q=512, block_k=512)
fwd = lambda q, k, v, p, ok: tpu.pair_forward(q, k, v, p, p, p, p, ok, **kw)
bwd = lambda q, k, v, do, l, dl, p, ok: tpu.pair_backward(q, k, v, do, l, dl, p, p, p, p, ok, **kw)
jax.jit(fwd).trace(q, kv, kv, pos, ok).lower().compile()
jax.jit(bwd).trace(q, kv, kv, q, row, row, pos, ok).lower().compile()
print("COMPILED")
"""


def test_compiles_for_tpu_with_libtpu():
    # Full Mosaic compilation (vector layouts, VMEM budget) for a TPU v5e, deviceless: needs
    # the libtpu package, importable here or from RL_RING_LIBTPU_PATH (a folder holding it,
    # e.g. `pip install --no-deps --target DIR libtpu`). Runs in a subprocess so that libtpu
    # never loads into the test process.
    extra = os.environ.get("RL_RING_LIBTPU_PATH")
    if importlib.util.find_spec("libtpu") is None and not extra:
        pytest.skip("libtpu not installed (set RL_RING_LIBTPU_PATH to a folder holding it)")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    paths = [p for p in (extra, os.getcwd(), env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    done = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "COMPILED" in done.stdout, done.stderr[-3000:]
