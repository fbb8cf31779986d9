"""An XLand-MiniGrid expert (shortest paths on the known grid) and the noisy-expert source.

:func:`expert_action` ``(timestep) -> int32`` (in :mod:`envs.xland_planner`) is pure JAX
(jit / vmap it). It reads the full state (grid, agent, pocket, goal, rules), picks a
*target*: a set of agent states ``(y, x, direction)`` and the action that finishes from
them, and walks a shortest path there (breadth-first distances over the three moves
forward / turn right / turn left, computed by
relaxation on the static grid):

* ``AgentHoldGoal(t)``: face a ``t`` and pick it up (holding ``t`` already: pick up);
* ``AgentNearGoal(t)``: the forward step after which a ``t`` is a neighbour;
* ``AgentOnTileGoal(t)`` (MiniGrid's Empty rooms): the forward step onto a ``t``;
* ``TileNearGoal(a, b)``: pick up ``a`` or ``b`` (the nearer), then put it down on a floor cell
  next to the other;
* holding something the goal does not need: put it down first.
* A goal object that is not on the grid, made by a rule (the "small" benchmarks):
  ``AgentHoldRule(x -> t)``: treat as pick up ``x``; ``AgentNearRule(x -> t)``: as stand
  next to ``x``.

On the trivial goals of an open room the paths are shortest (the tests check them against a
breadth-first search over xminigrid's own step); with other goals or unreachable targets the
expert turns right (action 1).

Noisy expert (noise distillation): :func:`noisy_expert_histories` runs ``S``-step histories
with automatic resets, vmapped and jitted; an episode that starts at step ``t`` of its history
acts at random (uniform over the 6 actions) with probability ``eps(t / S)``, falling linearly
from ``start`` to ``end`` over the first ``decay_fraction`` of the history, and records the
expert's action beside every step.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from envs import xland
from envs.xland_planner import distances, expert_action  # noqa: F401 - the expert's home
from rl_ring.data import EpisodeStore


# ---------------------------------------------------------------------- noisy expert
@dataclass(frozen=True)
class NoisyExpertSchedule:
    """Random-action probability of an episode starting at fraction ``f`` of its history."""

    start: float = 1.0
    """Probability at the start of a history."""
    end: float = 0.0
    """Probability once the decay is over."""
    decay_fraction: float = 0.9
    """Fraction of the history's steps over which it falls linearly."""

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"NoisyExpertSchedule.{name}={getattr(self, name)!r}: "
                                 "expected a probability")
        if not 0.0 < self.decay_fraction <= 1.0:
            raise ValueError(f"NoisyExpertSchedule.decay_fraction={self.decay_fraction!r}: "
                             "expected in (0, 1]")

    def at(self, fraction):
        f = jnp.clip(fraction / self.decay_fraction, 0.0, 1.0)
        return self.start + (self.end - self.start) * f


@functools.lru_cache(maxsize=8)
def _history_fn(env_id: str, benchmark, steps: int, env_kwargs: tuple):
    """``jit(vmap(history))(keys [B], ruleset_ids [B], schedule [3])``, compiled once per
    (env, benchmark, steps, params); the schedule is traced, so changing it does not
    recompile."""
    reset_fn, step_fn = xland.xland_functional(env_id, benchmark, **dict(env_kwargs))

    def history(key, rid, sched):
        start, end, decay = sched[0], sched[1], sched[2]

        def eps_at(fraction):
            return start + (end - start) * jnp.clip(fraction / decay, 0.0, 1.0)

        key, k0 = jax.random.split(key)
        ts = reset_fn(k0, rid)

        def body(carry, t):
            ts, eps, key = carry
            key, k_noise, k_act, k_reset = jax.random.split(key, 4)
            a_exp = expert_action(ts)
            rand = jax.random.uniform(k_noise) < eps
            a = jnp.where(rand, jax.random.randint(k_act, (), 0, xland.NUM_ACTIONS), a_exp)
            nxt = step_fn(ts, a)
            done = nxt.last()
            term = done & (nxt.discount == 0)
            fresh = reset_fn(k_reset, rid)
            new = jax.tree_util.tree_map(lambda r, n: jnp.where(done, r, n), fresh, nxt)
            new_eps = jnp.where(done, eps_at((t + 1) / steps), eps)
            out = (ts.observation, a, nxt.reward, term, done & ~term, a_exp, eps)
            return (new, new_eps, key), out

        init = (ts, eps_at(jnp.float32(0.0)), key)
        _, out = jax.lax.scan(body, init, jnp.arange(steps))
        return out

    return jax.jit(jax.vmap(history, in_axes=(0, 0, None)))


