"""The oracle itself, checked against a hand-written loop over queries."""

import jax
import jax.numpy as jnp
import numpy as np

from rl_ring.attention import reference_attention
from rl_ring.attention.masks import visible


def _loop_attention(q, k, v, allowed):
    b, t, h, d = q.shape
    hk = k.shape[2]
    out = np.zeros_like(q)
    for bi in range(b):
        for hi in range(h):
            kh = hi // (h // hk)
            for i in range(t):
                js = [j for j in range(t) if allowed(bi, i, j)]
                if not js:
                    continue
                s = np.array([q[bi, i, hi] @ k[bi, j, kh] for j in js]) / np.sqrt(d)
                p = np.exp(s - s.max())
                p /= p.sum()
                out[bi, i, hi] = sum(pj * v[bi, j, kh] for pj, j in zip(p, js, strict=True))
    return out


def test_reference_masks_match_loop():
    rng = np.random.default_rng(0)
    b, t, h, hk, d = 2, 12, 4, 2, 8
    q = rng.normal(size=(b, t, h, d)).astype(np.float32)
    k = rng.normal(size=(b, t, hk, d)).astype(np.float32)
    v = rng.normal(size=(b, t, hk, d)).astype(np.float32)
    seg = np.array([[0] * 5 + [1] * 7, [0] * 12])
    valid = np.ones((b, t), bool)
    valid[1, 9:] = False
    tps = 3

    def allowed(bi, i, j):
        return j // tps <= i // tps and seg[bi, i] == seg[bi, j] and valid[bi, j]

    got = reference_attention(
        jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), causal=True, tokens_per_step=tps,
        segment_ids=jnp.asarray(seg), kv_mask=jnp.asarray(valid),
    )
    np.testing.assert_allclose(
        np.asarray(got), _loop_attention(q, k, v, allowed), rtol=1e-5, atol=1e-5
    )


def test_fully_masked_rows_are_zero_with_finite_grads():
    q = k = v = jnp.ones((1, 4, 1, 2))
    valid = jnp.zeros((1, 4), bool)
    out = reference_attention(q, k, v, kv_mask=valid)
    assert np.all(np.asarray(out) == 0)
    g = jax.grad(lambda q: reference_attention(q, k, v, kv_mask=valid).sum())(q)
    assert np.all(np.isfinite(np.asarray(g)))


def _bits(rows: list[str]) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows])


def test_visible_matches_hand_written_masks_on_permuted_positions():
    """``masks.visible``, which the oracle and every kernel call, on a query block and a key
    block whose positions are not ``arange``: row 0 holds zigzag blocks (2 shards of two
    2-token chunks: [0 1 6 7 | 2 3 4 5]), row 1 striped ones ([0 2 4 6 | 1 3 5 7])."""
    q_pos = jnp.asarray([[6, 7, 2, 3], [1, 3, 5, 7]])
    k_pos = jnp.asarray([[0, 1, 6, 7, 2, 3, 4, 5], [0, 2, 4, 6, 1, 3, 5, 7]])
    q_seg = jnp.asarray([[1, 1, 0, 0], [0, 0, 0, 0]])  # row 0: a new segment at position 4
    k_seg = jnp.asarray([[0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]])
    k_valid = jnp.asarray([[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1, 1]], bool)
    cases = [  # (keyword arguments, hand-written mask rows of batch rows 0 and 1)
        ({"causal": True}, [["11101111", "11111111", "11001000", "11001100"],
                            ["10001000", "11001100", "11101110", "11111111"]]),
        # Steps of 2 tokens: query 6 (step 3) sees key 7 (step 3); query 2 sees key 3.
        ({"causal": True, "tokens_per_step": 2},
         [["11111111", "11111111", "11001100", "11001100"],
          ["10001000", "11001100", "11101110", "11111111"]]),
        ({"causal": False, "q_seg": q_seg, "k_seg": k_seg},
         [["00110011", "00110011", "11001100", "11001100"], ["11111111"] * 4]),
        ({"causal": True, "tokens_per_step": 2, "q_seg": q_seg, "k_seg": k_seg,
          "k_valid": k_valid},
         [["00110010", "00110010", "11001100", "11001100"],
          ["00001000", "01001100", "01101110", "01111111"]]),
    ]  # fmt: skip
    for kw, rows in cases:
        got = visible(q_pos, k_pos, **kw)
        assert got.shape == (2, 1, 4, 8) and got.dtype == jnp.bool_, (kw, got.shape)
        want = np.stack([_bits(r) for r in rows])[:, None]
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=str(sorted(kw)))
    assert visible(q_pos, k_pos, causal=False) is None  # nothing masked: no mask at all


def test_reference_gradients_match_finite_differences():
    """The oracle's gradients (autodiff through the masked softmax) against central
    differences of ``sum(w * out)``, every input entry, with permuted positions, block-causal
    steps, segments and two padded keys that leave queries 0 and 1 seeing nothing.

    The oracle computes in float32 whatever the input dtype, so the differences are float32:
    with step 1e-2 the rounding error of the loss (|loss| ~ 1, a few ulps of 6e-8) over the
    step is ~1e-5 and the truncation error (step^2 / 6 * third derivative) ~1e-5; measured
    max error 3.5e-5 for gradients up to 2. A gradient that misses a term (e.g. the
    normaliser held constant) is off by ~0.1-1.
    """
    rng = np.random.default_rng(0)
    b, t, h, hk, d = 1, 6, 2, 1, 4
    q, k, v, w = (
        rng.normal(size=shape).astype(np.float32)
        for shape in [(b, t, h, d), (b, t, hk, d), (b, t, hk, d), (b, t, h, d)]
    )
    kw = dict(
        causal=True, tokens_per_step=2, positions=jnp.asarray([[0, 1, 4, 5, 2, 3]]),
        segment_ids=jnp.asarray([[0, 0, 1, 1, 0, 1]]),
        kv_mask=jnp.asarray([[False, False, True, True, True, True]]),
    )  # fmt: skip
    loss = jax.jit(lambda q, k, v: jnp.sum(reference_attention(q, k, v, **kw) * w))
    grads = jax.grad(loss, argnums=(0, 1, 2))(q, k, v)
    eps = 1e-2
    for i, name in enumerate(("dq", "dk", "dv")):
        x = (q, k, v)[i]
        fd = np.zeros_like(x)
        for idx in np.ndindex(x.shape):
            plus, minus = [q, k, v], [q, k, v]
            plus[i], minus[i] = x.copy(), x.copy()
            plus[i][idx] += eps
            minus[i][idx] -= eps
            fd[idx] = (float(loss(*plus)) - float(loss(*minus))) / (2 * eps)
        np.testing.assert_allclose(np.asarray(grads[i]), fd, rtol=0, atol=1e-3, err_msg=name)
    # Queries 0 and 1 see no key: no gradient flows to them.
    assert np.all(np.asarray(grads[0])[:, :2] == 0)
