"""A trained agent behind the evaluator's batched :class:`~rl_ring.eval.policy.Policy` protocol.

:class:`ContextPolicy` keeps each evaluation row's token context in a fixed ``[N, L]``
buffer, appends the tokens of every step with the agent's :class:`~agents.base.OnlineEncoder`
(the same encoding the sampler trained on), and reads the action from the model's prediction
at the row's newest predict token. It re-reads the whole context at every step (no KV cache):
exact and simple, the oracle a cached decoder must match. When a row's context is full, its
oldest ``slide_steps`` whole steps slide out.

:class:`CachedPolicy` keeps the same buffers and acts on the same contexts, but decodes with a
KV cache (:class:`rl_ring.models.decode.Decoder`): each env step is one batched call that
appends the row's new tokens (the previous step's action/reward tokens and this step's
tokens up to the predict token) and attends them to the cache, so a step costs time linear
in the context instead of a whole forward pass. A row whose context slides is refilled by
one forward pass over its remaining context (the same context the oracle sees), so both
policies give the same actions.

``eval_policy_from_checkpoint(workdir, action_space=...)`` is the hook ``rl-ring eval
--checkpoint`` calls; it builds a :class:`CachedPolicy` unless ``cached=False``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from agents import base, registry
from rl_ring.attention.decode import DecodeOptions
from rl_ring.data.batch import Kind
from rl_ring.data.tokens import TokenLayout
from rl_ring.models import TrajectoryTransformer
from rl_ring.models.decode import (
    Decoder,
    KVCache,
    cache_shardings,
    decode,
    init_cache,
    prefill_rows,
    refill_bucket,
)
from rl_ring.sharding import batch_shards


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
        temperature: sampled discrete actions: draw from ``softmax(logits / temperature)``
            (1: the model's own distribution; below 1 sharper).
        slide_steps: whole steps that slide out of a full row at once (1: the context is
            always the last ``context_steps`` steps, as in training windows).
        trial_context: keep earlier trials in a row's context (AT, AD: trial k is conditioned
            on trials 1..k-1); False empties the row at each new trial, for agents trained on
            windows inside one episode (DT, BC), whose trials must not see the last episode.
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
        temperature: float = 1.0,
        slide_steps: int = 1,
        trial_context: bool = True,
    ):
        base.check_temperature(temperature)
        if context_steps < 1:
            raise ValueError(f"context_steps must be >= 1, got {context_steps}")
        if not 1 <= slide_steps <= context_steps:
            raise ValueError(
                f"slide_steps must lie in [1, context_steps={context_steps}], got {slide_steps}"
            )
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
        self.slide = slide_steps * self.k
        self.target_return = target_return
        self.greedy = greedy
        self.temperature = float(temperature)
        self.trial_context = trial_context
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
        self.emptied = np.zeros(n, bool)  # rows emptied at a trial start, not yet re-read
        self.encoder = base.OnlineEncoder(self.layout, n, target_return=self.target_return)
        self.rngs = [np.random.default_rng(int(s)) for s in seeds]
        if self.spec.discrete_actions:
            self.last_action: np.ndarray = np.zeros(n, np.int64)
        else:
            self.last_action = np.zeros((n, self.spec.act_dim), np.float32)

    def begin_trial(self, env_mask: np.ndarray) -> None:
        """Rows in ``env_mask`` start a new episode; their context is kept unless
        ``trial_context`` is False."""
        mask = np.asarray(env_mask, bool)
        self.encoder.begin_trial(mask)
        if not self.trial_context:
            rows = mask & (self.length > 0)
            for arr in (self.kind, self.values, self.timesteps, self.valid):
                arr[rows] = 0
            self.length[rows] = 0
            self.emptied |= rows

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

    def observe(self, reward, terminated, truncated, env_mask, *, actions=None) -> None:
        """Outcome of the last action of the rows in ``env_mask``; ``actions``: the actions
        they executed if not those :meth:`act` returned (the context records these)."""
        mask = np.asarray(env_mask, bool)
        if actions is not None:
            executed = np.asarray(actions, self.last_action.dtype)
            if executed.shape != self.last_action.shape:
                raise ValueError(f"{type(self).__name__}.observe: actions of shape "
                                 f"{executed.shape}, expected {self.last_action.shape}")
            self.last_action[mask] = executed[mask]
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

    def _make_room(self, mask: np.ndarray) -> np.ndarray:
        """Slides the oldest ``slide_steps`` steps out of full rows; returns which rows slid."""
        # At act time a row holds whole steps; a full row drops its oldest steps so the
        # step about to start fits (rotary positions are relative, so the shift is harmless).
        full = mask & (self.length + self.k > self.capacity)
        if full.any():
            for arr in (self.kind, self.values, self.timesteps, self.valid):
                arr[full] = np.roll(arr[full], -self.slide, axis=1)
                arr[full, self.capacity - self.slide :] = 0
            self.length[full] -= self.slide
        return full

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
                    base.action_from_prediction(pred[i : i + 1], self.spec, greedy=False, rng=r,
                                                temperature=self.temperature)
                    for i, r in enumerate(self.rngs)
                ]
            )
        return base.action_from_prediction(pred, self.spec)


class CachedPolicy(ContextPolicy):
    """:class:`ContextPolicy`'s contexts and actions, decoded with a KV cache.

    The host keeps the oracle's token buffers (so contexts are identical by construction);
    the device cache holds the keys/values of each row's first ``decoder.lengths[i]``
    tokens. At each :meth:`act` the tokens the cache has not seen yet (the previous step's
    tokens after the predict token, then this step's tokens up to it: at most one step's
    worth) go through one batched decode call for all rows, idle rows masked; the action is
    read at each row's newest token. A row whose context is full slides its oldest
    ``slide_steps`` steps out, as the oracle does, and is refilled by one forward pass over
    its remaining context in the same call's place. With ``slide_steps`` larger than 1 the
    refills are that many times rarer.

    Args:
        model, layout, spec: as :class:`ContextPolicy`.
        **policy_options: ``context_steps`` and the other options of :class:`ContextPolicy`.
        mesh: shard the cache over this mesh (rows over the batch axes, slots over ``seq``).
        options: cached-attention options (:class:`rl_ring.attention.decode.DecodeOptions`).
    """

    def __init__(
        self,
        model: TrajectoryTransformer,
        layout: TokenLayout,
        spec: base.DataSpec,
        *,
        mesh=None,
        options: DecodeOptions | None = None,
        **policy_options,
    ):
        super().__init__(model, layout, spec, **policy_options)
        self.mesh, self.options = mesh, options
        self.decoder: Decoder | None = None
        self.calls = {"decode": 0, "prefill": 0}

    def reset(self, num_envs: int, *, seeds: Sequence[int]) -> None:
        """New evaluation of ``num_envs`` rows: all context (and cache) cleared."""
        super().reset(num_envs, seeds=seeds)
        if self.decoder is None or self.decoder.batch != num_envs:
            self.decoder = Decoder(
                self.model, num_envs, self.capacity, mesh=self.mesh, options=self.options
            )
        else:
            self.decoder.reset()

    def act(self, obs: np.ndarray, env_mask: np.ndarray) -> np.ndarray:
        """Actions ``[N, ...]`` for ``obs``; rows outside ``env_mask`` are not advanced."""
        mask = np.asarray(env_mask, bool)
        # An emptied row's cache still holds its last trial: refill it from its new context.
        refill = self._make_room(mask) | (self.emptied & mask)
        self.emptied[mask] = False
        self._append(self.encoder.before_action(obs, mask), mask)
        pred = np.zeros((self.num_envs, self.model.cfg.out_dim), np.float32)
        if refill.any():
            pred[refill] = np.asarray(self.decoder.prefill(self.tokens(), refill))[refill]
            self.calls["prefill"] += 1
        rows = mask & ~refill
        if rows.any():
            tokens, num_new = self._unseen_tokens(rows)
            out = np.asarray(self.decoder.step(tokens, num_new))
            pred[rows] = out[rows, num_new[rows] - 1]
            self.calls["decode"] += 1
        actions = self._actions(pred)
        self.last_action[mask] = actions[mask]
        return actions

    def _unseen_tokens(self, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The buffered tokens of ``rows`` the cache has not seen, as ``[N, k]`` decode input."""
        seen = self.decoder.lengths
        num_new = np.where(rows, self.length - seen, 0)
        if (num_new > self.k).any() or (num_new[rows] < 1).any():
            raise RuntimeError(
                f"CachedPolicy: rows are {num_new.tolist()} tokens ahead of the cache; expected "
                f"1..{self.k} for acting rows (act/observe called out of order?)"
            )
        slots = seen[:, None] + np.arange(self.k)
        idx = np.minimum(slots, self.capacity - 1)
        r = np.arange(self.num_envs)[:, None]
        tokens = {
            "kind": self.kind[r, idx],
            "values": self.values[r, idx],
            "timesteps": self.timesteps[r, idx],
            # Positions count from the buffer's start, as in ContextPolicy.tokens().
            "positions": slots.astype(np.int32),
        }
        return tokens, num_new


