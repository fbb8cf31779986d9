"""A tiny stand-in model, loss and sampler for testing the generic training loop.

Not a test module itself (it holds no tests): the loop tests and the kill/resume worker
import it. The model is one causal attention layer over the token values; the target is a
smooth function of the running mean of the values, so it is learnable and the loss drops.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_ring.attention import attention
from rl_ring.data.batch import TokenBatch
from rl_ring.train.recipe import Recipe

FEATURES, ACTIONS, WIDTH, HEADS = 3, 2, 16, 2


class StandInModel(nnx.Module):
    def __init__(self, rngs: nnx.Rngs, *, impl: str = "reference", dropout: bool = True):
        self.impl = impl
        self.dropout = dropout
        self.inp = nnx.Linear(FEATURES, WIDTH, rngs=rngs)
        self.wq = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        self.wk = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        self.wv = nnx.Linear(WIDTH, WIDTH, rngs=rngs)
        self.head = nnx.Linear(WIDTH, ACTIONS, rngs=rngs)

    def __call__(self, t, *, mesh=None, rngs=None):
        x = self.inp(t["values"])
        b, n, d = x.shape

        def heads(y):
            return y.reshape(b, n, HEADS, d // HEADS)

        o = attention(
            heads(self.wq(x)), heads(self.wk(x)), heads(self.wv(x)), impl=self.impl,
            mesh=mesh, causal=True, positions=t["positions"],
        ).reshape(b, n, d)
        h = x + jax.nn.gelu(o)
        if self.dropout and rngs is not None:  # dropout: exercises the per-step training key
            h = h * jax.random.bernoulli(rngs.dropout(), 0.9, h.shape) / 0.9
        return self.head(h)


def loss_fn(model, t, *, mesh=None, rngs=None):
    pred = model(t, mesh=mesh, rngs=rngs)
    err = jnp.mean(jnp.square(pred - t["target"]), axis=-1)
    loss = jnp.sum(err * t["loss_mask"]) / jnp.sum(t["loss_mask"])
    return loss, {"mse": loss}


class StandInSampler:
    """Batch ``i`` is a deterministic function of (seed, i); the state is just ``i``."""

    def __init__(self, *, batch_size, seed, host_id=0, num_hosts=1, pad_multiple=1, seq_len=16,
                 nan_at: int | None = None):
        self.rows = batch_size // num_hosts
        self.row0 = host_id * self.rows
        self.seq_len, self.seed, self.nan_at, self.step = seq_len, seed, nan_at, 0
        self.w = np.random.default_rng(123).normal(size=(FEATURES, ACTIONS))

    def next_batch(self) -> TokenBatch:
        rng = np.random.default_rng([self.seed, self.step])
        self.step += 1
        b, n = self.rows, self.seq_len
        # Draw the global rows and keep this host's: hosts see disjoint rows of one batch.
        v = rng.normal(size=(self.row0 + b, n, FEATURES))[self.row0:].astype(np.float32)
        mean = np.cumsum(v, axis=1) / np.arange(1, n + 1)[None, :, None]
        target = np.tanh(2.0 * mean @ self.w).astype(np.float32)
        if self.nan_at is not None and self.step == self.nan_at:
            v[0, 0, 0] = np.nan
        zeros = np.zeros((b, n), np.int32)
        return TokenBatch(
            kind=zeros + 1, values=v,
            positions=np.broadcast_to(np.arange(n, dtype=np.int32), (b, n)).copy(),
            timesteps=zeros, segment_ids=zeros, valid=np.ones((b, n), bool), target=target,
            target_ids=zeros, loss_mask=np.ones((b, n), np.float32),
        )

    def state_dict(self):
        return {"step": self.step}

    def load_state_dict(self, state):
        self.step = int(state["step"])


def standin_recipe(*, impl: str = "reference", seq_len: int = 16, nan_at: int | None = None,
                   layout: str = "contiguous", dropout: bool = True, on_model=None) -> Recipe:
    def make_model(rngs):
        if on_model is not None:
            on_model()
        return StandInModel(rngs, impl=impl, dropout=dropout)

    return Recipe(
        make_model=make_model,
        loss_fn=loss_fn,
        make_sampler=lambda **kw: StandInSampler(**kw, seq_len=seq_len, nan_at=nan_at),
        layout=layout,
        meta={"agent": "standin"},
    )
