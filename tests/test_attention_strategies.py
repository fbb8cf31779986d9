"""All-gather and Ulysses context parallelism, and impl="auto", against the dense oracle."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import assert_close, check_against_reference, make_qkv, segments
from jax.sharding import PartitionSpec as P

from rl_ring.attention import (
    AttentionOptions,
    allgather_attention,
    attention,
    block_work,
    layout_positions,
    permute,
    reference_attention,
    ulysses_attention,
)
from rl_ring.attention import blockwise as B
from rl_ring.attention.allgather import allgather_backward, allgather_forward
from rl_ring.attention.strategy import choose_impl
from rl_ring.attention.ulysses import kv_repeats
from rl_ring.sharding import SEQ, make_mesh, parse_mesh_spec

T = 64


@functools.cache
def _mesh(spec: str):
    return make_mesh(spec, jax.devices()[: parse_mesh_spec(spec).size])


def _masks(b: int, t: int, n: int):
    """Causal + segments cut inside and on device blocks + padding keys (tail and holes)."""
    block = t // n
    cuts = [[block // 2 + 1, block, min(2 * block + 3, t - 1)], [t // 3]]
    valid = np.ones((b, t), bool)
    valid[0, t - 7 :] = False
    valid[1, 5:9] = False
    return {"causal": True, "segment_ids": segments(b, t, cuts), "kv_mask": jnp.asarray(valid)}


def _check(impl, spec, layout="contiguous", kw=None, heads=(8, 2), t=T, chunks=(6, 10),
           dtype=jnp.float32, seed=0):
    """Pre-permuted inputs (the model's path) against the oracle on the layout's positions."""
    mesh = _mesh(spec)
    n = mesh.shape[SEQ]
    b = 2
    q, k, v, ct = make_qkv(seed, b, t, heads[0], heads[1], 8, dtype)
    kw = _masks(b, t, n) if kw is None else kw
    fn = functools.partial(attention, impl=impl, mesh=mesh, layout=layout, permuted_inputs=True,
                           q_chunk=chunks[0], k_chunk=chunks[1], **kw)
    pos = jnp.broadcast_to(jnp.asarray(layout_positions(t, n, layout)), (b, t))
    check_against_reference(fn, q, k, v, ct, f"{impl}[{spec}, {layout}, {sorted(kw)}]",
                            positions=pos, **kw)


# Chunks 6 / 10 divide none of the blocks (64, 32, 16, 8): ragged, padded last chunks.
# Heads 8 / 2: grouped K/V; Ulysses on 4 and 8 devices repeats each K/V head 2 / 4 times.
@pytest.mark.parametrize("impl", ["allgather", "ulysses"])
@pytest.mark.parametrize("spec", ["seq=1", "seq=2", "seq=4", "seq=8", "data=2,seq=4"])
def test_all_masks_match_reference(impl, spec):
    _check(impl, spec)


@pytest.mark.parametrize("impl,layout", [("allgather", "striped"), ("ulysses", "zigzag")])
def test_permuted_layouts_match_reference(impl, layout):
    _check(impl, "seq=4", layout)


@pytest.mark.parametrize("impl", ["allgather", "ulysses"])
def test_block_causal_multi_head_kv_bfloat16(impl):
    _check(impl, "seq=4", "zigzag", kw={"causal": True, "tokens_per_step": 3}, heads=(4, 4),
           t=48, dtype=jnp.bfloat16)


@pytest.mark.parametrize("impl", ["allgather", "ulysses"])
def test_heads_sharded_over_tensor_axis(impl):
    # 8 heads over tensor=2: 4 query heads and 1 K/V head per shard_map, Ulysses repeats 4x.
    _check(impl, "seq=4,tensor=2", "zigzag", kw={"causal": True}, chunks=(8, 8))


@pytest.mark.parametrize("impl,spec,layout", [("allgather", "seq=8", "zigzag"),
                                              ("ulysses", "data=2,seq=4", "striped")])
def test_layout_on_natural_order_inputs_equals_reference(impl, spec, layout):
    mesh = _mesh(spec)
    q, k, v, ct = make_qkv(7, 2, T, 4, 4, 8)
    kw = _masks(2, T, mesh.shape[SEQ])
    fn = functools.partial(attention, impl=impl, mesh=mesh, layout=layout, q_chunk=8,
                           k_chunk=8, **kw)
    check_against_reference(fn, q, k, v, ct, f"{impl} natural {spec} {layout}", **kw)


@pytest.mark.parametrize("impl", ["allgather", "ulysses"])
def test_called_inside_an_outer_shard_map(impl):
    mesh = _mesh("seq=4")
    q, k, v, ct = make_qkv(2, 1, 32, 4, 2, 8)
    spec = P(None, SEQ)

    def body(q, k, v):
        return attention(q, k, v, impl=impl, causal=True, layout="zigzag",
                         permuted_inputs=True, q_chunk=4, k_chunk=4)

    sharded = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(spec,) * 3, out_specs=spec))
    zig = lambda x: permute(x, 4, "zigzag")
    out, pullback = jax.vjp(sharded, *(zig(x) for x in (q, k, v)))
    want, want_pullback = jax.vjp(
        lambda q, k, v: reference_attention(q, k, v, causal=True), q, k, v)
    assert_close(out, zig(want), jnp.float32, f"{impl} in outer shard_map")
    for name, g, w in zip(("dq", "dk", "dv"), pullback(zig(ct)), want_pullback(ct), strict=True):
        assert_close(g, zig(w), jnp.float32, f"{impl} in outer shard_map {name}")


def test_allgather_skips_exactly_the_ring_chunk_pairs():
    """Local queries against the gathered K/V, chunked per device block, compute exactly the
    pairs the ring computes (block_work): zigzag balances all-gather attention too."""
    t, n, chunk = 128, 8, 8  # 2 chunks per device
    mesh = _mesh(f"seq={n}")
    q, k, v, ct = make_qkv(3, 1, t, 2, 2, 8)
    opts = AttentionOptions(q_chunk=chunk, k_chunk=chunk)
    out = {}
    for layout in ("contiguous", "zigzag"):
        pos = jnp.asarray(layout_positions(t, n, layout))[None]

        def local(q, k, v, ct, pos):
            info = B.token_info(1, q.shape[1], positions=pos)
            cfg = B.kernel_config(q, k, causal=True, tokens_per_step=1, options=opts,
                                  axis_name=SEQ, axis_size=n)
            qc, q_info = B.prepare_queries(q, info, chunk, 2)
            kc, vc, k_info = B.prepare_keys(k, v, info, chunk)
            kv = jnp.stack([kc, vc])
            o, lse, n_fwd = allgather_forward(qc, kv, q_info, k_info, cfg)
            *_, n_bwd = allgather_backward(qc, kv, o, lse, B.to_chunks(ct, chunk, 2), q_info,
                                           k_info, cfg)
            return n_fwd[None], n_bwd[None]

        spec = P(None, SEQ)
        fn = jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 5, out_specs=(P(SEQ), P(SEQ)))
        n_fwd, n_bwd = jax.jit(fn)(*(permute(x, n, layout) for x in (q, k, v, ct)), pos)
        want = block_work(t, n, layout, chunk, causal=True)
        np.testing.assert_array_equal(np.asarray(n_fwd), want)
        np.testing.assert_array_equal(np.asarray(n_bwd), want)
        out[layout] = want
    # Hand count (as for the ring): contiguous device d 4d + 3 pairs, zigzag 17 each.
    np.testing.assert_array_equal(out["contiguous"], 4 * np.arange(n) + 3)
    np.testing.assert_array_equal(out["zigzag"], np.full(n, 17))


# ----------------------------------------------------------------------------------------
# impl="auto" and the rule behind it.
# ----------------------------------------------------------------------------------------


def test_auto_runs_the_chosen_impl_and_matches_reference(monkeypatch):
    import rl_ring.attention as A

    seen = []

    def spy(**kw):
        seen.append(kw)
        return choose_impl(**kw)

    monkeypatch.setattr(A, "choose_impl", spy)
    mesh = _mesh("data=2,seq=4")
    q, k, v, ct = make_qkv(5, 2, T, 4, 2, 8)
    kw = _masks(2, T, 4)
    fn = functools.partial(attention, impl="auto", mesh=mesh, layout="zigzag", q_chunk=8,
                           k_chunk=8, **kw)
    check_against_reference(fn, q, k, v, ct, "auto on data=2,seq=4", **kw)
    # The rule saw the per-device problem: the seq axis, the batch of one data shard.
    assert {(s["seq_len"], s["num_devices"], s["batch"], s["heads"], s["kv_heads"])
            for s in seen} == {(T, 4, 1, 4, 2)}
    # Without a mesh (and outside shard_map) there is one device: blockwise.
    seen.clear()
    fn = functools.partial(attention, impl="auto", q_chunk=8, k_chunk=8, **kw)
    check_against_reference(fn, q, k, v, ct, "auto without a mesh", **kw)
    assert {s["num_devices"] for s in seen} == {1}


def test_choose_impl_rule():
    def pick(t, n, h, hk, **extra):
        kw = {"head_dim": 16, "batch": 1, "backend": "cpu", **extra}
        return choose_impl(seq_len=t, num_devices=n, heads=h, kv_heads=hk, **kw)
    assert pick(4096, 1, 8, 8) == "blockwise"
    # Heads divisible by the devices: Ulysses (grouped K/V too, repeated when needed).
    assert pick(65536, 8, 8, 8) == pick(2048, 4, 8, 2) == pick(2048, 8, 8, 1) == "ulysses"
    # Otherwise, on CPU, the ring at every size (it tied or beat all-gather when measured).
    assert pick(2048, 8, 6, 6) == pick(65536, 8, 6, 6) == "ring"
    # Elsewhere all-gather up to 1024 tokens per device, the ring beyond...
    assert pick(8192, 8, 6, 6, backend="gpu") == "allgather"  # 1024 per device
    assert pick(16384, 8, 6, 6, backend="gpu") == "ring"
    assert pick(4096, 8, 6, 6, allgather_max_block=512) == "allgather"
    # ...and never all-gather K/V above the budget: 2*T*hk*d*(4 + 4) bytes.
    budget = 2 * 8192 * 6 * 16 * 8
    assert pick(8192, 8, 6, 6, backend="gpu", max_gathered_bytes=budget - 1) == "ring"
    assert pick(8192, 8, 6, 6, backend="gpu", max_gathered_bytes=budget) == "allgather"
    # Restricted candidates (the benchmark's ring-vs-allgather question).
    assert pick(2048, 8, 8, 8, candidates=("ring", "allgather")) == "ring"
    assert pick(2048, 8, 8, 8, candidates=("allgather",)) == "allgather"
    assert pick(2048, 8, 8, 8, candidates=("ring",)) == "ring"
    with pytest.raises(ValueError, match="candidates"):
        pick(2048, 8, 8, 8, candidates=("flash",))


# ----------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------


def test_ulysses_heads_not_divisible_by_devices():
    x = jnp.zeros((1, 16, 6, 4))
    with pytest.raises(ValueError, match="the 6 query heads .* must be divisible by 4"):
        attention(x, x, x, impl="ulysses", mesh=_mesh("seq=4"))


def test_kv_repeats_hand_values():
    # (heads, kv_heads, devices) -> copies per K/V head.
    assert [kv_repeats(h, hk, n) for h, hk, n in
            [(8, 8, 8), (8, 2, 8), (8, 2, 4), (12, 4, 6), (8, 1, 4), (6, 3, 2)]] \
        == [1, 4, 2, 3, 4, 2]


@pytest.mark.parametrize("fn", [allgather_attention, ulysses_attention])
def test_local_functions_outside_shard_map(fn):
    x = jnp.zeros((1, 8, 2, 4))
    with pytest.raises(ValueError, match="inside jax.shard_map over the mesh axis 'seq'"):
        fn(x, x, x)


def test_sequence_not_divisible_by_devices():
    x = jnp.zeros((1, 30, 8, 4))
    with pytest.raises(ValueError, match="impl='allgather'.*sequence length 30 .* not divisible"):
        attention(x, x, x, impl="allgather", mesh=_mesh("seq=8"))
