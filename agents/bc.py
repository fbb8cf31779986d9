"""Filtered behaviour cloning (BC-x%): imitate the top x% of episodes by return.

Windows of K steps from the best ``top_percent`` % of episodes, (state, action) tokens (or
state tokens only), the action predicted from each state token. No return conditioning:
the filtering is the only use of rewards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import BCConfig as BCSamplerConfig
from rl_ring.data.samplers import BCSampler
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, bc_layout
from rl_ring.models import ModelConfig, TrajectoryTransformer

NAME = "bc"
# Training windows never cross an episode boundary, so an evaluation trial must not see the
# previous trial's steps (agents.policy empties a row's context at each new trial).
CONTEXT_ACROSS_TRIALS = False


def _default_model() -> ModelConfig:
    return ModelConfig(
        width=128, depth=3, num_heads=1, activation="relu", dropout=0.1, max_timestep=1000,
        squash_actions=True,
    )


@dataclass(frozen=True)
class BCConfig:
    """Filtered behaviour cloning: episode filter, window sampling and model options."""

    top_percent: float = 10.0
    """Keep the episodes whose return is in the top x percent (by count of episodes)."""
    context_steps: int = 20
    """Steps per window (K); 1 is plain per-state behaviour cloning."""
    state_only: bool = False
    """State tokens only (no action inputs)."""
    pack: int = 1
    """Windows per sequence, each its own segment."""
    model: ModelConfig = field(default_factory=_default_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""

    @classmethod
    def tiny(cls) -> BCConfig:
        """Seconds on one CPU: 5-step windows of the top half, a 2-layer 32-wide model."""
        return cls(top_percent=50.0, context_steps=5, model=ModelConfig.tiny(squash_actions=True))


Config = BCConfig


def make_layout(
    cfg: BCConfig, spec: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """The token layout (with normalisation) of this agent for a dataset."""
    store = spec if isinstance(spec, EpisodeStore) else None
    spec = base.DataSpec.coerce(spec)
    norm = base.layout_norm(store, spec.obs_dim, norm)
    return bc_layout(
        spec.obs_dim, spec.act_dim, spec.discrete_actions, norm, state_only=cfg.state_only
    )


def sampler_config(cfg: BCConfig, *, batch_size: int, seed: int, pad_multiple: int = 1):
    return BCSamplerConfig(
        batch_size=batch_size,
        top_percent=cfg.top_percent,
        context_steps=cfg.context_steps,
        state_only=cfg.state_only,
        pack=cfg.pack,
        pad_multiple=pad_multiple,
        seed=seed,
    )


def make_sampler(
    store: EpisodeStore,
    cfg: BCConfig,
    *,
    batch_size: int,
    seed: int,
    host_id: int = 0,
    num_hosts: int = 1,
    pad_multiple: int = 1,
    norm: Normalization | None = None,
) -> BCSampler:
    """This host's filtered-BC window sampler (``next_batch()``, ``state_dict()``)."""
    base.check_agent_config(cfg, BCConfig)
    scfg = sampler_config(cfg, batch_size=batch_size, seed=seed, pad_multiple=pad_multiple)
    return BCSampler(store, scfg, norm=norm, host_id=host_id, num_hosts=num_hosts)


def make_model(
    cfg: BCConfig, store_or_spec: EpisodeStore | base.DataSpec, *, rngs: nnx.Rngs
) -> TrajectoryTransformer:
    """The trajectory transformer for this agent and dataset."""
    base.check_agent_config(cfg, BCConfig)
    spec = base.DataSpec.coerce(store_or_spec)
    layout = make_layout(cfg, spec, Normalization.identity(spec.obs_dim))
    return base.build_model(cfg.model, spec, layout, rngs=rngs)


def context_steps(cfg: BCConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: one window of K steps."""
    del spec
    return cfg.context_steps


loss_fn = base.loss_fn


def online_encoder(layout: TokenLayout, num_envs: int) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: STATE before acting, ACTION after."""
    return base.OnlineEncoder(layout, num_envs)
