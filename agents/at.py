"""Agentic Transformer (AT): chains of hindsight over the shared trajectory transformer.

A training sequence is ``num_trajectories`` episodes of one task sorted by return
ascending, every return-to-go relabelled to the chain's best return, with a completion flag
at the end of the trajectories that reached it (``rl_ring.data.samplers.chain``). Tokens per
step: return-to-go, state, action, reward (the reward token carries the completion flag), or
with a separate completion token. The action is predicted from the state token; by default
the actions of every trajectory of the chain are targets (``loss_on="all"``, see
``docs/model.md`` for why). At evaluation the agent plays several trials in a row, each with
the target return reset, all in one context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flax import nnx

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import ChainConfig, ChainSampler
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, at_layout
from rl_ring.models import ModelConfig, TrajectoryTransformer

NAME = "at"


def _default_model() -> ModelConfig:
    # The AT paper's D4RL model (its Table 5 matches the DT paper's): 3 layers, 1 head,
    # width 128, ReLU, dropout 0.1. Chains are long, so the FFN works in chunks.
    return ModelConfig(
        width=128, depth=3, num_heads=1, activation="relu", dropout=0.1, max_timestep=1000,
        squash_actions=True,
    )


@dataclass(frozen=True)
class ATConfig:
    """Agentic Transformer: chain-of-hindsight sampling, model and loss options."""

    num_trajectories: int = 4
    """Trajectories per chain (n)."""
    max_steps: int | None = None
    """Episodes longer than this are cut to a window of this many steps (None: never)."""
    window: str = "random"
    """Which window of a long episode: random, start or end."""
    replace: bool = False
    """Allow an episode to appear more than once in a chain."""
    loss_on: str = "all"
    """Train on the actions of "all" trajectories of a chain or only the "last" (best)."""
    reward_token: bool = True
    """Include the reward token (the paper's 4 tokens per step)."""
    done_token: bool = False
    """Put the completion flag in its own token instead of the reward token."""
    task_key: str = "task_id"
    """Per-episode extra grouping episodes into tasks (absent: one task)."""
    task_weighting: str = "episodes"
    """Choose a chain's task in proportion to its episodes or uniformly."""
    model: ModelConfig = field(default_factory=_default_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""

    @classmethod
    def tiny(cls) -> ATConfig:
        """Seconds on one CPU: short chains, a 2-layer 32-wide model."""
        return cls(num_trajectories=3, max_steps=8, model=ModelConfig.tiny(squash_actions=True))


Config = ATConfig


def make_layout(
    cfg: ATConfig, spec: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """The token layout (with normalisation) of this agent for a dataset."""
    store = spec if isinstance(spec, EpisodeStore) else None
    spec = base.DataSpec.coerce(spec)
    norm = base.layout_norm(store, spec.obs_dim, norm)
    return at_layout(
        spec.obs_dim, spec.act_dim, spec.discrete_actions, norm,
        reward_token=cfg.reward_token, done_token=cfg.done_token,
    )


def sampler_config(cfg: ATConfig, *, batch_size: int, seed: int, pad_multiple: int = 1):
    return ChainConfig(
        batch_size=batch_size,
        num_trajectories=cfg.num_trajectories,
        max_steps=cfg.max_steps,
        window=cfg.window,
        replace=cfg.replace,
        loss_on=cfg.loss_on,
        reward_token=cfg.reward_token,
        done_token=cfg.done_token,
        task_key=cfg.task_key,
        task_weighting=cfg.task_weighting,
        pad_multiple=pad_multiple,
        seed=seed,
    )


def make_sampler(
    store: EpisodeStore,
    cfg: ATConfig,
    *,
    batch_size: int,
    seed: int,
    host_id: int = 0,
    num_hosts: int = 1,
    pad_multiple: int = 1,
    norm: Normalization | None = None,
) -> ChainSampler:
    """This host's chain-of-hindsight sampler (``next_batch()``, ``state_dict()``)."""
    base.check_agent_config(cfg, ATConfig)
    scfg = sampler_config(cfg, batch_size=batch_size, seed=seed, pad_multiple=pad_multiple)
    return ChainSampler(store, scfg, norm=norm, host_id=host_id, num_hosts=num_hosts)


def make_model(
    cfg: ATConfig, store_or_spec: EpisodeStore | base.DataSpec, *, rngs: nnx.Rngs
) -> TrajectoryTransformer:
    """The trajectory transformer for this agent and dataset."""
    base.check_agent_config(cfg, ATConfig)
    spec = base.DataSpec.coerce(store_or_spec)
    layout = make_layout(cfg, spec, Normalization.identity(spec.obs_dim))
    return base.build_model(cfg.model, spec, layout, rngs=rngs)


def context_steps(cfg: ATConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: a whole chain."""
    steps = spec.max_episode_len or cfg.max_steps or 1
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    return cfg.num_trajectories * steps


loss_fn = base.loss_fn


def online_encoder(
    layout: TokenLayout, num_envs: int, *, target_return: float
) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: RTG + STATE before acting, ACTION + REWARD after.

    ``target_return`` (raw, unscaled) is the return every trial is conditioned on; the
    chain relabels to the best return of the chain, so the best return of the data (or a
    known expert return) is the natural choice.
    """
    return base.OnlineEncoder(layout, num_envs, target_return=target_return)
