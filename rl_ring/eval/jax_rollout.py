"""The JAX-native rollout: env steps, the policy's decode step and the episode bookkeeping of
every row in one jitted ``lax.scan`` over steps, with no Python per step.

For environments written in JAX (XLand-MiniGrid) the evaluator's Python loop
(:func:`rl_ring.eval.rollout.run_seed`: one batched ``policy.act``, then each env's
``step``, then ``observe``) costs far more than the environments themselves. Here the whole
loop is one compiled function: the environment is vmapped over the ``N`` rows, the policy
is one batched, pure step (a transformer's KV-cached decode for all rows at once), and
returns, lengths and trial indices are accumulated in ``[N, trials]`` arrays on the device.
The semantics are :func:`~rl_ring.eval.rollout.run_seed`'s, so for the same seeds both give
the same episodes:

- row ``i`` plays ``trials`` episodes one after another while the policy keeps its context;
  trial ``k`` starts with ``env_reset(episode_seed(seed, i, k))`` (the seeds of
  :mod:`rl_ring.eval.env_spec`), the policy's row stream is seeded by ``policy_seed(seed, i)``;
- rows advance independently: a row that ends an episode resets on the same step and starts
  its next trial; a row that has played all its trials falls idle (masked, its state frozen);
- ``max_steps`` cuts (truncates) an episode the environment has not ended.

The environment is a pair of pure, unbatched functions (the library never imports one)::

    env_reset(seed)          -> (env_state, obs)          # seed: int32 scalar
    env_reset(seed, task)    -> (env_state, obs)          # with row tasks (below)
    env_step(env_state, a)   -> (env_state, obs, reward, terminated, truncated)

**Row tasks.** A task family (XLand-MiniGrid's rulesets) gives each row its own task:
``row_tasks`` is a pytree of ``[N, ...]`` arrays (e.g. int32 ``[N]`` ruleset indices of a
stacked benchmark, or the rows' stacked env params), an argument of the compiled function
like the seeds, so one compilation serves any set of tasks. Row ``i``'s slice is passed to
every ``env_reset`` of that row (its task stays fixed across its trials, as a worker's env
built with ``task=`` keeps it). Without ``row_tasks`` (``None``) ``env_reset`` takes the seed
alone, as before.

and the policy a pair of pure, batched ones (an agent builds them, e.g.
``agents.policy.functional_policy``)::

    policy_init(policy_seeds [N] int32)  -> policy_state
    policy_step(policy_state, StepInput) -> (actions [N, ...], policy_state)

:class:`StepInput` gives the policy what the evaluator's ``act``/``observe``/``begin_trial``
calls give a Python policy: this step's observation, the row's previous reward (carried
across episodes, 0 before the first step), whether this is the first step of a trial, the
step within the episode, and which rows are active. Rows outside ``active`` must not
advance.

:func:`make_rollout` compiles the loop once per shape; :func:`jax_rollout` runs it for one
evaluation seed and :func:`seed_result` turns the arrays into the evaluator's
:class:`~rl_ring.eval.rollout.SeedResult`, so :func:`rl_ring.eval.report.build_report`
consumes it like any other.

**Sharding.** With ``mesh``, the rows are split over the mesh's batch axes (``data``,
``fsdp``): every per-row array of the loop (env states, observations, bookkeeping) is
constrained to that split, and the policy is expected to shard its own state the same way
(``rl_ring.models.decode.init_cache(mesh=...)`` puts cache rows over the batch axes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from rl_ring.eval.env_spec import episode_seed, policy_seed
from rl_ring.eval.rollout import NOT_RUN, EpisodeRecord, SeedResult
from rl_ring.sharding import BATCH_AXES

EnvReset = Callable[[jax.Array], tuple[Any, jax.Array]]
EnvStep = Callable[[Any, jax.Array], tuple[Any, jax.Array, jax.Array, jax.Array, jax.Array]]


class StepInput(NamedTuple):
    """What a functional policy sees at one step, for all ``N`` rows."""

    obs: jax.Array
    """``[N, *obs_shape]`` this step's observations (stale in idle rows)."""
    prev_reward: jax.Array
    """``[N]`` float32 reward of the row's previous step, carried across episodes (0 before
    the row's first step), as an AD learning history carries it."""
    new_episode: jax.Array
    """``[N]`` bool: this step is the first of a trial (the evaluator's ``begin_trial``)."""
    timestep: jax.Array
    """``[N]`` int32 steps already taken in the current episode."""
    active: jax.Array
    """``[N]`` bool rows that act this step; the others must not advance."""


