"""Fused Pallas attention kernels (GPU / Triton lowering): interpret mode on CPU against the
dense oracle, tile classification, lowering for CUDA, and their use by blockwise and ring
attention (``AttentionOptions.kernel="pallas"``).

Interpret mode is slow to compile (each ``pallas_call`` becomes an XLA while loop), so the
shapes are tiny but still cross tile boundaries: t=40 with 16-token tiles (a ragged tail),
grouped heads, permuted positions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import assert_close, check_against_reference, make_qkv, segments
from jax.sharding import PartitionSpec as P

from rl_ring.attention import AttentionOptions, attention, layout_positions, ring_attention
from rl_ring.attention import kernels as K
from rl_ring.attention.allgather import allgather_attention
from rl_ring.attention.kernels import common
from rl_ring.attention.kernels import triton as T
from rl_ring.attention.masks import FULL, PARTIAL, SKIP, visible
from rl_ring.sharding import make_mesh

TRITON_CALL = "__gpu$xla.gpu.triton"


def _heads_first(*xs):
    return [jnp.swapaxes(x, 1, 2) for x in xs]


def _reference_lse(q, k, pos, scale, **mask):
    """Dense log-sum-exp ``[b, h, t]`` (float32; -inf where a row sees nothing)."""
    b, t, h, d = q.shape
    g = h // k.shape[2]
    kf = jnp.repeat(k.astype(jnp.float32), g, axis=2)
    s = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), kf) * scale
    m = visible(pos, pos, q_seg=mask.get("segment_ids"), k_seg=mask.get("segment_ids"),
                k_valid=mask.get("kv_mask"), causal=mask.get("causal", False),
                tokens_per_step=mask.get("tokens_per_step", 1))
    if m is not None:
        s = jnp.where(m, s, -jnp.inf)
    return jax.nn.logsumexp(s, axis=-1)


def _pair_case(name):
    """(dtype, b, t, h, hk, d, positions, mask kwargs) of a kernel test case."""
    b, t = 2, 40
    valid = np.ones((b, t), bool)
    valid[0, 0:3] = False  # with tokens_per_step=3: queries 0..2 of row 0 see no key at all
    valid[1, 17:21] = False
    seg = segments(b, t, [[9, 30], [22]])
    arange = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    if name == "all_masks_f32":  # zigzag positions, head_dim 24 (zero-padded to 32)
        pos = jnp.broadcast_to(jnp.asarray(layout_positions(t, 4, "zigzag")), (b, t))
        assert list(np.asarray(pos[0, :5])) == [0, 1, 2, 3, 4]  # row 0's first 3 see nothing
        kw = {"causal": True, "tokens_per_step": 3, "segment_ids": seg,
              "kv_mask": jnp.asarray(valid)}
        return jnp.float32, b, t, 4, 2, 24, pos, kw
    if name == "bf16":
        return jnp.bfloat16, b, t, 4, 2, 32, arange, {"causal": True,
                                                      "kv_mask": jnp.asarray(valid)}
    raise ValueError(name)


@pytest.mark.parametrize("name", ["all_masks_f32", "bf16"])
def test_pair_kernels_match_reference(name):
    dtype, b, t, h, hk, d, pos, kw = _pair_case(name)
    q, k, v, do = make_qkv(1, b, t, h, hk, d, dtype)
    scale = d**-0.5
    seg, valid = kw.get("segment_ids"), kw.get("kv_mask")
    mask_kw = dict(causal=kw["causal"], tokens_per_step=kw.get("tokens_per_step", 1),
                   scale=scale, block_q=16, block_k=16, interpret=True)

    @jax.jit
    def run(q, k, v, do):
        qh, kh, vh, doh = _heads_first(q, k, v, do)
        out, lse = T.pair_forward(qh, kh, vh, pos, pos, seg, seg, valid, **mask_kw)
        delta = jnp.sum(out * doh.astype(jnp.float32), -1)
        grads = T.pair_backward(qh, kh, vh, doh, lse, delta, pos, pos, seg, seg, valid,
                                **mask_kw)
        return out, lse, grads

    @jax.jit
    def oracle(q, k, v, do):
        f32 = [x.astype(jnp.float32) for x in (q, k, v, do)]
        ref = functools.partial(attention, impl="reference", positions=pos, **kw)
        want, pullback = jax.vjp(ref, *f32[:3])
        return want, _reference_lse(*f32[:2], pos, scale, **kw), pullback(f32[3])

    out, lse, grads = run(q, k, v, do)
    want, want_lse, want_grads = oracle(q, k, v, do)
    assert out.dtype == lse.dtype == jnp.float32
    assert_close(jnp.swapaxes(out, 1, 2), want, dtype, f"{name} out")
    np.testing.assert_array_equal(np.isinf(lse), np.isinf(want_lse))
    if "kv_mask" in kw and kw.get("tokens_per_step") == 3:
        assert bool(jnp.all(lse[0, :, :3] == -jnp.inf)) and bool(jnp.all(out[0, :, :3] == 0))
    fin = np.isfinite(np.asarray(want_lse))
    assert_close(np.asarray(lse)[fin], np.asarray(want_lse)[fin], dtype, f"{name} lse")
    for gname, got, w in zip(("dq", "dk", "dv"), grads, want_grads, strict=True):
        assert got.dtype == jnp.float32
        assert_close(jnp.swapaxes(got, 1, 2), w, dtype, f"{name} {gname}")


def test_tile_kinds_match_dense_masks():
    """SKIP tiles see nothing, FULL tiles see everything, over random permutations."""
    rng = np.random.default_rng(0)
    b, tq, tk, bq, bk = 3, 64, 48, 8, 8
    # Queries: zigzag runs of 8 positions, shuffled inside each run (per row); keys: sorted
    # random positions with repeats.
    zig = np.asarray(layout_positions(tq, 4, "zigzag")).reshape(-1, 8)
    q_pos = jnp.asarray(np.stack([np.concatenate([rng.permutation(r) for r in zig])
                                  for _ in range(b)]), jnp.int32)
    k_pos = jnp.asarray(np.sort(rng.choice(tq, (b, tk), replace=True), -1), jnp.int32)
    q_seg = jnp.asarray(q_pos // 24, jnp.int32)  # segments follow positions
    k_seg = jnp.asarray(k_pos // 24, jnp.int32)
    valid = jnp.ones((b, tk), bool).at[0, :bk].set(False)  # one all-invalid key tile
    valid = valid.at[1, jnp.array([10, 30])].set(False)  # holes

    @jax.jit
    def classify(q_pos, k_pos, q_seg, k_seg, valid):
        m = common.prepare_mask_inputs(q_pos, k_pos, q_seg, k_seg, valid, causal=True,
                                       tokens_per_step=2, tq_pad=tq, tk_pad=tk)
        kinds = common.tile_kinds(m, bq, bk, tq // bq)
        return kinds, common.visit_lists(kinds)

    kinds, lists = (np.asarray(x) for x in classify(q_pos, k_pos, q_seg, k_seg, valid))
    dense = np.asarray(visible(q_pos, k_pos, causal=True, tokens_per_step=2, q_seg=q_seg,
                               k_seg=k_seg, k_valid=valid))[:, 0]
    tiles = dense.reshape(b, tq // bq, bq, tk // bk, bk)
    any_vis, all_vis = tiles.any((2, 4)), tiles.all((2, 4))
    assert not np.any(any_vis & (kinds == SKIP)) and np.all(all_vis[kinds == FULL])
    assert (kinds == SKIP).sum() > 0 and (kinds == FULL).sum() > 0
    for row, krow in zip(lists.reshape(-1, lists.shape[-1]), kinds.reshape(-1, kinds.shape[-1]),
                         strict=True):
        f, p = row[0], row[1]
        assert list(row[2 : 2 + f]) == list(np.flatnonzero(krow == FULL))
        assert list(row[2 + f : 2 + f + p]) == list(np.flatnonzero(krow == PARTIAL))


# ----------------------------------------------------------------------------------------
# Lowering for CUDA (Pallas -> Triton IR; compiling it to PTX needs a GPU).
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,causal,masks", [(64, True, False), (128, False, False),
                                            (64, True, True)])
def test_pair_kernels_lower_for_cuda(d, causal, masks):
    b, h, hk, t = 1, 8, 4, 4096 if not masks else 4000  # 4000: a ragged last tile
    sds = jax.ShapeDtypeStruct
    q, k = sds((b, h, t, d), jnp.bfloat16), sds((b, hk, t, d), jnp.bfloat16)
    pos, rows = sds((b, t), jnp.int32), sds((b, h, t), jnp.float32)
    seg, valid = (sds((b, t), jnp.int32), sds((b, t), bool)) if masks else (None, None)
    kw = dict(causal=causal, tokens_per_step=1, scale=d**-0.5, block_q=128, block_k=128)

    def fwd(q, k, v, pos, seg, valid):
        return T.pair_forward(q, k, v, pos, pos, seg, seg, valid, **kw)

    def bwd(q, k, v, do, lse, delta, pos, seg, valid):
        return T.pair_backward(q, k, v, do, lse, delta, pos, pos, seg, seg, valid, **kw)

    text = jax.jit(fwd).trace(q, k, k, pos, seg, valid).lower(
        lowering_platforms=("cuda",)).as_text()
    assert text.count(TRITON_CALL) == 1
    text = jax.jit(bwd).trace(q, k, k, q, rows, rows, pos, seg, valid).lower(
        lowering_platforms=("cuda",)).as_text()
    assert text.count(TRITON_CALL) == 2


# ----------------------------------------------------------------------------------------
# Integration: AttentionOptions.kernel.
# ----------------------------------------------------------------------------------------


def test_kernel_option_resolution():
    assert K.resolve_kernel("auto", "cpu") == "xla"
    assert K.resolve_kernel("auto", "gpu") == K.resolve_kernel("auto", "tpu") == "pallas"
    assert K.resolve_kernel("xla", "gpu") == "xla"
    assert K.kernel_module("cpu") is T and K.kernel_module("cuda") is T
    with pytest.raises(ValueError, match="kernel"):
        AttentionOptions(kernel="cuda")
    with pytest.raises(ValueError, match="block_q"):
        AttentionOptions(block_q=0)
    with pytest.raises(ValueError, match="power of two"):
        T.pair_forward(*[jnp.zeros((1, 1, 16, 16))] * 3, *[jnp.zeros((1, 16), jnp.int32)] * 2,
                       None, None, None, causal=False, tokens_per_step=1, scale=1.0,
                       block_q=24, interpret=True)


def _masks(b, t):
    valid = np.ones((b, t), bool)
    valid[0, t - 7 :] = False
    valid[1, 5:9] = False
    return {"causal": True, "segment_ids": segments(b, t, [[13, 33], [t // 3]]),
            "kv_mask": jnp.asarray(valid)}


def test_blockwise_pallas_matches_reference():
    b, t = 2, 40
    q, k, v, ct = make_qkv(2, b, t, 4, 2, 16)
    kw = _masks(b, t)
    fn = functools.partial(attention, impl="blockwise", kernel="pallas", block_q=16,
                           block_k=16, **kw)
    check_against_reference(fn, q, k, v, ct, "blockwise pallas", **kw)


@pytest.mark.parametrize("n,layout,masked", [(1, "contiguous", True), (2, "contiguous", False),
                                             (8, "zigzag", True)])
def test_ring_pallas_matches_reference(n, layout, masked):
    """Masked: causal (block-causal on 8 devices) + segments + padding keys; unmasked (no
    mask operand at all: every tile FULL) on 2 devices."""
    b, t = 2, 64
    mesh = make_mesh(f"seq={n}", jax.devices()[:n])
    q, k, v, ct = make_qkv(3, b, t, 4, 2, 16)
    kw = {**_masks(b, t), "tokens_per_step": 3 if n == 8 else 1} if masked else {}
    pos = jnp.broadcast_to(jnp.asarray(layout_positions(t, n, layout)), (b, t))
    # Interpret mode needs check_vma=False (see ring_attention); q/k/v are in layout order.
    ring = jax.shard_map(
        lambda q, k, v, p, s, m: ring_attention(
            q, k, v, positions=p, segment_ids=s, kv_mask=m, kernel="pallas", block_q=16,
            block_k=16, **{key: kw[key] for key in ("causal", "tokens_per_step") if key in kw}),
        mesh=mesh, in_specs=(P(None, "seq"),) * 6, out_specs=P(None, "seq"), check_vma=False,
    )
    segs, valid = kw.get("segment_ids"), kw.get("kv_mask")
    if not masked:  # shard_map needs arrays: pass dummies and drop them in a wrapper
        ring_plain = jax.shard_map(
            lambda q, k, v, p: ring_attention(q, k, v, positions=p, kernel="pallas",
                                              block_q=16, block_k=16),
            mesh=mesh, in_specs=(P(None, "seq"),) * 4, out_specs=P(None, "seq"),
            check_vma=False,
        )
        fn = lambda q, k, v: ring_plain(q, k, v, pos)
    else:
        fn = lambda q, k, v: ring(q, k, v, pos, segs, valid)
    check_against_reference(fn, q, k, v, ct, f"ring pallas [{n}, {layout}]", positions=pos,
                            **kw)


@pytest.mark.parametrize("impl,n,layout", [("ring", 4, "zigzag"), ("allgather", 4, "striped"),
                                            ("ulysses", 2, "contiguous")])
def test_dispatcher_strategies_with_pallas_match_reference(impl, n, layout):
    """attention(impl=..., kernel="pallas") as the model calls it: natural-order inputs, the
    dispatcher's own shard_map (interpreted kernels: check_vma off), masks and GQA."""
    b, t = 2, 32
    mesh = make_mesh(f"seq={n}", jax.devices()[:n])
    q, k, v, ct = make_qkv(5, b, t, 4, 2, 16)
    kw = {**_masks(b, t), "tokens_per_step": 2}
    fn = functools.partial(attention, impl=impl, mesh=mesh, layout=layout, kernel="pallas",
                           block_q=16, block_k=16, **kw)
    check_against_reference(fn, q, k, v, ct, f"{impl} pallas [{n}, {layout}]", **kw)


