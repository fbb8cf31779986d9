"""Memory stays linear in the sequence length, also inside a scan over layers under grad.

Compiled only (``memory_analysis``), never run. A dense [T, T] buffer anywhere (e.g. every
chunk pair's mask hoisted out of a layer scan) makes the ratio approach 4 when T doubles.
"""

import jax
import jax.numpy as jnp
import pytest

from rl_ring.attention import attention
from rl_ring.sharding import make_mesh

H, D, LAYERS = 2, 16, 3


def _temp_bytes(impl: str, t: int, **kw) -> int:
    def loss(w, x):
        def layer(x, w_l):
            out = attention(
                x * w_l[0], x * w_l[1], x * w_l[2], impl=impl, causal=True, q_chunk=64,
                k_chunk=64, **kw,
            )
            return x + out, None

        y, _ = jax.lax.scan(layer, x, w)
        return jnp.sum(y)

    x = jax.ShapeDtypeStruct((1, t, H, D), jnp.float32)
    w = jax.ShapeDtypeStruct((LAYERS, 3), jnp.float32)
    compiled = jax.jit(jax.grad(loss)).lower(w, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("impl", ["blockwise", "ring"])
def test_scanned_layers_memory_is_linear_in_seq_len(impl):
    kw = {"mesh": make_mesh("seq=4", jax.devices()[:4])} if impl == "ring" else {}
    small, large = _temp_bytes(impl, 1024, **kw), _temp_bytes(impl, 2048, **kw)
    assert large / small < 2.5, f"{impl}: temp {small} -> {large} bytes when T doubles"
