"""Agentic Transformer (AT): chains of hindsight over the shared trajectory transformer.

A training sequence is ``num_trajectories`` episodes of one task sorted by return
ascending, every return-to-go relabelled to the chain's best return, with a completion flag
at the end of the trajectories that reached it (``rl_ring.data.samplers.chain``). Tokens per
step: return-to-go, state, action, reward (the reward token carries the completion flag), or
with a separate completion token. The action is predicted from the state token; by default
the actions of every trajectory of the chain are targets (``loss_on="all"``, see
``docs/model.md`` for why). At evaluation the agent plays several trials in a row, each with
the target return reset, all in one context.

As a Recipe (``agents.run``): ``make_model`` and ``make_sampler`` (from
:func:`agents.base.agent_functions`), :data:`loss_fn`, :func:`make_layout`.
As a policy (``agents.policy``): :func:`context_steps` of context,
trials kept in context (:data:`CONTEXT_ACROSS_TRIALS`), tokens from :func:`online_encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import ChainConfig, ChainOptions, ChainSampler
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, at_layout
from rl_ring.models import ModelConfig

NAME = "at"
# Trial k is conditioned on trials 1..k-1: a chain is many episodes in one context.
CONTEXT_ACROSS_TRIALS = True


@dataclass(frozen=True)
class ATConfig(ChainOptions):
    """Agentic Transformer: the chain sampler's options (inherited), and the model."""

    model: ModelConfig = field(default_factory=base.paper_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""
    evaluation: base.EvalDefaults = field(default_factory=base.EvalDefaults)
    """How ``rl-ring eval --checkpoint`` plays the agent unless told otherwise."""

    @classmethod
    def tiny(cls) -> ATConfig:
        """Seconds on one CPU: short chains, a 2-layer 32-wide model."""
        return cls(num_trajectories=3, max_steps=8, model=ModelConfig.tiny(squash_actions=True))


Config = ATConfig


def make_layout(
    cfg: ATConfig, data: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """RTG, STATE, ACTION, REWARD (or a separate DONE) tokens, normalised for a dataset."""
    spec, norm = base.spec_and_norm(data, norm)
    return at_layout(spec.obs_dim, spec.act_dim, spec.discrete_actions, norm,
                     reward_token=cfg.reward_token, done_token=cfg.done_token)


make_sampler, make_model, sampler_factory, resolved_model = base.agent_functions(
    ATConfig, ChainSampler, ChainConfig, make_layout)
loss_fn = base.loss_fn


def context_steps(cfg: ATConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: a whole chain."""
    steps = spec.max_episode_len or cfg.max_steps or 1
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    return cfg.num_trajectories * steps


def online_encoder(
    layout: TokenLayout, num_envs: int, *, target_return: float
) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: RTG + STATE before acting, ACTION + REWARD after.

    ``target_return`` (raw, unscaled) is the return every trial is conditioned on; the
    chain relabels to the best return of the chain, so the best return of the data (or a
    known expert return) is the natural choice.
    """
    return base.OnlineEncoder(layout, num_envs, target_return=target_return)
