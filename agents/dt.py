"""Decision Transformer (DT): K-step windows of (return-to-go, state, action) tokens.

Each window lies inside one episode (``rl_ring.data.samplers.windows``); the action of every
step is predicted from its state token with a squared-error loss. At evaluation the agent is
conditioned on a target return that every reward reduces. The default configuration is the
DT paper's: 3 layers, 1 head, width 128, dropout 0.1, K = 20 (and, for the trainer,
:data:`RECOMMENDED_TRAINING`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import DTConfig as DTSamplerConfig
from rl_ring.data.samplers import DTSampler
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, dt_layout
from rl_ring.models import ModelConfig, TrajectoryTransformer

NAME = "dt"
# Training windows never cross an episode boundary, so an evaluation trial must not see the
# previous trial's steps (agents.policy empties a row's context at each new trial).
CONTEXT_ACROSS_TRIALS = False

# The DT paper's optimisation settings (the trainer's OptimConfig / TrainConfig names).
RECOMMENDED_TRAINING = {
    "batch_size": 64,
    "lr": 1e-4,
    "warmup_steps": 10_000,
    "grad_clip": 0.25,
    "weight_decay": 1e-4,
}


def _default_model() -> ModelConfig:
    return ModelConfig(
        width=128, depth=3, num_heads=1, activation="relu", dropout=0.1, max_timestep=1000,
        squash_actions=True,
    )


@dataclass(frozen=True)
class DTConfig:
    """Decision Transformer: window sampling, model and loss options."""

    context_steps: int = 20
    """Steps per window (K)."""
    pack: int = 1
    """Windows per sequence, each its own segment (fills long sequence-parallel rows)."""
    model: ModelConfig = field(default_factory=_default_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""

    @classmethod
    def tiny(cls) -> DTConfig:
        """Seconds on one CPU: 5-step windows, a 2-layer 32-wide model."""
        return cls(context_steps=5, model=ModelConfig.tiny(squash_actions=True))


Config = DTConfig


def make_layout(
    cfg: DTConfig, spec: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """The token layout (with normalisation) of this agent for a dataset."""
    store = spec if isinstance(spec, EpisodeStore) else None
    spec = base.DataSpec.coerce(spec)
    norm = base.layout_norm(store, spec.obs_dim, norm)
    return dt_layout(spec.obs_dim, spec.act_dim, spec.discrete_actions, norm)


def sampler_config(cfg: DTConfig, *, batch_size: int, seed: int, pad_multiple: int = 1):
    return DTSamplerConfig(
        batch_size=batch_size,
        context_steps=cfg.context_steps,
        pack=cfg.pack,
        pad_multiple=pad_multiple,
        seed=seed,
    )


def make_sampler(
    store: EpisodeStore,
    cfg: DTConfig,
    *,
    batch_size: int,
    seed: int,
    host_id: int = 0,
    num_hosts: int = 1,
    pad_multiple: int = 1,
    norm: Normalization | None = None,
) -> DTSampler:
    """This host's DT window sampler (``next_batch()``, ``state_dict()``)."""
    base.check_agent_config(cfg, DTConfig)
    scfg = sampler_config(cfg, batch_size=batch_size, seed=seed, pad_multiple=pad_multiple)
    return DTSampler(store, scfg, norm=norm, host_id=host_id, num_hosts=num_hosts)


def make_model(
    cfg: DTConfig, store_or_spec: EpisodeStore | base.DataSpec, *, rngs: nnx.Rngs
) -> TrajectoryTransformer:
    """The trajectory transformer for this agent and dataset."""
    base.check_agent_config(cfg, DTConfig)
    spec = base.DataSpec.coerce(store_or_spec)
    layout = make_layout(cfg, spec, Normalization.identity(spec.obs_dim))
    return base.build_model(cfg.model, spec, layout, rngs=rngs)


def context_steps(cfg: DTConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: one window of K steps."""
    del spec
    return cfg.context_steps


loss_fn = base.loss_fn


def online_encoder(
    layout: TokenLayout, num_envs: int, *, target_return: float
) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: RTG + STATE before acting, ACTION after.

    ``target_return`` is the raw return each episode is conditioned on.
    """
    return base.OnlineEncoder(layout, num_envs, target_return=target_return)
