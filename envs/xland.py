"""XLand-MiniGrid (``xminigrid``) environments in the rl_ring registry.

Ids: ``xland:<xminigrid env id>[:<benchmark>]``.

* ``xland:XLand-MiniGrid-R1-9x9`` (any ``XLand-MiniGrid-*`` id): an in-context task family;
  the task is the index of a ruleset (goal, rules, initial objects) of a benchmark. The
  optional ``:<benchmark>`` names it (:mod:`envs.xland_benchmarks`): ``trivial`` (default) or
  ``small``, with ``-s<seed>`` / ``-n<rulesets>`` (``xland:XLand-MiniGrid-R1-9x9:small-s1-n512``),
  or ``file=<path>`` for a benchmark file you have (loading it unpickles it: name only files
  you trust). Fixed train / held-out splits hold out 20% of the ruleset indices
  (:func:`envs.tasks.fixed_split`, seed 0).
* ``xland:MiniGrid-Empty-8x8`` (any ``MiniGrid-*`` id): a single task; no benchmark.

Gymnasium adapter (:class:`XLandEnv`): ``Discrete(6)`` actions (xminigrid's: 0 forward, 1 turn
right, 2 turn left, 3 pick up, 4 put down, 5 toggle). The observation is the agent's egocentric
``view x view`` (5 x 5) field of view as xminigrid computes it (agent at the bottom centre,
facing up), flattened to float32 ``[view * view * 2]`` in row-major order of
``(row, col, [tile, colour])``: ``obs.reshape(5, 5, 2)`` gives xminigrid's observation back.
Episodes end as xminigrid ends them: ``terminated`` when the goal is reached (reward
``1 - 0.9 * step / max_steps``), ``truncated`` at ``max_steps`` (default ``3 * H * W`` for
XLand, ``4 * H * W`` for MiniGrid). Reset and step are jitted once per env.

Pure-JAX functional API, for jitted ``lax.scan`` rollouts (vmapped over environments)::

    reset_fn, step_fn = xland_functional(env_id, benchmark=None, **env_kwargs)
    timestep = reset_fn(key, ruleset_index)   # key: PRNG key; ruleset_index: int32 scalar
    timestep = step_fn(timestep, action)      # action: int32 scalar in [0, 6)

Both return ``xminigrid.types.TimeStep`` (``.observation`` uint8 [view, view, 2],
``.reward`` float32, ``.step_type`` FIRST / MID / LAST, ``.discount`` 0 when terminated,
``.state``). ``benchmark`` is None (the id's benchmark), a spec string or an
``xminigrid.benchmarks.Benchmark``; ``env_kwargs`` override xminigrid's params (``height``,
``width``, ``view_size``, ``max_steps``). MiniGrid envs ignore ``ruleset_index``. Stepping
after ``LAST`` is not an episode of the env: reset instead (:func:`flat_observation` and
:func:`compressed_view` convert observations).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs import xland_benchmarks as xb
from envs.incontext import InContextEnv
from envs.tasks import fixed_split

SPLIT_SEED = 0
TEST_FRACTION = 0.2
DEFAULT_BENCHMARK = "trivial"
VIEW_SIZE = 5
NUM_ACTIONS = 6


# ---------------------------------------------------------------------- ids
class UnknownXMinigridId(ValueError):
    """An ``xland:`` id whose xminigrid id xminigrid does not know."""


def xminigrid_ids() -> tuple[str, ...]:
    import xminigrid

    return tuple(xminigrid.registered_environments())


def is_xland(xid: str) -> bool:
    """Whether an xminigrid id takes rulesets (``XLand-MiniGrid-*``) or is fixed (MiniGrid)."""
    return xid.startswith("XLand-MiniGrid")


def parse_id(env_id: str) -> tuple[str, str | None]:
    """``(xminigrid id, benchmark spec or None)`` of ``xland:<id>[:<benchmark>]``.

    Raises:
        ValueError: not an ``xland:`` id, an unknown xminigrid id, a benchmark on a MiniGrid
            id, or a malformed benchmark spec.
    """
    if not env_id.startswith("xland:"):
        raise ValueError(f"{env_id!r} is not an 'xland:<xminigrid id>' env id")
    xid, _, spec = env_id[len("xland:"):].partition(":")
    known = xminigrid_ids()
    if xid not in known:
        import difflib

        close = difflib.get_close_matches(xid, known, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join('xland:' + c for c in close)}?" if close else ""
        raise UnknownXMinigridId(
            f"unknown xminigrid env {xid!r} in {env_id!r}.{hint} xminigrid has: {', '.join(known)}"
        )
    if not is_xland(xid):
        if spec:
            raise ValueError(f"{env_id}: {xid} is a fixed MiniGrid task; it takes no benchmark")
        return xid, None
    spec = spec or DEFAULT_BENCHMARK
    xb.parse_spec(spec)
    return xid, spec


def with_benchmark(env_id: str, path: str) -> str:
    """``env_id`` with its benchmark set to the file ``path`` (``--benchmark PATH``)."""
    xid, _, spec = env_id[len("xland:"):].partition(":")
    if spec:
        raise ValueError(f"{env_id} names a benchmark already ({spec!r}); drop --benchmark")
    if not is_xland(xid):
        raise ValueError(f"--benchmark: {xid} is a fixed MiniGrid task; it takes no benchmark")
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"--benchmark: benchmark file {str(path)!r} does not exist")
    return f"xland:{xid}:file={p}"


def num_rulesets(spec: str) -> int:
    return int(len(xb.resolve(spec).goals))


def task_split(spec: str, split: str) -> list[int]:
    """Fixed train / test (held-out) / all ruleset indices of the benchmark ``spec``."""
    return fixed_split(range(num_rulesets(spec)), split, test_fraction=TEST_FRACTION,
                       seed=SPLIT_SEED)


# ---------------------------------------------------------------------- functional API
def _make(xid: str, **env_kwargs):
    import xminigrid

    env_kwargs = {"view_size": VIEW_SIZE, **env_kwargs}
    return xminigrid.make(xid, **env_kwargs)


def _as_benchmark(xid: str, benchmark: Any):
    if not is_xland(xid):
        return None
    if benchmark is None:
        benchmark = DEFAULT_BENCHMARK
    if isinstance(benchmark, str):
        benchmark = xb.resolve(benchmark)
    return benchmark


def xland_functional(env_id: str, benchmark: Any = None, **env_kwargs):
    """``(reset_fn, step_fn)``: pure, jittable, vmappable (see the module docstring).

    Args:
        env_id: ``xland:<xminigrid id>[:<benchmark>]`` or a bare xminigrid id.
        benchmark: overrides the id's benchmark: a spec string or a ``Benchmark``.
        **env_kwargs: xminigrid params (``height``, ``width``, ``view_size``, ``max_steps``).
    """
    import jax.numpy as jnp

    if env_id.startswith("xland:"):
        xid, spec = parse_id(env_id)
    else:
        xid, spec = parse_id(f"xland:{env_id}")
    env, params = _make(xid, **env_kwargs)
    bench = _as_benchmark(xid, spec if benchmark is None else benchmark)
    if bench is not None:
        goals, rules, tiles = (jnp.asarray(getattr(bench, k), jnp.uint8)
                               for k in ("goals", "rules", "init_tiles"))

    def reset_fn(key, ruleset_index):
        p = params
        if bench is not None:
            from xminigrid.benchmarks import get_ruleset

            p = params.replace(ruleset=get_ruleset(goals, rules, tiles, ruleset_index))
        return env.reset(p, key)

    def step_fn(timestep, action):
        return env.step(params, timestep, action)

    return reset_fn, step_fn


def env_params(env_id: str, **env_kwargs):
    """xminigrid's ``(env, params)`` for an id (``max_steps`` etc. filled in)."""
    return _make(parse_id(env_id)[0], **env_kwargs)


