"""Soft actor-critic in JAX: pure functions over parameter pytrees, one jitted update.

The actor is a tanh-squashed Gaussian MLP scaled to the action bounds; the critic is a pair
of Q MLPs (stacked on a leading axis of size 2 and evaluated with ``vmap``) with Polyak-
averaged targets; the temperature is learned towards a target entropy of ``-act_dim``.

Losses (``B`` transitions, ``a' ~ pi(.|s')`` with log-probability ``logp'``):

    y            = r + gamma * (1 - terminal) * (min_i Qtarg_i(s', a') - alpha * logp')
    critic_loss  = mean_i mean_B 0.5 * (Q_i(s, a) - y)^2          (y without gradient)
    actor_loss   = mean_B alpha * logp(a~|s) - min_i Q_i(s, a~)   (a~ ~ pi(.|s), reparametrised)
    alpha_loss   = -mean_B log_alpha * (logp(a~|s) + target_entropy)

A time-limit truncation is not a terminal: its target bootstraps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from envs.recording import episode_seed, run_episode
from envs.registry import make, space_dict
from rl_ring.data import EpisodeStore

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0


@dataclass(frozen=True)
class SACConfig:
    """Hyperparameters of soft actor-critic."""

    hidden: int = 128
    """Width of every hidden layer (actor and critics); 128 rather than the usual 256 keeps an
    update at ~2 ms on two CPU cores (256: ~10 ms) and still learns cartpole swing-up."""
    depth: int = 2
    """Number of hidden layers."""
    lr: float = 3e-4
    """Adam learning rate of actor, critics and temperature."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.005
    """Polyak step of the target critics."""
    batch_size: int = 256
    """Transitions per update."""
    init_temperature: float = 0.1
    """Initial entropy temperature alpha."""
    warmup_steps: int = 2000
    """Env steps with uniform random actions before the first update."""
    update_every: int = 50
    """Env steps between update rounds; each round runs this many updates in one jitted scan
    (one update per env step on average, fewer dispatches)."""


# ---------------------------------------------------------------------- networks
def init_mlp(key: jax.Array, sizes: list[int], last_scale: float = 1.0) -> list[dict]:
    """Parameters of an MLP with layer sizes ``sizes`` (inputs first)."""
    params = []
    keys = jax.random.split(key, len(sizes) - 1)
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        w = jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(1.0 / n_in)
        if i == len(sizes) - 2:
            w = w * last_scale
        params.append({"w": w, "b": jnp.zeros(n_out)})
    return params


def mlp(params: list[dict], x: jax.Array) -> jax.Array:
    """ReLU MLP; no activation after the last layer."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


class Bounds(NamedTuple):
    """Action bounds: ``a = centre + half_width * tanh(u)``."""

    centre: jax.Array
    half_width: jax.Array


def actor_dist(actor: list[dict], obs: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and log-std ``[..., act_dim]`` of the pre-squash Gaussian."""
    out = mlp(actor, obs)
    mean, raw = jnp.split(out, 2, axis=-1)
    # Smoothly squash log-std into [LOG_STD_MIN, LOG_STD_MAX] (no dead gradient at the edges).
    log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)
    return mean, log_std


def sample_action(
    actor: list[dict], obs: jax.Array, key: jax.Array, bounds: Bounds
) -> tuple[jax.Array, jax.Array]:
    """A reparametrised action sample and its log-probability under the squashed Gaussian.

    ``log pi(a) = log N(u; mean, std) - sum log(half_width * (1 - tanh(u)^2))``, the second
    term computed as ``2 (log 2 - u - softplus(-2u))`` for stability.
    """
    mean, log_std = actor_dist(actor, obs)
    eps = jax.random.normal(key, mean.shape)
    u = mean + jnp.exp(log_std) * eps
    log_normal = -0.5 * eps**2 - log_std - 0.5 * jnp.log(2.0 * jnp.pi)
    log_det = 2.0 * (jnp.log(2.0) - u - jax.nn.softplus(-2.0 * u)) + jnp.log(bounds.half_width)
    action = bounds.centre + bounds.half_width * jnp.tanh(u)
    return action, jnp.sum(log_normal - log_det, axis=-1)


