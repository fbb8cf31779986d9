"""Building blocks of the trajectory transformer: rotary embeddings, the blockwise feed-forward,
the attention block (projection, kernel and output kept apart for KV-cached decoding), and one
pre-norm transformer layer.

Everything that touches a mesh goes through ``rl_ring.sharding`` (axis sizes, batch specs);
attention goes through the one seam ``rl_ring.attention.attention``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import NamedSharding, PartitionSpec

from rl_ring import sharding
from rl_ring.attention import attention
from rl_ring.models import placement as pl
from rl_ring.models.config import ModelConfig

_ACTIVATIONS = {"gelu": jax.nn.gelu, "relu": jax.nn.relu, "silu": jax.nn.silu}


# ---------------------------------------------------------------------------------- helpers
def rotary(x_bthd: jax.Array, positions_bt: jax.Array, *, base: float) -> jax.Array:
    """Rotary position embedding of global token positions.

    Rotates feature pairs ``(i, i + head_dim/2)`` by ``position * base**(-2i/head_dim)``.
    The angle depends only on the token's global position, so any permutation or sharding
    of the sequence leaves each token's rotation unchanged.

    Args:
        x_bthd: ``[batch, seq, heads, head_dim]`` queries or keys (``head_dim`` even).
        positions_bt: ``[batch, seq]`` global positions.
        base: frequency base.

    Returns:
        The rotated tensor, same shape and dtype.
    """
    half = x_bthd.shape[-1] // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions_bt.astype(jnp.float32)[..., None] * inv_freq  # [b, t, half]
    cos = jnp.cos(angle)[:, :, None, :]
    sin = jnp.sin(angle)[:, :, None, :]
    xf = x_bthd.astype(jnp.float32)
    x1, x2 = xf[..., :half], xf[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_bthd.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout; the identity when ``key`` is None or ``rate`` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def constrain(x: jax.Array, mesh) -> jax.Array:
    """Pins a ``[batch, seq, ...]`` activation to the batch/sequence sharding of ``mesh``."""
    if mesh is None:
        return x
    return jax.lax.with_sharding_constraint(x, sharding.batch_sharding(mesh, x.ndim))


def chunk_size(length: int, chunk: int) -> int:
    """Largest divisor of ``length`` that is at most ``chunk`` (chunks must tile the sequence)."""
    for c in range(min(chunk, length), 0, -1):
        if length % c == 0:
            return c
    return 1


def blockwise_apply(fn, x_btd: jax.Array, *, chunk: int, mesh=None) -> jax.Array:
    """Applies a token-wise function chunk by chunk along the sequence, rematerialised.

    Each device's share of the sequence is cut into chunks of (at most) ``chunk`` tokens and
    ``fn`` runs on one chunk of every device at a time under ``jax.checkpoint``: the forward
    pass never holds ``fn``'s hidden activations for more than one chunk, and the backward
    pass recomputes them chunk by chunk from the saved chunk inputs.

    Args:
        fn: maps ``[..., tokens, d_in]`` to ``[..., tokens, d_out]`` independently per token.
        x_btd: ``[batch, seq, d_in]``, possibly sharded over the mesh's sequence axis.
        chunk: tokens per chunk and device.
        mesh: the mesh whose sequence axis shards ``seq`` (None: one device).

    Returns:
        ``[batch, seq, d_out]``.
    """
    b, t, d = x_btd.shape
    shards = sharding.axis_size(mesh, sharding.SEQ)
    local = t // shards
    c = chunk_size(local, chunk)
    n = local // c
    body = jax.checkpoint(fn)
    if n == 1:
        return body(x_btd)
    # [b, t, d] -> [n, b, shards, c, d]: the sharded sequence axis splits as (shards, local),
    # so every device keeps its own tokens and the scan walks its chunks in lockstep.
    xs = x_btd.reshape(b, shards, n, c, d).transpose(2, 0, 1, 3, 4)
    if mesh is not None:
        batch_axes, seq_axis = sharding.batch_spec(mesh)
        spec = PartitionSpec(None, batch_axes, seq_axis, None, None)
        xs = jax.lax.with_sharding_constraint(xs, NamedSharding(mesh, spec))
    ys = jax.lax.map(body, xs)
    return ys.transpose(1, 2, 0, 3, 4).reshape(b, t, ys.shape[-1])


def make_norm(cfg: ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    kw = dict(
        dtype=cfg.compute_dtype,
        param_dtype=jnp.dtype(cfg.param_dtype),
        scale_init=pl.logical_init(nnx.initializers.ones, pl.NORM),
        rngs=rngs,
    )
    if cfg.norm == "rmsnorm":
        return nnx.RMSNorm(cfg.width, epsilon=1e-6, **kw)
    return nnx.LayerNorm(
        cfg.width, epsilon=1e-5, bias_init=pl.logical_init(nnx.initializers.zeros, pl.NORM), **kw
    )


def linear(
    cfg: ModelConfig,
    d_in: int,
    d_out: int,
    *,
    std: float,
    axes: tuple[str, str],
    bias_axis: str,
    rngs: nnx.Rngs,
) -> nnx.Linear:
    """A linear map whose kernel has the logical ``axes`` and whose bias has ``bias_axis``."""
    return nnx.Linear(
        d_in,
        d_out,
        dtype=cfg.compute_dtype,
        param_dtype=jnp.dtype(cfg.param_dtype),
        kernel_init=pl.logical_init(nnx.initializers.normal(std), *axes),
        bias_init=pl.logical_init(nnx.initializers.zeros, bias_axis),
        rngs=rngs,
    )


@dataclass(frozen=True)
class LayerContext:
    """What every layer needs besides its input: mask description, mesh and mode."""

    positions: jax.Array
    """``[batch, seq]`` global token positions."""
    segment_ids: jax.Array | None
    """``[batch, seq]`` segment ids (tokens attend within their segment) or None."""
    kv_mask: jax.Array | None
    """``[batch, seq]`` True for real tokens, False for padding, or None."""
    mesh: Any
    """The device mesh or None."""
    deterministic: bool
    """Disable dropout."""


# ---------------------------------------------------------------------------------- layers
class FeedForward(nnx.Module):
    """Two-layer MLP applied blockwise over the sequence (see :func:`blockwise_apply`)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        init = nnx.initializers.normal(cfg.init_std)
        out_init = nnx.initializers.normal(cfg.init_std / (2 * cfg.depth) ** 0.5)
        self.w_in = pl.param(init(rngs.params(), (cfg.width, cfg.ffn_dim), pdt), pl.EMBED, pl.MLP)
        self.b_in = pl.param(jnp.zeros((cfg.ffn_dim,), pdt), pl.MLP)
        self.w_out = pl.param(
            out_init(rngs.params(), (cfg.ffn_dim, cfg.width), pdt), pl.MLP, pl.EMBED
        )
        self.b_out = pl.param(jnp.zeros((cfg.width,), pdt), pl.RESIDUAL)

    def token_fn(self):
        """The per-token function ``x -> w_out(act(w_in x))`` over plain arrays."""
        dt = self.cfg.compute_dtype
        act = _ACTIVATIONS[self.cfg.activation]
        w_in, b_in = self.w_in[...].astype(dt), self.b_in[...].astype(dt)
        w_out, b_out = self.w_out[...].astype(dt), self.b_out[...].astype(dt)

        def fn(x):
            h = act(jnp.dot(x.astype(dt), w_in) + b_in)
            return jnp.dot(h, w_out) + b_out

        return fn

    def __call__(self, x_btd: jax.Array, *, mesh=None, blockwise: bool = True) -> jax.Array:
        fn = self.token_fn()
        if not blockwise:
            return fn(x_btd)
        y = blockwise_apply(fn, x_btd, chunk=self.cfg.ffn_chunk, mesh=mesh)
        return checkpoint_name(y, "ffn_out")


