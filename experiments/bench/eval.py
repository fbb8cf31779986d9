"""Evaluation-speed benchmark: the KV-cached policy against recomputing the context.

Writes ``results/eval.json`` (config, platform, every timing, ratios, pass/fail per target)
and ``results/eval.png`` (existing ones are replaced only with ``--overwrite``)::

    rl-ring bench eval --quick      # about 2 minutes on 2 CPU cores
    rl-ring bench eval              # full: more steps, decode up to 64K tokens
    python -m experiments.bench.eval --quick   # the same

All parts use one randomly initialised Agentic Transformer policy (AT token layout: return-
to-go, state, action, reward per step; the AT default model: 3 layers, width 128, 1 head,
ReLU; blockwise attention for full forward passes, as ``rl-ring eval`` builds it). The speed
of a policy does not depend on its weights, so no training is needed; the actions of a random
model are as costly as a trained one's.

1. **Cached against recompute.** Environment steps/s of the evaluator's loop (policy ``act``
   for all rows, the environments' ``step``, policy ``observe``) with ``CachedPolicy`` and with
   ``ContextPolicy`` (the whole context re-read every step), one environment, each row's
   context primed to ``context - (steps + 1)`` env steps so the timed steps run at (nearly)
   the full context without sliding. Priming writes random tokens into the policies' token
   buffers; the cached policy's cache is marked filled without computing its keys and values
   (a step's cost does not depend on their values), which saves one full forward pass per
   row at each context. Target: at least 50x at 16K tokens.
2. **Batching.** The same loop with the cached policy and 16 environments against 1, at each
   context: env steps/s of all rows together. Target: at least 8x.
3. **Time per decoded token against context length.** One decode call (4 new tokens, one AT
   env step, one row) against caches filled to 512 .. 64K tokens; the exponent of a
   power-law fit ``time ~ context^p`` (0: flat, 1: linear, 2: quadratic). The recompute
   policy's time per token from part 1 is shown for contrast.

Timings on a shared machine are noisy: every configuration is timed in interleaved rounds
and reported by its median, and ratios are taken within one run. The load average at start
and end is recorded.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.bench import common

TARGETS = {"cached_vs_recompute_16k": 50.0, "batch16_vs_batch1": 8.0}


@dataclass(frozen=True)
class BenchEvalConfig:
    """What to measure (defaults: the full run)."""

    out: str = "results/eval.json"
    """Output JSON path (the PNG goes next to it)."""
    quick: bool = False
    """Small preset (about 2 minutes on 2 cores): fewer steps, decode scaling up to 16K."""
    env: str = "dmc:walker-walk"
    """Environment (an rl_ring registry id) whose observations and actions the policy uses."""
    contexts: tuple[int, ...] = (4096, 16384)
    """Context lengths in tokens (multiples of 4: whole AT steps) of parts 1 and 2."""
    batch_sizes: tuple[int, ...] = (1, 16)
    """Environment rows of part 2 (the first is the baseline)."""
    batch_contexts: tuple[int, ...] = (512, 4096, 16384)
    """Context lengths of part 2 (a short one shows where batching pays on a CPU)."""
    cached_steps: int = 20
    """Timed env steps per round of the cached policy."""
    recompute_steps: int = 1
    """Timed env steps per round of the recompute policy."""
    rounds: int = 6
    """Interleaved timing rounds per configuration (short rounds: the machine's load drifts)."""
    decode_fills: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
    """Cache fill levels (tokens) of part 3."""
    decode_reps: int = 15
    """Timed decode calls per fill level."""
    width: int = 128
    """Model width (the AT default)."""
    depth: int = 3
    """Model layers (the AT default)."""
    heads: int = 1
    """Attention heads (the AT default)."""
    tiny: bool = False
    """A seconds-long variant for tests (tiny model, short contexts, a cheap env)."""
    seed: int = 0
    """Seed of the model's initialisation and the priming tokens."""
    overwrite: bool = False
    """Replace existing output files."""

    @classmethod
    def quick_preset(cls, out: str = "results/eval.json") -> BenchEvalConfig:
        return cls(out=out, quick=True, cached_steps=10, recompute_steps=1, rounds=3,
                   decode_fills=(512, 1024, 2048, 4096, 8192, 16384), decode_reps=9)

    @classmethod
    def tiny_preset(cls, out: str) -> BenchEvalConfig:
        return cls(out=out, tiny=True, env="gym:Pendulum-v1", contexts=(64, 256),
                   batch_sizes=(1, 4), batch_contexts=(64, 256), cached_steps=6,
                   recompute_steps=2, rounds=2, decode_fills=(32, 64, 128, 256), decode_reps=3,
                   width=32, depth=2, heads=2)

    def resolved(self) -> BenchEvalConfig:
        """With ``quick``: the quick preset's value for every field left at its default."""
        if not self.quick or self.tiny:
            return self
        default, preset = BenchEvalConfig(), BenchEvalConfig.quick_preset(self.out)
        changes = {
            f.name: getattr(preset, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) == getattr(default, f.name)
        }
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------------- setup
def build_policy_parts(cfg: BenchEvalConfig, env):
    """A randomly initialised AT model for the env's spaces, its layout and data spec."""
    from flax import nnx

    import agents
    from agents import base
    from rl_ring.data.normalize import Normalization

    obs_dim = int(np.prod(env.observation_space.shape))
    space = env.action_space
    act_dim = int(np.prod(space.shape))
    spec = base.DataSpec(
        obs_dim=obs_dim, act_dim=act_dim, discrete_actions=False,
        action_low=tuple(float(x) for x in np.ravel(space.low)),
        action_high=tuple(float(x) for x in np.ravel(space.high)),
        max_episode_len=1000, max_return=1000.0,
    )
    at = agents.get("at")
    base_cfg = at.Config()
    model_cfg = base_cfg.model.replace(
        width=cfg.width, depth=cfg.depth, num_heads=cfg.heads, dropout=0.0,
        attn_impl="blockwise",
    )
    agent_cfg = dataclasses.replace(base_cfg, model=model_cfg)
    model = at.make_model(agent_cfg, spec, rngs=nnx.Rngs(cfg.seed))
    layout = at.make_layout(agent_cfg, spec, Normalization.identity(obs_dim))
    return model, layout, spec


def make_envs(env_id: str, n: int, seed: int):
    import envs

    out = []
    for i in range(n):
        env = envs.make(env_id, seed=seed + i)
        env.reset(seed=seed + i)
        out.append(env)
    return out


def make_policy(kind: str, parts, context_tokens: int):
    from agents.policy import CachedPolicy, ContextPolicy

    model, layout, spec = parts
    steps = context_tokens // layout.tokens_per_step
    cls = CachedPolicy if kind == "cached" else ContextPolicy
    return cls(model, layout, spec, context_steps=steps)


def prime(policy, num_envs: int, fill_steps: int, seed: int) -> None:
    """Resets ``policy`` for ``num_envs`` rows and fills each row with ``fill_steps`` whole
    steps of random tokens (the cache, if any, marked filled; see the module docstring)."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)
    policy.reset(num_envs, seeds=list(range(num_envs)))
    policy.begin_trial(np.ones(num_envs, bool))
    n_tok = fill_steps * policy.k
    layout = policy.layout
    policy.kind[:, :n_tok] = layout.step_kinds(fill_steps)[None]
    policy.values[:, :n_tok] = rng.normal(size=(num_envs, n_tok, layout.feature_dim))
    policy.timesteps[:, :n_tok] = np.repeat(np.arange(fill_steps) % 1000, policy.k)[None]
    policy.valid[:, :n_tok] = True
    policy.length[:] = n_tok
    decoder = getattr(policy, "decoder", None)
    if decoder is not None:
        cache = decoder.cache
        decoder.cache = cache._replace(
            length=jnp.full_like(cache.length, n_tok),
            positions=jnp.broadcast_to(jnp.arange(cache.capacity, dtype=jnp.int32),
                                       cache.positions.shape),
        )
        decoder.lengths[:] = n_tok


class Loop:
    """One policy playing ``n`` environments: the evaluator's per-step work, timed."""

    def __init__(self, policy, env_list, context_tokens: int, max_steps: int, seed: int):
        self.policy, self.envs = policy, env_list
        self.n = len(env_list)
        fill_steps = context_tokens // policy.k - (max_steps + 1)
        if fill_steps < 0:
            raise ValueError(f"context {context_tokens} is too short for {max_steps} timed steps")
        prime(policy, self.n, fill_steps, seed)
        self.obs = np.stack([np.asarray(e.reset(seed=seed + i)[0], np.float32).ravel()
                             for i, e in enumerate(env_list)])
        self.steps = 0
        self.max_steps = max_steps

    def run(self, steps: int) -> tuple[list[float], list[float]]:
        """Plays ``steps`` env steps of every row; returns the seconds of each step and the
        seconds of each step spent in the policy (``act``, ``observe``, ``begin_trial``)."""
        if self.steps + steps > self.max_steps:
            raise RuntimeError("timed more steps than the context was primed for")
        mask = np.ones(self.n, bool)
        times, policy_times = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            actions = self.policy.act(self.obs, mask)
            t_act = time.perf_counter() - t0
            reward = np.zeros(self.n, np.float32)
            term = np.zeros(self.n, bool)
            trunc = np.zeros(self.n, bool)
            for i, env in enumerate(self.envs):
                obs, r, te, tr, _ = env.step(actions[i])
                reward[i], term[i], trunc[i] = r, te, tr
                if te or tr:
                    obs, _ = env.reset()
                self.obs[i] = np.asarray(obs, np.float32).ravel()
            t1 = time.perf_counter()
            self.policy.observe(reward, term, trunc, mask)
            if (term | trunc).any():
                self.policy.begin_trial(term | trunc)
            t2 = time.perf_counter()
            times.append(t2 - t0)
            policy_times.append(t_act + (t2 - t1))
        self.steps += steps
        return times, policy_times


# ----------------------------------------------------------------------------------- parts
def time_loops(loops: dict[Any, Loop], steps: dict[Any, int], rounds: int):
    """Interleaved rounds: each loop plays its steps once per round (first round: +1
    untimed warm-up step that compiles). Returns per-step seconds, total and policy only."""
    for loop in loops.values():
        loop.run(1)
    runs = common.round_robin(
        {key: lambda key=key, loop=loop: loop.run(steps[key]) for key, loop in loops.items()},
        rounds)
    times = {key: [x for ts, _ in r for x in ts] for key, r in runs.items()}
    policy = {key: [x for _, ps in r for x in ps] for key, r in runs.items()}
    return times, policy


def rate(times: list[float], n: int) -> float:
    """Env steps/s of ``n`` rows from per-step seconds (median step)."""
    return n / statistics.median(times)


def part_cached_vs_recompute(cfg, parts, env_id) -> dict[str, Any]:
    loops, steps = {}, {}
    for ctx in cfg.contexts:
        for kind, per_round in (("cached", cfg.cached_steps), ("recompute", cfg.recompute_steps)):
            total = 1 + per_round * cfg.rounds
            envs_ = make_envs(env_id, 1, cfg.seed)
            loops[(ctx, kind)] = Loop(make_policy(kind, parts, ctx), envs_, ctx, total, cfg.seed)
            steps[(ctx, kind)] = per_round
    times, policy = time_loops(loops, steps, cfg.rounds)
    rows = [
        dict(context_tokens=ctx, policy=kind, num_envs=1, step_s=times[(ctx, kind)],
             policy_s=policy[(ctx, kind)], env_steps_per_s=rate(times[(ctx, kind)], 1))
        for (ctx, kind) in loops
    ]
    ratios = {
        str(ctx): rate(times[(ctx, "cached")], 1) / rate(times[(ctx, "recompute")], 1)
        for ctx in cfg.contexts
    }
    # The fastest step of each: the least disturbed by other work on a shared machine.
    best = {
        str(ctx): min(times[(ctx, "recompute")]) / min(times[(ctx, "cached")])
        for ctx in cfg.contexts
    }
    return {"rows": rows, "speedup": ratios, "speedup_fastest_steps": best}


def part_batching(cfg, parts, env_id) -> dict[str, Any]:
    loops, steps = {}, {}
    total = 1 + cfg.cached_steps * cfg.rounds
    for ctx in cfg.batch_contexts:
        for n in cfg.batch_sizes:
            envs_ = make_envs(env_id, n, cfg.seed)
            loops[(ctx, n)] = Loop(make_policy("cached", parts, ctx), envs_, ctx, total, cfg.seed)
            steps[(ctx, n)] = cfg.cached_steps
    times, policy = time_loops(loops, steps, cfg.rounds)
    rows = [
        dict(context_tokens=ctx, policy="cached", num_envs=n, step_s=times[(ctx, n)],
             policy_s=policy[(ctx, n)], env_steps_per_s=rate(times[(ctx, n)], n),
             policy_rows_per_s=rate(policy[(ctx, n)], n))
        for (ctx, n) in loops
    ]
    base, big = cfg.batch_sizes[0], cfg.batch_sizes[-1]
    ratios = {
        str(ctx): rate(times[(ctx, big)], big) / rate(times[(ctx, base)], base)
        for ctx in cfg.batch_contexts
    }
    policy_ratios = {
        str(ctx): rate(policy[(ctx, big)], big) / rate(policy[(ctx, base)], base)
        for ctx in cfg.batch_contexts
    }
    return {"rows": rows, "throughput_ratio": ratios, "policy_throughput_ratio": policy_ratios,
            "baseline_envs": base, "batched_envs": big}


def part_decode_scaling(cfg, parts) -> dict[str, Any]:
    import jax.numpy as jnp

    from rl_ring.models.decode import Decoder

    model, layout, _ = parts
    k = layout.tokens_per_step
    cap = max(cfg.decode_fills) + k
    cap = -(-cap // 64) * 64
    dec = Decoder(model, 1, cap)
    rng = np.random.default_rng(cfg.seed)
    kinds = np.asarray(layout.kinds, np.int32)[None]
    tokens = {
        "kind": kinds,
        "values": rng.normal(size=(1, k, layout.feature_dim)).astype(np.float32),
        "timesteps": np.zeros((1, k), np.int32),
    }
    num_new = np.array([k])

    def call(fill: int) -> float:
        # A cache holding `fill` tokens (placeholder keys/values), then one env step's tokens.
        dec.cache = dec.cache._replace(length=jnp.full((1,), fill, jnp.int32))
        dec.lengths[:] = fill
        step = {**tokens, "positions": (fill + np.arange(k, dtype=np.int32))[None]}
        t0 = time.perf_counter()
        np.asarray(dec.step(step, num_new))
        return time.perf_counter() - t0

    call(cfg.decode_fills[0])  # compiles
    times: dict[int, list[float]] = {f: [] for f in cfg.decode_fills}
    for _ in range(cfg.decode_reps):
        for fill in cfg.decode_fills:
            times[fill].append(call(fill))
    points = [
        dict(context_tokens=f, call_s=times[f], per_token_s=statistics.median(times[f]) / k)
        for f in cfg.decode_fills
    ]
    fills = np.array([p["context_tokens"] for p in points], float)
    per_tok = np.array([p["per_token_s"] for p in points])
    slope, intercept = np.polyfit(np.log(fills), np.log(per_tok), 1)
    # The upper half of the fills, where the cache scan outweighs the fixed cost of a call.
    upper = fills >= np.median(fills)
    slope_upper = np.polyfit(np.log(fills[upper]), np.log(per_tok[upper]), 1)[0]
    return {
        "tokens_per_call": k,
        "capacity": cap,
        "compilations": dec.compilations,
        "points": points,
        "exponent": float(slope),
        "fit_log_intercept": float(intercept),
        "exponent_upper_half": float(slope_upper),
    }


def agreement_check(cfg, parts, env_id, steps: int = 8) -> dict[str, Any]:
    """Both policies play the same env from empty contexts; their actions must agree."""
    ctx = min(cfg.contexts)
    actions = {}
    for kind in ("cached", "recompute"):
        policy = make_policy(kind, parts, ctx)
        env = make_envs(env_id, 1, cfg.seed + 7)[0]
        obs = np.asarray(env.reset(seed=cfg.seed + 7)[0], np.float32).ravel()[None]
        policy.reset(1, seeds=[0])
        policy.begin_trial(np.ones(1, bool))
        out = []
        for _ in range(steps):
            a = policy.act(obs, np.ones(1, bool))
            out.append(a[0].copy())
            o, r, te, tr, _ = env.step(a[0])
            obs = np.asarray(o, np.float32).ravel()[None]
            policy.observe(np.array([r]), np.array([te]), np.array([tr]), np.ones(1, bool))
        actions[kind] = np.stack(out)
    diff = float(np.abs(actions["cached"] - actions["recompute"]).max())
    return {"steps": steps, "context_tokens": ctx, "max_abs_action_diff": diff}


# ----------------------------------------------------------------------------------- run
def run(cfg: BenchEvalConfig) -> dict[str, Any]:
    import jax

    cfg = cfg.resolved()
    for ctx in (*cfg.contexts, *cfg.batch_contexts):
        if ctx % 4:
            raise ValueError(f"context {ctx} is not a multiple of 4 tokens (whole AT steps)")
    started = time.time()
    load_start = common.load_average()
    env = make_envs(cfg.env, 1, cfg.seed)[0]
    parts = build_policy_parts(cfg, env)
    model = parts[0]
    from flax import nnx

    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    result: dict[str, Any] = {
        "format": "rl_ring.BenchEval",
        "version": 1,
        "config": dataclasses.asdict(cfg),
        "platform": {
            "backend": jax.default_backend(),
            "device": str(jax.devices()[0].device_kind),
            "jax": jax.__version__,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_start": load_start,
        },
        "model": {
            "agent": "at", "width": cfg.width, "depth": cfg.depth, "heads": cfg.heads,
            "parameters": params, "obs_dim": parts[2].obs_dim, "act_dim": parts[2].act_dim,
            "weights": "random initialisation (speed does not depend on training)",
        },
        "notes": [
            "Contexts are primed with random tokens; the cached policy's cache is marked "
            "filled without computing keys/values (step cost does not depend on their values).",
            "Ratios are within this run; the machine may be shared (see load averages).",
        ],
    }
    result["agreement"] = agreement_check(cfg, parts, cfg.env)
    result["cached_vs_recompute"] = part_cached_vs_recompute(cfg, parts, cfg.env)
    result["batching"] = part_batching(cfg, parts, cfg.env)
    result["decode_scaling"] = part_decode_scaling(cfg, parts)
    speed = result["cached_vs_recompute"]["speedup"]
    longest = str(max(cfg.contexts))
    batch = result["batching"]["throughput_ratio"]
    result["targets"] = {
        "cached_vs_recompute_16k": _target(speed.get("16384"), TARGETS["cached_vs_recompute_16k"]),
        "batch16_vs_batch1": {
            ctx: _target(v, TARGETS["batch16_vs_batch1"]) for ctx, v in batch.items()
        },
        "decode_not_quadratic": _target(
            result["decode_scaling"]["exponent_upper_half"], 1.5, higher_is_better=False
        ),
    }
    result["summary"] = {
        "speedup_at_longest_context": speed[longest],
        "speedup_fastest_steps": result["cached_vs_recompute"]["speedup_fastest_steps"],
        "batching_ratio": batch,
        "batching_ratio_policy_only": result["batching"]["policy_throughput_ratio"],
        "decode_exponent": result["decode_scaling"]["exponent"],
        "decode_exponent_upper_half": result["decode_scaling"]["exponent_upper_half"],
    }
    result["platform"]["load_average_end"] = common.load_average()
    result["wall_s"] = time.time() - started
    return result


def _target(measured, threshold, *, higher_is_better=True) -> dict[str, Any]:
    if measured is None:
        return {"measured": None, "threshold": threshold, "pass": None}
    ok = measured >= threshold if higher_is_better else measured <= threshold
    return {"measured": float(measured), "threshold": threshold, "pass": bool(ok)}


# ----------------------------------------------------------------------------------- output
def write(result: dict[str, Any], path: Path) -> None:
    """Writes the JSON and the PNG next to it (each to a temporary name, then renamed)."""
    common.write_result(result, path, plot)


def _k(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens >= 1024 and tokens % 1024 == 0 else str(tokens)


def plot(result: dict[str, Any], path: Path) -> None:
    plt = common.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    cvr = result["cached_vs_recompute"]
    ctxs = sorted({r["context_tokens"] for r in cvr["rows"]})
    x = np.arange(len(ctxs))
    for j, kind in enumerate(("recompute", "cached")):
        vals = [next(r["env_steps_per_s"] for r in cvr["rows"]
                     if r["context_tokens"] == c and r["policy"] == kind) for c in ctxs]
        axes[0].bar(x + (j - 0.5) * 0.38, vals, 0.38, label=kind)
    for i, c in enumerate(ctxs):
        top = max(r["env_steps_per_s"] for r in cvr["rows"] if r["context_tokens"] == c)
        axes[0].annotate(f"{cvr['speedup'][str(c)]:.0f}x", (x[i], top), ha="center",
                         xytext=(0, 3), textcoords="offset points")
    axes[0].set(yscale="log", xticks=x, xticklabels=[_k(c) for c in ctxs],
                xlabel="context (tokens)", ylabel="env steps/s (1 env)",
                title="KV-cached vs recompute")
    axes[0].legend()

    bat = result["batching"]
    sizes = sorted({r["num_envs"] for r in bat["rows"]})
    bctx = sorted({r["context_tokens"] for r in bat["rows"]})
    xb = np.arange(len(bctx))
    for j, n in enumerate(sizes):
        vals = [next(r["env_steps_per_s"] for r in bat["rows"]
                     if r["context_tokens"] == c and r["num_envs"] == n) for c in bctx]
        axes[1].bar(xb + (j - 0.5) * 0.38, vals, 0.38, label=f"{n} env(s)")
    for i, c in enumerate(bctx):
        label = (f"{bat['throughput_ratio'][str(c)]:.1f}x\n(policy "
                 f"{bat['policy_throughput_ratio'][str(c)]:.1f}x)")
        top = max(r["env_steps_per_s"] for r in bat["rows"] if r["context_tokens"] == c)
        axes[1].annotate(label, (xb[i], top), ha="center", xytext=(0, 3),
                         textcoords="offset points", fontsize=8)
    axes[1].set(yscale="log", xticks=xb, xticklabels=[_k(c) for c in bctx],
                xlabel="context (tokens)", ylabel="env steps/s (all rows)",
                title="cached policy: batched rows")
    axes[1].legend()

    for ax in axes[:2]:  # room for the ratio labels above the bars
        ax.set_ylim(top=ax.get_ylim()[1] * 2.5)
    dsc = result["decode_scaling"]
    f = np.array([p["context_tokens"] for p in dsc["points"]], float)
    t = np.array([p["per_token_s"] for p in dsc["points"]]) * 1e3
    axes[2].loglog(f, t, "o-", label=f"cached decode (fit exponent {dsc['exponent']:.2f}; "
                   f"upper half {dsc['exponent_upper_half']:.2f})")
    fit = np.exp(dsc["fit_log_intercept"]) * f ** dsc["exponent"] * 1e3
    axes[2].loglog(f, fit, "--", color="gray", lw=1)
    rec = [(r["context_tokens"], statistics.median(r["step_s"]) / dsc["tokens_per_call"] * 1e3)
           for r in cvr["rows"] if r["policy"] == "recompute"]
    if rec:
        axes[2].loglog(*zip(*sorted(rec), strict=True), "s-", label="recompute (from left panel)")
    axes[2].set(xlabel="context (tokens)", ylabel="ms per new token",
                title="time per decoded token")
    axes[2].legend(fontsize=8)
    dev = result["platform"]["device"]
    fig.suptitle(f"rl_ring evaluation speed: random-init AT "
                 f"({result['model']['parameters'] / 1e6:.2f}M params) on {dev}", fontsize=10)
    fig.tight_layout()
    common.save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(BenchEvalConfig, args=argv, description=__doc__.split("\n")[0],
                   prog="rl-ring bench eval")
    out = Path(cfg.out)
    common.check_outputs([out, out.with_suffix(".png")], overwrite=cfg.overwrite,
                         what="the evaluation benchmark")
    os.environ.setdefault("MUJOCO_GL", "disable")
    result = run(cfg)
    write(result, out)
    s = result["summary"]
    longest = max(cfg.contexts)
    print(f"cached vs recompute at {longest} tokens: {s['speedup_at_longest_context']:.1f}x "
          f"(fastest steps: {s['speedup_fastest_steps'][str(longest)]:.1f}x)")
    for ctx, v in s["batching_ratio"].items():
        p = s["batching_ratio_policy_only"][ctx]
        print(f"{cfg.batch_sizes[-1]} envs vs {cfg.batch_sizes[0]} at {ctx} tokens: {v:.2f}x "
              f"(policy alone {p:.2f}x)")
    print(f"decode time per token ~ context^{s['decode_exponent']:.2f} "
          f"(upper half of the contexts: ^{s['decode_exponent_upper_half']:.2f})")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