def deterministic_action(actor: list[dict], obs: jax.Array, bounds: Bounds) -> jax.Array:
    """The squashed mean action (for evaluation)."""
    mean, _ = actor_dist(actor, obs)
    return bounds.centre + bounds.half_width * jnp.tanh(mean)


def q_values(critic: list[dict], obs: jax.Array, action: jax.Array) -> jax.Array:
    """Both critics' values ``[2, ...]``; ``critic`` leaves have a leading axis of 2."""
    x = jnp.concatenate([obs, action], axis=-1)
    return jax.vmap(lambda p: mlp(p, x)[..., 0])(critic)


# ---------------------------------------------------------------------- losses
class Batch(NamedTuple):
    """Transitions ``[B, ...]``; ``terminal`` is 1.0 only where the episode terminated."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    terminal: jax.Array


def critic_loss(critic, target, actor, log_alpha, batch: Batch, key, gamma, bounds):
    """Soft Bellman error of both critics (see module docstring)."""
    next_action, next_logp = sample_action(actor, batch.next_obs, key, bounds)
    next_q = jnp.min(q_values(target, batch.next_obs, next_action), axis=0)
    soft_v = next_q - jnp.exp(log_alpha) * next_logp
    y = jax.lax.stop_gradient(batch.reward + gamma * (1.0 - batch.terminal) * soft_v)
    q = q_values(critic, batch.obs, batch.action)
    return jnp.mean(0.5 * (q - y[None]) ** 2)


def actor_loss(actor, critic, log_alpha, batch: Batch, key, bounds):
    """Returns ``(loss, log-probabilities of the sampled actions)``."""
    action, logp = sample_action(actor, batch.obs, key, bounds)
    q = jnp.min(q_values(critic, batch.obs, action), axis=0)
    return jnp.mean(jnp.exp(log_alpha) * logp - q), logp


def alpha_loss(log_alpha, logp, target_entropy):
    return -jnp.mean(log_alpha * jax.lax.stop_gradient(logp + target_entropy))


# ---------------------------------------------------------------------- state and update
class SACState(NamedTuple):
    """Everything that changes during training (a pytree)."""

    actor: list
    critic: list
    target: list
    log_alpha: jax.Array
    actor_opt: optax.OptState
    critic_opt: optax.OptState
    alpha_opt: optax.OptState
    updates: jax.Array


class SAC:
    """SAC for one observation/action shape: ``init``, jitted ``update`` and action functions.

    Args:
        obs_dim: observation size.
        low: lower action bounds ``[act_dim]``.
        high: upper action bounds ``[act_dim]``.
        config: hyperparameters.
    """

    def __init__(self, obs_dim: int, low: np.ndarray, high: np.ndarray, config: SACConfig):
        low, high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError(f"SAC needs finite action bounds with high > low, got {low}, {high}")
        self.obs_dim, self.act_dim = int(obs_dim), int(low.shape[0])
        self.config = config
        self.bounds = Bounds(jnp.asarray((high + low) / 2), jnp.asarray((high - low) / 2))
        self.target_entropy = -float(self.act_dim)
        self.opt = optax.adam(config.lr)
        self.update = jax.jit(self._update)
        self.update_many = jax.jit(self._update_many)
        self.sample = jax.jit(
            lambda actor, obs, key, t: sample_action(
                actor, obs, jax.random.fold_in(key, t), self.bounds
            )
        )
        self.act_deterministic = jax.jit(
            lambda actor, obs: deterministic_action(actor, obs, self.bounds)
        )

    def init(self, key: jax.Array) -> SACState:
        c = self.config
        k_actor, k_critic = jax.random.split(key)
        hidden = [c.hidden] * c.depth
        actor = init_mlp(k_actor, [self.obs_dim, *hidden, 2 * self.act_dim], last_scale=0.01)
        critic = jax.vmap(lambda k: init_mlp(k, [self.obs_dim + self.act_dim, *hidden, 1]))(
            jax.random.split(k_critic, 2)
        )
        log_alpha = jnp.asarray(np.log(c.init_temperature), jnp.float32)
        return SACState(
            actor=actor,
            critic=critic,
            target=jax.tree.map(jnp.copy, critic),
            log_alpha=log_alpha,
            actor_opt=self.opt.init(actor),
            critic_opt=self.opt.init(critic),
            alpha_opt=self.opt.init(log_alpha),
            updates=jnp.zeros((), jnp.int32),
        )

    def _update(self, state: SACState, batch: Batch, key: jax.Array) -> tuple[SACState, dict]:
        c = self.config
        k_critic, k_actor = jax.random.split(key)
        c_loss, c_grad = jax.value_and_grad(critic_loss)(
            state.critic, state.target, state.actor, state.log_alpha, batch, k_critic,
            c.gamma, self.bounds,
        )  # fmt: skip
        c_upd, critic_opt = self.opt.update(c_grad, state.critic_opt, state.critic)
        critic = optax.apply_updates(state.critic, c_upd)
        (a_loss, logp), a_grad = jax.value_and_grad(actor_loss, has_aux=True)(
            state.actor, critic, state.log_alpha, batch, k_actor, self.bounds
        )
        a_upd, actor_opt = self.opt.update(a_grad, state.actor_opt, state.actor)
        actor = optax.apply_updates(state.actor, a_upd)
        t_loss, t_grad = jax.value_and_grad(alpha_loss)(state.log_alpha, logp, self.target_entropy)
        t_upd, alpha_opt = self.opt.update(t_grad, state.alpha_opt, state.log_alpha)
        log_alpha = optax.apply_updates(state.log_alpha, t_upd)
        target = jax.tree.map(lambda t, o: (1.0 - c.tau) * t + c.tau * o, state.target, critic)
        new = SACState(actor, critic, target, log_alpha, actor_opt, critic_opt, alpha_opt,
                       state.updates + 1)  # fmt: skip
        metrics = {
            "critic_loss": c_loss,
            "actor_loss": a_loss,
            "alpha_loss": t_loss,
            "alpha": jnp.exp(log_alpha),
            "entropy": -jnp.mean(logp),
        }
        return new, metrics

    def _update_many(self, state: SACState, batches: Batch, key: jax.Array):
        """Runs one update per leading index of ``batches`` (``[K, B, ...]``) in a scan."""
        keys = jax.random.split(key, batches.reward.shape[0])

        def body(s, xs):
            b, k = xs
            return self._update(s, b, k)

        state, metrics = jax.lax.scan(body, state, (batches, keys))
        return state, jax.tree.map(jnp.mean, metrics)


class Replay:
    """A growing numpy replay buffer (the whole history is kept: it becomes the dataset)."""

    def __init__(self, obs_dim: int, act_dim: int, capacity: int) -> None:
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, act_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.terminal = np.zeros(capacity, np.float32)
        self.size = 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        if self.size == len(self.reward):
            grow = len(self.reward)
            for name in ("obs", "action", "reward", "next_obs", "terminal"):
                arr = getattr(self, name)
                setattr(self, name, np.concatenate([arr, np.zeros_like(arr[:grow])]))
        i = self.size
        self.obs[i], self.action[i], self.reward[i] = obs, action, reward
        self.next_obs[i], self.terminal[i] = next_obs, float(terminated)
        self.size += 1

    def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> Batch:
        idx = rng.integers(0, self.size, size=shape)
        return Batch(
            self.obs[idx], self.action[idx], self.reward[idx], self.next_obs[idx],
            self.terminal[idx],
        )  # fmt: skip


# ---------------------------------------------------------------------- training loop
@dataclass
class SACRun:
    """What :func:`train_sac` produced."""

    store: EpisodeStore
    """Every training episode, in order (the replay as a dataset)."""
    eval_curve: list[tuple[int, float]]
    """``(env steps, mean deterministic return)`` at each evaluation."""
    state: SACState
    """Final learner state."""
    seconds: float
    """Wall-clock time of the run."""


def evaluate(sac: SAC, actor, env, *, episodes: int, seed: int) -> float:
    """Mean return of the deterministic (mean-action) policy over ``episodes``."""
    total = 0.0
    for i in range(episodes):
        ep = run_episode(
            env,
            lambda o: np.asarray(sac.act_deterministic(actor, o[None])[0]),
            seed=episode_seed(seed, i, tag=3),
        )
        total += float(ep["rewards"].sum())
    return total / episodes


def train_sac(
    env_id: str,
    *,
    steps: int,
    seed: int = 0,
    config: SACConfig | None = None,
    eval_every: int = 0,
    eval_episodes: int = 1,
    progress: Callable[[int], None] | None = None,
) -> SACRun:
    """Trains SAC online and keeps every episode it collected.

    Episodes always run to their end, so the run stops at the first episode boundary at or
    after ``steps`` env steps. Exploration: uniform random actions for
    ``config.warmup_steps`` steps, then actions sampled from the current policy.

    Args:
        env_id: a registry id with a bounded Box action space (dm_control, Gymnasium MuJoCo).
        steps: env steps to collect.
        seed: seeds the env resets, the networks, the action sampling and the replay sampling.
        config: SAC hyperparameters.
        eval_every: evaluate the deterministic policy every this many env steps (0: never).
        eval_episodes: episodes per evaluation.
        progress: called with the number of env steps of each finished episode.
    """
    from gymnasium import spaces

    config = config or SACConfig()
    if steps < 1:
        raise ValueError(f"train_sac: steps must be >= 1, got {steps}")
    start = time.perf_counter()
    env = make(env_id)
    if not isinstance(env.action_space, spaces.Box):
        raise ValueError(f"{env_id}: SAC needs a Box action space, got {env.action_space}")
    obs_dim = int(np.prod(env.observation_space.shape))
    low, high = env.action_space.low, env.action_space.high
    sac = SAC(obs_dim, low, high, config)
    key = jax.random.key(seed)
    k_init, k_act, k_update = jax.random.split(key, 3)
    state = sac.init(k_init)
    replay = Replay(obs_dim, sac.act_dim, capacity=max(steps, 1024))
    rng = np.random.default_rng(episode_seed(seed, 0, tag=2))
    t = 0

    def act(obs: np.ndarray) -> np.ndarray:
        if t < config.warmup_steps:
            return rng.uniform(low, high).astype(np.float32)
        action, _ = sac.sample(state.actor, obs[None], k_act, t)
        return np.asarray(action[0], dtype=np.float32)

    def learn(obs, action, reward, next_obs, terminated, truncated) -> None:
        nonlocal t, state
        replay.add(obs, action, reward, next_obs, terminated)
        t += 1
        if t >= config.warmup_steps and t % config.update_every == 0:
            batches = replay.sample(rng, (config.update_every, config.batch_size))
            state, _ = sac.update_many(state, batches, jax.random.fold_in(k_update, t))

    episodes, env_steps, updates, eval_curve = [], [], [], []
    eval_env = make(env_id) if eval_every > 0 else None
    next_eval = eval_every
    try:
        while t < steps:
            env_steps.append(t)
            updates.append(int(state.updates))
            ep = run_episode(env, act, seed=episode_seed(seed, len(episodes)), learn=learn)
            episodes.append(ep)
            if progress is not None:
                progress(len(ep["rewards"]))
            if eval_env is not None and t >= next_eval:
                score = evaluate(sac, state.actor, eval_env, episodes=eval_episodes, seed=seed)
                eval_curve.append((t, score))
                next_eval += eval_every
    finally:
        env.close()
        if eval_env is not None:
            eval_env.close()
    metadata = {
        "env_id": env_id,
        "policy": "sac",
        "seed": seed,
        "steps": steps,
        "sac_config": asdict(config),
        "action_space": space_dict(env.action_space),
        "observation_space": space_dict(env.observation_space),
    }
    layout = getattr(env.unwrapped, "observation_layout", None)
    if layout:
        metadata["observation_layout"] = {k: list(v) for k, v in layout.items()}
    store = EpisodeStore.from_episodes(
        episodes,
        episode_extras={
            "env_steps": np.asarray(env_steps, np.int64),
            "learner_updates": np.asarray(updates, np.int64),
        },
        metadata=metadata,
    )
    return SACRun(store, eval_curve, state, time.perf_counter() - start)
