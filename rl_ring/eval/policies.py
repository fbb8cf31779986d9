"""Which policy an evaluation runs: ``random``, ``scripted:<name>`` or a checkpoint.

Each resolves to a *policy factory* ``(action_space) -> Policy``, called by the evaluator
once the environments exist (so a policy can size itself to their spaces).

- ``random``: :class:`rl_ring.eval.policy.RandomPolicy`, one random stream per row.
- ``scripted:<name>``: a baseline controller of the env registry,
  ``envs.make_policy(name, action_space=...)``, returned as a batched policy or wrapped
  if it is a per-row function ``obs -> action``.
- a checkpoint directory: ``agents.eval_policy_from_checkpoint(checkpoint_dir,
  action_space=...)`` builds the trained agent behind the same protocol (its KV cache has
  one row per evaluation row). That hook belongs to the agents package; until it exists the
  error says so.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from rl_ring.eval.policy import Policy, RandomPolicy, RowPolicy

CHECKPOINT_HOOK = ("agents", "eval_policy_from_checkpoint")


def _scripted(name: str) -> Callable[[Any], Policy]:
    try:
        envs = importlib.import_module("envs")
    except ImportError as err:
        raise ValueError(f"--policy scripted:{name}: the envs package is missing ({err})") from None
    make_policy = getattr(envs, "make_policy", None)
    if make_policy is None:
        raise ValueError(f"--policy scripted:{name}: envs.make_policy does not exist yet")

    def factory(action_space: Any) -> Policy:
        pol = make_policy(name, action_space=action_space)
        if isinstance(pol, Policy):
            return pol
        if callable(pol):
            return RowPolicy(pol, action_space)
        raise TypeError(f"envs.make_policy({name!r}) returned {type(pol).__name__}, "
                        "expected a batched Policy or a function obs -> action")

    return factory


def _from_checkpoint(checkpoint: str) -> Callable[[Any], Policy]:
    module, name = CHECKPOINT_HOOK
    try:
        hook = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise NotImplementedError(
            f"--checkpoint {checkpoint}: evaluating a trained agent needs "
            f"{module}.{name}(checkpoint_dir, action_space=...) -> Policy, which has not "
            "landed yet; use --policy random meanwhile"
        ) from None

    def factory(action_space: Any) -> Policy:
        return hook(checkpoint, action_space=action_space)

    return factory


def policy_factory(policy: str, checkpoint: str | None = None) -> Callable[[Any], Policy]:
    """Resolves ``--policy`` / ``--checkpoint`` into ``(action_space) -> Policy``.

    Raises:
        ValueError: an unknown policy name, or both a checkpoint and a non-default policy.
    """
    if checkpoint is not None:
        if policy not in ("checkpoint", "random"):
            raise ValueError(f"--checkpoint {checkpoint} and --policy {policy}: give one of them")
        return _from_checkpoint(checkpoint)
    if policy == "random":
        return RandomPolicy
    if policy.startswith("scripted:") and len(policy) > len("scripted:"):
        return _scripted(policy.split(":", 1)[1])
    raise ValueError(
        f"--policy {policy!r}: expected 'random', 'scripted:<name>' or a --checkpoint DIR"
    )
