"""Token embedding: one linear map per token kind, a kind embedding and a timestep embedding.

A token of kind ``k`` carries its features in the first ``width_k`` columns of
``TokenBatch.values`` (the rest is zero padding). Its embedding is
``linear_k(values[:width_k]) + kind_table[k] + time_table[min(timestep, max_timestep)]``.
Position information is not added here: the attention block rotates queries and keys by the
token's global position instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rl_ring.data.batch import Kind
from rl_ring.models import placement as pl
from rl_ring.models.config import ModelConfig


class TokenEmbedding(nnx.Module):
    """Embeds ``(kind, values, timesteps)`` token fields into ``[batch, seq, width]``."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        pdt = jnp.dtype(cfg.param_dtype)
        init = pl.logical_init(nnx.initializers.normal(cfg.init_std), pl.VOCAB, pl.IO_EMBED)
        self.inputs = nnx.Dict(
            {
                name.lower(): nnx.Linear(
                    width,
                    cfg.width,
                    dtype=cfg.compute_dtype,
                    param_dtype=pdt,
                    kernel_init=pl.logical_init(
                        nnx.initializers.lecun_normal(), pl.FEATURES, pl.IO_EMBED
                    ),
                    bias_init=pl.logical_init(nnx.initializers.zeros, pl.IO_EMBED),
                    rngs=rngs,
                )
                for name, width in cfg.kind_features.items()
            }
        )
        # Rows up to the highest kind embedded, at least the six that predate TRANSITION, so
        # every model saved before it was added keeps its table's shape.
        num_kinds = 1 + max(int(Kind.STEP), *(int(Kind[n]) for n in cfg.kind_features))
        self.kind_table = nnx.Embed(
            num_kinds, cfg.width, dtype=cfg.compute_dtype, param_dtype=pdt,
            embedding_init=init, rngs=rngs,
        )
        self.time_table = nnx.Embed(
            cfg.max_timestep + 1, cfg.width, dtype=cfg.compute_dtype, param_dtype=pdt,
            embedding_init=init, rngs=rngs,
        )

    def __call__(self, kind_bt: jax.Array, values_btf: jax.Array, timesteps_bt: jax.Array):
        """Returns ``[batch, seq, width]`` token embeddings.

        Raises:
            ValueError: ``values`` is narrower than the widest embedded kind.
        """
        features = self.cfg.kind_features
        need = max(features.values())
        if values_btf.shape[-1] < need:
            widest = max(features, key=features.get)
            raise ValueError(
                f"tokens['values'] has {values_btf.shape[-1]} features but token kind {widest} "
                f"needs {need} (model config: obs_dim={self.cfg.obs_dim}, "
                f"act_dim={self.cfg.act_dim}, token_features={features})"
            )
        kind_bt = kind_bt.astype(jnp.int32)
        x = self.kind_table(kind_bt)
        values = values_btf.astype(self.cfg.compute_dtype)
        for name, width in features.items():
            e = self.inputs[name.lower()](values[..., :width])
            x = x + jnp.where((kind_bt == int(Kind[name]))[..., None], e, 0.0)
        t = jnp.clip(timesteps_bt.astype(jnp.int32), 0, self.cfg.max_timestep)
        return x + self.time_table(t)
