"""Decision-Pretrained Transformer (DPT, Lee et al. 2023): the optimal action of a query state
from an in-context dataset of the same task.

A training sequence is ``context_steps`` steps of one task (``rl_ring.data.samplers.dpt``);
step ``j`` is a TRANSITION token, a transition ``(s, a, r, s', ended)`` of the task's data,
then a STATE token, the query state. The model predicts the query's *optimal* action
(``store.extras["optimal_actions"]``, recorded by ``rl-ring collect`` for envs that know it)
with a cross-entropy (squared error for continuous actions) on every query, so one sequence
trains the prediction after every prefix of the in-context dataset, as the paper does. The
data may be a window of any logged stream (uniformly random pulls, a learner's history) or
the paper's i.i.d. draws (``context="shuffle"``).

Unlike the paper, whose one query token comes first and is asked after every prefix, each
step here has its own query: the step's state. That puts the query where an online agent
meets it, so acting is a plain step-by-step decode: before acting in state ``s_t`` the agent
appends the transition it just saw and ``s_t``, reads the distribution over actions at
``s_t`` and *samples* from it (the paper's online mode); its own transitions fill the
context, across episodes. The tokens only ever grow at the end, so evaluation runs through
the KV-cached :class:`~agents.policy.CachedPolicy` like every agent (and the recomputing
:class:`~agents.policy.ContextPolicy` is its oracle).

As a Recipe (``agents.run``): ``make_model`` and ``make_sampler`` (from
:func:`agents.base.agent_functions`), :data:`loss_fn`, :func:`make_layout`.
As a policy (``agents.policy``): :func:`context_steps` of context, trials kept in context
(:data:`CONTEXT_ACROSS_TRIALS`), tokens from :func:`online_encoder`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents import base
from rl_ring.data.normalize import Normalization
from rl_ring.data.samplers import DPTOptions, DPTSampler, DPTSamplerConfig
from rl_ring.data.store import EpisodeStore
from rl_ring.data.tokens import TokenLayout, dpt_layout
from rl_ring.models import ModelConfig

NAME = "dpt"
# The in-context dataset is the agent's own transitions, across the episodes of one task.
CONTEXT_ACROSS_TRIALS = True


def _default_model() -> ModelConfig:
    # Algorithm Distillation's model, so that the two agents compare on the same network.
    return ModelConfig(
        width=128, depth=4, num_heads=4, activation="gelu", dropout=0.1, max_timestep=1000,
    )


@dataclass(frozen=True)
class DPTConfig(DPTOptions):
    """Decision-Pretrained Transformer: the labelled in-context sampler's options
    (inherited), and the model."""

    model: ModelConfig = field(default_factory=_default_model)
    """The trajectory transformer (data shapes are filled in from the dataset)."""
    evaluation: base.EvalDefaults = field(default_factory=lambda: base.EvalDefaults(
        greedy=False, slide_steps=0))
    """How ``rl-ring eval --checkpoint`` plays the agent unless told otherwise: actions
    sampled from the predicted distribution (the paper's online mode; greedy actions never
    explore an unseen arm or cell), a whole episode dropped from a full context at once."""

    @classmethod
    def tiny(cls) -> DPTConfig:
        """Seconds on one CPU: 16-step contexts, a 2-layer 32-wide model."""
        return cls(context_steps=16, model=ModelConfig.tiny())


Config = DPTConfig


def make_layout(
    cfg: DPTConfig, data: base.DataSpec | EpisodeStore, norm: Normalization | None = None
) -> TokenLayout:
    """TRANSITION, STATE tokens per step, normalised for a dataset."""
    del cfg
    spec, norm = base.spec_and_norm(data, norm)
    return dpt_layout(spec.obs_dim, spec.act_dim, spec.discrete_actions, norm)


make_sampler, make_model, sampler_factory, resolved_model = base.agent_functions(
    DPTConfig, DPTSampler, DPTSamplerConfig, make_layout)
# The masked action loss: the sampler puts the optimal action as the target of every query
# (the STATE tokens); TRANSITION tokens carry no loss.
loss_fn = base.loss_fn


def context_steps(cfg: DPTConfig, spec: base.DataSpec) -> int:
    """Environment steps of context the model was trained on: one in-context dataset."""
    del spec
    return cfg.context_steps


def online_encoder(layout: TokenLayout, num_envs: int) -> base.OnlineEncoder:
    """Step-by-step tokens for evaluation: the transition just seen (none before the first
    step) and the state before acting, nothing after.

    The transition of a step is completed by the next observation (its next state), hidden
    when its episode ended there, exactly as the sampler encodes logged data.
    """
    return base.OnlineEncoder(layout, num_envs)
