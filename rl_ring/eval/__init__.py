"""Evaluation: rollout workers, multi-trial in-context evaluation, scores and reports.

See ``docs/evaluation.md``. The pieces, each in its own module:

- :mod:`rl_ring.eval.policy`: the batched, stateful ``Policy`` protocol; ``RandomPolicy``.
- :mod:`rl_ring.eval.env_spec`: ``EnvSpec``, ``make_env`` and the seed derivation.
- :mod:`rl_ring.eval.workers`: in-process and worker-process backends.
- :mod:`rl_ring.eval.rollout`: ``run_seed`` -- rows x trials in one context.
- :mod:`rl_ring.eval.jax_rollout`: the same loop for JAX envs, in one jitted ``lax.scan``.
- :mod:`rl_ring.eval.report`: aggregation (last trial, best of n), JSON schema, plot.
- :mod:`rl_ring.eval.evaluate`: ``EvalConfig`` and ``evaluate`` (what ``rl-ring eval`` runs).
"""

from rl_ring.eval.env_spec import EnvSpec, env_seed, episode_seed, make_env, policy_seed
from rl_ring.eval.evaluate import EvalConfig, evaluate
from rl_ring.eval.policy import Policy, RandomPolicy, RowPolicy
from rl_ring.eval.report import aggregate, build_report, validate_report
from rl_ring.eval.rollout import EpisodeRecord, SeedResult, run_seed
from rl_ring.eval.workers import InProcessWorkers, SubprocessWorkers, make_workers

__all__ = [
    "EnvSpec", "EpisodeRecord", "EvalConfig", "InProcessWorkers", "Policy", "RandomPolicy",
    "RowPolicy", "SeedResult", "SubprocessWorkers", "aggregate", "build_report", "env_seed",
    "episode_seed", "evaluate", "make_env", "make_workers", "policy_seed", "run_seed",
    "validate_report",
]
