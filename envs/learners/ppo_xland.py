"""PPO in JAX on single XLand-MiniGrid rulesets, recording every step as a learning history.

The method the XLand-100B histories were made with: proximal policy optimisation with
vectorised environments, the whole run jitted (``lax.scan`` over updates, ``vmap`` over
environments, and ``vmap`` over runs, one ruleset each). Every env step of the run is
recorded with the shortest-path expert's action (:func:`envs.xland_expert.expert_action`) in
the same state, so the histories serve AD (actions) and DPT (expert actions) alike.

* **History layout.** A run of ``num_envs`` environments for ``S`` steps gives ``num_envs``
  histories of ``S`` steps: history ``h`` is environment ``h``'s consecutive episodes
  (automatic resets) while the policy learns, ``[H, S]`` as in the XLand-100B groups.
  ``states`` are the 5x5 views before the action (``tile * NUM_COLORS + colour``, uint8);
  ``rewards`` / ``dones`` are what the action led to.
* **Network.** Separate actor and critic MLPs (tanh, ``hidden`` wide, two layers) over the
  view as per-cell one-hot tile (13) and colour (12), 625 features (the
  ``rl_ring.data.xland`` "onehot" encoding); orthogonal initialisation as in PureJaxRL.
  The policy is memoryless (the published runs use a GRU over the partially observed
  room; on the small rooms here a reactive policy learns).
* **Update.** ``rollout_steps`` steps of every env, GAE(``gamma``, ``gae_lambda``) with
  episode cuts at every ``done``; a time-limit truncation bootstraps from the value of the
  last observation before the reset (a termination does not); then ``epochs`` passes over
  ``minibatches`` shuffled minibatches of the clipped surrogate, value loss and entropy
  bonus (advantages normalised per minibatch), Adam with global-norm clipping and a
  learning rate annealed linearly to 0 over the run.
* **Seeding.** Run ``i`` (of a batch collected with ``first_index``) uses key
  ``fold_in(key(seed), first_index + i)``: a run does not depend on the others in its batch.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from envs import xland
from envs.xland_planner import expert_action
from rl_ring.data import EpisodeStore

NUM_TILES, NUM_COLORS = 13, 12  # xminigrid.core.constants (checked in the tests)


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of PPO on one XLand ruleset."""

    num_envs: int = 16
    """Parallel environments of a run; each one is a recorded history."""
    rollout_steps: int = 32
    """Env steps of every env between updates (the history length is a multiple of it)."""
    epochs: int = 4
    """Passes over a rollout per update."""
    minibatches: int = 4
    """Minibatches per pass (num_envs * rollout_steps transitions split evenly)."""
    lr: float = 1e-3
    """Adam learning rate at the start (annealed linearly to 0 over the run)."""
    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_eps: float = 0.2
    """Clipping range of the probability ratio."""
    ent_coef: float = 0.01
    """Weight of the entropy bonus."""
    vf_coef: float = 0.5
    """Weight of the value loss."""
    max_grad_norm: float = 0.5
    """Global gradient-norm clip."""
    hidden: int = 64
    """Width of the two hidden layers of actor and critic."""

    def __post_init__(self) -> None:
        for name in ("num_envs", "rollout_steps", "epochs", "minibatches", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PPOConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if (self.num_envs * self.rollout_steps) % self.minibatches:
            raise ValueError(
                f"PPOConfig: num_envs * rollout_steps = {self.num_envs * self.rollout_steps} "
                f"transitions do not split into {self.minibatches} equal minibatches")
        if not (0 < self.gamma <= 1 and 0 <= self.gae_lambda <= 1 and self.clip_eps > 0
                and self.lr > 0):
            raise ValueError(f"PPOConfig: need 0 < gamma <= 1, 0 <= gae_lambda <= 1, "
                             f"clip_eps > 0, lr > 0; got {self}")

    def updates_for(self, steps: int) -> int:
        """Updates of a ``steps``-step history (``steps`` must be a multiple of the rollout)."""
        if steps < 1 or steps % self.rollout_steps:
            raise ValueError(f"PPO: history steps {steps} must be a positive multiple of "
                             f"rollout_steps {self.rollout_steps}")
        return steps // self.rollout_steps


# ---------------------------------------------------------------------- network
def encode_view(observation: jax.Array) -> jax.Array:
    """``[..., 5, 5, 2]`` (tile, colour) -> float32 ``[..., 625]``: per cell one-hot tile
    then one-hot colour, cells row-major (``rl_ring.data.xland.encode_states``'s "onehot")."""
    tile = jax.nn.one_hot(observation[..., 0], NUM_TILES)
    colour = jax.nn.one_hot(observation[..., 1], NUM_COLORS)
    x = jnp.concatenate([tile, colour], axis=-1)
    return x.reshape(*observation.shape[:-3], -1)


def _dense(key, n_in: int, n_out: int, scale: float) -> dict:
    w = jax.nn.initializers.orthogonal(scale)(key, (n_in, n_out), jnp.float32)
    return {"w": w, "b": jnp.zeros((n_out,), jnp.float32)}


def init_params(key: jax.Array, hidden: int) -> dict:
    """Actor and critic MLPs ``625 -> hidden -> hidden -> {6 logits, 1 value}``."""
    n_in = xland.VIEW_SIZE ** 2 * (NUM_TILES + NUM_COLORS)
    ks = jax.random.split(key, 6)
    sq2 = float(np.sqrt(2.0))

    def mlp(k1, k2, k3, n_out, scale_out):
        return [_dense(k1, n_in, hidden, sq2), _dense(k2, hidden, hidden, sq2),
                _dense(k3, hidden, n_out, scale_out)]

    return {"actor": mlp(*ks[:3], xland.NUM_ACTIONS, 0.01), "critic": mlp(*ks[3:], 1, 1.0)}


def _mlp(layers: list, x: jax.Array) -> jax.Array:
    for layer in layers[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ layers[-1]["w"] + layers[-1]["b"]


def apply(params: dict, observation: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(logits [..., 6], value [...])`` of xminigrid observations ``[..., 5, 5, 2]``."""
    x = encode_view(observation)
    return _mlp(params["actor"], x), _mlp(params["critic"], x)[..., 0]


# ---------------------------------------------------------------------- losses
def gae(rewards, values, dones, last_value, gamma: float, lam: float):
    """``(advantages, returns)`` ``[T, ...]`` by GAE; ``dones[t]`` cuts after step ``t``."""

    def body(carry, x):
        adv, next_value = carry
        r, v, d = x
        nonterminal = 1.0 - d
        delta = r + gamma * next_value * nonterminal - v
        adv = delta + gamma * lam * nonterminal * adv
        return (adv, v), adv

    _, adv = jax.lax.scan(body, (jnp.zeros_like(last_value), last_value),
                          (rewards, values, dones.astype(jnp.float32)), reverse=True)
    return adv, adv + values


def ppo_loss(params, batch, cfg: PPOConfig):
    """Clipped surrogate + ``vf_coef`` * value loss - ``ent_coef`` * entropy on a minibatch
    (``obs``, ``action``, ``logp``, ``adv``, ``ret``); returns ``(loss, metrics)``."""
    logits, value = apply(params, batch["obs"])
    logp_all = jax.nn.log_softmax(logits)
    logp = jnp.take_along_axis(logp_all, batch["action"][:, None], axis=-1)[:, 0]
    ratio = jnp.exp(logp - batch["logp"])
    adv = (batch["adv"] - batch["adv"].mean()) / (batch["adv"].std() + 1e-8)
    surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - cfg.clip_eps, 1 + cfg.clip_eps) * adv)
    actor_loss = -surrogate.mean()
    value_loss = 0.5 * jnp.square(value - batch["ret"]).mean()
    entropy = -(jnp.exp(logp_all) * logp_all).sum(-1).mean()
    loss = actor_loss + cfg.vf_coef * value_loss - cfg.ent_coef * entropy
    return loss, {"actor_loss": actor_loss, "value_loss": value_loss, "entropy": entropy}


# ---------------------------------------------------------------------- the jitted run
class RunState(NamedTuple):
    params: dict
    opt_state: optax.OptState
    timestep: object  # xminigrid TimeStep, batched over envs
    key: jax.Array
    update: jax.Array  # int32: updates done (the learning-rate schedule's clock)


@functools.lru_cache(maxsize=8)
def _run_fns(env_id: str, benchmark, cfg: PPOConfig, chunk: int, env_kwargs: tuple):
    """``(init(keys [R], rids [R]) -> RunState,
    run(state, rids, total_updates) -> (state, records, metrics))``, jitted and vmapped over
    runs; ``run`` does ``chunk`` updates. The run's length only sets the learning-rate
    schedule and is traced, so runs of any length share one compilation per ``chunk``."""
    reset_fn, step_fn = xland.xland_functional(env_id, benchmark, **dict(env_kwargs))
    # Adam without its step size: the annealed rate is applied by hand (traced total).
    opt = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.scale_by_adam(eps=1e-5))
    n = cfg.num_envs
    mb = n * cfg.rollout_steps // cfg.minibatches

    def env_step(ts, action, key, rid):
        """Steps one env; resets it when the step ended the episode."""
        nxt = step_fn(ts, action)
        done = nxt.last()
        fresh = reset_fn(key, rid)
        new = jax.tree_util.tree_map(lambda r, x: jnp.where(done, r, x), fresh, nxt)
        return new, nxt

    def init(key, rid):
        k_par, k_env, key = jax.random.split(key, 3)
        params = init_params(k_par, cfg.hidden)
        ts = jax.vmap(reset_fn, in_axes=(0, None))(jax.random.split(k_env, n), rid)
        return RunState(params, opt.init(params), ts, key, jnp.zeros((), jnp.int32))

    def rollout_step(carry, _):
        params, ts, key, rid = carry
        key, k_act, k_reset = jax.random.split(key, 3)
        logits, value = apply(params, ts.observation)
        action = jax.random.categorical(k_act, logits).astype(jnp.int32)
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), action[:, None], axis=-1)[:, 0]
        a_exp = jax.vmap(expert_action)(ts)
        new, nxt = jax.vmap(env_step, in_axes=(0, 0, 0, None))(
            ts, action, jax.random.split(k_reset, n), rid)
        done = nxt.last()
        term = done & (nxt.discount == 0)
        trunc = done & ~term
        # A truncated episode still had a future: bootstrap from its last observation.
        _, v_last = apply(params, nxt.observation)
        reward = nxt.reward + cfg.gamma * jnp.where(trunc, v_last, 0.0)
        train = {"obs": ts.observation, "action": action, "logp": logp, "value": value,
                 "reward": reward, "done": done}
        record = {"states": xland.compressed_view(ts.observation), "actions": action,
                  "rewards": nxt.reward, "terminals": term, "truncations": trunc,
                  "expert_actions": a_exp}
        return (params, new, key, rid), (train, record)

    def update(state: RunState, rid, total):
        params, opt_state, ts, key, n_done = state
        lr = cfg.lr * (1.0 - n_done.astype(jnp.float32) / total.astype(jnp.float32))
        (_, ts, key, _), (tr, record) = jax.lax.scan(
            rollout_step, (params, ts, key, rid), None, cfg.rollout_steps)
        _, last_value = apply(params, ts.observation)
        adv, ret = gae(tr["reward"], tr["value"], tr["done"], last_value, cfg.gamma,
                       cfg.gae_lambda)
        flat = {k: v.reshape(n * cfg.rollout_steps, *v.shape[2:]) for k, v in
                {"obs": tr["obs"], "action": tr["action"], "logp": tr["logp"], "adv": adv,
                 "ret": ret}.items()}

        def epoch(carry, _):
            params, opt_state, key = carry
            key, k_perm = jax.random.split(key)
            perm = jax.random.permutation(k_perm, n * cfg.rollout_steps)
            batches = jax.tree_util.tree_map(
                lambda x: x[perm].reshape(cfg.minibatches, mb, *x.shape[1:]), flat)

            def minibatch(carry, batch):
                params, opt_state = carry
                grads, metrics = jax.grad(ppo_loss, has_aux=True)(params, batch, cfg)
                updates, opt_state = opt.update(grads, opt_state, params)
                updates = jax.tree_util.tree_map(lambda u: -lr * u, updates)
                return (optax.apply_updates(params, updates), opt_state), metrics

            (params, opt_state), metrics = jax.lax.scan(minibatch, (params, opt_state),
                                                        batches)
            return (params, opt_state, key), metrics

        (params, opt_state, key), metrics = jax.lax.scan(
            epoch, (params, opt_state, key), None, cfg.epochs)
        metrics = jax.tree_util.tree_map(jnp.mean, metrics)
        return RunState(params, opt_state, ts, key, n_done + 1), (record, metrics)

    def run(state, rid, total):
        state, (record, metrics) = jax.lax.scan(lambda s, _: update(s, rid, total), state,
                                                None, chunk)
        # [chunk, T, N, ...] -> [N, chunk * T, ...]: one row per env, steps in order.
        record = jax.tree_util.tree_map(
            lambda x: jnp.moveaxis(x.reshape(chunk * cfg.rollout_steps, *x.shape[2:]), 1, 0),
            record)
        return state, record, metrics

    return jax.jit(jax.vmap(init)), jax.jit(jax.vmap(run, in_axes=(0, 0, None)))


def ppo_histories(
    env_id: str,
    ruleset_ids,
    *,
    steps: int,
    config: PPOConfig = PPOConfig(),
    seed: int = 0,
    benchmark=None,
    first_index: int = 0,
    chunk_steps: int | None = None,
    progress=None,
    **env_kwargs,
) -> dict[str, np.ndarray]:
    """One PPO run of ``steps`` env steps per env for each entry of ``ruleset_ids`` (vmapped).

    Args:
        env_id: ``xland:<xminigrid id>[:<benchmark>]`` (MiniGrid ids ignore the ruleset).
        ruleset_ids: ``[R]`` ruleset indices, one run each.
        steps: steps of every history, a multiple of ``config.rollout_steps``.
        chunk_steps: steps per jitted call (default: all), bounding the records the device
            holds at once; a multiple of ``config.rollout_steps``. The result does not depend
            on it.
        progress: called after each chunk with the env steps it did (all runs and envs).
        **env_kwargs: xminigrid params (``height``, ``width``, ``max_steps``, ...).

    Returns:
        numpy arrays, leading axes ``[R, num_envs, steps]``: ``states`` uint8 ``[..., 5, 5]``
        (before the action), ``actions`` int32, ``rewards`` float32, ``terminals`` /
        ``truncations`` bool (how the step ended its episode), ``dones`` (either),
        ``expert_actions`` int32; and ``metrics``: ``actor_loss`` / ``value_loss`` /
        ``entropy`` float32 ``[R, updates]``.
    """
    updates = config.updates_for(int(steps))
    chunk_updates = updates if chunk_steps is None else config.updates_for(int(chunk_steps))
    ids = jnp.asarray(np.asarray(ruleset_ids, np.int32).reshape(-1))
    if len(ids) == 0:
        raise ValueError("PPO: got no rulesets")
    kw = tuple(sorted(env_kwargs.items()))
    build = _run_fns if benchmark is None or isinstance(benchmark, str) else _run_fns.__wrapped__
    index = jnp.arange(len(ids)) + int(first_index)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(index)
    parts, metrics, done = [], [], 0
    state = None
    while done < updates:
        c = min(chunk_updates, updates - done)
        init, run = build(env_id, benchmark, config, c, kw)
        if state is None:
            state = init(keys, ids)
        state, record, m = run(state, ids, jnp.int32(updates))
        parts.append(jax.tree_util.tree_map(np.asarray, record))
        metrics.append(jax.tree_util.tree_map(np.asarray, m))
        done += c
        if progress is not None:
            progress(c * config.rollout_steps * config.num_envs * len(ids))
    out = {k: np.concatenate([p[k] for p in parts], axis=2) for k in parts[0]}
    out["states"] = out["states"].astype(np.uint8)
    out["actions"] = out["actions"].astype(np.int32)
    out["expert_actions"] = out["expert_actions"].astype(np.int32)
    out["rewards"] = out["rewards"].astype(np.float32)
    out["dones"] = out["terminals"] | out["truncations"]
    out["metrics"] = {k: np.concatenate([m[k] for m in metrics], axis=1) for k in metrics[0]}
    return out


# ---------------------------------------------------------------------- curves, groups, stores
def episode_returns(rewards: np.ndarray, dones: np.ndarray) -> list[np.ndarray]:
    """Per history (rows of ``[H, S]``), the returns of its complete episodes, in order."""
    rewards, dones = np.asarray(rewards, np.float64), np.asarray(dones, bool)
    out = []
    for r, d in zip(rewards, dones, strict=True):
        ends = np.flatnonzero(d)
        csum = np.concatenate([[0.0], np.cumsum(r)])
        starts = np.concatenate([[0], ends[:-1] + 1])
        out.append(csum[ends + 1] - csum[starts])
    return out


def learning_margin(rewards: np.ndarray, dones: np.ndarray, fraction: float = 0.2
                    ) -> tuple[float, float]:
    """``(first, last)``: mean return of the first and last ``fraction`` of each history's
    complete episodes, averaged over histories (``[H, S]`` arrays)."""
    firsts, lasts = [], []
    for ret in episode_returns(rewards, dones):
        if len(ret) == 0:
            raise ValueError("learning_margin: a history has no complete episode")
        k = max(1, int(round(fraction * len(ret))))
        firsts.append(ret[:k].mean())
        lasts.append(ret[-k:].mean())
    return float(np.mean(firsts)), float(np.mean(lasts))


def _bench_id(env_id: str) -> tuple[str, str]:
    xid, spec = xland.parse_id(env_id if env_id.startswith("xland:") else f"xland:{env_id}")
    bench_id = spec or xid
    if spec and spec.startswith("file="):
        bench_id = Path(spec[len("file="):]).name
    return xid, bench_id


def _runs(env_id: str, rulesets, *, steps: int, runs_per_ruleset: int, config: PPOConfig,
          seed: int, batch: int, chunk_steps: int | None, progress):
    """Yields ``(ruleset, histories)`` per ruleset: :func:`ppo_histories`' arrays of its
    ``runs_per_ruleset`` runs, ``[runs * num_envs, steps, ...]``."""
    rulesets = [int(r) for r in rulesets]
    if not rulesets or runs_per_ruleset < 1:
        raise ValueError("PPO: need at least one ruleset and one run per ruleset")
    ids = np.repeat(np.asarray(rulesets), runs_per_ruleset)
    # whole rulesets per batch; a single batch is not padded (same shapes, same compilation)
    batch = min(len(ids), max(runs_per_ruleset, batch - batch % runs_per_ruleset))
    for lo in range(0, len(ids), batch):
        chunk = ids[lo:lo + batch]
        padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk))])
        frac = len(chunk) / len(padded)  # the padding runs are not counted
        real = None if progress is None else (lambda n, f=frac: progress(int(round(n * f))))
        out = ppo_histories(env_id, padded, steps=steps, config=config, seed=seed,
                            first_index=lo, chunk_steps=chunk_steps, progress=real)
        for j in range(0, len(chunk), runs_per_ruleset):
            yield int(chunk[j]), {k: v[j:j + runs_per_ruleset].reshape(-1, *v.shape[2:])
                                  for k, v in out.items() if k != "metrics"}


def ppo_groups(env_id: str, rulesets, *, steps: int, runs_per_ruleset: int = 1,
               config: PPOConfig = PPOConfig(), seed: int = 0, batch: int = 8,
               chunk_steps: int | None = None, progress=None):
    """Yields one :class:`~rl_ring.data.xland.XLandGroup` per ruleset (``runs_per_ruleset *
    num_envs`` histories of ``steps`` steps), running ``batch`` runs at a time; run ``i``
    (ruleset ``rulesets[i // runs_per_ruleset]``) is seeded by ``(seed, i)``. Stream it into
    :func:`~rl_ring.data.xland.write_xland` to write a file without holding it all."""
    from rl_ring.data.xland import XLandGroup

    xid, bench_id = _bench_id(env_id)
    for rid, h in _runs(env_id, rulesets, steps=steps, runs_per_ruleset=runs_per_ruleset,
                        config=config, seed=seed, batch=batch, chunk_steps=chunk_steps,
                        progress=progress):
        yield XLandGroup(benchmark_id=bench_id, env_id=xid, ruleset_id=rid,
                         states=h["states"], actions=h["actions"], rewards=h["rewards"],
                         dones=h["dones"], expert_actions=h["expert_actions"])


def collect_ppo(env_id: str, rulesets, *, steps: int, runs_per_ruleset: int = 1,
                config: PPOConfig = PPOConfig(), seed: int = 0, batch: int = 8,
                progress=None) -> EpisodeStore:
    """PPO learning histories as an :class:`EpisodeStore` (what ``rl-ring collect --policy
    ppo`` writes in every format; ``--format xland`` turns it back into groups with
    :func:`envs.xland_expert.store_to_groups`).

    Per step: observations (float32, the adapter's flat view), actions, rewards,
    terminals, timeouts and ``optimal_actions`` (the expert's); per episode ``history_id``,
    ``task_id`` (the ruleset), ``episode_in_history``. A history's last episode may be cut
    (neither terminal nor timeout). Metadata ``history_steps`` and ``ppo`` (the config).
    """
    from envs.registry import make, space_dict

    rulesets = [int(r) for r in rulesets]
    env = make(env_id)
    valid = env.unwrapped.task_ids()
    meta = {"env_id": env_id, "policy": "ppo", "seed": seed, "history_steps": int(steps),
            "runs_per_ruleset": runs_per_ruleset, "ppo": asdict(config),
            "action_space": space_dict(env.action_space),
            "observation_space": space_dict(env.observation_space),
            "observation_layout": {"view_tile_colour": [0, len(env.observation_space.low)]}}
    env.close()
    bad = sorted(set(rulesets) - set(valid))
    if bad:
        raise ValueError(f"--rulesets: {bad[:5]} out of range; {env_id} has rulesets "
                         f"0..{len(valid) - 1}")
    parts, tasks = [], []
    for rid, h in _runs(env_id, rulesets, steps=steps, runs_per_ruleset=runs_per_ruleset,
                        config=config, seed=seed, batch=batch, chunk_steps=None,
                        progress=progress):
        parts.append(h)
        tasks.extend([rid] * len(h["actions"]))
    arr = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    h, s = arr["actions"].shape
    dones = arr["dones"].reshape(-1)
    terminals = arr["terminals"].reshape(-1)
    ends = dones.copy()
    ends[s - 1::s] = True  # a history's last step closes its (maybe cut) episode
    starts = np.concatenate([[0], np.flatnonzero(ends) + 1]).astype(np.int64)
    ep_history = starts[:-1] // s
    first_ep = np.searchsorted(starts[:-1], np.arange(h) * s)
    views = arr["states"].reshape(-1, xland.VIEW_SIZE, xland.VIEW_SIZE)
    tile, colour = np.divmod(views, NUM_COLORS)
    obs = np.stack([tile, colour], -1).reshape(len(views), -1).astype(np.float32)
    return EpisodeStore(
        observations=obs, actions=arr["actions"].reshape(-1).astype(np.int64),
        rewards=arr["rewards"].reshape(-1), terminals=terminals, timeouts=dones & ~terminals,
        episode_starts=starts,
        extras={"optimal_actions": arr["expert_actions"].reshape(-1).astype(np.int64)},
        episode_extras={"history_id": ep_history.astype(np.int64),
                        "task_id": np.asarray(tasks, np.int64)[ep_history],
                        "episode_in_history": np.arange(len(ep_history)) - first_ep[ep_history]},
        metadata=meta)