def policy_from_model(
    agent_name: str,
    agent_cfg: Any,
    model: TrajectoryTransformer,
    spec: base.DataSpec,
    layout: TokenLayout,
    *,
    cached: bool = True,
    **options,
) -> ContextPolicy:
    """The agent's evaluation policy with its trained context length.

    Args:
        cached: a :class:`CachedPolicy` (KV cache) or, when False, the recomputing
            :class:`ContextPolicy` oracle.
        **options: keyword options of the policy class.
    """

    module = registry.get(agent_name)
    options.setdefault("context_steps", module.context_steps(agent_cfg, spec))
    # Agents trained on windows inside one episode (DT, BC) start every trial afresh.
    options.setdefault("trial_context", module.CONTEXT_ACROSS_TRIALS)
    cls = CachedPolicy if cached else ContextPolicy
    return cls(model, layout, spec, **options)


def eval_policy_from_checkpoint(
    checkpoint_dir: str | os.PathLike,
    *,
    action_space: Any = None,
    step: int | None = None,
    target_return: float | None = None,
    greedy: bool | None = None,
    temperature: float = 1.0,
    cached: bool = True,
    slide_steps: int | None = None,
    context_steps: int | None = None,
    episode_steps: int | None = None,
    mesh=None,
) -> ContextPolicy:
    """The trained agent of a training work directory as an evaluation policy.

    The model is rebuilt on one device with blockwise attention and the contiguous layout
    (the parameters do not depend on either).

    Args:
        checkpoint_dir: the training run's work directory.
        action_space: the evaluated environment's action space, checked against the data.
        step: the checkpoint step (default: the latest).
        target_return: raw return to condition on (default: the data's best return).
        greedy: discrete actions: argmax instead of sampling (default: the checkpoint's
            ``agent_config.evaluation``, see :class:`agents.base.EvalDefaults`).
        temperature: sampled actions: from ``softmax(logits / temperature)`` (1: the model's
            distribution).
        cached: decode with a KV cache (:class:`CachedPolicy`, the default) or recompute the
            whole context every step (:class:`ContextPolicy`, the oracle).
        slide_steps: whole steps that slide out of a full context at once (default: the
            checkpoint's; 0 means one episode, ``episode_steps``).
        context_steps: steps of context per row (default: the checkpoint's, else the trained
            context; fewer keep a long-context model's cache small when only a few trials
            are played).
        episode_steps: the evaluated env's episode length (needed when the slide is one
            episode).
        mesh: shard the KV cache over this mesh (cached policy only).

    Raises:
        FileNotFoundError: no checkpoint in ``checkpoint_dir``.
        ValueError: the action space does not match the data the agent was trained on.
    """
    from agents.run import load_checkpoint
    from rl_ring.train.checkpoint import checkpoint_meta

    loaded = load_checkpoint(checkpoint_dir, step, attn_impl="blockwise")
    meta = checkpoint_meta(checkpoint_dir, loaded.step)
    spec = base.DataSpec.from_dict(meta["data_spec"])
    if action_space is not None:
        check_action_space(action_space, spec, where=str(checkpoint_dir))
    cfg = loaded.config
    module = registry.get(cfg.agent)
    greedy, slide_steps, context_steps = eval_options(
        cfg.agent_config, greedy=greedy, slide_steps=slide_steps, context_steps=context_steps,
        episode_steps=episode_steps, where=str(checkpoint_dir))
    note = horizon_warning(cfg.agent_config, spec, episode_steps)
    if note:
        warnings.warn(f"{checkpoint_dir}: {note}", UserWarning, stacklevel=2)
    trained = module.context_steps(cfg.agent_config, spec)
    if context_steps is not None and context_steps > trained:
        warnings.warn(f"{checkpoint_dir}: context_steps={context_steps} is longer than the "
                      f"{trained} steps of context the model trained on; a model does not use "
                      f"context it did not train on (docs/reproductions.md, Dark Room hard: a "
                      f"16-episode model played with 256 episodes fell from 0.67 to 0.18)",
                      UserWarning, stacklevel=2)
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
        temperature=temperature,
        cached=cached,
        slide_steps=slide_steps,
        **({} if context_steps is None else {"context_steps": context_steps}),
        **({} if mesh is None else {"mesh": mesh}),
    )


