"""Algorithm Distillation (AD): one token per step over a learning history.

A training sequence is a window of consecutive steps of a source learner's history,
crossing episode boundaries (``rl_ring.data.samplers.histories``). Each step is one STEP
token (observation, previous action, previous reward, new-episode flag) from which the
step's action is predicted. At evaluation the agent keeps one context across many
episodes and is expected to improve from episode to episode without parameter updates.

As a Recipe (``agents.run``): ``make_model`` and ``make_sampler`` (from
:func:`agents.base.agent_functions`), :data:`loss_fn`, :func:`make_layout`.
As a policy (``agents.policy``): one history window of context, trials
kept in context (:data:`CONTEXT_ACROSS_TRIALS`), tokens from :func:`online_encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import HistoryConfig, HistoryOptions, HistorySampler
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, ad_layout
from rl_ring.models import ModelConfig

NAME = "ad"
# The agent improves across episodes of one context, as in its learning histories.
CONTEXT_ACROSS_TRIALS = True


def _default_model() -> ModelConfig:
    return ModelConfig(
        width=128, depth=4, num_heads=4, activation="gelu", dropout=0.1, max_timestep=1000,
    )


@dataclass(frozen=True)
class ADConfig(HistoryOptions):
    """Algorithm Distillation: the history sampler's options (inherited), and the model."""

    model: ModelConfig = field(default_factory=_default_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""
    evaluation: base.EvalDefaults = field(default_factory=lambda: base.EvalDefaults(
        greedy=False, slide_steps=0))
    """How ``rl-ring eval --checkpoint`` plays the agent unless told otherwise: AD samples
    its actions (measured on one model: 31% of optimal greedy, 75% sampled, held-out goals)
    and drops a whole episode from a full context at once, as its experiments do."""

    @classmethod
    def tiny(cls) -> ADConfig:
        """Seconds on one CPU: 24-step windows, a 2-layer 32-wide model."""
        return cls(window_steps=24, model=ModelConfig.tiny())


Config = ADConfig


def make_layout(
    cfg: ADConfig, data: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """One STEP token per step, normalised for a dataset."""
    spec, norm = base.spec_and_norm(data, norm)
    return ad_layout(spec.obs_dim, spec.act_dim, spec.discrete_actions, norm,
                     new_episode_flag=cfg.new_episode_flag, step_prev_obs=cfg.step_prev_obs)


make_sampler, make_model, sampler_factory, resolved_model = base.agent_functions(
    ADConfig, HistorySampler, HistoryConfig, make_layout)
loss_fn = base.loss_fn


def context_steps(cfg: ADConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: one history window."""
    del spec
    return cfg.window_steps


def online_encoder(layout: TokenLayout, num_envs: int) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: one STEP token before acting, nothing after.

    The previous action and reward carry over from one episode to the next, as in the
    learning histories the model was trained on.
    """
    return base.OnlineEncoder(layout, num_envs)
