"""The trajectory transformer: token embedding, scanned pre-norm layers, action head.

One model serves every agent; an agent only decides which tokens go in and which token's
prediction is the action. The layers are stacked on a leading axis and run by one scan, so
the layer body compiles once whatever the depth.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from rl_ring import sharding
from rl_ring.attention.layout import pad_multiple
from rl_ring.models import placement as pl
from rl_ring.models.config import ModelConfig
from rl_ring.models.embed import TokenEmbedding
from rl_ring.models.layers import Block, LayerContext, constrain, dropout, linear, make_norm

REQUIRED_FIELDS = ("kind", "values", "positions", "timesteps")


class TrajectoryTransformer(nnx.Module):
    """Decoder-only transformer over trajectory tokens (see ``docs/model.md``)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = TokenEmbedding(cfg, rngs=rngs)

        @nnx.split_rngs(splits=cfg.depth)
        @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: pl.LAYERS})
        def make_blocks(rngs: nnx.Rngs) -> Block:
            return Block(cfg, rngs=rngs)

        self.blocks = make_blocks(rngs)
        self.final_norm = make_norm(cfg, rngs=rngs)
        self.head = linear(
            cfg, cfg.width, cfg.out_dim, std=cfg.init_std, axes=(pl.IO_EMBED, pl.ACTION),
            bias_axis=pl.ACTION, rngs=rngs,
        )

    def __call__(
        self,
        tokens: dict[str, jax.Array],
        *,
        mesh=None,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """Predicts an action (or action logits) at every token.

        Args:
            tokens: the ``TokenBatch`` fields as ``[B, T, ...]`` arrays: ``kind``, ``values``,
                ``positions`` (global), ``timesteps``, and optionally ``segment_ids`` and
                ``valid`` (other fields are ignored). The tokens may be in any layout order.
            mesh: the device mesh the batch is sharded over (None: one device, no sharding).
            deterministic: disable dropout.
            rngs: dropout randomness (an ``nnx.Rngs`` with a ``dropout`` or default stream,
                or a key); required when ``deterministic`` is False and dropout is on.

        Returns:
            ``[B, T, out_dim]`` float32: action means (continuous) or logits (discrete).

        Raises:
            ValueError: a missing field, mismatched shapes, a sequence the mesh's sequence
                axis does not divide, or missing dropout randomness.
        """
        h = self.hidden(tokens, mesh=mesh, deterministic=deterministic, rngs=rngs)
        return self.predict(h)

    def hidden(
        self,
        tokens: dict[str, jax.Array],
        *,
        mesh=None,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
    ) -> jax.Array:
        """The final-normed hidden states ``[B, T, width]`` (before the action head)."""
        cfg = self.cfg
        check_tokens(tokens, cfg, mesh)
        kind = jnp.asarray(tokens["kind"])
        positions = jnp.asarray(tokens["positions"]).astype(jnp.int32)
        seg = tokens.get("segment_ids")
        valid = tokens.get("valid")
        ctx = LayerContext(
            positions=positions,
            segment_ids=None if seg is None else jnp.asarray(seg).astype(jnp.int32),
            kv_mask=None if valid is None else jnp.asarray(valid).astype(bool),
            mesh=mesh,
            deterministic=deterministic,
        )
        key = _dropout_key(rngs, deterministic=deterministic, rate=cfg.dropout)
        k_embed, k_layers = jax.random.split(key)
        layer_keys = jax.random.split(k_layers, cfg.depth)

        x = self.embed(kind, jnp.asarray(tokens["values"]), jnp.asarray(tokens["timesteps"]))
        x = dropout(x, 0.0 if deterministic else cfg.dropout, k_embed)
        x = constrain(x, mesh)

        def layer(block: Block, x, key):
            return block(x, ctx, key)

        if cfg.remat != "none":
            layer = nnx.remat(layer, policy=cfg.remat_policy)
        x = nnx.scan(layer, in_axes=(0, nnx.Carry, 0), out_axes=nnx.Carry)(
            self.blocks, x, layer_keys
        )
        return self.final_norm(x)

    def predict(self, h_btd: jax.Array) -> jax.Array:
        """Action head over hidden states: ``[B, T, width] -> [B, T, out_dim]`` float32."""
        cfg = self.cfg
        out = self.head(h_btd).astype(jnp.float32)
        if cfg.discrete_actions:
            return out
        if cfg.squash_actions:
            squashed = jnp.tanh(out)
            if cfg.action_low and cfg.action_high:
                low = jnp.asarray(cfg.action_low, jnp.float32)
                high = jnp.asarray(cfg.action_high, jnp.float32)
                return low + 0.5 * (squashed + 1.0) * (high - low)
            return squashed
        return out


def check_tokens(tokens: dict, cfg: ModelConfig, mesh) -> None:
    """Checks token fields against the config and the mesh before any compute.

    Raises:
        ValueError: naming the field, the expected and the found shape.
    """
    missing = [f for f in REQUIRED_FIELDS if f not in tokens]
    if missing:
        raise ValueError(
            f"tokens are missing fields {missing}; expected at least {REQUIRED_FIELDS} "
            f"(got {sorted(tokens)})"
        )
    shape = tuple(jnp.shape(tokens["kind"]))
    if len(shape) != 2:
        raise ValueError(f"tokens['kind'] must be [batch, seq], got shape {shape}")
    for name in ("positions", "timesteps", "segment_ids", "valid"):
        if name in tokens and tokens[name] is not None and tuple(jnp.shape(tokens[name])) != shape:
            raise ValueError(
                f"tokens[{name!r}] has shape {tuple(jnp.shape(tokens[name]))}, expected {shape} "
                "like tokens['kind']"
            )
    vshape = tuple(jnp.shape(tokens["values"]))
    if len(vshape) != 3 or vshape[:2] != shape:
        raise ValueError(
            f"tokens['values'] has shape {vshape}, expected ({shape[0]}, {shape[1]}, F)"
        )
    b, t = shape
    seq = sharding.axis_size(mesh, sharding.SEQ)
    blocks = pad_multiple(seq, cfg.attn_layout)
    if t % blocks:
        raise ValueError(
            f"sequence length {t} is not divisible by {blocks} (the mesh's {sharding.SEQ} axis "
            f"of size {seq}{' times 2 for the zigzag layout' if blocks != seq else ''}); pad the "
            "sequence to a multiple (samplers take pad_multiple)"
        )
    batch_shards = 1
    for axis in sharding.BATCH_AXES:
        batch_shards *= sharding.axis_size(mesh, axis)
    if b % batch_shards:
        raise ValueError(
            f"batch size {b} is not divisible by the {batch_shards} batch shards of the mesh "
            f"(axes {sharding.BATCH_AXES})"
        )


def _dropout_key(rngs, *, deterministic: bool, rate: float) -> jax.Array:
    if deterministic or rate == 0.0:
        # Unused by dropout; keeps the scan's per-layer key input the same in both modes.
        return jax.random.key(0)
    if rngs is None:
        raise ValueError(
            "dropout is on (ModelConfig.dropout > 0, deterministic=False) but no rngs were "
            "given; pass rngs=nnx.Rngs(dropout=key) or a jax.random key"
        )
    if isinstance(rngs, nnx.Rngs):
        return rngs.dropout() if "dropout" in rngs else rngs.default()
    key = jnp.asarray(rngs)
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    return key


def model_factory(cfg: ModelConfig):
    """``make_model(rngs)``: builds ``TrajectoryTransformer(cfg)`` (a Recipe's model)."""
    return functools.partial(_build_model, cfg)


def _build_model(cfg: ModelConfig, rngs: nnx.Rngs) -> TrajectoryTransformer:
    return TrajectoryTransformer(cfg, rngs=rngs)
