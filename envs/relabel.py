"""Reward relabelling: the reward of any task of a domain, from saved physics states.

ExoRL datasets are collected without a task reward; one dataset of a domain serves every
task of that domain. The reward of step ``t`` is a function of the physics state after the
step (``extras["next_physics"]``) and, for tasks with a control cost (cartpole, the
point-mass maze), of the control applied during the step (``actions[t]``). A labeller
resets the simulation, sets the saved state (and the control), runs MuJoCo's forward pass
and calls the task's own ``get_reward``, so the result is what dm_control returned live.

ExoRL's own relabelling leaves the control at zero; ``use_actions=False`` reproduces that
(it changes the reward only for tasks with a control cost).

:func:`load_dataset` (``envs.load_dataset``) is ``rl_ring.data.load`` with this relabeller
wired in; ``rl_ring.data`` itself never imports it (it takes ``relabel=`` instead).

Work is split by episodes over a pool of processes (``workers``); each process builds its
environment once. Task names follow ExoRL: ``<domain>_<task>``, e.g. ``walker_run``,
``cartpole_swingup_sparse``, ``point_mass_maze_reach_top_left``, ``jaco_reach_top_left``.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from envs.registry import CUSTOM_DMC, load_dmc
from rl_ring.data import EpisodeStore, load

RELABEL_VERSION = 1
SUITE_TASKS: dict[str, tuple[str, ...]] = {
    "walker": ("stand", "walk", "run"),
    "cheetah": ("run", "run_backward"),
    "cartpole": ("balance", "balance_sparse", "swingup", "swingup_sparse"),
    "quadruped": ("walk", "run"),
    # Not ExoRL domains; the small-scale experiments collect them locally in ExoRL format.
    "point_mass": ("easy", "hard"),
    "pendulum": ("swingup",),
}
_CUSTOM_DOMAINS = tuple(CUSTOM_DMC)  # point_mass_maze, jaco
# Below this many states a pool costs more (process start, imports) than it saves.
_MIN_STATES_FOR_POOL = 20_000


def task_names() -> tuple[str, ...]:
    """Every task the relabeller knows, as ExoRL-style ``<domain>_<task>`` names."""
    names = [f"{d}_{t}" for d, tasks in SUITE_TASKS.items() for t in tasks]
    names += [f"{d}_{t}" for d in _CUSTOM_DOMAINS for t in CUSTOM_DMC[d][1]]
    return tuple(names)


def parse_task(name: str) -> tuple[str, str]:
    """Splits ``"walker_run"`` into ``("walker", "run")`` (the maze's domain has underscores)."""
    for domain in _CUSTOM_DOMAINS:
        if name.startswith(domain + "_"):
            return domain, name[len(domain) + 1 :]
    for domain, tasks in SUITE_TASKS.items():  # point_mass has an underscore too
        if name.startswith(domain + "_") and name[len(domain) + 1 :] in tasks:
            return domain, name[len(domain) + 1 :]
    raise KeyError(f"relabel: unknown task {name!r}; known tasks: {list(task_names())}")


def make_env(name: str, seed: int | None = 0):
    """The dm_control environment of task ``name``, built by the env registry
    (:func:`envs.registry.load_dmc`); ``cheetah_run_backward``, an ExoRL task that the
    dm_control suite lacks, is built here."""
    domain, task = parse_task(name)
    if (domain, task) == ("cheetah", "run_backward"):
        return _cheetah_run_backward(seed)
    return load_dmc(domain, task, seed=seed)


def _cheetah_run_backward(seed):
    """Suite cheetah paid for running backwards: ``tolerance(-speed, (10, inf), margin=10)``."""
    from dm_control.rl import control
    from dm_control.suite import cheetah
    from dm_control.utils import rewards

    class CheetahBackward(cheetah.Cheetah):
        def get_reward(self, physics):
            return rewards.tolerance(
                -physics.speed(), bounds=(cheetah._RUN_SPEED, float("inf")),
                margin=cheetah._RUN_SPEED, value_at_margin=0, sigmoid="linear",
            )

    physics = cheetah.Physics.from_xml_string(*cheetah.get_model_and_assets())
    return control.Environment(
        physics, CheetahBackward(random=seed), time_limit=cheetah._DEFAULT_TIME_LIMIT,
    )


class RewardLabeller:
    """Computes one task's reward from saved physics states, in this process."""

    def __init__(self, name: str, use_actions: bool = True):
        self.name = name
        self.use_actions = use_actions
        self.env = make_env(name, seed=0)
        self.env.reset()
        self.physics = self.env.physics
        self.task = self.env.task
        self.state_size = int(self.physics.get_state().shape[0])
        self.obs_size = int(sum(np.prod(v.shape) for v in self.env.observation_spec().values()))
        spec = self.env.action_spec()
        self.act_dim = int(np.prod(spec.shape))
        lo, hi = np.asarray(spec.minimum, float), np.asarray(spec.maximum, float)
        # Stored actions are in [-1, 1] (ExoRL rescales to the actuator range); keep the
        # identity exact where the range already is [-1, 1].
        self._scale = None if np.all(lo == -1) and np.all(hi == 1) else (lo, hi)

    def controls(self, actions: np.ndarray) -> np.ndarray:
        """Maps stored actions in [-1, 1] to the actuators' control range."""
        a = np.asarray(actions, dtype=np.float64)
        if self._scale is None:
            return a
        lo, hi = self._scale
        return lo + (a + 1.0) * 0.5 * (hi - lo)

    def __call__(self, states: np.ndarray, actions: np.ndarray | None = None) -> np.ndarray:
        """Rewards ``[T]`` float64 of states ``[T, state_size]`` reached by ``actions [T, A]``."""
        states = np.asarray(states, dtype=np.float64)
        if states.ndim != 2 or states.shape[1] != self.state_size:
            raise ValueError(
                f"relabel {self.name}: physics states have shape {states.shape}, expected "
                f"(T, {self.state_size}) for this task's model"
            )
        ctrl = None
        if self.use_actions:
            if actions is None:
                raise ValueError(f"relabel {self.name}: use_actions=True needs the actions")
            actions = np.asarray(actions)
            if actions.ndim != 2 or actions.shape != (len(states), self.act_dim):
                raise ValueError(
                    f"relabel {self.name}: actions have shape {actions.shape}, expected "
                    f"({len(states)}, {self.act_dim})"
                )
            ctrl = self.controls(actions)
        import mujoco

        physics, task = self.physics, self.task
        model_ptr, data_ptr = physics.model.ptr, physics.data.ptr
        out = np.empty(len(states), dtype=np.float64)
        for i in range(len(states)):
            # Clear the simulation, set the state (and the step's control), one forward pass.
            # (dm_control's reset_context would run a second, wasted forward at the default
            # pose; mj_forward never reads what that pass computes, so the result is the same.)
            mujoco.mj_resetData(model_ptr, data_ptr)
            physics.set_state(states[i])
            if ctrl is not None:
                physics.data.ctrl[:] = ctrl[i]
            physics.forward()
            out[i] = task.get_reward(physics)
        return out


# ---------------------------------------------------------------------------- process pool
_WORKER: RewardLabeller | None = None


def _init_worker(name: str, use_actions: bool) -> None:
    os.environ.setdefault("MUJOCO_GL", "disable")  # workers never render
    global _WORKER
    _WORKER = RewardLabeller(name, use_actions)


def _label_chunk(chunk: list[tuple[np.ndarray, np.ndarray | None]]) -> list[np.ndarray]:
    assert _WORKER is not None
    return [_WORKER(states, actions) for states, actions in chunk]


def relabel(
    task: str,
    next_physics: np.ndarray,
    actions: np.ndarray | None = None,
    episode_starts: np.ndarray | None = None,
    *,
    workers: int | None = None,
    use_actions: bool = True,
    chunk_states: int = 10_000,
) -> np.ndarray:
    """Rewards of ``task`` for every saved state.

    Args:
        task: ExoRL-style task name (see :func:`task_names`).
        next_physics: ``[N, state_size]`` physics state after each step.
        actions: ``[N, act_dim]`` actions in [-1, 1] (needed when ``use_actions``).
        episode_starts: ``[E + 1]`` offsets; chunks for the workers follow episode boundaries.
        workers: processes to use; None picks all cores for large inputs and 1 for small
            ones; 1 runs in this process.
        use_actions: set the step's control before computing the reward (what the live
            environment did); False leaves it at zero like ExoRL's relabelling.
        chunk_states: about this many states per unit of work.

    Returns:
        ``[N]`` float32 rewards.
    """
    n = len(next_physics)
    if use_actions and actions is None:
        raise ValueError(f"relabel {task}: use_actions=True needs the actions")
    if actions is not None and len(actions) != n:
        raise ValueError(f"relabel {task}: {len(actions)} actions for {n} physics states")
    parse_task(task)  # fail early on a bad name
    if workers is None:
        workers = 1 if n < _MIN_STATES_FOR_POOL else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"relabel: workers must be >= 1, got {workers}")
    if episode_starts is None:  # no episodes: any row boundary will do
        starts = np.unique(np.r_[np.arange(0, n, max(1, chunk_states)), n]).astype(np.int64)
    else:
        starts = np.asarray(episode_starts, np.int64)
    bounds = _chunk_bounds(starts, chunk_states)

    def piece(s, e):
        return (next_physics[s:e], None if actions is None or not use_actions else actions[s:e])

    if workers == 1:
        labeller = RewardLabeller(task, use_actions)
        parts = [labeller(*piece(s, e)) for s, e in bounds]
    else:
        ctx = multiprocessing.get_context("spawn")  # fork is unsafe once JAX threads exist
        with ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_init_worker,
            initargs=(task, use_actions),
        ) as pool:
            parts = [p for out in pool.map(_label_chunk, [[piece(s, e)] for s, e in bounds])
                     for p in out]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32)


