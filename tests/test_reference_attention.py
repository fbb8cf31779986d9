"""The oracle itself, checked against a hand-written loop over queries."""

import jax
import jax.numpy as jnp
import numpy as np

from rl_ring.attention import reference_attention


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