def noisy_expert_histories(
    env_id: str,
    ruleset_ids,
    *,
    steps: int,
    seed: int = 0,
    schedule: NoisyExpertSchedule = NoisyExpertSchedule(),
    benchmark=None,
    first_index: int = 0,
    **env_kwargs,
) -> dict[str, np.ndarray]:
    """One ``steps``-step noisy-expert history per entry of ``ruleset_ids`` (vmapped, jitted).

    History ``i`` uses key ``fold_in(key(seed), first_index + i)``, so a history does not
    depend on the others in the batch (collect in chunks with ``first_index``).

    Returns:
        numpy arrays, leading axes ``[histories, steps]``: ``observations`` uint8
        ``[..., V, V, 2]`` (before the action), ``actions`` int32, ``rewards`` float32,
        ``terminals`` / ``truncations`` bool (how the step ended its episode), ``dones``
        (either), ``expert_actions`` int32, ``noise`` float32 (the episode's probability).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ids = jnp.asarray(np.asarray(ruleset_ids, np.int32).reshape(-1))
    kw = tuple(sorted(env_kwargs.items()))
    if benchmark is None or isinstance(benchmark, str):
        run = _history_fn(env_id, benchmark, int(steps), kw)
    else:  # a Benchmark object: not hashable, build (and compile) afresh
        run = _history_fn.__wrapped__(env_id, benchmark, int(steps), kw)
    sched = jnp.asarray([schedule.start, schedule.end, schedule.decay_fraction], jnp.float32)
    index = jnp.arange(len(ids)) + int(first_index)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(index)
    out = run(keys, ids, sched)
    obs, act, rew, term, trunc, a_exp, eps = (np.asarray(o) for o in out)
    return {
        "observations": obs.astype(np.uint8),
        "actions": act.astype(np.int32),
        "rewards": rew.astype(np.float32),
        "terminals": term,
        "truncations": trunc,
        "dones": term | trunc,
        "expert_actions": a_exp.astype(np.int32),
        "noise": eps.astype(np.float32),
    }


# ---------------------------------------------------------------------- stores and groups
def collect_noisy_expert(
    env_id: str,
    rulesets,
    *,
    histories_per_ruleset: int = 1,
    steps: int = 4096,
    seed: int = 0,
    schedule: NoisyExpertSchedule = NoisyExpertSchedule(),
    batch: int = 64,
    progress=None,
) -> EpisodeStore:
    """Noisy-expert histories as an :class:`EpisodeStore` (the normal formats).

    History ``h`` runs on ``rulesets[h // histories_per_ruleset]`` for exactly ``steps`` steps
    (its last episode may be cut: it then ends with neither terminal nor timeout). Per step:
    observations (float32, the adapter's flat view), actions, rewards, terminals, timeouts and
    the extra ``optimal_actions`` (the expert's action); per episode: ``history_id``,
    ``task_id`` (the ruleset), ``episode_in_history``, ``policy_noise``. Metadata
    ``history_steps`` lets :func:`store_to_groups` rebuild the XLand layout.
    """
    from envs.registry import make, space_dict

    rulesets = [int(r) for r in rulesets]
    if not rulesets or histories_per_ruleset < 1:
        raise ValueError("noisy-expert: need at least one ruleset and one history per ruleset")
    env = make(env_id)
    valid = env.unwrapped.task_ids()
    meta = {"env_id": env_id, "policy": "noisy-expert", "seed": seed,
            "action_space": space_dict(env.action_space),
            "observation_space": space_dict(env.observation_space),
            "history_steps": steps, "histories_per_ruleset": histories_per_ruleset,
            "noise": {"start": schedule.start, "end": schedule.end,
                      "decay_fraction": schedule.decay_fraction},
            "observation_layout": {"view_tile_colour": [0, len(env.observation_space.low)]}}
    env.close()
    bad = sorted(set(rulesets) - set(valid))
    if bad:
        raise ValueError(f"--rulesets: {bad[:5]} out of range; {env_id} has rulesets "
                         f"0..{len(valid) - 1}")
    ids = np.repeat(np.asarray(rulesets), histories_per_ruleset)
    batch = min(batch, len(ids))
    parts = []
    for lo in range(0, len(ids), batch):
        chunk = ids[lo:lo + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk))])
        out = noisy_expert_histories(env_id, padded, steps=steps, seed=seed,
                                     schedule=schedule, first_index=lo)
        parts.append({k: v[: len(chunk)] for k, v in out.items()})
        if progress is not None:
            progress(len(chunk))
    arr = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    episodes, extras = [], {k: [] for k in ("history_id", "task_id", "episode_in_history",
                                             "policy_noise")}
    for h in range(len(ids)):
        ends = np.flatnonzero(arr["dones"][h]) + 1
        bounds = [0, *ends.tolist()] + ([] if len(ends) and ends[-1] == steps else [steps])
        for e, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            episodes.append({
                "observations": xland.flat_observation(arr["observations"][h, a:b]),
                "actions": arr["actions"][h, a:b].astype(np.int64),
                "rewards": arr["rewards"][h, a:b],
                "terminals": arr["terminals"][h, a:b],
                "timeouts": arr["truncations"][h, a:b],
                "optimal_actions": arr["expert_actions"][h, a:b].astype(np.int64),
            })
            for key, value in (("history_id", h), ("task_id", int(ids[h])),
                               ("episode_in_history", e),
                               ("policy_noise", float(arr["noise"][h, a]))):
                extras[key].append(value)
    ep_extras = {k: np.asarray(v, np.int64) for k, v in extras.items() if k != "policy_noise"}
    ep_extras["policy_noise"] = np.asarray(extras["policy_noise"], np.float32)
    return EpisodeStore.from_episodes(episodes, episode_extras=ep_extras, metadata=meta)


def store_to_groups(store: EpisodeStore) -> list:
    """The XLand-layout groups (one per ruleset, ``[H, S]`` histories) of a noisy-expert store.

    Raises:
        ValueError: the store is not one :func:`collect_noisy_expert` made (no
            ``history_steps``, histories of other lengths, or not an ``xland:`` env).
    """
    from rl_ring.data.xland import XLandGroup

    meta = store.metadata
    env_id = str(meta.get("env_id", ""))
    steps = meta.get("history_steps")
    if not env_id.startswith("xland:") or steps is None or "history_id" not in store.episode_extras:
        raise ValueError("--format xland: needs XLand learning histories (rl-ring collect "
                         "xland:... --policy noisy-expert); this store has env "
                         f"{env_id!r} and history_steps {steps!r}")
    steps = int(steps)
    n = store.num_steps
    if n % steps:
        raise ValueError(f"--format xland: {n} steps are not whole histories of {steps} steps")
    h = n // steps
    xid, spec = xland.parse_id(env_id)
    bench_id = spec or xid
    if spec and spec.startswith("file="):
        bench_id = Path(spec[len("file="):]).name
    obs = np.asarray(store.observations).reshape(h, steps, xland.VIEW_SIZE, xland.VIEW_SIZE, 2)
    states = xland.compressed_view(obs.astype(np.uint8))
    flat = {
        "actions": np.asarray(store.actions).reshape(h, steps),
        "rewards": np.asarray(store.rewards).reshape(h, steps),
        "dones": (np.asarray(store.terminals) | np.asarray(store.timeouts)).reshape(h, steps),
        "expert_actions": np.asarray(store.extras["optimal_actions"]).reshape(h, steps),
    }
    task_of_step = np.repeat(np.asarray(store.episode_extras["task_id"]),
                             np.diff(np.asarray(store.episode_starts)))
    task_of_history = task_of_step[::steps]
    groups = []
    for rid in dict.fromkeys(task_of_history.tolist()):
        sel = task_of_history == rid
        groups.append(XLandGroup(
            benchmark_id=bench_id, env_id=xid, ruleset_id=int(rid), states=states[sel],
            **{k: v[sel] for k, v in flat.items()}))
    return groups