def _chunk_bounds(starts: np.ndarray, chunk_states: int) -> list[tuple[int, int]]:
    """Splits [0, N) at episode starts into pieces of about ``chunk_states`` rows."""
    n = int(starts[-1])
    bounds, s = [], 0
    for e in starts[1:]:
        e = int(e)
        if e - s >= chunk_states or e == n:
            if e > s:
                bounds.append((s, e))
            s = e
    return bounds


def relabel_store(store, task: str, **options):
    """A copy of ``store`` whose rewards are ``task``'s, from ``extras["next_physics"]``."""
    if "next_physics" not in store.extras:
        raise ValueError(
            f"relabel_store: the store has no extras['next_physics'] (extras: "
            f"{sorted(store.extras)}); it needs the physics state after every step"
        )
    rewards = relabel(
        task, np.asarray(store.extras["next_physics"]), np.asarray(store.actions),
        store.episode_starts, **options,
    )
    meta = dict(store.metadata, reward_task=task)
    return EpisodeStore(
        store.observations, store.actions, rewards, store.terminals, store.timeouts,
        store.episode_starts, dict(store.extras), dict(store.episode_extras), meta,
    )


class Relabeller:
    """What :func:`rl_ring.data.read_exorl` calls to relabel (``relabel=RELABELLER``): the
    rewards (:func:`relabel`), a version for its cache key, a task's observation width."""

    version = RELABEL_VERSION

    def __call__(self, task: str, next_physics: np.ndarray, actions: np.ndarray | None = None,
                 episode_starts: np.ndarray | None = None, **options) -> np.ndarray:
        return relabel(task, next_physics, actions, episode_starts, **options)

    def obs_size(self, task: str) -> int:
        """Width of ``task``'s flat observation (tells a dataset of another domain)."""
        return RewardLabeller(task, use_actions=False).obs_size


