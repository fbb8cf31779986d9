"""ModelConfig: the typed, frozen description of one trajectory transformer.

Agents build it from their own options plus the dataset's shapes (observation size, action
size, discrete or continuous, action box); the trainer and the evaluator only pass it along.
Every check that can fail on a bad combination runs here, before any parameter exists.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from rl_ring.attention import IMPLS, LAYOUTS
from rl_ring.data.batch import Kind

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "relu", "silu")
DTYPES = ("float32", "bfloat16", "float16")

# Rematerialisation of one transformer layer in the backward pass. ``none`` keeps every
# activation; ``full`` keeps only the layer input; ``dots`` keeps the outputs of the
# projection matmuls (q, k, v, attention output, attention and FFN output projections) and
# recomputes the rest; ``save_attention`` keeps only the attention output. ``dots`` names its
# values instead of using JAX's dots policies on purpose: those would also save the score
# block of every chunk pair inside blockwise/ring attention ([seq, seq] per layer in all;
# measured 18.5 GB instead of 0.7 GB of temporaries for a 16K-token, 2-layer, width-256
# step) or the FFN hidden of every chunk, defeating the blockwise FFN.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "attention_out", "attn_out_proj", "ffn_out")
REMAT_POLICIES: dict[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.save_only_these_names(*PROJECTIONS),
    "save_attention": jax.checkpoint_policies.save_only_these_names("attention_out"),
}


def default_token_features(obs_dim: int, act_dim: int) -> tuple[tuple[str, int], ...]:
    """Feature width of every token kind in the samplers' default layouts.

    Each kind's features start at column 0 of ``TokenBatch.values`` (the rest is zero
    padding): return-to-go 1, state ``obs_dim``, action ``act_dim`` (one-hot when discrete),
    reward 2 (reward, completion flag), completion flag 1, and the Algorithm Distillation step
    token ``obs_dim + act_dim + 2`` (observation, previous action, previous reward,
    new-episode flag). Agents pass their layout's exact widths
    (``TokenLayout.token_features()``) instead.
    """
    return (
        ("RTG", 1),
        ("STATE", obs_dim),
        ("ACTION", act_dim),
        ("REWARD", 2),
        ("DONE", 1),
        ("STEP", obs_dim + act_dim + 2),
    )


@dataclass(frozen=True)
class ModelConfig:
    """Shape and behaviour of a :class:`~rl_ring.models.TrajectoryTransformer`."""

    obs_dim: int = 4
    """Size of the (flattened) observation vector."""
    act_dim: int = 2
    """Size of the action vector, or the number of actions when ``discrete_actions``."""
    discrete_actions: bool = False
    """Predict logits over ``act_dim`` actions (True) or a continuous action vector (False)."""
    token_features: tuple[tuple[str, int], ...] = ()
    """(kind name, feature width) of each token kind this model embeds; () = all kinds."""
    width: int = 128
    """Model (residual stream) width."""
    depth: int = 3
    """Number of transformer layers."""
    num_heads: int = 1
    """Query heads; must divide ``width``."""
    num_kv_heads: int | None = None
    """Key/value heads (grouped-query attention); must divide ``num_heads``; None = num_heads."""
    ffn_mult: int = 4
    """Hidden width of the feed-forward block as a multiple of ``width``."""
    ffn_chunk: int = 512
    """Tokens per feed-forward chunk (per device); the ``[T, ffn]`` hidden never exists whole."""
    activation: str = "gelu"
    """Feed-forward nonlinearity: gelu, relu or silu."""
    norm: str = "layernorm"
    """Pre-norm type: layernorm or rmsnorm."""
    dropout: float = 0.1
    """Dropout rate on the embeddings and on each residual branch (0 disables)."""
    max_timestep: int = 1000
    """Size of the learned timestep table minus one; larger timesteps are clipped to it."""
    rope_base: float = 10_000.0
    """Base of the rotary position embedding over global token positions."""
    use_rope: bool = True
    """Apply rotary embeddings of the global token positions to queries and keys."""
    attn_impl: str = "reference"
    """Attention implementation: reference, blockwise or ring (see rl_ring.attention)."""
    attn_layout: str = "contiguous"
    """Token order on the sequence axis: contiguous, zigzag or striped."""
    attn_options: tuple[tuple[str, Any], ...] = ()
    """Extra keyword options for the attention implementation, e.g. (("q_chunk", 256),)."""
    remat: str = "none"
    """Rematerialisation policy per layer: none, full, dots, save_attention."""
    squash_actions: bool = False
    """Continuous actions only: tanh-squash the output into the action box."""
    action_low: tuple[float, ...] = ()
    """Lower bound of the action box (default -1 in every dimension)."""
    action_high: tuple[float, ...] = ()
    """Upper bound of the action box (default +1 in every dimension)."""
    init_std: float = 0.02
    """Standard deviation of the normal initialiser of weight matrices and tables."""
    dtype: str = "float32"
    """Compute dtype of activations (attention and losses are computed in float32)."""
    param_dtype: str = "float32"
    """Storage dtype of the parameters."""

    def __post_init__(self) -> None:
        self._check()

    # ------------------------------------------------------------------ derived sizes
    @property
    def kv_heads(self) -> int:
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return self.ffn_mult * self.width

    @property
    def out_dim(self) -> int:
        """Width of the prediction at every token: action size or number of actions."""
        return self.act_dim

    @property
    def kind_features(self) -> dict[str, int]:
        """Feature width of each embedded token kind (name -> width)."""
        return dict(self.token_features or default_token_features(self.obs_dim, self.act_dim))

    @property
    def remat_policy(self):
        return REMAT_POLICIES[self.remat]

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def tiny(cls, obs_dim: int = 4, act_dim: int = 2, **overrides) -> ModelConfig:
        """A model small enough to train in seconds on one CPU core."""
        base = dict(
            obs_dim=obs_dim, act_dim=act_dim, width=32, depth=2, num_heads=2, ffn_mult=2,
            ffn_chunk=16, dropout=0.0, max_timestep=64,
        )
        base.update(overrides)
        return cls(**base)

    # ------------------------------------------------------------------ validation
    def _check(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(
                f"ModelConfig.{name}={getattr(self, name)!r} is invalid: expected {expected}"
            )

        for name in ("obs_dim", "act_dim", "width", "depth", "num_heads", "ffn_mult", "ffn_chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise bad(name, "a positive int")
        if self.width % self.num_heads:
            raise ValueError(
                f"ModelConfig: num_heads={self.num_heads} does not divide width={self.width}"
            )
        if self.num_kv_heads is not None and (
            self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads
        ):
            raise ValueError(
                f"ModelConfig: num_kv_heads={self.num_kv_heads} does not divide "
                f"num_heads={self.num_heads}"
            )
        if self.use_rope and self.head_dim % 2:
            raise ValueError(
                f"ModelConfig: rotary embeddings need an even head_dim, got width/num_heads = "
                f"{self.width}/{self.num_heads} = {self.head_dim}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "a rate in [0, 1)")
        if self.max_timestep < 0:
            raise bad("max_timestep", ">= 0")
        if self.rope_base <= 1.0:
            raise bad("rope_base", "> 1")
        for name, choices in (
            ("attn_impl", IMPLS),
            ("attn_layout", LAYOUTS),
            ("norm", NORMS),
            ("activation", ACTIVATIONS),
            ("remat", tuple(REMAT_POLICIES)),
            ("dtype", DTYPES),
            ("param_dtype", DTYPES),
        ):
            if getattr(self, name) not in choices:
                raise bad(name, f"one of {choices}")
        kinds = {k.name for k in Kind}
        for item in self.token_features:
            ok = len(item) == 2 and item[0] in kinds and isinstance(item[1], int) and item[1] >= 1
            if not ok:
                raise ValueError(
                    f"ModelConfig.token_features entry {item!r} is invalid: expected "
                    f"(kind name in {sorted(kinds)}, positive width)"
                )
        for name in ("action_low", "action_high"):
            bounds = getattr(self, name)
            if bounds and len(bounds) != self.act_dim:
                raise ValueError(
                    f"ModelConfig.{name} has {len(bounds)} entries, expected act_dim={self.act_dim}"
                )
        if self.action_low and self.action_high and any(
            lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)
        ):
            raise ValueError(
                f"ModelConfig: action_low {self.action_low} must be below action_high "
                f"{self.action_high} in every dimension"
            )
        if self.squash_actions and self.discrete_actions:
            raise ValueError("ModelConfig: squash_actions applies to continuous actions only")
        for key, _ in self.attn_options:
            if not isinstance(key, str):
                raise bad("attn_options", "(name, value) pairs with string names")
