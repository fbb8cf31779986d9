"""Env steps/s of the JAX-native rollout against today's Python workers, by number of envs.

Both paths play the same policy, a randomly initialised 4-layer AD transformer (the AD
default model: width 128, 4 heads; one STEP token per env step) with a ``--context``-step KV
cache, in the same XLand-MiniGrid environment (``MiniGrid-Empty-8x8``: 7x7x2 observations,
6 actions, no benchmark ruleset needed), actions sampled as AD evaluates by default:

- **python**: :func:`rl_ring.eval.rollout.run_seed` with :class:`InProcessWorkers`, each row a
  gym-like wrapper around one jitted xminigrid ``reset``/``step``, and
  :class:`agents.policy.CachedPolicy` (one batched decode call per env step);
- **jax**: :func:`rl_ring.eval.jax_rollout.make_rollout_steps` with
  :func:`agents.policy.functional_policy`: env steps, decode and bookkeeping in one jitted
  ``lax.scan`` over ``--steps`` steps, vmapped over the envs.

Each row plays one episode cut at ``--steps`` steps (fewer where it reaches the goal). Every
row's context is primed to each of ``--fills`` steps (default 0, an evaluation's start, and
the context minus the timed steps, nearly full, as ``rl-ring bench eval`` primes): the token
buffers and the cache are marked filled without computing keys and values (a step's cost
does not depend on their values). A step of a cached decode reads every row's filled cache
once per layer in whole chunks of ``--k-chunk`` slots, so the fill sets the bytes moved.
The python path is timed from the end of its first step (compilation, env building,
policy reset excluded) through the on_steps hook; the jax path (``make_rollout_steps``) is
compiled by a first call, then each of ``--rounds`` rounds starts afresh (first resets,
cache allocation: untimed) and times one ``advance`` of ``--steps`` steps. Medians are
reported; the load average is recorded.

    rl-ring bench jax_rollout --quick     # about 2 minutes on 2 busy CPU cores
    rl-ring bench jax_rollout             # full: 1, 16, 256, 4096 envs (python to 256);
                                          # 4096 rows need ~50 GB of memory

writes ``results/jax_rollout.{json,png}`` (replaced only with ``--overwrite``).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench import common

TARGET_RATIO_256 = 10.0


def minigrid_functions(env_id: str):
    """``(reset(seed), step(state, action), num_actions, obs_shape)`` of an xminigrid env."""
    import jax
    import xminigrid
    from xminigrid.types import StepType

    env, params = xminigrid.make(env_id)

    def reset(seed):
        ts = env.reset(params, jax.random.PRNGKey(seed))
        return ts, ts.observation

    def step(ts, action):
        ts = env.step(params, ts, action)
        last = ts.step_type == StepType.LAST
        term = last & (ts.discount == 0)
        return ts, ts.observation, ts.reward, term, last & ~term

    return reset, step, int(env.num_actions(params)), tuple(env.observation_shape(params))


class GymWrapper:
    """One row of the python path: a jitted functional env behind the Gymnasium calls."""

    def __init__(self, reset_fn, step_fn, num_actions, obs_shape, task=None, seed=0):
        from gymnasium import spaces

        del task, seed
        self._reset, self._step = reset_fn, step_fn
        self.action_space = spaces.Discrete(num_actions)
        self.observation_space = spaces.Box(0, 255, obs_shape, np.float32)
        self.state = None

    def reset(self, *, seed=None):
        self.state, obs = self._reset(np.int32(seed))
        return np.asarray(obs, np.float32), {}

    def step(self, action):
        self.state, obs, r, term, trunc = self._step(self.state, np.int32(action))
        return np.asarray(obs, np.float32), float(r), bool(term), bool(trunc), {}

    def close(self):
        pass


def build_policy(obs_dim: int, num_actions: int, seed: int = 0):
    """``(model, layout, spec)``: the AD default model shaped for the env, random weights."""
    from flax import nnx

    from agents import ad, base
    from rl_ring.data.normalize import Normalization

    cfg = ad.ADConfig()
    spec = base.DataSpec(obs_dim=obs_dim, act_dim=num_actions, discrete_actions=True)
    model = ad.make_model(cfg, spec, rngs=nnx.Rngs(seed))
    model.eval()
    layout = ad.make_layout(cfg, spec, Normalization.identity(obs_dim))
    return model, layout, spec


def _decode_options(k_chunk: int | None):
    from rl_ring.attention.decode import DecodeOptions

    return None if k_chunk is None else DecodeOptions(k_chunk=k_chunk)


def _primed_cached_policy(parts, context: int, fill: int, k_chunk: int | None = None):
    from agents.policy import CachedPolicy

    class Primed(CachedPolicy):
        """CachedPolicy whose rows start with ``fill`` steps of context (marked filled)."""

        def reset(self, num_envs, *, seeds):
            import jax.numpy as jnp

            super().reset(num_envs, seeds=seeds)
            self.timesteps[:, :fill] = (np.arange(fill) % 1000)[None]
            self.valid[:, :fill] = True
            self.kind[:, :fill] = int(self.layout.kinds[0])
            self.length[:] = fill
            cache = self.decoder.cache
            self.decoder.cache = cache._replace(
                length=jnp.full_like(cache.length, fill),
                positions=jnp.broadcast_to(jnp.arange(cache.capacity, dtype=jnp.int32),
                                           cache.positions.shape))
            self.decoder.lengths[:] = fill

    model, layout, spec = parts
    return Primed(model, layout, spec, context_steps=context, greedy=False,
                  slide_steps=context, options=_decode_options(k_chunk))


def measure_python(env_fns, parts, n: int, *, context: int, steps: int, fill: int,
                   rounds: int, k_chunk: int | None = None) -> dict[str, Any]:
    """Env steps/s of run_seed + InProcessWorkers + CachedPolicy (first step excluded)."""
    import jax

    from rl_ring.eval.env_spec import EnvSpec
    from rl_ring.eval.rollout import run_seed
    from rl_ring.eval.workers import InProcessWorkers

    reset_fn, step_fn, num_actions, obs_shape = env_fns
    factory = functools.partial(GymWrapper, jax.jit(reset_fn), jax.jit(step_fn), num_actions,
                                obs_shape)
    specs = [EnvSpec("xminigrid", factory=factory) for _ in range(n)]
    policy = _primed_cached_policy(parts, context, fill, k_chunk)
    rates, walls = [], []
    with InProcessWorkers(n) as workers:
        for r in range(rounds):
            marks: list[tuple[float, int]] = []
            res = run_seed(workers, policy, specs, seed=r, trials=1, max_steps=steps,
                           on_steps=lambda k, _f, marks=marks: marks.append(
                               (time.perf_counter(), k)))
            if len(marks) < 2:
                raise RuntimeError(f"python x{n}: fewer than 2 steps were played")
            timed = sum(k for _, k in marks[1:])
            rates.append(timed / (marks[-1][0] - marks[0][0]))
            walls.append(res.wall_s)
    return {"path": "python", "num_envs": n, "steps_per_s_median": common.median(rates),
            "steps_per_s": rates, "wall_s": walls}


def measure_jax(env_fns, parts, n: int, *, context: int, steps: int, fill: int,
                rounds: int, k_chunk: int | None = None) -> dict[str, Any]:
    """Env steps/s of the jitted scan's ``advance`` over ``steps`` steps (compilation, the
    cache's allocation and the first resets excluded, as the python path excludes them)."""
    import jax
    import jax.numpy as jnp

    from agents.policy import functional_policy
    from rl_ring.eval.jax_rollout import make_rollout_steps, rollout_seeds

    reset_fn, step_fn, _, _ = env_fns
    model, layout, spec = parts
    init, step = functional_policy(model, layout, spec, context_steps=context,
                                   slide_steps=context, greedy=False,
                                   options=_decode_options(k_chunk))

    def primed_init(seeds):
        st = init(seeds)
        cap = st.timesteps.shape[1]
        ts = jnp.where(jnp.arange(cap) < fill, jnp.arange(cap) % 1000, 0).astype(jnp.int32)
        cache = st.cache._replace(
            length=jnp.full_like(st.cache.length, fill),
            positions=jnp.broadcast_to(jnp.arange(cap, dtype=jnp.int32), st.cache.positions.shape))
        return st._replace(length=jnp.full_like(st.length, fill), cache=cache,
                           timesteps=jnp.broadcast_to(ts, st.timesteps.shape))

    start, advance = make_rollout_steps(reset_fn, step_fn, primed_init, step, num_envs=n,
                                        num_steps=steps, trials=1, max_steps=steps + 1)
    t0 = time.perf_counter()
    jax.block_until_ready(advance(start(*rollout_seeds(0, n, 1))))
    compile_s = time.perf_counter() - t0
    rates = []
    for r in range(1, rounds + 1):
        state = jax.block_until_ready(start(*rollout_seeds(r, n, 1)))
        t0 = time.perf_counter()
        state = jax.block_until_ready(advance(state))
        rates.append(int(state.out.env_steps) / (time.perf_counter() - t0))
    return {"path": "jax", "num_envs": n, "steps_per_s_median": common.median(rates),
            "steps_per_s": rates, "first_call_s": compile_s}


