"""The context-parallel strategies part of ``rl-ring bench attention``.

Ring, all-gather and Ulysses attention, causal forward+backward, zigzag layout (inputs
pre-permuted, as the training loader hands them over), on ``devices`` devices at each
``strategy_seq_lens`` T: median wall time of interleaved runs, and per-device bytes from
the compiled executable's ``memory_analysis`` (arguments + outputs + temporaries - aliased).
Per T: the fastest strategy, what ``choose_impl`` (``impl="auto"``) picks, and whether it
picked the fastest; over T: the crossovers (where the fastest strategy changes).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from experiments.bench.common import median, pyplot, round_robin, save_png, timed


def _build(cfg, impl: str, t: int, mesh):
    """The compiled causal fwd+bwd of ``impl`` at sequence length ``t`` and its inputs."""
    import jax
    import jax.numpy as jnp

    from rl_ring.attention import attention
    from rl_ring.sharding import batch_sharding

    keys = jax.random.split(jax.random.key(2), 4)
    h, hk, d = cfg.strategy_heads, cfg.strategy_kv_heads, cfg.strategy_head_dim
    shapes = [(cfg.batch, t, h, d), (cfg.batch, t, hk, d), (cfg.batch, t, hk, d),
              (cfg.batch, t, h, d)]
    arrays = [jax.device_put(jax.random.normal(k_, s, jnp.float32).astype(cfg.dtype),
                             batch_sharding(mesh, 4)) for k_, s in zip(keys, shapes, strict=True)]
    opts = {k: v for k, v in (("q_chunk", cfg.q_chunk), ("k_chunk", cfg.k_chunk)) if v}
    f = lambda q, k, v: attention(q, k, v, impl=impl, mesh=mesh, causal=True, layout="zigzag",
                                  permuted_inputs=True, **opts)

    def fwd_bwd(q, k, v, ct):
        out, pullback = jax.vjp(f, q, k, v)
        return out, pullback(ct)

    compiled = jax.jit(fwd_bwd).lower(*arrays).compile()
    m = compiled.memory_analysis()
    total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)
    memory = {"argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
              "temp": m.temp_size_in_bytes, "alias": m.alias_size_in_bytes, "total": total}
    return compiled, arrays, memory


def run_strategies(cfg, mesh) -> dict[str, Any]:
    """Times and measures every strategy at every T; returns the result's ``strategies``."""
    import jax

    from rl_ring.attention.strategy import STRATEGIES, choose_impl

    n = int(mesh.shape["seq"])
    per_t, started = {}, time.time()
    for t in cfg.strategy_seq_lens:
        built, entry = {}, {}
        for impl in cfg.strategy_impls:
            timed_t = t <= getattr(cfg, "strategy_time_max", t)
            try:
                fn, args, memory = _build(cfg, impl, t, mesh)
                if not timed_t:  # memory only: compiled, not run
                    entry[impl] = {"memory": memory, "timed": False}
                    print(f"  strategies T={t:6d} {impl:10s} (memory only) "
                          f"{memory['total'] / 2**20:8.1f} MiB/device", flush=True)
                    continue
                jax.block_until_ready(fn(*args))  # warm-up
            except Exception as e:  # noqa: BLE001 - e.g. out of memory at large T
                entry[impl] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                print(f"  strategies T={t:6d} {impl:10s} failed: {entry[impl]['error']}")
                continue
            built[impl] = (fn, args)
            entry[impl] = {"memory": memory}
        runs = round_robin({impl: lambda fn=fn, args=args: 1e3 * timed(lambda: fn(*args))
                            for impl, (fn, args) in built.items()}, cfg.strategy_repeats)
        for impl, r in runs.items():
            entry[impl].update(runs_ms=[round(x, 2) for x in r], median_ms=round(median(r), 2),
                               min_ms=round(min(r), 2))
            print(f"  strategies T={t:6d} {impl:10s} median {median(r):9.1f} ms  "
                  f"memory {entry[impl]['memory']['total'] / 2**20:8.1f} MiB/device", flush=True)
        del built
        timed_impls = {i: e["median_ms"] for i, e in entry.items() if "median_ms" in e}
        fastest = min(timed_impls, key=timed_impls.get) if timed_impls else None
        rule = functools.partial(
            choose_impl, seq_len=t, num_devices=n, heads=cfg.strategy_heads,
            kv_heads=cfg.strategy_kv_heads, head_dim=cfg.strategy_head_dim, batch=cfg.batch,
            backend=jax.default_backend(), dtype_bytes=jax.numpy.dtype(cfg.dtype).itemsize)
        auto = rule(candidates=tuple(i for i in STRATEGIES if i in timed_impls) or STRATEGIES)
        auto_ms = timed_impls.get(auto)
        # The rule's other branch, for heads that n does not divide: ring against allgather.
        memory_order = sorted((e["memory"]["total"], i) for i, e in entry.items()
                              if "memory" in e)
        pair = {i: timed_impls[i] for i in ("ring", "allgather") if i in timed_impls}
        pair_fastest = min(pair, key=pair.get) if len(pair) == 2 else None
        pair_auto = rule(candidates=("ring", "allgather"))
        per_t[str(t)] = {
            "impls": entry, "fastest": fastest, "auto": auto,
            "least_memory": memory_order[0][1] if memory_order else None,
            "auto_is_fastest": auto == fastest,
            "auto_over_fastest": (round(auto_ms / timed_impls[fastest], 3)
                                  if auto_ms and fastest else None),
            "ring_vs_allgather": {"fastest": pair_fastest, "auto": pair_auto,
                                  "auto_is_fastest": pair_auto == pair_fastest},
        }
    fastest = [(int(t), e["fastest"]) for t, e in per_t.items() if e["fastest"]]
    crossovers = [{"from_T": a, "to_T": b, "from": fa, "to": fb}
                  for (a, fa), (b, fb) in zip(fastest, fastest[1:], strict=False) if fa != fb]
    judged = [e for e in per_t.values() if e["fastest"]]
    return {
        "config": {"devices": n, "heads": cfg.strategy_heads, "kv_heads": cfg.strategy_kv_heads,
                   "head_dim": cfg.strategy_head_dim, "batch": cfg.batch, "dtype": cfg.dtype,
                   "layout": "zigzag (pre-permuted)", "mask": "causal", "mode": "fwd_bwd",
                   "repeats": cfg.strategy_repeats, "impls": list(cfg.strategy_impls),
                   "seq_lens": list(cfg.strategy_seq_lens)},
        "by_seq_len": per_t,
        "crossovers": crossovers,
        "auto_picks_fastest_fraction": (round(sum(e["auto_is_fastest"] for e in judged)
                                              / len(judged), 3) if judged else None),
        "ring_vs_allgather_auto_picks_fastest_fraction": (
            round(sum(e["ring_vs_allgather"]["auto_is_fastest"] for e in judged
                      if e["ring_vs_allgather"]["fastest"])
                  / max(1, sum(bool(e["ring_vs_allgather"]["fastest"]) for e in judged)), 3)),
        "auto_within_10pct_fraction": (round(sum((e["auto_over_fastest"] or 99) <= 1.10
                                                 for e in judged) / len(judged), 3)
                                       if judged else None),
        "seconds": round(time.time() - started, 1),
    }


