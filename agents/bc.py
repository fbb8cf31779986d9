"""Filtered behaviour cloning (BC-x%): imitate the top x% of episodes by return.

Windows of K steps from the best ``top_percent`` % of episodes, (state, action) tokens (or
state tokens only), the action predicted from each state token. No return conditioning:
the filtering is the only use of rewards.

As a Recipe (``agents.run``): ``make_model`` and ``make_sampler`` (from
:func:`agents.base.agent_functions`), :data:`loss_fn`, :func:`make_layout`.
As a policy (``agents.policy``): one window of context, each trial
afresh (:data:`CONTEXT_ACROSS_TRIALS`), tokens from :func:`online_encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import BCSampler, BCSamplerConfig, TopWindowOptions
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, bc_layout
from rl_ring.models import ModelConfig

NAME = "bc"
# Training windows never cross an episode boundary, so an evaluation trial must not see the
# previous trial's steps (agents.policy empties a row's context at each new trial).
CONTEXT_ACROSS_TRIALS = False


@dataclass(frozen=True)
class BCConfig(TopWindowOptions):
    """Filtered behaviour cloning: the top-x% window sampler's options (inherited), and the
    model."""

    model: ModelConfig = field(default_factory=base.paper_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""
    evaluation: base.EvalDefaults = field(default_factory=base.EvalDefaults)
    """How ``rl-ring eval --checkpoint`` plays the agent unless told otherwise."""

    @classmethod
    def tiny(cls) -> BCConfig:
        """Seconds on one CPU: 5-step windows of the top half, a 2-layer 32-wide model."""
        return cls(top_percent=50.0, context_steps=5, model=ModelConfig.tiny(squash_actions=True))


Config = BCConfig


def make_layout(
    cfg: BCConfig, data: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """STATE, ACTION (or STATE only) tokens, normalised for a dataset."""
    spec, norm = base.spec_and_norm(data, norm)
    return bc_layout(spec.obs_dim, spec.act_dim, spec.discrete_actions, norm,
                     state_only=cfg.state_only)


make_sampler, make_model, sampler_factory, resolved_model = base.agent_functions(
    BCConfig, BCSampler, BCSamplerConfig, make_layout)
loss_fn = base.loss_fn


def context_steps(cfg: BCConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: one window of K steps."""
    del spec
    return cfg.context_steps


def online_encoder(layout: TokenLayout, num_envs: int) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: STATE before acting, ACTION after."""
    return base.OnlineEncoder(layout, num_envs)