def flat_observation(observation) -> np.ndarray:
    """xminigrid's ``[..., V, V, 2]`` observation as the adapter's float32 ``[..., V*V*2]``."""
    obs = np.asarray(observation)
    return obs.reshape(*obs.shape[:-3], -1).astype(np.float32)


def compressed_view(observation):
    """``[..., V, V, 2]`` (tile, colour) -> uint8 ``[..., V, V]`` of ``tile * NUM_COLORS + colour``
    (the XLand-100B ``states`` layout); works on numpy and jax arrays."""
    from xminigrid.core.constants import NUM_COLORS

    tile = observation[..., 0].astype(np.uint8)
    return tile * np.uint8(NUM_COLORS) + observation[..., 1].astype(np.uint8)


# ---------------------------------------------------------------------- gymnasium adapter
@functools.lru_cache(maxsize=16)
def _jitted(xid: str, spec: str | None, kwargs: tuple):
    import jax

    reset_fn, step_fn = xland_functional(f"xland:{xid}" + (f":{spec}" if spec else ""),
                                         **dict(kwargs))
    return jax.jit(reset_fn), jax.jit(step_fn)


@functools.cache
def _jitted_expert():
    import jax

    from envs.xland_planner import expert_action

    return jax.jit(expert_action)


class XLandEnv(InContextEnv):
    """An xminigrid env as a Gymnasium env (see the module docstring for the spaces).

    For XLand ids the task is a ruleset index of the benchmark; MiniGrid ids have one task, 0.
    """

    family = "xland"

    def __init__(
        self,
        task: int | None = None,
        *,
        xid: str,
        benchmark: str | None = None,
        height: int | None = None,
        width: int | None = None,
        max_steps: int | None = None,
        view_size: int = VIEW_SIZE,
        render_mode: str | None = None,
        seed: int | None = None,
    ) -> None:
        self.xid = xid
        self.benchmark_spec = benchmark if is_xland(xid) else None
        if is_xland(xid) and benchmark is None:
            self.benchmark_spec = DEFAULT_BENCHMARK
        kwargs = {"view_size": int(view_size)}
        for name, value in (("height", height), ("width", width), ("max_steps", max_steps)):
            if value is not None:
                kwargs[name] = int(value)
        self._kwargs = tuple(sorted(kwargs.items()))
        _, self.params = _make(xid, **kwargs)
        self.episode_length = int(self.params.max_steps)
        self.view_size = int(view_size)
        from xminigrid.core.constants import NUM_COLORS, NUM_TILES

        high = np.tile(np.array([NUM_TILES - 1, NUM_COLORS - 1], np.float32), view_size**2)
        self.observation_space = spaces.Box(0.0, high, dtype=np.float32)
        self.action_space = spaces.Discrete(NUM_ACTIONS)
        self._reset_fn, self._step_fn = _jitted(xid, self.benchmark_spec, self._kwargs)
        self.timestep = None
        super().__init__(task, seed=seed, render_mode=render_mode)

    def task_ids(self) -> list[int]:
        if self.benchmark_spec is None:
            return [0]
        return list(range(num_rulesets(self.benchmark_spec)))

    def _reset_state(self) -> np.ndarray:
        import jax

        seed = int(self.np_random.integers(2**31))
        self.timestep = self._reset_fn(jax.random.key(seed), np.int32(self.task))
        return flat_observation(self.timestep.observation)

    def step(self, action) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self._check_running()
        a = int(action)
        if not 0 <= a < NUM_ACTIONS:
            raise ValueError(f"xland: action must be an int in [0, {NUM_ACTIONS}), got {action!r}")
        self.timestep = self._step_fn(self.timestep, np.int32(a))
        ts = self.timestep
        last = bool(ts.last())
        terminated = last and float(ts.discount) == 0.0
        truncated = last and not terminated
        self._done = last
        return (flat_observation(ts.observation), float(ts.reward), terminated, truncated,
                {"task": self.task})

    def optimal_action(self, obs: np.ndarray | None = None) -> int:
        """The shortest-path expert's action (:mod:`envs.xland_expert`) in the current state.

        The 5x5 view does not determine it, so it is read from the env's full state: ``obs``
        must be the observation the env returned last (collectors call it before stepping).
        """
        if self.timestep is None:
            raise RuntimeError("xland: optimal_action() before reset()")
        return int(_jitted_expert()(self.timestep))

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self.timestep is None:
            return None
        from xminigrid.rendering.rgb_render import render

        return render(np.asarray(self.timestep.state.grid), self.timestep.state.agent,
                      self.view_size)


def make_env(env_id: str, task: int | None, seed: int | None, **kwargs) -> gym.Env:
    """Builds :class:`XLandEnv` for an ``xland:`` id (the registry's entry)."""
    xid, spec = parse_id(env_id)
    if "benchmark" in kwargs:
        raise ValueError(f"{env_id}: name the benchmark in the id (xland:<id>:<benchmark>)")
    return XLandEnv(task, xid=xid, benchmark=spec, seed=seed, **kwargs)


def description(env_id: str) -> str:
    xid, spec = parse_id(env_id)
    if spec is None:
        return f"xminigrid {xid} (one task), 5x5 egocentric (tile, colour) view, 6 actions"
    return (f"xminigrid {xid}, task = ruleset index of benchmark {spec!r}; 5x5 egocentric "
            "(tile, colour) view, 6 actions; reward 1 - 0.9 t/T on reaching the goal")