RELABELLER = Relabeller()


def load_dataset(path, *, task: str | None = None, **options) -> EpisodeStore:
    """:func:`rl_ring.data.load` with this package's reward relabeller wired in: ``task=``
    relabels an ExoRL buffer's rewards for any task of its domain (e.g. ``"walker_run"``)."""
    if task is not None:
        options.update(task=task, relabel=RELABELLER)
    return load(path, **options)


# ---------------------------------------------------------------------------- benchmark
def rollout_states(task: str, num_steps: int, seed: int = 0):
    """Random-action rollout: ``(next_physics [T, S], actions [T, A], live rewards [T])``."""
    env = make_env(task, seed=seed)
    spec = env.action_spec()
    lo, hi = np.asarray(spec.minimum, float), np.asarray(spec.maximum, float)
    rng = np.random.default_rng(seed)
    states, acts, rews = [], [], []
    ts = env.reset()
    for _ in range(num_steps):
        if ts.last():
            ts = env.reset()
        a = rng.uniform(-1.0, 1.0, size=spec.shape)
        ts = env.step(lo + (a + 1.0) * 0.5 * (hi - lo))
        states.append(env.physics.get_state().copy())
        acts.append(a)
        rews.append(float(ts.reward))
    return np.array(states), np.array(acts), np.array(rews)


def benchmark_relabel(
    task: str = "walker_run", num_states: int = 2000, workers: int = 1, seed: int = 0
) -> dict:
    """Measures relabelling throughput and checks it against the live rewards.

    Returns a JSON-ready dict: states, seconds, states/s, states/s per worker, the largest
    difference from the rewards the environment returned live, and the time to build the
    environment (paid once per worker).
    """
    states, actions, live = rollout_states(task, num_states, seed)
    t0 = time.perf_counter()
    labeller = RewardLabeller(task)
    build_s = time.perf_counter() - t0
    if workers == 1:
        t0 = time.perf_counter()
        out = labeller(states, actions).astype(np.float32)
        secs = time.perf_counter() - t0
    else:
        t0 = time.perf_counter()
        out = relabel(task, states, actions, workers=workers,
                      chunk_states=max(1, num_states // (4 * workers)))
        secs = time.perf_counter() - t0
    return {
        "task": task,
        "states": int(num_states),
        "workers": int(workers),
        "seconds": secs,
        "states_per_s": num_states / secs,
        "states_per_s_per_worker": num_states / secs / workers,
        "env_build_s": build_s,
        "max_abs_diff_vs_live": float(np.max(np.abs(out - live))) if num_states else 0.0,
    }
