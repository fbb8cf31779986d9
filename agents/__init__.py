"""The agents: each a token layout, a sampler, a loss and an ``act`` rule over the one
shared trajectory transformer.

``agents.get(name)`` returns the agent's module, which provides ``NAME``, ``Config`` (a
frozen dataclass with a ``tiny()`` preset), ``make_sampler``, ``make_model``, ``loss_fn``,
``make_layout``, ``online_encoder`` and ``context_steps``. ``agents.policy`` turns a trained
model into the evaluator's batched policy.
"""

from __future__ import annotations

import importlib
from types import ModuleType

AGENTS: dict[str, str] = {
    "at": "agents.at",
    "dt": "agents.dt",
    "bc": "agents.bc",
    "ad": "agents.ad",
}


def get(name: str) -> ModuleType:
    """The agent module registered under ``name`` (at, dt, bc, ad).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if name not in AGENTS:
        raise ValueError(f"unknown agent {name!r}; known agents are {sorted(AGENTS)}")
    return importlib.import_module(AGENTS[name])


def names() -> tuple[str, ...]:
    return tuple(AGENTS)


def eval_policy_from_checkpoint(checkpoint_dir, *, action_space=None, **options):
    """A training run's agent as an evaluation policy (see :mod:`agents.policy`)."""
    from agents.policy import eval_policy_from_checkpoint as build

    return build(checkpoint_dir, action_space=action_space, **options)


__all__ = ["AGENTS", "eval_policy_from_checkpoint", "get", "names"]