class RolloutOutput(NamedTuple):
    """The bookkeeping arrays of one rollout (all on the device, ``[N, trials]`` unless noted)."""

    returns: jax.Array
    """float32 undiscounted return of each finished episode (0 where not finished)."""
    lengths: jax.Array
    """int32 steps of each episode (of the unfinished one: steps so far)."""
    terminated: jax.Array
    """bool: the environment terminated the episode."""
    truncated: jax.Array
    """bool: the environment's time limit or ``max_steps`` cut the episode."""
    finished: jax.Array
    """bool: the episode ended within ``num_steps``."""
    env_steps: jax.Array
    """``[]`` int32 environment steps taken by all rows together."""


class RolloutState(NamedTuple):
    """Everything the loop carries from step to step (a pytree of ``[N, ...]`` arrays)."""

    episode_seeds: jax.Array
    env_state: Any
    obs: jax.Array
    trial: jax.Array
    ep_len: jax.Array
    ep_ret: jax.Array
    prev_reward: jax.Array
    new_episode: jax.Array
    active: jax.Array
    out: RolloutOutput
    policy_state: Any
    tasks: Any = None
    """The rows' tasks (a pytree of ``[N, ...]`` arrays), or None (``env_reset(seed)``)."""


def _rows_sharding(mesh) -> Callable[[Any], Any]:
    """A function that pins every leaf's leading (row) axis to the mesh's batch axes."""
    if mesh is None:
        return lambda tree: tree
    batch = tuple(a for a in BATCH_AXES if a in mesh.axis_names) or None

    def pin(x):
        spec = PartitionSpec(batch, *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    return lambda tree: jax.tree.map(pin, tree)


def make_rollout(
    env_reset: EnvReset,
    env_step: EnvStep,
    policy_init: Callable[[jax.Array], Any],
    policy_step: Callable[[Any, StepInput], tuple[jax.Array, Any]],
    *,
    num_envs: int,
    num_steps: int,
    trials: int,
    max_steps: int | None = None,
    mesh=None,
) -> Callable[..., tuple[RolloutOutput, Any]]:
    """The compiled rollout ``(episode_seeds [N, trials], policy_seeds [N], row_tasks=None)
    -> (output, final policy state)``: ``num_steps`` steps of ``num_envs`` rows in one
    ``lax.scan``. ``row_tasks`` (a pytree of ``[N, ...]`` arrays) gives each row its task,
    passed to its resets as ``env_reset(seed, task)`` (module docstring); one compilation
    per tree structure and shapes serves any values.

    Args:
        env_reset, env_step: the pure, unbatched environment (module docstring).
        policy_init, policy_step: the pure, batched policy (module docstring).
        num_envs: rows ``N`` (a multiple of the mesh's batch axes when ``mesh`` is given).
        num_steps: scan length; rows that have not played all their trials by then leave
            their remaining episodes unfinished (``finished`` False). ``trials * longest
            episode`` steps always suffice.
        trials: episodes per row, in one policy context.
        max_steps: the rollout truncates an episode after this many steps (``None``: only
            the environment ends episodes).
        mesh: split the rows over the mesh's batch axes (module docstring).

    Raises:
        ValueError: a non-positive size, or rows the mesh's batch axes do not divide.
    """
    start, advance = _rollout_functions(
        env_reset, env_step, policy_init, policy_step, num_envs=num_envs, num_steps=num_steps,
        trials=trials, max_steps=max_steps, mesh=mesh)

    def run(episode_seeds: jax.Array, policy_seeds: jax.Array,
            row_tasks: Any = None) -> tuple[RolloutOutput, Any]:
        state = advance(start(episode_seeds, policy_seeds, row_tasks))
        return state.out, state.policy_state

    return jax.jit(run)


def make_rollout_steps(
    env_reset: EnvReset,
    env_step: EnvStep,
    policy_init: Callable[[jax.Array], Any],
    policy_step: Callable[[Any, StepInput], tuple[jax.Array, Any]],
    *,
    num_envs: int,
    num_steps: int,
    trials: int,
    max_steps: int | None = None,
    mesh=None,
) -> tuple[Callable[..., RolloutState], Callable[[RolloutState], RolloutState]]:
    """:func:`make_rollout` in two compiled pieces: ``start(episode_seeds, policy_seeds,
    row_tasks=None) -> state`` (first resets, policy init) and ``advance(state) -> state``
    (``num_steps`` more steps; its input is donated, so the KV cache is updated in place).
    Calling ``advance`` until ``state.active`` is all False plays every trial with a bounded
    scan length (e.g. with a progress bar between calls), and timing ``advance`` alone
    measures the loop's steady state. ``state.out`` is the :class:`RolloutOutput`. Arguments as
    :func:`make_rollout`."""
    start, advance = _rollout_functions(
        env_reset, env_step, policy_init, policy_step, num_envs=num_envs, num_steps=num_steps,
        trials=trials, max_steps=max_steps, mesh=mesh)
    return jax.jit(start), jax.jit(advance, donate_argnums=0)


def _rollout_functions(
    env_reset: EnvReset,
    env_step: EnvStep,
    policy_init: Callable[[jax.Array], Any],
    policy_step: Callable[[Any, StepInput], tuple[jax.Array, Any]],
    *,
    num_envs: int,
    num_steps: int,
    trials: int,
    max_steps: int | None,
    mesh,
):
    """The loop's ``start(episode_seeds, policy_seeds, row_tasks=None)`` and
    ``advance(state)``, not jitted."""
    for name, value in (("num_envs", num_envs), ("num_steps", num_steps), ("trials", trials)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"make_rollout: {name} must be a positive int, got {value!r}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"make_rollout: max_steps must be >= 1 or None, got {max_steps!r}")
    if mesh is not None:
        shards = int(np.prod([mesh.shape[a] for a in BATCH_AXES if a in mesh.axis_names]))
        if num_envs % shards:
            raise ValueError(f"make_rollout: num_envs={num_envs} rows cannot be split over "
                             f"the mesh's batch axes ({shards} shards)")
    n, t_max = int(num_envs), int(trials)
    pin = _rows_sharding(mesh)
    v_step = jax.vmap(env_step)

    def v_reset(seeds: jax.Array, tasks: Any) -> tuple[Any, jax.Array]:
        """Every row's reset with its seed (and its task, where the rows have tasks)."""
        if tasks is None:
            return jax.vmap(env_reset)(seeds)
        return jax.vmap(env_reset)(seeds, tasks)

    def rows_where(cond, a, b):
        """``a`` in rows where ``cond [N]``, else ``b`` (any pytree of ``[N, ...]`` leaves)."""
        return jax.tree.map(
            lambda x, y: jnp.where(cond.reshape((n,) + (1,) * (x.ndim - 1)), x, y), a, b)

    def step(c: RolloutState) -> RolloutState:
        inp = StepInput(c.obs, c.prev_reward, c.new_episode, c.ep_len, c.active)
        action, policy_state = policy_step(c.policy_state, inp)
        env_state, obs, reward, term, trunc = v_step(c.env_state, action)
        act = c.active
        reward = jnp.where(act, jnp.asarray(reward, jnp.float32), 0.0)
        term, trunc = act & jnp.asarray(term, bool), act & jnp.asarray(trunc, bool)
        ep_len = c.ep_len + act.astype(jnp.int32)
        ep_ret = c.ep_ret + reward
        if max_steps is not None:  # the evaluator's cut, as in run_seed
            trunc = trunc | (act & (ep_len >= max_steps) & ~term & ~trunc)
        ended = term | trunc
        # Record the ended episodes at their trial, and the unfinished ones' lengths so far.
        at = jax.nn.one_hot(c.trial, t_max, dtype=bool) & act[:, None]
        done_at = at & ended[:, None]
        o = c.out
        out = RolloutOutput(
            returns=jnp.where(done_at, ep_ret[:, None], o.returns),
            lengths=jnp.where(at, ep_len[:, None], o.lengths),
            terminated=jnp.where(done_at, term[:, None], o.terminated),
            truncated=jnp.where(done_at, trunc[:, None], o.truncated),
            finished=o.finished | done_at,
            env_steps=o.env_steps + act.sum(dtype=jnp.int32),
        )
        trial = c.trial + ended.astype(jnp.int32)
        more = ended & (trial < t_max)  # starts its next trial on this step
        nxt = jnp.minimum(trial, t_max - 1)[:, None]
        seeds = jnp.take_along_axis(c.episode_seeds, nxt, 1)[:, 0]
        reset_state, reset_obs = v_reset(seeds, c.tasks)
        env_state = rows_where(more, reset_state, rows_where(act, env_state, c.env_state))
        obs = rows_where(more, reset_obs, rows_where(act, obs, c.obs))
        carry = RolloutState(
            episode_seeds=c.episode_seeds,
            env_state=pin(env_state),
            obs=pin(obs),
            trial=trial,
            ep_len=jnp.where(ended, 0, ep_len),
            ep_ret=jnp.where(ended, 0.0, ep_ret),
            prev_reward=jnp.where(act, reward, c.prev_reward),
            new_episode=jnp.where(act, more, c.new_episode),
            active=act & ~(ended & ~more),
            out=out,
            policy_state=policy_state,
            tasks=c.tasks,
        )
        return carry

    def start(episode_seeds: jax.Array, policy_seeds: jax.Array,
              row_tasks: Any = None) -> RolloutState:
        seeds_nt = pin(jnp.asarray(episode_seeds, jnp.int32))
        if seeds_nt.shape != (n, t_max):
            raise ValueError(f"make_rollout: episode_seeds has shape {seeds_nt.shape}, "
                             f"expected [num_envs, trials] = {(n, t_max)}")
        if row_tasks is not None:
            for path, leaf in jax.tree_util.tree_leaves_with_path(row_tasks):
                if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != n:
                    raise ValueError(
                        f"make_rollout: row_tasks{jax.tree_util.keystr(path)} has shape "
                        f"{jnp.shape(leaf)}, expected one task per row: [num_envs={n}, ...]")
            row_tasks = pin(jax.tree.map(jnp.asarray, row_tasks))
        env_state, obs = v_reset(seeds_nt[:, 0], row_tasks)
        zeros = jnp.zeros((n, t_max))
        return RolloutState(
            episode_seeds=seeds_nt,
            env_state=pin(env_state),
            obs=pin(obs),
            trial=pin(jnp.zeros(n, jnp.int32)),
            ep_len=pin(jnp.zeros(n, jnp.int32)),
            ep_ret=pin(jnp.zeros(n, jnp.float32)),
            prev_reward=pin(jnp.zeros(n, jnp.float32)),
            new_episode=pin(jnp.ones(n, bool)),
            active=pin(jnp.ones(n, bool)),
            out=RolloutOutput(
                returns=pin(zeros.astype(jnp.float32)),
                lengths=pin(zeros.astype(jnp.int32)),
                terminated=pin(zeros.astype(bool)),
                truncated=pin(zeros.astype(bool)),
                finished=pin(zeros.astype(bool)),
                env_steps=jnp.zeros((), jnp.int32),
            ),
            policy_state=policy_init(jnp.asarray(policy_seeds, jnp.int32)),
            tasks=row_tasks,
        )

    def advance(carry: RolloutState) -> RolloutState:
        carry, _ = jax.lax.scan(lambda c, _: (step(c), None), carry, None,
                                length=int(num_steps))
        return carry

    return start, advance




def rollout_seeds(seed: int, num_envs: int, trials: int) -> tuple[np.ndarray, np.ndarray]:
    """``(episode_seeds [N, trials], policy_seeds [N])`` int32 of evaluation seed ``seed``:
    the seeds :func:`~rl_ring.eval.rollout.run_seed` gives the same rows."""
    ep = np.array([[episode_seed(seed, i, k) for k in range(trials)] for i in range(num_envs)],
                  np.int32)
    pol = np.array([policy_seed(seed, i) for i in range(num_envs)], np.int32)
    return ep, pol


def jax_rollout(
    env_reset: EnvReset,
    env_step: EnvStep,
    policy_init: Callable[[jax.Array], Any],
    policy_step: Callable[[Any, StepInput], tuple[jax.Array, Any]],
    *,
    num_envs: int,
    num_steps: int,
    seed: int,
    trials: int,
    max_steps: int | None = None,
    mesh=None,
    tasks: Sequence[Any] | None = None,
    row_tasks: Any = None,
) -> SeedResult:
    """Plays one evaluation seed with the JAX-native loop; returns the evaluator's record.

    Compiles :func:`make_rollout` (once per shape and function identity: keep one compiled
    function from :func:`make_rollout` to time repeated runs), runs it with the seeds of
    :func:`rollout_seeds` and converts the output with :func:`seed_result`. Arguments as
    :func:`make_rollout`; ``seed`` is the evaluation seed (as ``run_seed``'s), ``row_tasks``
    each row's task for ``env_reset(seed, task)`` (a pytree of ``[N, ...]`` arrays; None:
    ``env_reset(seed)``) and ``tasks`` the rows' task labels, copied into the episode records.
    """
    run = make_rollout(env_reset, env_step, policy_init, policy_step, num_envs=num_envs,
                       num_steps=num_steps, trials=trials, max_steps=max_steps, mesh=mesh)
    ep_seeds, pol_seeds = rollout_seeds(seed, num_envs, trials)
    t0 = time.perf_counter()
    out, _ = run(ep_seeds, pol_seeds, row_tasks)
    out = jax.block_until_ready(out)
    wall = time.perf_counter() - t0
    return seed_result(out, seed=seed, episode_seeds=ep_seeds, wall_s=wall, tasks=tasks)


def seed_result(
    out: RolloutOutput,
    *,
    seed: int,
    episode_seeds: np.ndarray,
    wall_s: float = 0.0,
    tasks: Sequence[Any] | None = None,
) -> SeedResult:
    """The evaluator's :class:`~rl_ring.eval.rollout.SeedResult` of a rollout's arrays.

    Finished episodes are ``"ok"``; an episode the scan did not finish (``num_steps`` too
    small) and the trials after it are ``"not_run"``, with the steps taken so far as their
    length, so :func:`rl_ring.eval.report.build_report` leaves those rows out of the
    statistics. The whole run's time is ``wall_s`` (the policy/env split is not observable
    inside one compiled loop: ``policy_s`` and ``env_s`` stay 0).
    """
    host = jax.tree.map(np.asarray, out)
    n, t_max = host.returns.shape
    if np.shape(episode_seeds) != (n, t_max):
        raise ValueError(f"seed_result: episode_seeds has shape {np.shape(episode_seeds)}, "
                         f"expected [num_envs, trials] = {(n, t_max)}")
    if tasks is not None and len(tasks) != n:
        raise ValueError(f"seed_result: {len(tasks)} tasks for {n} rows")
    res = SeedResult(seed=int(seed), env_steps=int(host.env_steps), wall_s=float(wall_s))
    for i in range(n):
        for k in range(t_max):
            rec = EpisodeRecord(int(seed), i, k, int(episode_seeds[i, k]),
                                task=None if tasks is None else tasks[i])
            rec.length = int(host.lengths[i, k])
            if host.finished[i, k]:
                rec.episode_return = float(host.returns[i, k])
                rec.terminated = bool(host.terminated[i, k])
                rec.truncated = bool(host.truncated[i, k])
            else:
                rec.status = NOT_RUN
            res.episodes.append(rec)
    return res
