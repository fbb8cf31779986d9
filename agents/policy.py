"""A trained agent behind the evaluator's batched :class:`~rl_ring.eval.policy.Policy` protocol.

:class:`ContextPolicy` keeps each evaluation row's token context in a fixed ``[N, L]``
buffer, appends the tokens of every step with the agent's :class:`~agents.base.OnlineEncoder`
(the same encoding the sampler trained on), and reads the action from the model's prediction
at the row's newest predict token. It re-reads the whole context at every step (no KV cache):
exact and simple, the oracle a cached decoder must match, and fast enough for contexts of a
few thousand tokens. When a row's context is full, its oldest whole steps slide out.

``eval_policy_from_checkpoint(workdir, action_space=...)`` is the hook ``rl-ring eval
--checkpoint`` calls.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

from agents import base
from rl_ring.data.batch import Kind
from rl_ring.data.tokens import TokenLayout
from rl_ring.models import TrajectoryTransformer


@nnx.jit
def _predict(model: TrajectoryTransformer, tokens: dict):
    return model(tokens)


class ContextPolicy:
    """Batched, stateful policy of a trajectory transformer (see the module docstring).

    Args:
        model: the trained model.
        layout: the token layout (with the normalisation) the model was trained on.
        spec: the data spec (action kind and box, best return).
        context_steps: environment steps of context per row (the trained context length).
        target_return: raw return that return-conditioned layouts aim for, reset at each
            trial (default: the best return of the data, ``spec.max_return``).
        greedy: discrete actions: argmax (True) or sample from the predicted distribution.
    """

    def __init__(
        self,
        model: TrajectoryTransformer,
        layout: TokenLayout,
        spec: base.DataSpec,
        *,
        context_steps: int,
        target_return: float | None = None,
        greedy: bool = True,
    ):
        if context_steps < 1:
            raise ValueError(f"context_steps must be >= 1, got {context_steps}")
        if Kind.RTG in layout.kinds:
            if target_return is None:
                target_return = spec.max_return
            if target_return is None:
                raise ValueError(
                    f"layout {layout!r} conditions on returns: pass target_return (the data "
                    "spec has no max_return)"
                )
        else:
            target_return = None
        self.model, self.layout, self.spec = model, layout, spec
        self.k = layout.tokens_per_step
        self.capacity = context_steps * self.k
        self.target_return = target_return
        self.greedy = greedy
        self.num_envs = 0

    # ------------------------------------------------------------------ protocol
    def reset(self, num_envs: int, *, seeds: Sequence[int]) -> None:
        """New evaluation of ``num_envs`` rows: all context cleared."""
        if len(seeds) != num_envs:
            raise ValueError(f"ContextPolicy.reset: {len(seeds)} seeds for {num_envs} envs")
        n, length, feat = num_envs, self.capacity, self.layout.feature_dim
        self.num_envs = n
        self.kind = np.zeros((n, length), np.int32)
        self.values = np.zeros((n, length, feat), np.float32)
        self.timesteps = np.zeros((n, length), np.int32)
        self.valid = np.zeros((n, length), bool)
        self.length = np.zeros(n, np.int64)
        self.encoder = base.OnlineEncoder(self.layout, n, target_return=self.target_return)
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]
        if self.spec.discrete_actions:
            self.last_action: np.ndarray = np.zeros(n, np.int64)
        else:
            self.last_action = np.zeros((n, self.spec.act_dim), np.float32)

    def begin_trial(self, env_mask: np.ndarray) -> None:
        """Rows in ``env_mask`` start a new episode; their context is kept."""
        self.encoder.begin_trial(np.asarray(env_mask, bool))

    def act(self, obs: np.ndarray, env_mask: np.ndarray) -> np.ndarray:
        """Actions ``[N, ...]`` for ``obs``; rows outside ``env_mask`` are not advanced."""
        mask = np.asarray(env_mask, bool)
        self._make_room(mask)
        self._append(self.encoder.before_action(obs, mask), mask)
        pred = np.asarray(_predict(self.model, self.tokens()))
        rows = np.arange(self.num_envs)
        at = np.maximum(self.length - 1, 0)
        out = self._actions(pred[rows, at])
        self.last_action[mask] = out[mask]
        return out

    def observe(self, reward, terminated, truncated, env_mask) -> None:
        """Outcome of the last action of the rows in ``env_mask``."""
        mask = np.asarray(env_mask, bool)
        ended = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        self._append(self.encoder.after_action(self.last_action, reward, ended, mask), mask)

    # ------------------------------------------------------------------ context
    def tokens(self) -> dict[str, np.ndarray]:
        """The rows' contexts as model inputs (positions count from each buffer's start)."""
        n, length = self.kind.shape
        return {
            "kind": self.kind,
            "values": self.values,
            "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)),
            "timesteps": self.timesteps,
            "segment_ids": np.zeros((n, length), np.int32),
            "valid": self.valid,
        }

    def _make_room(self, mask: np.ndarray) -> None:
        # At act time a row holds whole steps; a full row drops its oldest step so the
        # step about to start fits (rotary positions are relative, so the shift is harmless).
        full = mask & (self.length + self.k > self.capacity)
        for arr in (self.kind, self.values, self.timesteps, self.valid):
            arr[full] = np.roll(arr[full], -self.k, axis=1)
            arr[full, self.capacity - self.k :] = 0
        self.length[full] -= self.k

    def _append(self, chunk: base.TokenChunk, mask: np.ndarray) -> None:
        m = chunk.num_tokens
        if m == 0:
            return
        rows = np.flatnonzero(mask)
        cols = self.length[rows, None] + np.arange(m)
        self.kind[rows[:, None], cols] = chunk.kind[rows]
        self.values[rows[:, None], cols] = chunk.values[rows]
        self.timesteps[rows[:, None], cols] = chunk.timesteps[rows]
        self.valid[rows[:, None], cols] = True
        self.length[rows] += m

    def _actions(self, pred: np.ndarray) -> np.ndarray:
        if self.spec.discrete_actions and not self.greedy:
            return np.concatenate(
                [
                    base.action_from_prediction(pred[i : i + 1], self.spec, greedy=False, rng=r)
                    for i, r in enumerate(self.rngs)
                ]
            )
        return base.action_from_prediction(pred, self.spec)


def policy_from_model(
    agent_name: str,
    agent_cfg: Any,
    model: TrajectoryTransformer,
    spec: base.DataSpec,
    layout: TokenLayout,
    **options,
) -> ContextPolicy:
    """A :class:`ContextPolicy` with the agent's trained context length."""
    import agents

    module = agents.get(agent_name)
    options.setdefault("context_steps", module.context_steps(agent_cfg, spec))
    return ContextPolicy(model, layout, spec, **options)