def horizon_warning(agent_cfg: Any, spec: base.DataSpec, episode_steps: int | None) -> str | None:
    """Why an evaluation will mean little, or None: the agent was trained on trajectories cut
    to ``max_steps`` (an AT chain's) far shorter than the evaluated episodes, so it never saw
    the timesteps it will be asked to act at."""
    cut = getattr(agent_cfg, "max_steps", None)
    if not cut or not episode_steps:
        return None
    trained = min(cut, spec.max_episode_len) if spec.max_episode_len else cut
    if episode_steps <= 2 * trained:
        return None
    return (f"the model was trained on trajectories of at most {trained} steps "
            f"(agent_config.max_steps={cut}) but the evaluated episodes last {episode_steps} "
            f"steps: past step {trained} it acts at timesteps it never saw, and its return "
            "says little (train with a larger --agent-config.max-steps)")


def eval_options(agent_cfg: Any, *, greedy: bool | None = None, slide_steps: int | None = None,
                 context_steps: int | None = None, episode_steps: int | None = None,
                 where: str = "") -> tuple[bool, int, int | None]:
    """``(greedy, slide_steps, context_steps)``: the given values, else the agent config's
    :class:`~agents.base.EvalDefaults`; a slide of 0 becomes ``episode_steps``.

    Raises:
        ValueError: a one-episode slide without ``episode_steps``, or a negative value.
    """
    defaults = getattr(agent_cfg, "evaluation", None) or base.EvalDefaults()
    greedy = defaults.greedy if greedy is None else greedy
    slide = defaults.slide_steps if slide_steps is None else slide_steps
    context = defaults.context_steps if context_steps is None else context_steps
    if slide < 0 or context < 0:
        raise ValueError(f"{where}: slide_steps={slide}, context_steps={context}: expected >= 0")
    if slide == 0:
        if not episode_steps:
            raise ValueError(f"{where}: the agent slides its context one episode at a time; "
                             "pass the evaluated env's episode length (episode_steps) or "
                             "slide_steps")
        slide = int(episode_steps)
    return bool(greedy), int(slide), (int(context) or None)


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


