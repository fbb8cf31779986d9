"""Algorithm Distillation (AD): one token per step over a learning history.

A training sequence is a window of consecutive steps of a source learner's history,
crossing episode boundaries (``rl_ring.data.samplers.histories``). Each step is one STEP
token (observation, previous action, previous reward, new-episode flag) from which the
step's action is predicted. At evaluation the agent keeps one context across many
episodes and is expected to improve from episode to episode without parameter updates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import HistoryConfig, HistorySampler
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, ad_layout
from rl_ring.models import ModelConfig, TrajectoryTransformer

NAME = "ad"


def _default_model() -> ModelConfig:
    return ModelConfig(
        width=128, depth=4, num_heads=4, activation="gelu", dropout=0.1, max_timestep=1000,
    )


@dataclass(frozen=True)
class ADConfig:
    """Algorithm Distillation: history sampling and model options."""

    window_steps: int = 1000
    """Steps (= tokens) per sequence, across episode boundaries."""
    align: str = "step"
    """Windows start at any "step" or only at an "episode" start."""
    new_episode_flag: bool = True
    """STEP tokens carry a feature that is 1 on the first step of an episode."""
    history_key: str = "history_id"
    """Per-episode extra naming the learning history an episode belongs to."""
    order_key: str = "episode_in_history"
    """Per-episode extra ordering the episodes within their history."""
    model: ModelConfig = field(default_factory=_default_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""

    @classmethod
    def tiny(cls) -> ADConfig:
        """Seconds on one CPU: 24-step windows, a 2-layer 32-wide model."""
        return cls(window_steps=24, model=ModelConfig.tiny())


Config = ADConfig


def make_layout(
    cfg: ADConfig, spec: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """The token layout (with normalisation) of this agent for a dataset."""
    store = spec if isinstance(spec, EpisodeStore) else None
    spec = base.DataSpec.coerce(spec)
    norm = base.layout_norm(store, spec.obs_dim, norm)
    return ad_layout(
        spec.obs_dim, spec.act_dim, spec.discrete_actions, norm,
        new_episode_flag=cfg.new_episode_flag,
    )


def sampler_config(cfg: ADConfig, *, batch_size: int, seed: int, pad_multiple: int = 1):
    return HistoryConfig(
        batch_size=batch_size,
        window_steps=cfg.window_steps,
        align=cfg.align,
        new_episode_flag=cfg.new_episode_flag,
        history_key=cfg.history_key,
        order_key=cfg.order_key,
        pad_multiple=pad_multiple,
        seed=seed,
    )


def make_sampler(
    store: EpisodeStore,
    cfg: ADConfig,
    *,
    batch_size: int,
    seed: int,
    host_id: int = 0,
    num_hosts: int = 1,
    pad_multiple: int = 1,
    norm: Normalization | None = None,
) -> HistorySampler:
    """This host's learning-history sampler (``next_batch()``, ``state_dict()``)."""
    base.check_agent_config(cfg, ADConfig)
    scfg = sampler_config(cfg, batch_size=batch_size, seed=seed, pad_multiple=pad_multiple)
    return HistorySampler(store, scfg, norm=norm, host_id=host_id, num_hosts=num_hosts)


def make_model(
    cfg: ADConfig, store_or_spec: EpisodeStore | base.DataSpec, *, rngs: nnx.Rngs
) -> TrajectoryTransformer:
    """The trajectory transformer for this agent and dataset."""
    base.check_agent_config(cfg, ADConfig)
    spec = base.DataSpec.coerce(store_or_spec)
    layout = make_layout(cfg, spec, Normalization.identity(spec.obs_dim))
    return base.build_model(cfg.model, spec, layout, rngs=rngs)


def context_steps(cfg: ADConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: one history window."""
    del spec
    return cfg.window_steps


loss_fn = base.loss_fn


def online_encoder(layout: TokenLayout, num_envs: int) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: one STEP token before acting, nothing after.

    The previous action and reward carry over from one episode to the next, as in the
    learning histories the model was trained on.
    """
    return base.OnlineEncoder(layout, num_envs)
