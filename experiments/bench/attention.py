"""Attention benchmark: speed, FLOP rate, per-device memory and causal work balance.

Writes ``results/attention.json`` (self-describing: config, platform, every timing run,
ratios, pass/fail per target) and ``results/attention.png``; existing ones are replaced only
with ``--overwrite``.

    rl-ring bench attention --quick      # ~1-2 minutes on 2 CPU cores
    rl-ring bench attention              # full: T=8192, memory from 2K to 64K, strategies
    python -m experiments.bench.attention --quick   # the same
    rl-ring bench attention --strategies-only --strategy-seq-lens 2048   # a quick check

The context-parallel strategies (ring, all-gather, Ulysses) are compared on their own: causal
forward+backward at T = 2K ... 64K on ``--devices`` devices, time and compiled per-device
memory, the fastest per T, the crossovers, and how often ``impl="auto"``
(``rl_ring.attention.strategy.choose_impl``) picks the fastest. They are written to
``results/attention_strategies.json`` / ``.png`` (``--strategies-out``; default: beside
``--out``).

On CPU the benchmark fakes ``--devices`` host devices (it must set XLA_FLAGS before JAX
starts, so run it as a command, not from a process that already imported JAX). Timings are
medians of ``--repeats`` runs after a warm-up run; the reference rate is a jitted float32
4096x4096 matmul timed in the same process (before, between and after the attention cases).

FLOPs count only unmasked work: a forward is ``4 * batch * heads * head_dim * visible``
where ``visible`` is the number of (query, key) pairs the mask lets through (``T^2``, or
``T(T+1)/2`` causal); forward+backward counts 3.5x the forward (two matmuls forward, five
backward including the recomputed scores).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.bench.common import (
    check_outputs,
    fake_cpu_devices,
    load_average,
    median,
    pyplot,
    round_robin,
    save_png,
    timed,
    write_result,
)

# The original ringattention 0.1.2 package, causal fwd+bwd at T=8192 (REFERENCE.md §5).
ORIGINAL_CAUSAL_FWD_BWD_MS = 1447.0
MODES = ("fwd", "fwd_bwd")
TARGETS = {
    "speedup_vs_original": 1.4,
    "flop_rate_vs_matmul": 0.5,
    "zigzag_max_over_mean": 1.1,
    "ring_vs_blockwise_memory": 1.15,
    "memory_growth_per_doubling": 2.2,
}


@dataclass(frozen=True)
class BenchConfig:
    """What to benchmark (defaults: the full run)."""

    quick: bool = False
    """Small preset (~1-2 min): T=4096, causal only, fewer layouts, memory up to 16K."""
    seq_len: int = 8192
    """Sequence length T of the timed cases."""
    heads: int = 4
    """Query heads (and K/V heads)."""
    head_dim: int = 64
    """Head dimension."""
    batch: int = 1
    """Batch size."""
    devices: int = 8
    """Devices of the ring (fake CPU devices on CPU)."""
    dtype: str = "float32"
    """Input dtype (float32 or bfloat16)."""
    repeats: int = 5
    """Timed runs per case (after one warm-up run)."""
    q_chunk: int | None = None
    """Query chunk (None: the library default)."""
    k_chunk: int | None = None
    """Key chunk (None: the library default)."""
    layouts: tuple[str, ...] = ("contiguous", "zigzag", "striped")
    """Ring layouts timed."""
    causal: tuple[bool, ...] = (False, True)
    """Mask settings timed."""
    dense_max_seq: int = 8192
    """Largest T at which the dense reference is timed (it holds T x T scores)."""
    dense_repeats: int = 3
    """Timed runs of the dense reference (compiled ahead, no warm-up run: at T=8192 it holds
    5+ GB and runs for seconds, so it is kept short)."""
    mem_seq_lens: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768, 65536)
    """Sequence lengths of the memory table (compiled only, never run)."""
    out: str = "results/attention.json"
    """JSON output path."""
    png: str = "results/attention.png"
    """Plot output path ('' for none)."""
    overwrite: bool = False
    """Replace existing output files."""
    strategies: bool = True
    """Also run the context-parallel strategies sweep (ring / allgather / ulysses)."""
    strategies_only: bool = False
    """Run only the strategies sweep (skips the timings, memory table and balance)."""
    strategy_impls: tuple[str, ...] = ("ring", "allgather", "ulysses")
    """Strategies compared (each on ``devices`` devices, zigzag layout, causal fwd+bwd)."""
    strategy_seq_lens: tuple[int, ...] = (2048, 4096, 8192, 16384, 32768, 65536)
    """Sequence lengths of the strategies sweep."""
    strategy_heads: int = 8
    """Query heads of the sweep (Ulysses needs them divisible by ``devices``)."""
    strategy_kv_heads: int = 8
    """K/V heads of the sweep."""
    strategy_head_dim: int = 16
    """Head dimension of the sweep (small, so that 64K runs on 2 CPU cores)."""
    strategy_repeats: int = 3
    """Timed runs per strategy and T (after one warm-up run), interleaved."""
    strategy_time_max: int = 65536
    """Longest T that is timed; longer ones are compiled for their memory only (on 2 CPU
    cores the ring's fwd+bwd takes minutes per run at 32K)."""
    strategies_out: str = ""
    """Strategies JSON path ('' : ``<out>`` with ``_strategies`` added); its PNG beside it."""


QUICK = {
    "seq_len": 4096,
    "repeats": 3,
    "layouts": ("contiguous", "zigzag"),
    "causal": (True,),
    "dense_max_seq": 0,
    "mem_seq_lens": (2048, 4096, 8192, 16384),
    "strategy_seq_lens": (2048, 4096, 8192),
}


def resolve(cfg: BenchConfig) -> BenchConfig:
    """Applies the quick preset to every field still at its full-run default."""
    if not cfg.quick:
        return cfg
    defaults = BenchConfig()
    changes = {k: v for k, v in QUICK.items() if getattr(cfg, k) == getattr(defaults, k)}
    return dataclasses.replace(cfg, **changes)


def _matmul_fn():
    """The reference rate: a jitted float32 4096 x 4096 matmul, compiled and warmed up."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (4096, 4096), jnp.float32)
    fn = jax.jit(lambda a: a @ a)
    jax.block_until_ready(fn(x))
    return fn, (x,)


def attention_flops(cfg: BenchConfig, causal: bool, backward: bool) -> float:
    """Unmasked FLOPs of one call (see module docstring)."""
    t = cfg.seq_len
    visible = t * (t + 1) / 2 if causal else t * t
    fwd = 4.0 * cfg.batch * cfg.heads * cfg.head_dim * visible
    return 3.5 * fwd if backward else fwd


def _cases(cfg: BenchConfig):
    """(name, impl, layout, causal) of every timed case (the dense ones first)."""
    for causal in cfg.causal:
        if cfg.seq_len <= cfg.dense_max_seq:
            yield "reference", "reference", "contiguous", causal
    for causal in cfg.causal:
        yield "blockwise", "blockwise", "contiguous", causal
        for layout in cfg.layouts if causal else cfg.layouts[:1]:
            yield f"ring[{layout}]", "ring", layout, causal


def _build(cfg: BenchConfig, impl: str, layout: str, causal: bool, backward: bool, mesh):
    """A jitted attention call (forward, or forward + VJP) and its placed inputs."""
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from rl_ring.attention import attention, permute
    from rl_ring.sharding import batch_sharding

    opts = {}
    if cfg.q_chunk is not None:
        opts["q_chunk"] = cfg.q_chunk
    if cfg.k_chunk is not None:
        opts["k_chunk"] = cfg.k_chunk
    kw = {"impl": impl, "causal": causal, **(opts if impl != "reference" else {})}
    if impl == "ring":
        kw.update(mesh=mesh, layout=layout)

    keys = jax.random.split(jax.random.key(1), 4)
    shape = (cfg.batch, cfg.seq_len, cfg.heads, cfg.head_dim)
    arrays = [jax.random.normal(k_, shape, jnp.float32).astype(cfg.dtype) for k_ in keys]
    if impl == "ring":
        n = mesh.shape["seq"]
        arrays = [jax.device_put(permute(x, n, layout), batch_sharding(mesh, 4)) for x in arrays]
    else:
        one = NamedSharding(jax.sharding.Mesh(jax.devices()[:1], ("x",)), PartitionSpec())
        arrays = [jax.device_put(x, one) for x in arrays]

    f = lambda q, k, v: attention(q, k, v, **kw)
    if not backward:
        return jax.jit(f), arrays[:3]

    def fwd_bwd(q, k, v, ct):
        out, pullback = jax.vjp(f, q, k, v)
        return out, pullback(ct)

    return jax.jit(fwd_bwd), arrays


def _case_entry(impl, layout, causal, mode, devices, runs_ms, flops) -> dict:
    med = median(runs_ms)
    return {
        "impl": impl, "layout": layout, "causal": causal, "mode": mode, "devices": devices,
        "runs_ms": [round(x, 2) for x in runs_ms], "median_ms": round(med, 2),
        "min_ms": round(min(runs_ms), 2), "gflops": flops / 1e9,
        "gflop_per_s": round(flops / 1e9 / (med / 1e3), 1),
        "gflop_per_s_best": round(flops / 1e9 / (min(runs_ms) / 1e3), 1),
    }


def run_timings(cfg: BenchConfig, mesh) -> tuple[dict, dict]:
    """Times every case; returns (cases, matmul).

    The kernels and the reference matmul are timed round-robin (one run of each case per
    round, ``repeats`` rounds), so a change in the machine's load during the benchmark hits
    every case alike. The dense reference, which holds several GB, is timed on its own.
    """
    import jax

    n = mesh.shape["seq"]
    cases, built = {}, {}
    mm_fn, mm_args = _matmul_fn()
    built["matmul"] = (mm_fn, mm_args)
    for name, impl, layout, causal in _cases(cfg):
        for backward in (False, True):
            mode = "fwd_bwd" if backward else "fwd"
            key = f"{name} {'causal' if causal else 'full'} {mode}"
            fn, args = _build(cfg, impl, layout, causal, backward, mesh)
            flops = attention_flops(cfg, causal, backward)
            devices = n if impl == "ring" else 1
            if impl == "reference":
                # compiled ahead, no warm-up run (see BenchConfig.dense_repeats)
                fn = fn.lower(*args).compile()
                runs_ms = [1e3 * timed(lambda fn=fn, args=args: fn(*args))
                           for _ in range(cfg.dense_repeats)]
                del fn, args
                cases[key] = _case_entry(impl, layout, causal, mode, 1, runs_ms, flops)
                print(f"  {key:40s} {median(runs_ms):9.1f} ms (dense, timed alone)", flush=True)
                continue
            jax.block_until_ready(fn(*args))  # compile + warm up
            built[key] = (fn, args)
            cases[key] = (impl, layout, causal, mode, devices, flops)
    runs = round_robin({key: lambda fn=fn, args=args: 1e3 * timed(lambda: fn(*args))
                        for key, (fn, args) in built.items()}, cfg.repeats)
    mm = runs.pop("matmul")
    matmul = {
        "shape": [4096, 4096], "dtype": "float32", "runs_ms": [round(x, 2) for x in mm],
        "median_ms": round(median(mm), 2), "min_ms": round(min(mm), 2),
        "gflop_per_s": round(2 * 4096**3 / 1e9 / (median(mm) / 1e3), 1),
        "gflop_per_s_best": round(2 * 4096**3 / 1e9 / (min(mm) / 1e3), 1),
    }
    for key, r in runs.items():
        cases[key] = _case_entry(*cases[key][:5], r, cases[key][5])
    for key, case in cases.items():
        case["fraction_of_matmul"] = round(case["gflop_per_s"] / matmul["gflop_per_s"], 3)
        case["fraction_of_matmul_best"] = round(
            case["gflop_per_s_best"] / matmul["gflop_per_s_best"], 3)
        print(f"  {key:40s} median {case['median_ms']:9.1f} ms  min {case['min_ms']:9.1f} ms  "
              f"{case['fraction_of_matmul']:.2f} of matmul", flush=True)
    return cases, matmul


def _resolved_chunk(cfg: BenchConfig, impl: str, seq: int, n: int) -> int | None:
    """Query chunk the kernels use for a memory-table entry (None for the dense reference)."""
    from rl_ring.attention.options import even_chunk

    if impl == "reference":
        return None
    block = seq // n if impl == "ring" else seq
    if cfg.q_chunk is not None:
        return min(cfg.q_chunk, block)
    # The dispatcher's rule: zigzag halves (T / 2n) split evenly, else the block split evenly.
    return even_chunk(seq // (2 * n)) if impl == "ring" and n > 1 else even_chunk(block)


def memory_table(cfg: BenchConfig, mesh) -> dict:
    """Per-device bytes of the compiled executables (``memory_analysis``), never run."""
    import jax
    import jax.numpy as jnp

    from rl_ring.attention import attention

    n = mesh.shape["seq"]
    table = {}
    for t in cfg.mem_seq_lens:
        ring_chunk = _resolved_chunk(cfg, "ring", t, n)
        # (key, impl, seq, devices, chunk): the dense and blockwise series over T, the ring at
        # T, and blockwise at T/n with the ring's chunk (the ring's per-device comparison).
        for name, impl, seq, devices, chunk in (
            (f"reference@{t}", "reference", t, 1, None),
            (f"blockwise@{t}", "blockwise", t, 1, _resolved_chunk(cfg, "blockwise", t, n)),
            (f"blockwise(T/{n})@{t}", "blockwise", t // n, 1, ring_chunk),
            (f"ring{n}@{t}", "ring", t, n, ring_chunk),
        ):
            shape = (cfg.batch, seq, cfg.heads, cfg.head_dim)
            x = jax.ShapeDtypeStruct(shape, jnp.dtype(cfg.dtype))
            kw = {"impl": impl, "causal": True}
            if impl != "reference":
                kw.update(q_chunk=chunk, k_chunk=chunk)
            if impl == "ring":
                kw.update(mesh=mesh, layout="zigzag")
            f = lambda q, k, v, kw=kw: attention(q, k, v, **kw)
            entry = {"impl": impl, "seq_len": seq, "devices": devices, "chunk": chunk}
            for mode, fn in (
                ("fwd", f),
                ("fwd_bwd", lambda q, k, v, f=f: jax.vjp(f, q, k, v)[1](q)),
            ):
                try:
                    m = jax.jit(fn).lower(x, x, x).compile().memory_analysis()
                except Exception as e:  # noqa: BLE001 - e.g. a GPU autotuner out of memory
                    entry[mode] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                total = (m.argument_size_in_bytes + m.output_size_in_bytes
                         + m.temp_size_in_bytes - m.alias_size_in_bytes)
                entry[mode] = {
                    "argument": m.argument_size_in_bytes, "output": m.output_size_in_bytes,
                    "temp": m.temp_size_in_bytes, "alias": m.alias_size_in_bytes, "total": total,
                }
            table[name] = entry
            mib = {m: f"{entry[m]['total'] / 2**20:10.1f} MiB" if "total" in entry[m] else
                   "    failed" for m in ("fwd", "fwd_bwd")}
            print(f"  memory {name:22s} fwd {mib['fwd']}   fwd+bwd {mib['fwd_bwd']}", flush=True)
    return table


def balance_table(cfg: BenchConfig, n: int) -> dict:
    """Causal chunk pairs per device for each layout (the kernels' own skip rule)."""
    from rl_ring.attention import block_work
    from rl_ring.attention.options import even_chunk

    # The chunk the dispatcher uses under zigzag (T / 2n split evenly), for all layouts.
    chunk = cfg.q_chunk or even_chunk(cfg.seq_len // (2 * n) if n > 1 else cfg.seq_len)
    chunk = min(chunk, cfg.seq_len // n)
    out = {}
    for layout in ("contiguous", "zigzag", "striped"):
        work = block_work(cfg.seq_len, n, layout, chunk, causal=True)
        out[layout] = {
            "chunk": chunk, "pairs_per_device": work.tolist(), "total": int(work.sum()),
            "max_over_mean": round(float(work.max() / work.mean()), 3),
        }
    return out


def evaluate_targets(cfg, cases, matmul, memory, balance, n) -> dict:
    """Pass/fail per target; a target that could not be measured in this run is None."""
    res = {}
    ring_causal = {k: c for k, c in cases.items()
                   if c["impl"] == "ring" and c["causal"] and c["mode"] == "fwd_bwd"}
    if ring_causal and cfg.seq_len == 8192 and cfg.dtype == "float32":
        best = min(ring_causal.values(), key=lambda c: c["median_ms"])
        ms = best["median_ms"]
        res["ring_causal_fwd_bwd_ms"] = {
            "value": ms, "layout": best["layout"], "min_ms": best["min_ms"],
            "limit": round(ORIGINAL_CAUSAL_FWD_BWD_MS / TARGETS["speedup_vs_original"], 1),
            "speedup_vs_original_1447ms": round(ORIGINAL_CAUSAL_FWD_BWD_MS / ms, 2),
            "pass": ms <= ORIGINAL_CAUSAL_FWD_BWD_MS / TARGETS["speedup_vs_original"],
            "note": "absolute time: only comparable on the machine the 1447 ms was measured on",
        }
    if ring_causal:
        best = max(ring_causal.values(), key=lambda c: c["fraction_of_matmul"])
        res["flop_rate_vs_matmul"] = {
            "value": best["fraction_of_matmul"], "case": f"ring[{best['layout']}] causal fwd_bwd",
            "value_from_best_runs": best["fraction_of_matmul_best"],
            "matmul_gflop_per_s": matmul["gflop_per_s"], "limit": TARGETS["flop_rate_vs_matmul"],
            "pass": best["fraction_of_matmul"] >= TARGETS["flop_rate_vs_matmul"],
        }
    res["zigzag_max_over_mean"] = {
        "value": balance["zigzag"]["max_over_mean"],
        "contiguous": balance["contiguous"]["max_over_mean"],
        "limit": TARGETS["zigzag_max_over_mean"],
        "pass": balance["zigzag"]["max_over_mean"] <= TARGETS["zigzag_max_over_mean"],
    }
    ratios = {}
    for t in cfg.mem_seq_lens:
        ring, block = memory.get(f"ring{n}@{t}"), memory.get(f"blockwise(T/{n})@{t}")
        ok = ring and block and all("total" in e[m] for e in (ring, block) for m in MODES)
        if ok:
            ratios[t] = {m: round(ring[m]["total"] / block[m]["total"], 3)
                         for m in ("fwd", "fwd_bwd")}
    if ratios:
        worst = {m: max(r[m] for r in ratios.values()) for m in ("fwd", "fwd_bwd")}
        res["ring_vs_blockwise_at_T_over_n_memory"] = {
            "ratio_by_T": ratios, "worst": worst, "limit": TARGETS["ring_vs_blockwise_memory"],
            "pass_fwd": worst["fwd"] <= TARGETS["ring_vs_blockwise_memory"],
            "pass_fwd_bwd": worst["fwd_bwd"] <= TARGETS["ring_vs_blockwise_memory"],
        }
    growth, raw = {}, {}
    for impl in ("reference", "blockwise", f"ring{n}"):
        pts = sorted((e["seq_len"], e) for name, e in memory.items()
                     if name.startswith(f"{impl}@") and all("total" in e[m] for m in MODES))
        steps = [(ta, {m: round(b[m]["total"] / a[m]["total"], 3) for m in MODES},
                  a["chunk"] == b["chunk"])
                 for (ta, a), (tb, b) in zip(pts, pts[1:], strict=False) if tb == 2 * ta]
        raw[impl] = {f"{ta}->{2 * ta}": r for ta, r, _ in steps}
        same_chunk = [r for _, r, same in steps if same]
        if same_chunk:
            growth[impl] = {m: max(r[m] for r in same_chunk) for m in MODES}
    res["memory_growth_per_doubling"] = {
        "max_by_impl": growth, "all_doublings": raw, "limit": TARGETS["memory_growth_per_doubling"],
        "pass": all(g["fwd_bwd"] <= TARGETS["memory_growth_per_doubling"]
                    for impl, g in growth.items() if impl != "reference"),
        "note": "max over doublings at an unchanged chunk length (default chunks grow with T "
                "until they reach default_chunk(), see all_doublings); the limit applies to "
                "blockwise and ring, the dense reference grows as T^2",
    }
    return res


def plot(result: dict, path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
    cases = result["timings"]
    names = list(cases)
    ax = axes[0]
    ax.barh(range(len(names)), [cases[k]["median_ms"] for k in names], color=[
        "tab:gray" if cases[k]["impl"] == "reference" else
        "tab:blue" if cases[k]["impl"] == "blockwise" else "tab:orange" for k in names])
    ax.set_yticks(range(len(names)), [f"{k} ({cases[k]['fraction_of_matmul']:.0%} mm)"
                                      for k in names], fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("median wall time [ms] (log)")
    ax.set_title(f"T={result['config']['seq_len']}, matmul "
                 f"{result['matmul']['gflop_per_s']:.0f} GFLOP/s")
    ax.invert_yaxis()

    ax = axes[1]
    n = result["platform"]["ring_devices"]
    for impl, style in (("reference", "s-"), ("blockwise", "o-"), (f"ring{n}", "^-"),
                        (f"blockwise(T/{n})", "v--")):
        pts = sorted((int(name.split("@")[1]), e["fwd_bwd"]["total"]) for name, e in
                     result["memory"].items() if name.startswith(f"{impl}@")
                     and "total" in e["fwd_bwd"])
        if pts:
            ax.plot(*zip(*pts, strict=True), style, label=f"{impl} fwd+bwd")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("bytes per device (compiled)")
    ax.set_title("per-device memory")
    ax.legend(fontsize=8)

    ax = axes[2]
    width = 0.27
    for i, (layout, b) in enumerate(result["balance"].items()):
        w = b["pairs_per_device"]
        ax.bar([d + (i - 1) * width for d in range(len(w))], w, width,
               label=f"{layout} (max/mean {b['max_over_mean']:.2f})")
    ax.set_xlabel("device")
    ax.set_ylabel("chunk pairs computed (causal)")
    ax.set_title("causal work per device")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def strategy_paths(cfg: BenchConfig) -> tuple[Path, Path | None]:
    """JSON and PNG paths of the strategies sweep (default: beside ``--out``)."""
    out = Path(cfg.strategies_out or Path(cfg.out).with_name(Path(cfg.out).stem
                                                              + "_strategies.json"))
    return out, (out.with_suffix(".png") if cfg.png else None)


def _platform(cfg: BenchConfig, load_start) -> dict:
    import jax

    return {
        "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
        "ring_devices": cfg.devices, "jax": jax.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "loadavg_1_5_15min_at_start": load_start,
        "loadavg_1_5_15min_at_end": load_average(),
        "note": "other processes on the machine slow every timing; compare ratios measured "
                "in one run, and only from runs with a low load average",
    }


def run(cfg: BenchConfig) -> dict:
    """Runs the benchmark and writes the JSON (and PNG); returns the result."""
    cfg = resolve(cfg)
    s_json, s_png = strategy_paths(cfg)
    outs = [] if cfg.strategies_only else [cfg.out, cfg.png]
    if cfg.strategies or cfg.strategies_only:
        outs += [s_json, s_png]
    check_outputs(outs, overwrite=cfg.overwrite, what="the attention benchmark")
    if "jax" not in sys.modules:  # else JAX may have started: `run` checks the device count
        fake_cpu_devices(cfg.devices)
    import jax

    from rl_ring.attention import default_chunk
    from rl_ring.sharding import make_mesh

    if jax.device_count() < cfg.devices:
        raise ValueError(f"--devices {cfg.devices} but only {jax.device_count()} "
                         f"{jax.default_backend()} devices are available")
    mesh = make_mesh(f"seq={cfg.devices}", jax.devices()[: cfg.devices])
    print(f"attention benchmark: {jax.default_backend()} x{cfg.devices}, T={cfg.seq_len}, "
          f"H={cfg.heads}, D={cfg.head_dim}, B={cfg.batch}, {cfg.dtype}", flush=True)
    result: dict = {}
    if not cfg.strategies_only:
        started = time.time()
        load_start = load_average()
        cases, matmul = run_timings(cfg, mesh)
        memory = memory_table(cfg, mesh)
        balance = balance_table(cfg, cfg.devices)
        result = {
            "config": dataclasses.asdict(cfg),
            "chunks": {"q_chunk": cfg.q_chunk, "k_chunk": cfg.k_chunk,
                       "default_chunk": default_chunk(),
                       "note": "None: the block (zigzag: each T/2n half) split evenly into "
                               "chunks of at most default_chunk()"},
            "platform": _platform(cfg, load_start),
            "flops_convention": "fwd = 4*B*H*D*visible pairs; fwd_bwd = 3.5 x fwd",
            "matmul": matmul,
            "timings": cases,
            "memory": memory,
            "balance": balance,
            "seconds": round(time.time() - started, 1),
        }
        result["targets"] = evaluate_targets(cfg, cases, matmul, memory, balance, cfg.devices)
        out = write_result(result, cfg.out, plot if cfg.png else None, cfg.png)
        print(f"matmul {matmul['gflop_per_s']} GFLOP/s; wrote {out} {cfg.png}")
        for name, t in result["targets"].items():
            print(f"  target {name}: {json.dumps(t)}")
    if cfg.strategies or cfg.strategies_only:
        from experiments.bench.attention_strategies import plot_strategies, run_strategies

        load_start = load_average()
        sweep = run_strategies(cfg, mesh)
        strat = {"config": dataclasses.asdict(cfg), "platform": _platform(cfg, load_start),
                 "strategies": sweep}
        write_result(strat, s_json, plot_strategies if s_png else None, s_png)
        print(f"strategies: crossovers {sweep['crossovers']}, auto picks the fastest in "
              f"{sweep['auto_picks_fastest_fraction']} of the T; wrote {s_json} {s_png or ''}")
        result["strategies"] = sweep
    return result


def main(argv: list[str] | None = None) -> int:
    import tyro

    cfg = tyro.cli(BenchConfig, args=sys.argv[1:] if argv is None else argv,
                   prog="rl-ring bench attention")
    run(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
