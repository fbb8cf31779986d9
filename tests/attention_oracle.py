"""Shared helpers of the attention tests: seeded inputs, the dense oracle, tolerances.

Errors are measured as max-norm relative errors, ``max|got - want| / max|want|``, against
``reference_attention`` evaluated in float32 on the same (rounded) inputs.

Tolerances (one per dtype, never loosened to make a test pass):
- float32: 1e-5 (kernels measure about 5e-7 at these sizes);
- bfloat16: 1e-2. Inputs are bf16, products accumulate in float32, probabilities and dS
  are rounded to bf16 before their matmuls and the result is rounded to bf16: bf16 has an
  8-bit mantissa (relative spacing 2^-8 = 3.9e-3), measured errors are 2e-3 to 3.5e-3.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from rl_ring.attention import reference_attention

_TOLERANCE = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 1e-2}


def tolerance(dtype) -> float:
    """Max-norm relative tolerance of an attention result computed from ``dtype`` inputs."""
    return _TOLERANCE[jnp.dtype(dtype)]


def rel_err(got, want) -> float:
    got = np.asarray(jnp.asarray(got, jnp.float32))
    want = np.asarray(jnp.asarray(want, jnp.float32))
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def assert_close(got, want, dtype, what: str) -> None:
    err = rel_err(got, want)
    tol = tolerance(dtype)
    assert err <= tol, f"{what}: relative error {err:.3g} > {tol:.1g} ({jnp.dtype(dtype)})"


def make_qkv(seed: int, b: int, t: int, h: int, hk: int, d: int, dtype=jnp.float32):
    """Seeded ``q, k, v`` and an output cotangent ``ct`` (numpy-generated, so every process
    of a multi-process test builds the same arrays)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(b, t, h, d))
    k = rng.normal(size=(b, t, hk, d))
    v = rng.normal(size=(b, t, hk, d))
    ct = rng.normal(size=(b, t, h, d))
    return tuple(jnp.asarray(x, dtype) for x in (q, k, v, ct))


def segments(b: int, t: int, cuts: list[list[int]]) -> jnp.ndarray:
    """Segment ids ``[b, t]`` that start a new segment at each index in ``cuts[row]``."""
    seg = np.zeros((b, t), np.int32)
    for row, row_cuts in enumerate(cuts):
        for c in row_cuts:
            seg[row, c:] += 1
    return jnp.asarray(seg)


def reference_vjp(q, k, v, ct, **kw):
    """Output and (dq, dk, dv) of the dense oracle, in float32 on the same inputs."""
    f32 = [jnp.asarray(x, jnp.float32) for x in (q, k, v, ct)]
    out, pullback = jax.vjp(lambda q, k, v: reference_attention(q, k, v, **kw), *f32[:3])
    return out, pullback(f32[3])


def _jitted_vjp(fn):
    def run(q, k, v, ct):
        out, pullback = jax.vjp(fn, q, k, v)
        return out, pullback(ct)

    return jax.jit(run)


def check_against_reference(fn, q, k, v, ct, what: str, **ref_kw) -> None:
    """Asserts ``fn(q, k, v)`` and its VJP match the dense oracle (tolerance of q's dtype)."""
    out, grads = _jitted_vjp(fn)(q, k, v, ct)
    want_out, want_grads = reference_vjp(q, k, v, ct, **ref_kw)
    assert out.dtype == q.dtype, f"{what}: output dtype {out.dtype} != input dtype {q.dtype}"
    assert_close(out, want_out, q.dtype, f"{what} output")
    for name, g, w in zip(("dq", "dk", "dv"), grads, want_grads, strict=True):
        assert_close(g, w, q.dtype, f"{what} {name}")