def eval_policy_from_checkpoint(
    checkpoint_dir: str | os.PathLike,
    *,
    action_space: Any = None,
    step: int | None = None,
    target_return: float | None = None,
    greedy: bool = True,
) -> ContextPolicy:
    """The trained agent of a training work directory as an evaluation policy.

    The model is rebuilt on one device with blockwise attention and the contiguous layout
    (the parameters do not depend on either).

    Args:
        checkpoint_dir: the training run's work directory.
        action_space: the evaluated environment's action space, checked against the data.
        step: the checkpoint step (default: the latest).
        target_return: raw return to condition on (default: the data's best return).
        greedy: discrete actions: argmax instead of sampling.

    Raises:
        FileNotFoundError: no checkpoint in ``checkpoint_dir``.
        ValueError: the action space does not match the data the agent was trained on.
    """
    import agents
    from rl_ring.train import api

    loaded = api.load_checkpoint(checkpoint_dir, step, attn_impl="blockwise")
    meta = api.checkpoint_meta(checkpoint_dir, loaded.step)
    spec = base.DataSpec.from_dict(meta["data_spec"])
    if action_space is not None:
        check_action_space(action_space, spec, where=str(checkpoint_dir))
    cfg = loaded.config
    module = agents.get(cfg.agent)
    layout = module.make_layout(cfg.agent_config, spec, loaded.norm)
    model = loaded.model
    if model.cfg.attn_layout != "contiguous":
        graphdef, state = nnx.split(model)
        fresh = nnx.eval_shape(
            lambda: TrajectoryTransformer(
                model.cfg.replace(attn_layout="contiguous"), rngs=nnx.Rngs(0)
            )
        )
        nnx.update(fresh, state)
        model = fresh
    return policy_from_model(
        cfg.agent,
        cfg.agent_config,
        model,
        spec,
        layout,
        target_return=target_return,
        greedy=greedy,
    )


def check_action_space(space: Any, spec: base.DataSpec, *, where: str = "") -> None:
    """Raises ValueError when a Gymnasium action space does not fit the data spec."""
    discrete = hasattr(space, "n") and not hasattr(space, "low")
    prefix = f"{where}: " if where else ""
    if discrete != spec.discrete_actions:
        raise ValueError(
            f"{prefix}the agent was trained on {'discrete' if spec.discrete_actions else 'box'} "
            f"actions but the environment's action space is {space}"
        )
    size = int(space.n) if discrete else int(np.prod(space.shape))
    if size != spec.act_dim:
        raise ValueError(
            f"{prefix}the agent was trained with act_dim={spec.act_dim} but the environment's "
            f"action space {space} has {size}"
        )