class Attention(nnx.Module):
    """Multi-head (grouped-query) self-attention with rotary embeddings of global positions.

    ``project`` (q/k/v projection + rotary), ``attend`` (the attention kernel) and ``output``
    are separate so that KV-cached decoding can project new tokens and attend to a cache.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        hd = cfg.head_dim
        out_std = cfg.init_std / (2 * cfg.depth) ** 0.5
        qkv = dict(std=cfg.init_std, axes=(pl.EMBED, pl.HEADS), bias_axis=pl.HEADS, rngs=rngs)
        self.wq = linear(cfg, cfg.width, cfg.num_heads * hd, **qkv)
        self.wk = linear(cfg, cfg.width, cfg.kv_heads * hd, **qkv)
        self.wv = linear(cfg, cfg.width, cfg.kv_heads * hd, **qkv)
        self.wo = linear(
            cfg, cfg.num_heads * hd, cfg.width, std=out_std, axes=(pl.HEADS, pl.EMBED),
            bias_axis=pl.RESIDUAL, rngs=rngs,
        )

    def project(
        self, x_btd: jax.Array, positions_bt: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Queries ``[b, t, heads, hd]``, keys and values ``[b, t, kv_heads, hd]``."""
        cfg = self.cfg
        b, t, _ = x_btd.shape
        q = checkpoint_name(self.wq(x_btd), "q_proj").reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = checkpoint_name(self.wk(x_btd), "k_proj").reshape(b, t, cfg.kv_heads, cfg.head_dim)
        v = checkpoint_name(self.wv(x_btd), "v_proj").reshape(b, t, cfg.kv_heads, cfg.head_dim)
        if cfg.use_rope:
            q = rotary(q, positions_bt, base=cfg.rope_base)
            k = rotary(k, positions_bt, base=cfg.rope_base)
        return q, k, v

    def attend(self, q, k, v, ctx: LayerContext) -> jax.Array:
        """Causal attention through ``rl_ring.attention`` with the configured implementation."""
        cfg = self.cfg
        o = attention(
            q,
            k,
            v,
            impl=cfg.attn_impl,
            mesh=ctx.mesh,
            causal=True,
            segment_ids=ctx.segment_ids,
            # Plain causal order over tokens: a step's action token must not be visible to
            # that step's state token, which predicts it.
            tokens_per_step=1,
            # The loader hands batches over already in the layout, with global positions.
            layout=cfg.attn_layout,
            permuted_inputs=True,
            positions=ctx.positions,
            kv_mask=ctx.kv_mask,
            **dict(cfg.attn_options),
        )
        return checkpoint_name(o, "attention_out")

    def output(self, o_bthd: jax.Array) -> jax.Array:
        b, t, h, d = o_bthd.shape
        return checkpoint_name(self.wo(o_bthd.reshape(b, t, h * d)), "attn_out_proj")

    def __call__(self, x_btd: jax.Array, ctx: LayerContext) -> jax.Array:
        q, k, v = self.project(x_btd, ctx.positions)
        return self.output(self.attend(q, k, v, ctx))


class Block(nnx.Module):
    """One pre-norm transformer layer: ``x + attn(norm(x))``, then ``x + ffn(norm(x))``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.attn_norm = make_norm(cfg, rngs=rngs)
        self.attn = Attention(cfg, rngs=rngs)
        self.ffn_norm = make_norm(cfg, rngs=rngs)
        self.ffn = FeedForward(cfg, rngs=rngs)

    def __call__(self, x_btd: jax.Array, ctx: LayerContext, key: jax.Array) -> jax.Array:
        rate = 0.0 if ctx.deterministic else self.cfg.dropout
        k_attn, k_ffn = jax.random.split(key)
        h = self.attn(self.attn_norm(x_btd), ctx)
        x_btd = constrain(x_btd + dropout(h, rate, k_attn), ctx.mesh)
        h = self.ffn(self.ffn_norm(x_btd), mesh=ctx.mesh)
        return constrain(x_btd + dropout(h, rate, k_ffn), ctx.mesh)