def test_ring_pallas_interpret_under_check_vma_says_why():
    mesh = make_mesh("seq=2", jax.devices()[:2])
    q, k, v, _ = make_qkv(0, 1, 32, 2, 2, 16)
    for fn in (ring_attention, allgather_attention):
        local = jax.shard_map(lambda q, k, v, fn=fn: fn(q, k, v, kernel="pallas"), mesh=mesh,
                              in_specs=(P(None, "seq"),) * 3, out_specs=P(None, "seq"),
                              check_vma=True)
        with pytest.raises(ValueError, match="check_vma=False"):
            local(q, k, v)


def test_ring_pallas_lowers_for_cuda_on_8_devices():
    """The sharded ring (shard_map with check_vma=True, as attention() builds it), forward
    and backward, lowers for CUDA with the compiled (not interpreted) Triton kernels."""
    mesh = make_mesh("seq=8", jax.devices()[:8])
    sds = jax.ShapeDtypeStruct
    q, k = sds((1, 4096, 8, 64), jnp.bfloat16), sds((1, 4096, 4, 64), jnp.bfloat16)

    def loss(q, k, v):
        out = attention(q, k, v, impl="ring", mesh=mesh, layout="zigzag", causal=True,
                        kernel="pallas", interpret=False, block_q=128, block_k=128)
        return out.astype(jnp.float32).sum()

    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    text = grad.trace(q, k, k).lower(lowering_platforms=("cuda",)).as_text()
    # forward: 2 call sites (ring loop + last block); backward: 3 sites x (dq, dk/dv).
    assert text.count(TRITON_CALL) == 8
    assert "collective_permute" in text