# ------------------------------------------------------------------ functional (jittable)
class FunctionalState(NamedTuple):
    """State of :func:`functional_policy` for ``N`` rows (a pytree: it lives in a scan)."""

    values: jax.Array
    """``[N, capacity, F]`` float32 token payloads of each row's context (slot order)."""
    timesteps: jax.Array
    """``[N, capacity]`` int32 timestep of each slot."""
    length: jax.Array
    """``[N]`` int32 tokens in each row's context."""
    cache: KVCache
    """The KV cache of the same contexts."""
    prev_action: jax.Array
    """``[N]`` int32 last action of each row (-1 before its first)."""
    prev_obs: jax.Array
    """``[N, obs_dim]`` float32 observation of each row's last step (zeros before its first;
    read by layouts with ``step_prev_obs``)."""
    acts: jax.Array
    """``[N]`` int32 actions taken by each row (folded into its sampling key)."""
    keys: jax.Array
    """``[N, 2]`` uint32 each row's sampling key, from its policy seed."""
    params: Any
    """The model's parameters (carried, not baked into the compiled loop as constants)."""


def functional_policy(
    model: TrajectoryTransformer,
    layout: TokenLayout,
    spec: base.DataSpec,
    *,
    context_steps: int,
    slide_steps: int = 1,
    greedy: bool = True,
    temperature: float = 1.0,
    mesh=None,
    options: DecodeOptions | None = None,
    refill_rows: int = 8,
):
    """:class:`CachedPolicy` of a one-token-per-step layout (AD) as two pure, jittable
    functions ``(init, step)`` for :func:`rl_ring.eval.jax_rollout.make_rollout`.

    ``init(policy_seeds [N]) -> state`` and ``step(state, inp) -> (actions [N], state)``,
    ``inp`` an :class:`rl_ring.eval.jax_rollout.StepInput`. The contexts and actions are
    :class:`CachedPolicy`'s: each step appends the row's STEP token (observation, previous
    action, previous reward, new-episode flag[, previous observation]) and decodes it against
    the cache; a full row drops its oldest ``slide_steps`` steps and is refilled by one forward
    pass over what remains, run over the rows that slid alone, ``refill_rows`` of them per trip
    of a ``lax.while_loop`` (no trip on a step without a slide; a multiple of the mesh's batch
    shards, at most ``N``). Sampled actions (``greedy=False``) draw ``jax.random.categorical``
    from ``fold_in(PRNGKey(policy_seed), actions taken by the row)``, so a row's actions depend
    on its own seed alone; :class:`CachedPolicy` samples from numpy instead, so the two agree
    only when greedy. ``temperature`` divides the logits before sampling.

    Raises:
        ValueError: a layout with more than one token per step, continuous actions, or bad
            context / slide sizes.
    """
    if layout.kinds != (Kind.STEP,):
        raise ValueError(f"functional_policy: layout kinds {[k.name for k in layout.kinds]}; "
                         "only the one-token-per-step STEP layout (AD) is supported")
    if not spec.discrete_actions:
        raise ValueError("functional_policy: only discrete actions are supported")
    base.check_temperature(temperature)
    if context_steps < 1 or not 1 <= slide_steps <= context_steps:
        raise ValueError(f"functional_policy: context_steps={context_steps} must be >= 1 and "
                         f"slide_steps={slide_steps} in [1, context_steps]")
    if refill_rows < 1:
        raise ValueError(f"functional_policy: refill_rows must be >= 1, got {refill_rows}")
    cap, slide, feat = int(context_steps), int(slide_steps), layout.feature_dim
    o, a = layout.obs_dim, layout.act_dim
    mean = jnp.asarray(layout.norm.obs_mean, jnp.float32)
    inv_std = jnp.asarray(layout.norm._inv_std, jnp.float32)
    reward_scale = float(layout.norm.reward_scale)
    graphdef, params = nnx.split(model)
    if mesh is not None:
        params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
    slots = jnp.arange(cap, dtype=jnp.int32)
    shifted = jnp.minimum(slots + slide, cap - 1)
    keep = (slots < cap - slide)[None, :]

    def init(policy_seeds: jax.Array) -> FunctionalState:
        n = policy_seeds.shape[0]
        return FunctionalState(
            values=jnp.zeros((n, cap, feat), jnp.float32),
            timesteps=jnp.zeros((n, cap), jnp.int32),
            length=jnp.zeros((n,), jnp.int32),
            cache=init_cache(model.cfg, n, cap, mesh=mesh),
            prev_action=jnp.full((n,), -1, jnp.int32),
            prev_obs=jnp.zeros((n, o), jnp.float32),
            acts=jnp.zeros((n,), jnp.int32),
            keys=jax.vmap(jax.random.PRNGKey)(policy_seeds),
            params=params,
        )

    def token(inp, prev_action: jax.Array, prev_obs: jax.Array) -> jax.Array:
        """``[N, F]`` STEP payloads, as :meth:`TokenLayout.encode_token` computes them."""
        n = inp.active.shape[0]
        obs = (jnp.asarray(inp.obs, jnp.float32).reshape(n, o) - mean) * inv_std
        prev = jax.nn.one_hot(prev_action, a, dtype=jnp.float32)  # id -1: all zeros
        parts = [obs, prev, (inp.prev_reward / reward_scale)[:, None].astype(jnp.float32)]
        if layout.new_episode_flag:
            parts.append(inp.new_episode.astype(jnp.float32)[:, None])
        if layout.step_prev_obs:  # zero before a row's first step (no previous action)
            has_prev = (prev_action >= 0).astype(jnp.float32)[:, None]
            parts.append((prev_obs - mean) * inv_std * has_prev)
        out = jnp.concatenate(parts, axis=1)
        return jnp.pad(out, ((0, 0), (0, feat - out.shape[1])))

    def step(state: FunctionalState, inp) -> tuple[jax.Array, FunctionalState]:
        act = jnp.asarray(inp.active, bool)
        n = act.shape[0]
        full = act & (state.length + 1 > cap)
        length = state.length - slide * full.astype(jnp.int32)
        new_length = length + act.astype(jnp.int32)
        tok = token(inp, state.prev_action, state.prev_obs)
        ts = jnp.asarray(inp.timestep, jnp.int32)
        rows = jnp.arange(n)
        kind = jnp.full((n, cap), int(Kind.STEP), jnp.int32)
        chunk = refill_bucket(min(refill_rows, n), n, batch_shards(mesh))

        def append(values, timesteps):
            """This step's token at slot ``length`` of the acting rows."""
            at = jnp.where(act, length, cap)  # out of range: dropped
            return (values.at[rows, at].set(tok, mode="drop"),
                    timesteps.at[rows, at].set(ts, mode="drop"))

        def refill_some(carry):
            """One trip: up to ``chunk`` of the rows still to refill slide their oldest steps
            out (so the step about to start fits), take this step's token, and are re-read
            whole (the context CachedPolicy's refill reads); the forward pass runs over
            those rows alone."""
            pending, params, cache, values, timesteps, pred = carry
            idx = jnp.nonzero(pending, size=chunk, fill_value=n)[0]  # n: padding, dropped
            take = jnp.minimum(idx, n - 1)
            sub = jnp.arange(chunk)
            v = jnp.where(keep[..., None], values[take][:, shifted], 0.0)
            t = jnp.where(keep, timesteps[take][:, shifted], 0)
            v = v.at[sub, length[take]].set(tok[take])
            t = t.at[sub, length[take]].set(ts[take])
            fill = new_length[take]
            tokens = {"kind": kind[:chunk], "values": v, "timesteps": t,
                      "positions": jnp.broadcast_to(slots, (chunk, cap)),
                      "segment_ids": jnp.zeros((chunk, cap), jnp.int32),
                      "valid": slots[None, :] < fill[:, None]}
            # Merged inside the loop: an NNX module must not cross a trace level.
            model = nnx.merge(graphdef, params)
            p, cache = prefill_rows(model, tokens, cache, idx, mesh=mesh)
            p = jnp.take_along_axis(p, jnp.maximum(fill - 1, 0)[:, None, None], axis=1)[:, 0]
            return (pending.at[idx].set(False, mode="drop"), params, cache,
                    values.at[idx].set(v, mode="drop"), timesteps.at[idx].set(t, mode="drop"),
                    pred.at[idx].set(p, mode="drop"))

        # A while loop (no trip on a step without a slide) rather than a cond: a loop's carry
        # is updated in place, where a cond copied the whole cache (and token buffers) at
        # every step. Each trip refills at most `chunk` rows, so the refill's cost follows the
        # rows that slid, not the batch.
        start = (full, state.params, state.cache, state.values, state.timesteps,
                 jnp.zeros((n, model.cfg.out_dim), jnp.float32))
        _, _, cache, values, timesteps, pred_full = jax.lax.while_loop(
            lambda carry: carry[0].any(), refill_some, start)
        # Appending is idempotent: a refilled row already holds this token at `length`.
        values, timesteps = append(values, timesteps)
        dec = {"kind": kind[:, :1], "values": tok[:, None], "timesteps": ts[:, None],
               "positions": length[:, None]}
        pred_dec, cache = decode(nnx.merge(graphdef, state.params), dec, cache,
                                 (act & ~full).astype(jnp.int32), mesh=mesh, options=options)
        if mesh is not None:
            cache = jax.lax.with_sharding_constraint(cache, cache_shardings(mesh))
        pred = jnp.where(full[:, None], pred_full, pred_dec[:, 0])
        if greedy:
            action = jnp.argmax(pred, axis=-1).astype(jnp.int32)
        else:
            keys = jax.vmap(jax.random.fold_in)(state.keys, state.acts)
            action = jax.vmap(jax.random.categorical)(keys, pred / temperature).astype(
                jnp.int32)
        new_state = FunctionalState(
            values=values, timesteps=timesteps, length=new_length, cache=cache,
            prev_action=jnp.where(act, action, state.prev_action),
            prev_obs=jnp.where(act[:, None],
                               jnp.asarray(inp.obs, jnp.float32).reshape(n, o),
                               state.prev_obs),
            acts=state.acts + act.astype(jnp.int32), keys=state.keys, params=state.params)
        return action, new_state

    return init, step
