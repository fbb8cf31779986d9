"""Ring attention over 1-8 fake CPU devices against the dense oracle (forward and VJP)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import assert_close, check_against_reference, make_qkv, segments
from jax.sharding import PartitionSpec as P

from rl_ring.attention import (
    AttentionOptions,
    attention,
    block_work,
    layout_positions,
    permute,
    reference_attention,
    ring_attention,
)
from rl_ring.attention import blockwise as B
from rl_ring.attention.ring import ring_backward, ring_forward
from rl_ring.sharding import SEQ, batch_sharding, make_mesh

T = 128


@functools.cache
def _mesh(spec: str):
    from rl_ring.sharding import parse_mesh_spec

    return make_mesh(spec, jax.devices()[: parse_mesh_spec(spec).size])


def _masks(b: int, t: int, n: int):
    """Causal + segments whose boundaries fall inside device blocks and on block edges,
    + padding keys (a padded tail and holes)."""
    block = t // n
    cuts = [[block // 2 + 1, block, min(2 * block + 3, t - 1)], [t // 3]]
    valid = np.ones((b, t), bool)
    valid[0, t - 7 :] = False
    valid[1, 5:9] = False
    return {"causal": True, "segment_ids": segments(b, t, cuts), "kv_mask": jnp.asarray(valid)}


def _ref_kwargs(kw, layout, n, b, t):
    pos = jnp.broadcast_to(jnp.asarray(layout_positions(t, n, layout)), (b, t))
    return {**kw, "positions": pos}


def _check_ring(spec, layout="contiguous", kw=None, heads=(4, 2), dtype=jnp.float32, b=2,
                t=T, chunks=(12, 20), seed=0, **options):
    mesh = _mesh(spec)
    n = mesh.shape[SEQ]
    q, k, v, ct = make_qkv(seed, b, t, heads[0], heads[1], 16, dtype)
    kw = _masks(b, t, n) if kw is None else kw
    fn = functools.partial(
        attention, impl="ring", mesh=mesh, layout=layout, permuted_inputs=True,
        q_chunk=chunks[0], k_chunk=chunks[1], **options, **kw,
    )
    what = f"ring[{spec}, {layout}, {sorted(kw)}]"
    check_against_reference(fn, q, k, v, ct, what, **_ref_kwargs(kw, layout, n, b, t))


@pytest.mark.parametrize("spec", ["seq=1", "seq=2", "seq=4", "seq=8", "data=2,seq=4"])
def test_ring_all_masks_matches_reference(spec):
    # Chunks 12 / 20 do not divide the blocks (128, 64, 32, 16): ragged last chunks.
    _check_ring(spec)


@pytest.mark.parametrize("layout", ["zigzag", "striped"])
def test_ring_layouts_match_reference(layout):
    _check_ring("seq=8", layout)


def test_ring_non_causal_default_chunks():
    _check_ring("seq=8", kw={}, chunks=(512, 512))


def test_ring_block_causal_zigzag_grouped_heads():
    _check_ring("seq=4", "zigzag", kw={"causal": True, "tokens_per_step": 3}, heads=(6, 2), t=96)


def test_ring_heads_sharded_over_tensor_axis():
    _check_ring("seq=4,tensor=2", "zigzag")


def test_ring_grads_accumulated_into_received_blocks():
    _check_ring("seq=4", "zigzag", chunks=(16, 16), overlap_grads=False)


def test_ring_bfloat16():
    _check_ring("seq=4", dtype=jnp.bfloat16)


def test_ring_inside_jit_with_sharded_inputs():
    mesh = _mesh("data=2,seq=4")
    q, k, v, ct = make_qkv(1, 4, 64, 4, 4, 8)
    kw = _masks(4, 64, 4)
    put = lambda x: jax.device_put(x, batch_sharding(mesh, x.ndim))
    args = [put(x) for x in (q, k, v)] + [put(kw["segment_ids"]), put(kw["kv_mask"])]

    @jax.jit
    def step(q, k, v, seg, valid):
        out = attention(q, k, v, impl="ring", mesh=mesh, causal=True, segment_ids=seg,
                        kv_mask=valid, q_chunk=8, k_chunk=8)
        _, pullback = jax.vjp(lambda q, k, v: attention(
            q, k, v, impl="ring", mesh=mesh, causal=True, segment_ids=seg, kv_mask=valid
        ), q, k, v)
        return out, pullback(ct)

    out, (dq, dk, dv) = step(*args)
    want, (want_dq, want_dk, want_dv) = _reference_out_grads(q, k, v, ct, kw)
    assert_close(out, want, jnp.float32, "ring in jit")
    assert_close(dq, want_dq, jnp.float32, "ring in jit dq")
    assert_close(dk, want_dk, jnp.float32, "ring in jit dk")
    assert_close(dv, want_dv, jnp.float32, "ring in jit dv")
    assert out.sharding.is_equivalent_to(batch_sharding(mesh, 4), 4)


def _reference_out_grads(q, k, v, ct, kw):
    out, pullback = jax.vjp(lambda q, k, v: reference_attention(q, k, v, **kw), q, k, v)
    return out, pullback(ct)


@pytest.mark.parametrize("spec,layout", [("seq=2", "zigzag"), ("seq=4", "striped"),
                                         ("seq=8", "zigzag"), ("data=2,seq=4", "zigzag")])
def test_ring_layout_on_natural_order_inputs_equals_reference(spec, layout):
    """The safe default: inputs in their natural order, any layout, the dense result on the
    natural order (outputs and dq, dk, dv); the dispatcher permutes and unpermutes itself."""
    mesh = _mesh(spec)
    b, t = 2, 64
    q, k, v, ct = make_qkv(7, b, t, 4, 2, 8)
    kw = _masks(b, t, mesh.shape[SEQ])
    fn = functools.partial(attention, impl="ring", mesh=mesh, layout=layout, q_chunk=8,
                           k_chunk=8, **kw)
    check_against_reference(fn, q, k, v, ct, f"ring natural {spec} {layout}", **kw)


def test_layout_on_natural_inputs_is_a_no_op_for_single_device_impls():
    q, k, v, ct = make_qkv(8, 2, 64, 2, 2, 8)
    kw = {"causal": True, "segment_ids": segments(2, 64, [[10, 41], [30]])}
    for impl in ("reference", "blockwise"):
        fn = functools.partial(attention, impl=impl, layout="zigzag", num_shards=4, q_chunk=8,
                               k_chunk=8, **kw)
        check_against_reference(fn, q, k, v, ct, f"{impl} natural zigzag", **kw)


def test_natural_order_inside_shard_map_with_a_layout_is_an_error():
    mesh = _mesh("seq=4")
    q, k, v, _ = make_qkv(2, 1, 32, 2, 2, 8)
    spec = P(None, SEQ)
    body = lambda q, k, v: attention(q, k, v, impl="ring", causal=True, layout="zigzag")
    with pytest.raises(ValueError, match="permuted_inputs=True"):
        jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec)(q, k, v)


def test_ring_called_inside_an_outer_shard_map():
    """The model may already be inside shard_map over the mesh: the dispatcher then takes
    local shards and runs the ring directly (default positions from the layout)."""
    mesh = _mesh("seq=8")
    q, k, v, ct = make_qkv(2, 1, 64, 2, 2, 8)
    spec = P(None, SEQ)

    def body(q, k, v):
        return attention(q, k, v, impl="ring", causal=True, layout="zigzag",
                         permuted_inputs=True, q_chunk=4, k_chunk=4)

    sharded = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec))
    zig = lambda x: permute(x, 8, "zigzag")
    got = sharded(*(zig(x) for x in (q, k, v)))
    want = zig(reference_attention(q, k, v, causal=True))
    assert_close(got, want, jnp.float32, "ring in outer shard_map")
    # Gradients through the outer shard_map: the permuted reference gradients.
    _, pullback = jax.vjp(sharded, *(zig(x) for x in (q, k, v)))
    _, want_grads = _reference_out_grads(q, k, v, ct, {"causal": True})
    for name, g, w in zip(("dq", "dk", "dv"), pullback(zig(ct)), want_grads, strict=True):
        assert_close(g, zig(w), jnp.float32, f"ring in outer shard_map {name}")


# ----------------------------------------------------------------------------------------
# Work per device: the ring computes exactly the chunk pairs block_work predicts.
# ----------------------------------------------------------------------------------------


def _ring_counts(n: int, layout: str, t: int, chunk: int, causal: bool = True):
    mesh = _mesh(f"seq={n}")
    q, k, v, ct = make_qkv(3, 1, t, 2, 2, 8)
    pos = jnp.asarray(layout_positions(t, n, layout))[None]
    opts = AttentionOptions(q_chunk=chunk, k_chunk=chunk)

    def local(q, k, v, ct, pos):
        info = B.token_info(1, q.shape[1], positions=pos)
        cfg = B.kernel_config(
            q, k, causal=causal, tokens_per_step=1, options=opts, axis_name=SEQ, axis_size=n
        )
        qc, q_info = B.prepare_queries(q, info, chunk, 2)
        kc, vc, k_info = B.prepare_keys(k, v, info, chunk)
        kv = jnp.stack([kc, vc])
        out, lse, n_fwd = ring_forward(qc, kv, q_info, k_info, cfg)
        *_, n_bwd = ring_backward(qc, kv, out, lse, B.to_chunks(ct, chunk, 2), q_info, k_info, cfg)
        return n_fwd[None], n_bwd[None]

    spec = P(None, SEQ)
    fn = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 5, out_specs=(P(SEQ), P(SEQ)))
    perm = [permute(x, n, layout) for x in (q, k, v, ct)]
    n_fwd, n_bwd = jax.jit(fn)(*perm, pos)
    return np.asarray(n_fwd), np.asarray(n_bwd)


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
def test_ring_skips_exactly_the_hidden_chunk_pairs(layout):
    t, n, chunk = 256, 8, 16  # 2 chunks per device, 16 chunks in all
    n_fwd, n_bwd = _ring_counts(n, layout, t, chunk)
    want = block_work(t, n, layout, chunk, causal=True)
    np.testing.assert_array_equal(n_fwd, want)
    np.testing.assert_array_equal(n_bwd, want)
    # Hand count: contiguous device d attends 4d + 3 pairs; zigzag 17 on every device.
    hand = 4 * np.arange(n) + 3 if layout == "contiguous" else np.full(n, 17)
    np.testing.assert_array_equal(want, hand)


# ----------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------


def test_ring_sequence_not_divisible_by_devices():
    x = jnp.zeros((1, 30, 2, 4))
    with pytest.raises(ValueError, match="sequence length 30 .* not divisible by the 8 devices"):
        attention(x, x, x, impl="ring", mesh=_mesh("seq=8"))


def test_ring_mesh_without_seq_axis():
    from jax.sharding import Mesh

    mesh = Mesh(np.asarray(jax.devices()[:2]), ("x",))
    x = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="no 'seq' axis"):
        attention(x, x, x, impl="ring", mesh=mesh)


def test_ring_batch_not_divisible_by_data_axis():
    x = jnp.zeros((3, 8, 2, 4))
    with pytest.raises(ValueError, match=r"batch 3 .* not divisible by the 2 devices"):
        attention(x, x, x, impl="ring", mesh=_mesh("data=2,seq=4"))


def test_ring_attention_outside_shard_map():
    x = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="inside jax.shard_map over the mesh axis 'seq'"):
        ring_attention(x, x, x)
