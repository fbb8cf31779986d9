"""The agents: each a token layout, a sampler, a loss and an ``act`` rule over the one
shared trajectory transformer.

``agents.get(name)`` returns the agent's module, which provides ``NAME``, ``Config`` (a
frozen dataclass with a ``tiny()`` preset), ``make_sampler``, ``make_model``, ``loss_fn``,
``make_layout``, ``online_encoder``, ``context_steps`` and ``CONTEXT_ACROSS_TRIALS``.
``agents.run`` trains one (``train(cfg)``: the agent becomes a Recipe for
``rl_ring.train.run``) and loads its checkpoints; ``agents.presets`` holds the named
training-step shapes; ``agents.policy`` turns a trained model into the evaluator's policy.
"""

from __future__ import annotations

from agents.registry import AGENTS, get, names


def eval_policy_from_checkpoint(checkpoint_dir, *, action_space=None, **options):
    """A training run's agent as an evaluation policy (see :mod:`agents.policy`)."""
    from agents.policy import eval_policy_from_checkpoint as build

    return build(checkpoint_dir, action_space=action_space, **options)


__all__ = ["AGENTS", "eval_policy_from_checkpoint", "get", "names"]