def plot_strategies(result: dict, path) -> None:
    """Time and per-device memory against T per strategy; auto's picks circled."""
    plt = pyplot()
    s = result["strategies"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colors = {"ring": "tab:blue", "allgather": "tab:orange", "ulysses": "tab:green"}
    for impl in s["config"]["impls"]:
        pts = [(int(t), e["impls"][impl]) for t, e in s["by_seq_len"].items()
               if "median_ms" in e["impls"].get(impl, {})]
        if not pts:
            continue
        ts = [t for t, _ in pts]
        style = {"label": impl, "color": colors.get(impl)}
        axes[0].plot(ts, [e["median_ms"] for _, e in pts], "o-", **style)
        mem = [(int(t), e["impls"][impl]["memory"]["total"] / 2**20)
               for t, e in s["by_seq_len"].items() if "memory" in e["impls"].get(impl, {})]
        axes[1].plot(*zip(*mem, strict=True), "o-", **style)
        picked = [(t, e["median_ms"]) for t, e in pts if s["by_seq_len"][str(t)]["auto"] == impl]
        if picked:
            axes[0].plot(*zip(*picked, strict=True), "o", ms=13, mfc="none", mec="k")
    c = s["config"]
    axes[0].set_title(f"causal fwd+bwd, {c['devices']} devices, H={c['heads']}/"
                      f"{c['kv_heads']}, D={c['head_dim']} (circles: auto's pick, "
                      f"{s['auto_picks_fastest_fraction']} fastest)", fontsize=9)
    axes[0].set_ylabel("median wall time [ms]")
    axes[1].set_title("per-device memory (compiled)", fontsize=9)
    axes[1].set_ylabel("MiB per device")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)