@pytest.mark.parametrize("impl", ["allgather", "ulysses"])
def test_other_strategies_lower_for_cuda_with_the_kernels(impl):
    """All-gather and Ulysses call the fused kernels too (forward and backward), sharded."""
    mesh = make_mesh("seq=8", jax.devices()[:8])
    sds = jax.ShapeDtypeStruct
    q, k = sds((1, 2048, 8, 64), jnp.bfloat16), sds((1, 2048, 8, 64), jnp.bfloat16)

    def loss(q, k, v):
        out = attention(q, k, v, impl=impl, mesh=mesh, causal=True, kernel="pallas",
                        interpret=False, block_q=128, block_k=128)
        return out.astype(jnp.float32).sum()

    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, k).lower(
        lowering_platforms=("cuda",)).as_text()
    assert text.count(TRITON_CALL) == 3  # forward, dq, dk/dv
    assert ("all_gather" if impl == "allgather" else "all_to_all") in text


def test_ring_with_tpu_kernels_matches_reference_on_8_devices():
    """The Mosaic TPU kernels (interpreted on this CPU: kernel_platform="tpu") inside the
    ring on 8 fake devices, zigzag, block-causal + segments + padding keys, GQA."""
    b, t = 2, 64
    mesh = make_mesh("seq=8", jax.devices()[:8])
    q, k, v, ct = make_qkv(7, b, t, 4, 2, 16)
    kw = {**_masks(b, t), "tokens_per_step": 3}
    fn = functools.partial(attention, impl="ring", mesh=mesh, layout="zigzag", kernel="pallas",
                           kernel_platform="tpu", block_q=128, block_k=128, **kw)
    check_against_reference(fn, q, k, v, ct, "ring tpu-kernels [8, zigzag]", **kw)
    # The TPU kernels did run: their tiles must be multiples of 128 (the Triton ones need not).
    with pytest.raises(ValueError, match="multiple of 128"):
        attention(q, k, v, impl="blockwise", kernel="pallas", kernel_platform="tpu",
                  block_q=16, block_k=16)
