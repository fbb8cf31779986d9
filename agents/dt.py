"""Decision Transformer (DT): K-step windows of (return-to-go, state, action) tokens.

Each window lies inside one episode (``rl_ring.data.samplers.windows``); the action of every
step is predicted from its state token with a squared-error loss. At evaluation the agent is
conditioned on a target return that every reward reduces. The default configuration is the
DT paper's: 3 layers, 1 head, width 128, dropout 0.1, K = 20 (its optimisation settings are
the ``d4rl-dt`` preset of ``agents.presets``).

As a Recipe (``agents.run``): ``make_model`` and ``make_sampler`` (from
:func:`agents.base.agent_functions`), :data:`loss_fn`, :func:`make_layout`.
As a policy (``agents.policy``): one window of context, each trial
afresh (:data:`CONTEXT_ACROSS_TRIALS`), tokens from :func:`online_encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import DTSampler, DTSamplerConfig, WindowOptions
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, dt_layout
from rl_ring.models import ModelConfig

NAME = "dt"
# Training windows never cross an episode boundary, so an evaluation trial must not see the
# previous trial's steps (agents.policy empties a row's context at each new trial).
CONTEXT_ACROSS_TRIALS = False


@dataclass(frozen=True)
class DTConfig(WindowOptions):
    """Decision Transformer: the window sampler's options (inherited), and the model."""

    model: ModelConfig = field(default_factory=base.paper_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""
    evaluation: base.EvalDefaults = field(default_factory=base.EvalDefaults)
    """How ``rl-ring eval --checkpoint`` plays the agent unless told otherwise."""

    @classmethod
    def tiny(cls) -> DTConfig:
        """Seconds on one CPU: 5-step windows, a 2-layer 32-wide model."""
        return cls(context_steps=5, model=ModelConfig.tiny(squash_actions=True))


Config = DTConfig


def make_layout(
    cfg: DTConfig, data: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """RTG, STATE, ACTION tokens, normalised for a dataset."""
    spec, norm = base.spec_and_norm(data, norm)
    return dt_layout(spec.obs_dim, spec.act_dim, spec.discrete_actions, norm)


make_sampler, make_model, sampler_factory, resolved_model = base.agent_functions(
    DTConfig, DTSampler, DTSamplerConfig, make_layout)
loss_fn = base.loss_fn


def context_steps(cfg: DTConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: one window of K steps."""
    del spec
    return cfg.context_steps


def online_encoder(
    layout: TokenLayout, num_envs: int, *, target_return: float
) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: RTG + STATE before acting, ACTION after.

    ``target_return`` is the raw return each episode is conditioned on.
    """
    return base.OnlineEncoder(layout, num_envs, target_return=target_return)
