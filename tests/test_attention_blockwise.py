"""Blockwise attention and its chunk kernels against the dense oracle (forward and VJP)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attention_oracle import (
    assert_close,
    check_against_reference,
    make_qkv,
    reference_vjp,
    segments,
)

from rl_ring.attention import (
    AttentionOptions,
    attend_chunk,
    attention,
    blockwise_attention,
    combine,
    layout_positions,
    permute,
    reference_attention,
)
from rl_ring.attention import blockwise as B
from rl_ring.attention import chunks as C
from rl_ring.attention.masks import FULL, PARTIAL, SKIP, TokenInfo, pair_kinds, summarize_chunks

T = 100  # not a multiple of the chunk sizes below: the last chunks are ragged (padded)


def _mask_case(name: str, b: int, t: int):
    """Keyword arguments of one mask configuration (global positions = arange)."""
    if name == "none":
        return {}
    if name == "causal":
        return {"causal": True}
    if name == "block_causal":
        return {"causal": True, "tokens_per_step": 4}
    if name == "segments":
        # A boundary inside a chunk (37), one on a chunk edge (64), a length-1 segment (90).
        cuts = [[37, 64, 90, 91], [5]]
        return {"causal": True, "segment_ids": segments(b, t, cuts)}
    if name == "padding":
        valid = np.ones((b, t), bool)
        valid[0, 80:] = False  # padded tail
        valid[0, 3:9] = False  # holes
        valid[1, :] = False  # a row that sees no key at all: zeros out, zero grads
        return {"kv_mask": jnp.asarray(valid)}
    if name == "everything":
        valid = np.ones((b, t), bool)
        valid[1, 50:] = False
        seg = segments(b, t, [[20, 21, 70], [33]])
        return {"causal": True, "tokens_per_step": 3, "segment_ids": seg, "kv_mask": valid}
    raise KeyError(name)


MASKS = ["none", "causal", "block_causal", "segments", "padding", "everything"]


@pytest.mark.parametrize("mask", MASKS)
def test_blockwise_matches_reference(mask):
    q, k, v, ct = make_qkv(0, 2, T, 4, 2, 16)
    kw = _mask_case(mask, 2, T)
    fn = functools.partial(blockwise_attention, q_chunk=32, k_chunk=24, **kw)
    check_against_reference(fn, q, k, v, ct, f"blockwise[{mask}]", **kw)


@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 1), (6, 2)])
def test_blockwise_grouped_kv_heads(heads, kv_heads):
    q, k, v, ct = make_qkv(1, 1, 64, heads, kv_heads, 8)
    kw = {"causal": True}
    fn = functools.partial(blockwise_attention, q_chunk=16, k_chunk=32, **kw)
    check_against_reference(fn, q, k, v, ct, f"blockwise gqa {heads}/{kv_heads}", **kw)


@pytest.mark.parametrize("q_chunk, k_chunk", [(7, 9), (64, 64), (1000, 3), (1, 100)])
def test_blockwise_any_chunk_sizes(q_chunk, k_chunk):
    q, k, v, ct = make_qkv(2, 2, 50, 2, 2, 8)
    kw = _mask_case("everything", 2, 50)
    fn = functools.partial(blockwise_attention, q_chunk=q_chunk, k_chunk=k_chunk, **kw)
    check_against_reference(fn, q, k, v, ct, f"blockwise chunks {q_chunk}x{k_chunk}", **kw)


def test_blockwise_bfloat16():
    q, k, v, ct = make_qkv(3, 2, 96, 4, 2, 32, jnp.bfloat16)
    kw = _mask_case("segments", 2, 96)
    fn = functools.partial(blockwise_attention, q_chunk=32, k_chunk=32, **kw)
    check_against_reference(fn, q, k, v, ct, "blockwise bf16", **kw)


def test_blockwise_custom_scale_matches_reference():
    q, k, v, ct = make_qkv(4, 1, 40, 2, 2, 8)
    fn = functools.partial(blockwise_attention, causal=True, scale=0.3, q_chunk=16, k_chunk=16)
    check_against_reference(fn, q, k, v, ct, "blockwise scale", causal=True, scale=0.3)


@pytest.mark.parametrize("layout", ["zigzag", "striped"])
def test_permuted_layout_equals_permuted_output(layout):
    """Attention on permuted tokens with their original positions = permuted attention."""
    b, t, n = 2, 64, 4
    q, k, v, ct = make_qkv(5, b, t, 2, 2, 8)
    seg = segments(b, t, [[10, 41], [30]])
    want = reference_attention(q, k, v, causal=True, segment_ids=seg)
    _, want_grads = reference_vjp(q, k, v, ct, causal=True, segment_ids=seg)
    pq, pk, pv, pct, pseg = (permute(x, n, layout) for x in (q, k, v, ct, seg))
    for impl in ("reference", "blockwise"):
        fn = functools.partial(
            attention, impl=impl, causal=True, segment_ids=pseg, layout=layout, num_shards=n,
            permuted_inputs=True, q_chunk=8, k_chunk=8,
        )  # fmt: skip
        got, pullback = jax.vjp(fn, pq, pk, pv)
        assert_close(got, permute(want, n, layout), jnp.float32, f"{impl} {layout}")
        # The gradients of permuted inputs are the permuted gradients.
        for name, g, w in zip(("dq", "dk", "dv"), pullback(pct), want_grads, strict=True):
            assert_close(g, permute(w, n, layout), jnp.float32, f"{impl} {layout} {name}")
    # Explicit positions give the same result as the layout's defaults.
    pos = jnp.broadcast_to(jnp.asarray(layout_positions(t, n, layout)), (b, t))
    got = attention(pq, pk, pv, impl="blockwise", causal=True, segment_ids=pseg, positions=pos)
    assert_close(got, permute(want, n, layout), jnp.float32, f"blockwise {layout} positions")


def test_fully_masked_rows_zero_output_and_grads():
    q, k, v, ct = make_qkv(6, 1, 16, 2, 2, 4)
    valid = jnp.zeros((1, 16), bool)
    out, pullback = jax.vjp(lambda q, k, v: blockwise_attention(q, k, v, kv_mask=valid), q, k, v)
    assert np.all(np.asarray(out) == 0)
    for g in pullback(ct):
        assert np.all(np.asarray(g) == 0)


# ----------------------------------------------------------------------------------------
# Chunk skipping: the counter is incremented inside the branches that do the arithmetic.
# ----------------------------------------------------------------------------------------


def _counts(t, chunk, skip=True, **kw):
    """(computed chunk pairs in forward, in backward, output error) of a blockwise call."""
    q, k, v, ct = make_qkv(7, 1, t, 2, 2, 8)
    opts = AttentionOptions(q_chunk=chunk, k_chunk=chunk, skip_chunks=skip)
    info = B.token_info(1, t, segment_ids=kw.get("segment_ids"))
    cfg = B.kernel_config(
        q, k, causal=kw.get("causal", False), tokens_per_step=kw.get("tokens_per_step", 1),
        options=opts,
    )
    qc, q_info = B.prepare_queries(q, info, chunk, 2)
    kc, vc, k_info = B.prepare_keys(k, v, info, chunk)
    out, lse, n_fwd = jax.jit(B._forward, static_argnums=5)(qc, kc, vc, q_info, k_info, cfg)
    ctc = B.to_chunks(ct, chunk, 2)
    backward = jax.jit(B._backward, static_argnums=8)
    *_, n_bwd = backward(qc, kc, vc, out, lse, ctc, q_info, k_info, cfg)
    want = reference_attention(q, k, v, **kw)
    return int(n_fwd), int(n_bwd), float(jnp.max(jnp.abs(B.from_chunks(out, 2) - want)))


def test_causal_skips_chunk_pairs_above_the_diagonal():
    # 8 x 8 chunk pairs; causal needs the 36 on or below the diagonal. Skipping or not,
    # the output is the oracle's (max abs error; outputs are O(1)).
    counts = _counts(128, 16, causal=True)
    assert counts[:2] == (36, 36) and counts[2] < 1e-5
    counts = _counts(128, 16, causal=False)
    assert counts[:2] == (64, 64) and counts[2] < 1e-5
    counts = _counts(128, 16, skip=False, causal=True)
    assert counts[:2] == (64, 64) and counts[2] < 1e-5
    # Block-causal with 32-token steps: chunk pairs (2i+1, 2i) become visible too.
    counts = _counts(128, 16, causal=True, tokens_per_step=32)
    assert counts[:2] == (40, 40) and counts[2] < 1e-5


def test_segments_skip_cross_segment_chunk_pairs():
    seg = segments(1, 128, [[64]])  # two segments of 4 chunks each: 2 * 4 * 4 pairs
    n_fwd, n_bwd, err = _counts(128, 16, segment_ids=seg)
    assert (n_fwd, n_bwd) == (32, 32) and err < 1e-5
    n_fwd, _, err = _counts(128, 16, causal=True, segment_ids=seg)
    assert n_fwd == 20 and err < 1e-5  # 2 * 10 lower-triangle pairs


def test_pair_kinds_by_hand():
    # Two chunks of 4 tokens: positions [0..3], [4..7]; causal.
    info = TokenInfo(jnp.arange(8, dtype=jnp.int32).reshape(2, 1, 4))
    s = summarize_chunks(info)
    kinds = np.asarray(pair_kinds(s, s, causal=True))
    np.testing.assert_array_equal(kinds, [[PARTIAL, SKIP], [FULL, PARTIAL]])
    # Segments [0,0,0,0 | 0,0,1,1]: pair (0,0) is one segment (FULL), (1,0) mixes segments.
    seg = jnp.asarray([0, 0, 0, 0, 0, 0, 1, 1], jnp.int32).reshape(2, 1, 4)
    s = summarize_chunks(TokenInfo(info.pos, seg))
    np.testing.assert_array_equal(
        np.asarray(pair_kinds(s, s, causal=False)), [[FULL, PARTIAL], [PARTIAL, PARTIAL]]
    )


# ----------------------------------------------------------------------------------------
# The chunk pieces that decode and ring reuse.
# ----------------------------------------------------------------------------------------


def test_attend_chunk_and_combine_equal_full_attention():
    b, t, h, d = 1, 24, 2, 8
    q, k, v, _ = make_qkv(8, b, t, h, h, d)
    to = lambda x: x.transpose(0, 2, 1, 3)  # [b, h, t, d]: the kernels' layout with groups=1
    pos = jnp.arange(t)[None]
    halves = []
    for lo, hi in ((0, 10), (10, 24)):
        mask = (pos[:, None, :, None] >= pos[:, None, None, lo:hi])  # causal [b, 1, t, k]
        halves.append(attend_chunk(to(q), to(k[:, lo:hi]), to(v[:, lo:hi]), mask, scale=d**-0.5))
    out, lse = combine(*halves[0], *halves[1])
    want = reference_attention(q, k, v, causal=True)
    assert_close(out.transpose(0, 2, 1, 3), want, jnp.float32, "combined halves")
    s = jnp.einsum("bqhd,bkhd->bhqk", q, k) * d**-0.5
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    assert_close(lse, jax.nn.logsumexp(s, axis=-1), jnp.float32, "combined lse")
    # Query 0 sees nothing in the second half: its partial is empty (zeros, -inf).
    assert np.all(np.asarray(halves[1][0][:, :, 0]) == 0)
    assert np.all(np.isneginf(np.asarray(halves[1][1][:, :, 0])))


def test_chunk_backward_matches_autodiff_of_one_chunk():
    b, t, h, d = 1, 12, 2, 8
    q, k, v, ct = make_qkv(9, b, t, h, h, d)
    to = lambda x: x.transpose(0, 2, 1, 3)
    mask = jnp.tril(jnp.ones((t, t), bool))[None, None]
    f = lambda q, k, v: attend_chunk(q, k, v, mask, scale=0.5)[0]
    out, pullback = jax.vjp(f, to(q), to(k), to(v))
    want = pullback(to(ct))
    _, lse = attend_chunk(to(q), to(k), to(v), mask, scale=0.5)
    delta = jnp.sum(to(ct) * out, -1)
    got = C.chunk_backward(to(q), to(k), to(v), to(ct), lse, delta, mask, scale=0.5)
    for name, g, w in zip(("dq", "dk", "dv"), got, want, strict=True):
        assert_close(g, w, jnp.float32, f"chunk_backward {name}")


# ----------------------------------------------------------------------------------------
# Bad input.
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shapes, kw, match",
    [
        (((2, 8, 4), (2, 8, 4, 8), (2, 8, 4, 8)), {}, r"q must be \[batch, seq, heads, head_dim\]"),
        (((2, 8, 4, 8), (2, 8, 4, 8), (2, 8, 2, 8)), {}, "k and v must have the same shape"),
        (((2, 8, 4, 8), (2, 6, 4, 8), (2, 6, 4, 8)), {}, "must match q"),
        (((2, 8, 4, 8), (2, 8, 3, 8), (2, 8, 3, 8)), {}, r"q heads \(4\) must be a multiple"),
        (((2, 8, 4, 8),) * 3, {"segment_ids": np.zeros((2, 7))}, r"segment_ids must be .*\(2, 7\)"),
        (((2, 8, 4, 8),) * 3, {"kv_mask": np.zeros((8,))}, "kv_mask must be"),
        (((2, 8, 4, 8),) * 3, {"tokens_per_step": 0}, "tokens_per_step must be a positive int"),
        (((2, 8, 4, 8),) * 3, {"impl": "flash"}, "impl='flash' is not one of"),
        # A layout matters (and can be wrong) only for pre-permuted inputs: natural-order
        # inputs ignore it on one device (test_layout_on_natural_inputs_is_a_no_op_...).
        (((2, 8, 4, 8),) * 3, {"layout": "zigzag", "permuted_inputs": True},
         "needs the shard count"),
        (((2, 8, 4, 8),) * 3, {"layout": "spiral", "num_shards": 2}, "layout='spiral'"),
        (((2, 10, 4, 8),) * 3, {"layout": "zigzag", "num_shards": 2, "permuted_inputs": True},
         "multiple of 4"),
        (((2, 8, 4, 8),) * 3, {"q_chunk": 0}, "q_chunk must be a positive int"),
    ],
)
def test_bad_input_names_the_argument(shapes, kw, match):
    q, k, v = (jnp.zeros(s) for s in shapes)
    kw = {"impl": "blockwise", **kw}
    with pytest.raises(ValueError, match=match):
        attention(q, k, v, **kw)


def test_unknown_option_is_a_type_error():
    x = jnp.zeros((1, 4, 1, 2))
    with pytest.raises(TypeError, match="unknown attention option"):
        attention(x, x, x, impl="blockwise", chunk=4)
