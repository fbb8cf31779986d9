"""The batched, stateful policy protocol the evaluator drives, and the random baseline.

One evaluation runs ``N`` environment rows side by side; row ``i`` plays ``trials``
episodes one after another and the policy keeps its context across them (in-context
evaluation). Rows advance independently: when row ``i`` finishes an episode it starts its
next trial at once, while the other rows carry on. The evaluator calls, per seed::

    policy.reset(N, seeds=...)              # new evaluation, all context cleared
    policy.begin_trial(mask)                # rows in mask start a new episode (context KEPT)
    loop:
        actions = policy.act(obs, mask)     # ONE batched call per env step, [N, ...]
        policy.observe(reward, terminated, truncated, mask)
        policy.begin_trial(mask2)           # rows that finished and have trials left

A driver that executes other actions than ``act`` returned (a rollout that overrides some
moves, as :func:`envs.learners.dagger.labelled_rollouts` does when it withholds a goal)
passes them as ``observe(..., actions=executed)``, so that a policy's context records the
action the environment took. The evaluator never does; every policy must accept it.

Every argument is a full ``[N, ...]`` array plus a boolean ``[N]`` mask: rows outside the
mask hold stale values, their outputs are ignored, and the policy must not advance their
state. A fixed batch shape suits a KV-cached transformer (row ``i`` of the cache is row ``i``
of the evaluation, and the shapes never change, so nothing recompiles); rows only fall idle
once they have played all their trials or their environment failed.

A privileged baseline (a scripted oracle that knows each row's goal) may also define
``set_tasks(tasks)``; the evaluator then passes each row's task before ``reset``. Learned
agents must not define it: inferring the task from rewards is what in-context RL measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Policy(Protocol):
    """A batched policy over ``N`` evaluation rows (see module docstring for the call order)."""

    def reset(self, num_envs: int, *, seeds: Sequence[int]) -> None:
        """Starts a new evaluation of ``num_envs`` rows; ``seeds[i]`` seeds row ``i``'s
        randomness. Clears all context."""
        ...

    def begin_trial(self, env_mask: np.ndarray) -> None:
        """Rows in ``env_mask`` ([N] bool) start a new episode; their context is kept."""
        ...

    def act(self, obs: np.ndarray, env_mask: np.ndarray) -> np.ndarray:
        """Actions ``[N, ...]`` for observations ``obs`` ``[N, *obs_shape]``; only the rows
        in ``env_mask`` are used."""
        ...

    def observe(
        self,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        env_mask: np.ndarray,
        *,
        actions: np.ndarray | None = None,
    ) -> None:
        """Outcome of the last action of the rows in ``env_mask`` (each ``[N]``);
        ``actions`` ``[N, ...]``: the actions those rows executed when the driver overrode
        what :meth:`act` returned (None: :meth:`act`'s)."""
        ...


def action_template(action_space: Any, num_envs: int) -> np.ndarray:
    """A zero ``[N, ...]`` action array of the space's dtype and shape."""
    kind = space_kind(action_space)
    if kind == "discrete":
        return np.zeros((num_envs,), dtype=np.int64)
    return np.zeros((num_envs, *action_space.shape), dtype=np.float32)


def space_kind(space: Any) -> str:
    """``"discrete"`` or ``"box"`` for a Gymnasium space; raises on anything else."""
    if hasattr(space, "n") and not hasattr(space, "low"):
        return "discrete"
    if hasattr(space, "low") and hasattr(space, "high"):
        return "box"
    raise ValueError(f"unsupported action space {space!r}: expected Discrete or Box")


class RandomPolicy:
    """Uniform random actions, one independent random stream per row.

    Row ``i`` draws from ``np.random.default_rng(seeds[i])`` and only when it is in the
    mask, so its actions depend on its own seed alone, not on how many other rows were
    active (a plain single-environment loop reproduces them exactly). Box spaces with
    infinite bounds sample from [-1, 1] on those coordinates.
    """

    def __init__(self, action_space: Any):
        self.action_space = action_space
        self._kind = space_kind(action_space)
        if self._kind == "box":
            low = np.asarray(action_space.low, dtype=np.float64)
            high = np.asarray(action_space.high, dtype=np.float64)
            self._low = np.where(np.isfinite(low), low, -1.0)
            self._high = np.where(np.isfinite(high), high, 1.0)
        self._rngs: list[np.random.Generator] = []

    def reset(self, num_envs: int, *, seeds: Sequence[int]) -> None:
        if len(seeds) != num_envs:
            raise ValueError(f"RandomPolicy.reset: {len(seeds)} seeds for {num_envs} envs")
        self._rngs = [np.random.default_rng(int(s)) for s in seeds]

    def begin_trial(self, env_mask: np.ndarray) -> None:
        del env_mask  # memoryless

    def act(self, obs: np.ndarray, env_mask: np.ndarray) -> np.ndarray:
        out = action_template(self.action_space, len(self._rngs))
        for i in np.flatnonzero(env_mask):
            out[i] = self.sample(self._rngs[i])
        return out

    def sample(self, rng: np.random.Generator) -> Any:
        """One action from ``rng``; the plain-loop oracle in the tests calls this too."""
        if self._kind == "discrete":
            start = int(getattr(self.action_space, "start", 0))
            return start + int(rng.integers(int(self.action_space.n)))
        return rng.uniform(self._low, self._high).astype(np.float32)

    def observe(self, reward, terminated, truncated, env_mask, *, actions=None) -> None:
        del reward, terminated, truncated, env_mask, actions


class RowPolicy:
    """Adapts a per-row function ``fn(obs_row) -> action`` to the batched protocol.

    For memoryless scripted controllers (e.g. balance a pole by the sign of its angle):
    each active row is evaluated independently, which is also the plain-loop oracle.
    """

    def __init__(self, fn, action_space: Any):
        self.fn = fn
        self.action_space = action_space
        self._n = 0

    def reset(self, num_envs: int, *, seeds: Sequence[int]) -> None:
        del seeds
        self._n = num_envs

    def begin_trial(self, env_mask: np.ndarray) -> None:
        del env_mask

    def act(self, obs: np.ndarray, env_mask: np.ndarray) -> np.ndarray:
        out = action_template(self.action_space, self._n)
        for i in np.flatnonzero(env_mask):
            out[i] = self.fn(obs[i])
        return out

    def observe(self, reward, terminated, truncated, env_mask, *, actions=None) -> None:
        del reward, terminated, truncated, env_mask, actions