def main(argv: Sequence[str] | None = None) -> int:
    """``rl-ring bench jax_rollout``: writes results/jax_rollout.{json,png}."""
    p = argparse.ArgumentParser(prog="rl-ring bench jax_rollout", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1, 16, 256 envs, 8 timed steps, 2 rounds (both paths)")
    p.add_argument("--env", default="MiniGrid-Empty-8x8", help="an xminigrid env id")
    p.add_argument("--envs", nargs="+", type=int, default=None,
                   help="numbers of envs (default 1 16 256 4096; quick 1 16 256)")
    p.add_argument("--python-max-envs", type=int, default=256,
                   help="the python path runs only up to this many envs (it is slow)")
    p.add_argument("--context", type=int, default=1024, help="context (cache) in env steps")
    p.add_argument("--steps", type=int, default=None, help="timed env steps per row "
                   "(default 32; quick 8)")
    p.add_argument("--fills", nargs="+", type=int, default=None,
                   help="steps of context already filled when the timed steps start, one "
                   "measurement each (-1: context - steps - 1, nearly full; default: 0 -1)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3; quick 2)")
    p.add_argument("--k-chunk", type=int, default=None,
                   help="cache slots per chunk of the cached attention, both paths (default: "
                   "the backend's, 512 on CPU: a step reads whole chunks of every row)")
    p.add_argument("--out", default="results")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = p.parse_args(argv)
    envs = args.envs or ([1, 16, 256] if args.quick else [1, 16, 256, 4096])
    steps = args.steps or (8 if args.quick else 32)
    rounds = args.rounds or (2 if args.quick else 3)
    fills = [args.context - steps - 1 if f == -1 else f
             for f in (args.fills or [0, -1])]
    for fill in fills:
        if not 0 <= fill <= args.context - steps:
            raise ValueError(f"--fills {fill}: expected 0 .. context - steps = "
                             f"{args.context - steps} (or -1)")
    out = Path(args.out)
    json_path, png_path = out / "jax_rollout.json", out / "jax_rollout.png"
    common.check_outputs([json_path, png_path], overwrite=args.overwrite,
                         what="the jax-rollout benchmark")
    load_start = common.load_average()
    env_fns = minigrid_functions(args.env)
    parts = build_policy(int(np.prod(env_fns[3])), env_fns[2])
    rows = []
    for fill in fills:
        kw = dict(context=args.context, steps=steps, fill=fill, rounds=rounds,
                  k_chunk=args.k_chunk)
        for n in envs:
            paths = ["jax"] + (["python"] if n <= args.python_max_envs else [])
            for path in paths:
                fn = measure_jax if path == "jax" else measure_python
                r = {**fn(env_fns, parts, n, **kw), "fill_steps": fill}
                rows.append(r)
                print(f"{path:6s} fill={fill:5d} envs={n:5d} {r['steps_per_s_median']:10.1f} "
                      f"env steps/s (rounds: {', '.join(f'{x:.1f}' for x in r['steps_per_s'])})",
                      flush=True)
    ratios: dict[str, dict[str, float]] = {}
    for fill in fills:
        for n in envs:
            by = {r["path"]: r["steps_per_s_median"] for r in rows
                  if r["num_envs"] == n and r["fill_steps"] == fill}
            if "python" in by:
                ratios.setdefault(str(fill), {})[str(n)] = by["jax"] / by["python"]
    at_256 = {fill: r["256"] for fill, r in ratios.items() if "256" in r}
    import jax

    result = {
        "benchmark": "jax_rollout",
        "command": "rl-ring bench jax_rollout " + " ".join(argv or []),
        "env": args.env, "context_steps": args.context, "fill_steps": fills,
        "timed_steps": steps, "rounds": rounds, "quick": args.quick, "k_chunk": args.k_chunk,
        "policy": "AD default model (4 layers, width 128, 4 heads), random weights, sampled",
        "platform": {"machine": platform.machine(), "cpu_count": os.cpu_count(),
                     "backend": jax.default_backend()},
        "load_average": {"start": load_start, "end": common.load_average()},
        "rows": rows,
        "jax_over_python": ratios,
        "target": {"jax_over_python_at_256": TARGET_RATIO_256, "measured_by_fill": at_256,
                   "met": {f: v >= TARGET_RATIO_256 for f, v in at_256.items()} or None},
    }
    common.write_result(result, json_path, plot, png_path)
    print(json.dumps({"written": str(json_path), "jax_over_python": ratios}))
    return 0


def plot(result: dict[str, Any], path: Path) -> None:
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    names = {"jax": "JAX-native scan", "python": "Python workers"}
    for i, fill in enumerate(result["fill_steps"]):
        for name, style in (("jax", "o-"), ("python", "s--")):
            sel = [r for r in result["rows"] if r["path"] == name and r["fill_steps"] == fill]
            if sel:
                ax.plot([r["num_envs"] for r in sel], [r["steps_per_s_median"] for r in sel],
                        style, color=f"C{i}", label=f"{names[name]}, {fill} steps filled")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("environments")
    ax.set_ylabel("env steps/s")
    ax.set_title(f"{result['env']}, AD 4 layers, {result['context_steps']}-step context",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_png(fig, path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
